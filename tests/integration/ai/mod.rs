//! AI usage end to end: a route with `kind = "ai"` in front of a raw-socket upstream that
//! plays provider fixtures (tests/integration/ai/fixtures, shared with the unit tests of
//! `src/usage`) in awkward pieces, in lockstep with a raw client — each piece is sent only
//! once the client has received every byte before it, so the gateway really sees those read
//! boundaries (mid-event, mid-UTF-8 character, between `\r` and `\n`).

mod budgets;
mod usage;

use std::net::SocketAddr;

use serde_json::Value;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common::servers::read_head;
use crate::common::wait::{wait_until, DEADLINE};
use crate::common::*;

pub fn fixture(name: &str) -> Vec<u8> {
    let p = format!(
        "{}/tests/integration/ai/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// What the upstream does next on the current response.
pub enum Step {
    /// one HTTP chunk with these bytes, flushed
    Piece(Vec<u8>),
    /// the last chunk: the response ends, the connection stays for the next request
    End,
    /// drop the connection mid-response
    Close,
}

/// An upstream whose responses the test plays step by step. Each request takes the next
/// script queued with [`Stepped::respond`].
pub struct Stepped {
    pub addr: SocketAddr,
    scripts: mpsc::UnboundedSender<(String, mpsc::UnboundedReceiver<Step>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Stepped {
    pub async fn start() -> Stepped {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (scripts, rx) = mpsc::unbounded_channel();
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, rx.clone()));
            }
        });
        Stepped {
            addr,
            scripts,
            task,
        }
    }

    /// Queues the next response (status 200, this content type, chunked): returns the handle
    /// that plays its body.
    pub fn respond(&self, content_type: &str) -> mpsc::UnboundedSender<Step> {
        let (tx, rx) = mpsc::unbounded_channel();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        self.scripts.send((head, rx)).expect("upstream task alive");
        tx
    }
}

impl Drop for Stepped {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Scripts = std::sync::Arc<
    tokio::sync::Mutex<mpsc::UnboundedReceiver<(String, mpsc::UnboundedReceiver<Step>)>>,
>;

async fn serve(mut s: TcpStream, scripts: Scripts) {
    // requests carry no body here (an empty POST), so the head is the whole request
    while read_head(&mut s).await.is_some() {
        let Some((head, mut steps)) = scripts.lock().await.recv().await else {
            return;
        };
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        while let Some(step) = steps.recv().await {
            let bytes = match step {
                Step::Piece(p) => {
                    let mut b = format!("{:x}\r\n", p.len()).into_bytes();
                    b.extend_from_slice(&p);
                    b.extend_from_slice(b"\r\n");
                    b
                }
                Step::End => b"0\r\n\r\n".to_vec(),
                Step::Close => return,
            };
            if s.write_all(&bytes).await.is_err() || s.flush().await.is_err() {
                return;
            }
        }
    }
}

/// A raw HTTP/1.1 client that decodes a chunked response body as it arrives.
pub struct Client {
    s: TcpStream,
    raw: Vec<u8>,
    pub status: u16,
    pub body: Vec<u8>,
    /// bytes left in the current chunk (None: a size line is next)
    left: Option<usize>,
    pub ended: bool,
}

impl Client {
    /// Sends `POST path` (an empty body) with this request id and reads the response head.
    pub async fn post(addr: SocketAddr, path: &str, request_id: &str) -> Client {
        Client::request(addr, "POST", path, request_id).await
    }

    /// Sends `method path` (an empty body) with this request id and reads the response head.
    pub async fn request(addr: SocketAddr, method: &str, path: &str, request_id: &str) -> Client {
        let mut s = TcpStream::connect(addr).await.expect("connect to gateway");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nX-Request-Id: {request_id}\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send request");
        let mut c = Client {
            s,
            raw: Vec::new(),
            status: 0,
            body: Vec::new(),
            left: None,
            ended: false,
        };
        let end = loop {
            if let Some(i) = c.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(c.fill().await, "gateway closed before the response head");
        };
        let head = String::from_utf8_lossy(&c.raw[..end]).into_owned();
        c.status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        c.raw.drain(..end);
        c
    }

    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(DEADLINE, self.s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Ok(_) => false,
            Err(_) => panic!("no bytes from the gateway for {DEADLINE:?}"),
        }
    }

    /// Decodes what is buffered.
    fn decode(&mut self) {
        loop {
            match self.left {
                Some(0) => {
                    if self.raw.len() < 2 {
                        return;
                    }
                    assert_eq!(&self.raw[..2], b"\r\n", "chunk framing");
                    self.raw.drain(..2);
                    self.left = None;
                }
                Some(n) => {
                    let take = n.min(self.raw.len());
                    if take == 0 {
                        return;
                    }
                    self.body.extend(self.raw.drain(..take));
                    self.left = Some(n - take);
                }
                None => {
                    let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                        return;
                    };
                    let line = String::from_utf8_lossy(&self.raw[..i]).into_owned();
                    let size = usize::from_str_radix(line.trim(), 16).expect("chunk size");
                    self.raw.drain(..i + 2);
                    if size == 0 {
                        self.ended = true;
                        return;
                    }
                    self.left = Some(size);
                }
            }
        }
    }

    /// Reads until the body has `n` bytes.
    pub async fn until(&mut self, n: usize) {
        self.decode();
        while self.body.len() < n {
            assert!(
                !self.ended,
                "body ended at {} of {n} bytes",
                self.body.len()
            );
            assert!(
                self.fill().await,
                "connection closed at {} of {n} bytes",
                self.body.len()
            );
            self.decode();
        }
    }

    /// Reads to the end of the body.
    pub async fn read_to_end(&mut self) {
        self.decode();
        while !self.ended {
            assert!(self.fill().await, "connection closed before the body's end");
            self.decode();
        }
    }
}

/// Plays `body` as `pieces` through `up`, in lockstep with `client`; ends the response.
pub async fn play(up: &mpsc::UnboundedSender<Step>, client: &mut Client, pieces: &[&[u8]]) {
    let mut sent = 0;
    for p in pieces {
        sent += p.len();
        up.send(Step::Piece(p.to_vec())).expect("upstream alive");
        client.until(sent).await;
    }
    up.send(Step::End).expect("upstream alive");
    client.read_to_end().await;
}

/// Cuts `all` at `cuts` (offsets, ascending).
pub fn cut<'a>(all: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        out.push(&all[at..c]);
        at = c;
    }
    out.push(&all[at..]);
    out.retain(|p| !p.is_empty());
    out
}

/// The access-log line of `request_id`, once written.
pub async fn log_line(fx: &Fixture, request_id: &str) -> Value {
    let path = fx.access_log.clone();
    let id = request_id.to_string();
    wait_until(&format!("the access-log line of {id}"), DEADLINE, || {
        let (path, id) = (path.clone(), id.clone());
        async move {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["request_id"] == id.as_str())
                .ok_or_else(|| format!("{} lines so far", text.lines().count()))
        }
    })
    .await
}

/// Cut points that split `all` every `every` bytes and also inside each 4-byte UTF-8
/// character and between each `\r` and `\n`.
pub fn awkward(all: &[u8], every: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (every..all.len()).step_by(every).collect();
    for (i, w) in all.windows(2).enumerate() {
        if w == b"\r\n" {
            cuts.push(i + 1);
        }
    }
    for (i, b) in all.iter().enumerate() {
        if *b >= 0xF0 {
            cuts.extend([i + 1, i + 2, i + 3]);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Streams `body` through the gateway in awkward pieces; asserts the client got exactly it.
pub async fn through(fx: &Fixture, up: &Stepped, ct: &str, body: &[u8], id: &str) -> Value {
    let script = up.respond(ct);
    let mut c = Client::post(fx.gw.addr, "/llm/v1/chat/completions", id).await;
    assert_eq!(c.status, 200);
    play(&script, &mut c, &cut(body, &awkward(body, 37))).await;
    assert!(
        c.body == body,
        "{id}: the client got different bytes:\n{}",
        String::from_utf8_lossy(&c.body)
    );
    log_line(fx, id).await
}

/// A fixture with a public `kind = "ai"` route `/llm/` in front of `up`, and `[[prices]]`.
pub async fn ai_fixture(up: SocketAddr) -> Fixture {
    ai_fixture_with(up, String::new()).await
}

/// [`ai_fixture`] with a `[budgets]` table.
pub async fn ai_fixture_with(up: SocketAddr, budgets: String) -> Fixture {
    Fixture::with(Opts {
        budgets,
        extra: format!(
            r#"{llm_route}
[[prices]]
model = "gpt-4o*"
input = 2.5
output = 10
cache_read = 1.25

[[prices]]
model = "claude-sonnet-*"
input = 3
output = 15
cache_read = 0.3
cache_write = 3.75
"#,
            llm_route = crate::common::llm::llm_route(up)
        ),
        ..Opts::default()
    })
    .await
}
