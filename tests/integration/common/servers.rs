//! In-test servers on 127.0.0.1 ephemeral ports: JWKS/discovery, echo, SSE, WebSocket echo, slow.
//! They run as tasks on the test's tokio runtime and end with it (or on `stop`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

pub type Body = BoxBody<Bytes, Infallible>;
type BoxFut = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
type Handler = Arc<dyn Fn(Request<Incoming>) -> BoxFut + Send + Sync>;

/// A complete body of `b`.
fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// A `status` response with `v` as its JSON body.
fn json_response(status: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(v.to_string()))
        .expect("building response")
}

/// Abort handles of a server's accept loop and connection tasks.
#[derive(Clone, Default)]
struct Tasks(Arc<Mutex<Vec<AbortHandle>>>);

impl Tasks {
    fn push(&self, h: AbortHandle) {
        self.0.lock().expect("tasks lock").push(h);
    }
    fn abort_all(&self) {
        for h in self.0.lock().expect("tasks lock").drain(..) {
            h.abort();
        }
    }
}

/// A listener on `addr`; panics naming the address when it cannot bind.
async fn bind(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("binding test server on {addr}: {e}"))
}

/// Serves HTTP/1.1 and HTTP/2 (h2c) with `handler` until the returned tasks are aborted.
fn serve(listener: TcpListener, handler: Handler) -> Tasks {
    let tasks = Tasks::default();
    let t = tasks.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let h = handler.clone();
            let conn = tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = h(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
            t.push(conn.abort_handle());
        }
    });
    tasks.push(accept.abort_handle());
    tasks
}

/// Ports handed out by `dead_addr`, held by a bound but not listening socket: connecting is
/// refused, and no other socket (another test's server on port 0) can take the port meanwhile.
static RESERVED: std::sync::Mutex<Vec<(SocketAddr, socket2::Socket)>> =
    std::sync::Mutex::new(Vec::new());

/// An address where nothing listens, reserved for the rest of the test run (see `release`).
pub fn dead_addr() -> SocketAddr {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("binding a probe port");
    let addr = s
        .local_addr()
        .expect("probe port address")
        .as_socket()
        .expect("inet address");
    RESERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((addr, s));
    addr
}

/// Frees a `dead_addr` reservation right before a server binds that address.
pub fn release(addr: SocketAddr) {
    RESERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(a, _)| *a != addr);
}

// ---------------------------------------------------------------------------------------------
// Echo upstream

/// Answers 200 JSON: `server`, `method`, `path`, `query`, `version`, `headers` (lower-case name ->
/// list of values), `body_len`. Counts requests.
pub struct Echo {
    pub addr: SocketAddr,
    pub name: String,
    count: Arc<AtomicUsize>,
    tasks: Tasks,
}

impl Echo {
    /// Starts on an ephemeral port, answering with `server` = `name`.
    pub async fn start(name: &str) -> Echo {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await;
        let addr = listener.local_addr().expect("echo addr");
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let n = name.to_string();
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let c = c.clone();
            let n = n.clone();
            Box::pin(async move {
                c.fetch_add(1, Ordering::SeqCst);
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for (k, v) in &parts.headers {
                    headers
                        .entry(k.as_str().to_string())
                        .or_default()
                        .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
                }
                json_response(
                    200,
                    &json!({
                        "server": n,
                        "method": parts.method.as_str(),
                        "path": parts.uri.path(),
                        "query": parts.uri.query(),
                        "version": format!("{:?}", parts.version),
                        "headers": headers,
                        "body_len": body.len(),
                    }),
                )
            })
        });
        let tasks = serve(listener, handler);
        Echo {
            addr,
            name: name.to_string(),
            count,
            tasks,
        }
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// The values the echo upstream saw for header `name` (lower-case).
pub fn echoed_header(echo_body: &Value, name: &str) -> Vec<String> {
    echo_body["headers"][name.to_ascii_lowercase()]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// JWKS / discovery server

pub struct JwksState {
    pub keys: Vec<Value>,
    /// 200 serves the documents; anything else answers that status for every path.
    pub status: u16,
    pub fetches: usize,
    pub discovery_fetches: usize,
}

/// Serves `GET /jwks` (`{"keys": [...]}`) and `GET /.well-known/openid-configuration`
/// (`issuer` = base URL, `jwks_uri` = base URL + `/jwks`). Counts fetches; can fail or stop.
pub struct Jwks {
    pub addr: SocketAddr,
    state: Arc<Mutex<JwksState>>,
    tasks: Tasks,
}

impl Jwks {
    /// Starts on an ephemeral port serving `keys`.
    pub async fn start(keys: Vec<Value>) -> Jwks {
        Jwks::start_on("127.0.0.1:0".parse().expect("addr"), keys).await
    }

    /// Starts on a given address (e.g. one a gateway already points at).
    pub async fn start_on(addr: SocketAddr, keys: Vec<Value>) -> Jwks {
        Jwks::start_on_with_status(addr, keys, 200).await
    }

    /// Starts on `addr` answering `status` (see [`Jwks::set_status`]) from the first request on.
    pub async fn start_on_with_status(addr: SocketAddr, keys: Vec<Value>, status: u16) -> Jwks {
        release(addr);
        let listener = bind(addr).await;
        let addr = listener.local_addr().expect("jwks addr");
        let state = Arc::new(Mutex::new(JwksState {
            keys,
            status,
            fetches: 0,
            discovery_fetches: 0,
        }));
        let st = state.clone();
        let base = format!("http://{addr}");
        let handler: Handler = Arc::new(move |req: Request<Incoming>| {
            let st = st.clone();
            let base = base.clone();
            Box::pin(async move {
                let mut s = st.lock().expect("jwks state lock");
                match req.uri().path() {
                    "/jwks" => {
                        s.fetches += 1;
                        if s.status != 200 {
                            return json_response(s.status, &json!({"error": "jwks down"}));
                        }
                        json_response(200, &json!({ "keys": s.keys }))
                    }
                    "/.well-known/openid-configuration" => {
                        s.discovery_fetches += 1;
                        if s.status != 200 {
                            return json_response(s.status, &json!({"error": "discovery down"}));
                        }
                        json_response(
                            200,
                            &json!({
                                "issuer": base,
                                "jwks_uri": format!("{base}/jwks"),
                                "id_token_signing_alg_values_supported": ["RS256"],
                                "response_types_supported": ["code"],
                                "subject_types_supported": ["public"],
                            }),
                        )
                    }
                    _ => Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(full("not found"))
                        .expect("404"),
                }
            })
        });
        let tasks = serve(listener, handler);
        Jwks { addr, state, tasks }
    }

    /// `http://127.0.0.1:PORT` (used as the issuer).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `jwks_uri` of this server (base URL + `/jwks`).
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.base_url())
    }

    /// Serves `keys` from the next fetch on.
    pub fn set_keys(&self, keys: Vec<Value>) {
        self.state.lock().expect("jwks state lock").keys = keys;
    }

    /// Answers `status` from the next request on; anything but 200 is a JSON error, no keys.
    pub fn set_status(&self, status: u16) {
        self.state.lock().expect("jwks state lock").status = status;
    }

    /// `GET /jwks` requests received so far.
    pub fn fetches(&self) -> usize {
        self.state.lock().expect("jwks state lock").fetches
    }

    /// Discovery document requests received so far.
    pub fn discovery_fetches(&self) -> usize {
        self.state
            .lock()
            .expect("jwks state lock")
            .discovery_fetches
    }

    /// Stops listening and drops open connections.
    pub fn stop(&self) {
        self.tasks.abort_all();
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

// ---------------------------------------------------------------------------------------------
// SSE upstream

struct ChanBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub const SSE_FIRST: &str = "event: completion\ndata: {\"n\":1,\"text\":\"first\"}\n\n";
pub const SSE_SECOND: &str = "event: completion\ndata: {\"n\":2,\"text\":\"second\"}\n\n";

/// Answers `text/event-stream`: sends [`SSE_FIRST`], waits for `proceed` (fired by the test once
/// the first event got through the gateway), sends [`SSE_SECOND`] and ends the body.
pub struct Sse {
    pub addr: SocketAddr,
    pub proceed: Arc<Notify>,
    finished: Arc<AtomicBool>,
    tasks: Tasks,
}

impl Sse {
    /// Starts on an ephemeral port.
    pub async fn start() -> Sse {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await;
        let addr = listener.local_addr().expect("sse addr");
        let proceed = Arc::new(Notify::new());
        let finished = Arc::new(AtomicBool::new(false));
        let (p, f) = (proceed.clone(), finished.clone());
        let handler: Handler = Arc::new(move |_req: Request<Incoming>| {
            let (p, f) = (p.clone(), f.clone());
            Box::pin(async move {
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(async move {
                    if tx
                        .send(Bytes::from_static(SSE_FIRST.as_bytes()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    p.notified().await;
                    let _ = tx.send(Bytes::from_static(SSE_SECOND.as_bytes())).await;
                    f.store(true, Ordering::SeqCst);
                });
                Response::builder()
                    .status(200)
                    .header("content-type", "text/event-stream")
                    .header("cache-control", "no-cache")
                    .body(ChanBody(rx).boxed())
                    .expect("sse response")
            })
        });
        let tasks = serve(listener, handler);
        Sse {
            addr,
            proceed,
            finished,
            tasks,
        }
    }

    /// Whether the upstream has sent its last event.
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket echo upstream

/// (path, headers) of an upgrade request
pub type SeenUpgrade = (String, BTreeMap<String, String>);

/// Accepts WebSocket upgrades and echoes text and binary messages. Records the path and headers
/// of the last upgrade request it saw.
pub struct WsEcho {
    pub addr: SocketAddr,
    pub last_request: Arc<Mutex<Option<SeenUpgrade>>>,
    tasks: Tasks,
}

impl WsEcho {
    /// Starts on an ephemeral port.
    pub async fn start() -> WsEcho {
        use tokio_tungstenite::tungstenite::handshake::server::{
            Request as WsReq, Response as WsResp,
        };
        use tokio_tungstenite::tungstenite::Message;
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await;
        let addr = listener.local_addr().expect("ws addr");
        let last_request = Arc::new(Mutex::new(None));
        let tasks = Tasks::default();
        let (t, lr) = (tasks.clone(), last_request.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let lr = lr.clone();
                let conn = tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // tungstenite's callback signature
                    let cb = move |req: &WsReq, resp: WsResp| {
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.as_str().to_string(),
                                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                )
                            })
                            .collect();
                        *lr.lock().expect("ws lock") =
                            Some((req.uri().path().to_string(), headers));
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                        if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err())
                        {
                            break;
                        }
                    }
                });
                t.push(conn.abort_handle());
            }
        });
        tasks.push(accept.abort_handle());
        WsEcho {
            addr,
            last_request,
            tasks,
        }
    }
}

impl Drop for WsEcho {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Slow upstream

/// Accepts connections, reads the request, and never answers (holds the socket open).
pub struct Slow {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    tasks: Tasks,
}

impl Slow {
    /// Starts on an ephemeral port.
    pub async fn start() -> Slow {
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await;
        let addr = listener.local_addr().expect("slow addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let tasks = Tasks::default();
        let (t, a) = (tasks.clone(), accepted.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let conn = tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // Read whatever comes; keep the socket open until the peer closes.
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                    std::future::pending::<()>().await;
                });
                t.push(conn.abort_handle());
            }
        });
        tasks.push(accept.abort_handle());
        Slow {
            addr,
            accepted,
            tasks,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Canned raw-socket upstreams

/// Reads one request head (up to the blank line) from `s`; None if the peer closed first.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// An upstream that answers every request head with the bytes of `reply`, verbatim — for
/// answers no well-behaved server library would give. With `hold`, the connection stays open
/// until the peer sends more or closes; without, it is dropped right after the reply.
pub async fn canned(reply: &'static [u8], hold: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await.is_none() {
                    return;
                }
                let _ = s.write_all(reply).await;
                if hold {
                    let _ = s.read(&mut [0u8; 4096]).await;
                }
            });
        }
    });
    (addr, task)
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.0 upstream

/// An HTTP/1.0 backend as `python3 -m http.server` is one: reads a request head, answers
/// `HTTP/1.0 200 OK` with a Content-Length and the request path as the body, then closes the
/// connection (no keep-alive). Counts the requests it answered.
pub struct Http10 {
    pub addr: SocketAddr,
    served: Arc<AtomicUsize>,
    tasks: Tasks,
}

impl Http10 {
    pub async fn start() -> Http10 {
        use tokio::io::AsyncWriteExt;
        let listener = bind("127.0.0.1:0".parse().expect("addr")).await;
        let addr = listener.local_addr().expect("http/1.0 addr");
        let served = Arc::new(AtomicUsize::new(0));
        let tasks = Tasks::default();
        let (t, s) = (tasks.clone(), served.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                let conn = tokio::spawn(async move {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let line = String::from_utf8_lossy(&head);
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let resp = format!(
                        "HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6 Python/3.12\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{path}",
                        path.len()
                    );
                    s.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.write_all(resp.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
                t.push(conn.abort_handle());
            }
        });
        tasks.push(accept.abort_handle());
        Http10 {
            addr,
            served,
            tasks,
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for Http10 {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Self-tests of the harness (no gateway involved): a broken helper must not pass for a gateway bug.

#[cfg(test)]
mod harness_self_tests {
    use super::*;
    use crate::common::client::Req;

    #[tokio::test]
    async fn echo_reports_what_it_received() {
        let echo = Echo::start("e").await;
        let r = Req::post("/a/b?c=d", "hello")
            .header("X-Thing", "1")
            .header("X-Thing", "2")
            .send(echo.addr)
            .await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["server"], "e");
        assert_eq!(v["path"], "/a/b");
        assert_eq!(v["query"], "c=d");
        assert_eq!(v["body_len"], 5);
        assert_eq!(echoed_header(&v, "x-thing"), vec!["1", "2"]);
        let r = Req::get("/h2").send_h2(echo.addr).await;
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_eq!(echo.count(), 2);
    }

    #[tokio::test]
    async fn jwks_serves_counts_fails_and_stops() {
        let jwks = Jwks::start(vec![json!({"kid": "a"})]).await;
        let r = Req::get("/jwks").send(jwks.addr).await;
        assert_eq!(r.json()["keys"][0]["kid"], "a");
        let r = Req::get("/.well-known/openid-configuration")
            .send(jwks.addr)
            .await;
        assert_eq!(r.json()["jwks_uri"], jwks.jwks_uri());
        assert_eq!(r.json()["issuer"], jwks.base_url());
        jwks.set_status(500);
        assert_eq!(Req::get("/jwks").send(jwks.addr).await.status, 500);
        assert_eq!((jwks.fetches(), jwks.discovery_fetches()), (2, 1));
        jwks.stop();
        tokio::task::yield_now().await;
        assert!(
            tokio::net::TcpStream::connect(jwks.addr).await.is_err(),
            "stopped JWKS still accepts"
        );
    }

    #[tokio::test]
    async fn raw_request_reads_a_response() {
        let echo = Echo::start("raw").await;
        let mut bytes = format!("GET /x HTTP/1.1\r\nHost: {}\r\nX-Bin: ", echo.addr).into_bytes();
        bytes.extend_from_slice(b"a\xffb\r\nConnection: close\r\n\r\n");
        let r = crate::common::client::raw_request(echo.addr, &bytes)
            .await
            .expect("response");
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.json()["path"], "/x");
    }

    #[tokio::test]
    async fn sse_waits_for_proceed() {
        let sse = Sse::start().await;
        let stream = tokio::net::TcpStream::connect(sse.addr)
            .await
            .expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .uri("/")
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .expect("req");
        let mut body = sender.send_request(req).await.expect("resp").into_body();
        let f = body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert_eq!(&f[..], SSE_FIRST.as_bytes());
        assert!(!sse.finished());
        sse.proceed.notify_one();
        let f = body
            .frame()
            .await
            .expect("frame")
            .expect("ok")
            .into_data()
            .expect("data");
        assert_eq!(&f[..], SSE_SECOND.as_bytes());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn ws_echo_echoes() {
        use tokio_tungstenite::tungstenite::Message;
        let ws = WsEcho::start().await;
        let stream = tokio::net::TcpStream::connect(ws.addr)
            .await
            .expect("connect");
        let (mut c, _) = tokio_tungstenite::client_async(format!("ws://{}/p", ws.addr), stream)
            .await
            .expect("ws handshake");
        c.send(Message::text("hi")).await.expect("send");
        assert_eq!(
            c.next().await.expect("msg").expect("ok"),
            Message::text("hi")
        );
        assert_eq!(
            ws.last_request
                .lock()
                .expect("lock")
                .as_ref()
                .expect("seen")
                .0,
            "/p"
        );
    }

    #[test]
    fn forged_tokens_are_well_formed() {
        use crate::common::tokens::*;
        let key = shared_rsa_key();
        let pem = rsa_public_pem(&key);
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\nMIIBIjAN"),
            "{pem}"
        );
        let t = hmac_token(
            "HS256",
            &json!({"alg": "HS256"}),
            &json!({"a": 1}),
            pem.as_bytes(),
        );
        let (h, p, s) = segments(&t);
        assert_eq!(decode_segment(&h)["alg"], "HS256");
        assert_eq!(decode_segment(&p)["a"], 1);
        assert_eq!(unb64(&s).len(), 32);
    }
}
