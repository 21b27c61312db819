//! HTTP clients: hyper HTTP/1.1 (one-shot or a kept-alive connection), hyper h2c prior knowledge,
//! and a raw TCP sender for requests hyper will not produce.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on any single request in the tests (an answer never comes -> clear failure, not a hang).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the status and body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} headers {:?} body {:?}",
                self.status,
                self.headers,
                self.text()
            )
        })
    }

    /// The JSON `reason` field ("" when absent).
    pub fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or("").to_string()
    }

    /// The first value of header `name` (case-insensitive), as lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    /// Short description for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "status {} headers {:?} body {}",
            self.status,
            self.headers,
            self.text()
        )
    }
}

#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    /// A `method` request for `path` with no headers and no body.
    pub fn new(method: Method, path: &str) -> Req {
        Req {
            method,
            path: path.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `GET path`.
    pub fn get(path: &str) -> Req {
        Req::new(Method::GET, path)
    }

    /// A `POST path` with `body`.
    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Req {
        let mut r = Req::new(Method::POST, path);
        r.body = body.into();
        r
    }

    /// Adds a header (repeated names are sent as repeated lines).
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds `X-Gitlab-Token: token`.
    pub fn token(self, token: &str) -> Req {
        self.header("X-Gitlab-Token", token)
    }

    /// The hyper request for `uri`, with a `Host` header unless the request sets its own.
    fn build(&self, uri: String, host: Option<String>) -> Request<Full<Bytes>> {
        let mut b = Request::builder().method(self.method.clone()).uri(uri);
        let has_host = self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("host"));
        if let (Some(host), false) = (host, has_host) {
            b = b.header("host", host);
        }
        for (k, v) in &self.headers {
            b = b.header(
                HeaderName::from_bytes(k.as_bytes()).expect("valid header name in test"),
                HeaderValue::from_str(v).expect("valid header value in test"),
            );
        }
        b.body(Full::new(Bytes::from(self.body.clone())))
            .expect("building request")
    }

    /// One request over a fresh HTTP/1.1 connection.
    pub async fn send(self, addr: SocketAddr) -> Resp {
        let mut conn = H1Conn::connect(addr).await;
        conn.send(self).await
    }

    /// One request over a fresh HTTP/2 cleartext connection (prior knowledge, no upgrade).
    pub async fn send_h2(self, addr: SocketAddr) -> Resp {
        let what = format!("h2c {} {} to {addr}", self.method, self.path);
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let stream = TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap_or_else(|e| panic!("{what}: h2 handshake: {e}"));
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let req = self.build(format!("http://{addr}{}", self.path), None);
            let resp = sender
                .send_request(req)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            collect(resp, &what).await
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: no complete response within {REQUEST_TIMEOUT:?}"))
    }
}

/// Reads the whole body of `resp` into a [`Resp`] (`what` names the request in panics).
async fn collect(resp: http::Response<hyper::body::Incoming>, what: &str) -> Resp {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading body: {e}"))
        .to_bytes();
    Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// A kept-alive HTTP/1.1 connection: requests on it reach the same gateway worker thread.
pub struct H1Conn {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1Conn {
    /// Connects to `addr` and completes the HTTP/1.1 handshake.
    pub async fn connect(addr: SocketAddr) -> H1Conn {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connect {addr}: timed out"))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap_or_else(|e| panic!("http1 handshake with {addr}: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H1Conn { addr, sender }
    }

    /// Sends `req` on this connection and reads the whole response.
    pub async fn send(&mut self, req: Req) -> Resp {
        let what = format!("{} {} to {}", req.method, req.path, self.addr);
        let addr = self.addr;
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            self.sender
                .ready()
                .await
                .unwrap_or_else(|e| panic!("{what}: connection not ready: {e}"));
            let r = req.build(req.path.clone(), Some(addr.to_string()));
            let resp = self
                .sender
                .send_request(r)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            collect(resp, &what).await
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: no complete response within {REQUEST_TIMEOUT:?}"))
    }
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The whole response as received (for messages).
    pub raw: Vec<u8>,
}

impl RawResp {
    /// The first value of header `name` (case-insensitive), as lossy UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The body as JSON; panics with the raw response when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "raw response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.raw)
            )
        })
    }

    /// The JSON `reason` field ("" when absent).
    pub fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or("").to_string()
    }

    /// The raw response, for assertion messages.
    pub fn describe(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// The offset of the first `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Tries to parse a complete response from `buf`; `eof` allows a body delimited by close.
fn parse_raw(buf: &[u8], eof: bool) -> Option<RawResp> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = &buf[..head_end];
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = String::from_utf8_lossy(lines.next()?).into_owned();
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    for l in lines {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let colon = l.iter().position(|&b| b == b':')?;
        let name = String::from_utf8_lossy(&l[..colon]).trim().to_string();
        let value = l[colon + 1..].trim_ascii().to_vec();
        headers.push((name, value));
    }
    let rest = &buf[head_end + 4..];
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    let body = if let Some(len) = get("content-length") {
        let len: usize = len.trim().parse().ok()?;
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if get("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let line_end = pos + find(&rest[pos..], b"\r\n")?;
            let size_str = String::from_utf8_lossy(&rest[pos..line_end]).into_owned();
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            pos = line_end + 2;
            if size == 0 {
                break;
            }
            if rest.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(RawResp {
        status,
        headers,
        body,
        raw: buf.to_vec(),
    })
}

/// Writes `request` bytes as they are and reads one response. Returns `None` when the server
/// closed or reset the connection without a parseable response.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> Option<RawResp> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut s = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("raw connect {addr}: {e}"));
        // The server may answer and close before reading everything (e.g. a header too large).
        let _ = s.write_all(request).await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return parse_raw(&buf, true),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(r) = parse_raw(&buf, false) {
                        return Some(r);
                    }
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("raw request to {addr}: no response within {REQUEST_TIMEOUT:?}"))
}

#[test]
fn raw_parser_handles_lengths_and_chunks() {
    let r = parse_raw(
        b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\nx: y\r\n\r\n{}",
        false,
    )
    .expect("complete");
    assert_eq!((r.status, r.body.as_slice()), (401, &b"{}"[..]));
    assert_eq!(r.header("X").as_deref(), Some("y"));
    assert!(parse_raw(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", false).is_none());
    let r = parse_raw(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        false,
    )
    .expect("chunked");
    assert_eq!(r.body, b"abc");
}
