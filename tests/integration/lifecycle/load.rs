//! Constant load for the lifecycle tests: in-test client tasks on real sockets, some reusing
//! keep-alive connections, some opening a new connection per request, each issuing requests
//! back to back and classifying every outcome.
//!
//! - answered: a complete response with the expected status;
//! - unsent: provably never processed — the connection was refused (listeners closed), or
//!   the server ended the connection cleanly (FIN) before any byte of an answer: it closed
//!   an idle keep-alive connection or one it never read from. Clients retry these;
//! - failure: anything else — a reset at any point (the client cannot know whether its
//!   request was processed), a partial or malformed answer, another status, a timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::wait::wait_until;

/// Bound on one request: a gateway that never answers is a failure, not a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Counts {
    answered: AtomicU64,
    unsent: AtomicU64,
    failures: Mutex<Vec<String>>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the load saw, at the end.
#[derive(Debug)]
pub struct Tally {
    pub answered: u64,
    pub unsent: u64,
    pub failures: Vec<String>,
}

enum Outcome {
    Answered { close: bool },
    Unsent,
    Failed(String),
}

impl Load {
    /// Starts `keep_alive` clients that reuse their connection and `fresh` clients that open
    /// one per request, all sending `GET path` to `addr` and expecting 200.
    pub fn start(addr: SocketAddr, keep_alive: usize, fresh: usize, path: &str) -> Load {
        Load::start_with(addr, keep_alive, fresh, 0, path)
    }

    /// Like [`Load::start`], with `idle` more keep-alive clients that pause a few
    /// milliseconds between requests: their connections are often idle, the state in which a
    /// closing server races the next request.
    pub fn start_with(
        addr: SocketAddr,
        keep_alive: usize,
        fresh: usize,
        idle: usize,
        path: &str,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut tasks = Vec::new();
        for i in 0..keep_alive + fresh + idle {
            let reuse = i < keep_alive || i >= keep_alive + fresh;
            // 1 to 4 ms, different per client so their requests do not move in step
            let pause = (i >= keep_alive + fresh)
                .then(|| Duration::from_micros(1000 + 397 * (i as u64 % 8)));
            let (stop, counts) = (stop.clone(), counts.clone());
            let path = path.to_string();
            tasks.push(tokio::spawn(async move {
                client(addr, reuse, pause, &path, &stop, &counts).await;
            }));
        }
        Load {
            stop,
            counts,
            tasks,
        }
    }

    pub fn answered(&self) -> u64 {
        self.counts.answered.load(Ordering::SeqCst)
    }

    pub fn failures(&self) -> Vec<String> {
        self.counts.failures.lock().expect("failures lock").clone()
    }

    /// Waits until `n` more requests have been answered: the load flows (and has flowed
    /// through whatever just happened).
    pub async fn progress(&self, n: u64) {
        let target = self.answered() + n;
        wait_until(
            &format!("{n} more answered requests under load"),
            Duration::from_secs(30),
            || async {
                let got = self.answered();
                if got >= target {
                    Ok(())
                } else {
                    Err(format!(
                        "{got} answered, {} unsent, failures {:?}",
                        self.counts.unsent.load(Ordering::SeqCst),
                        self.failures()
                    ))
                }
            },
        )
        .await;
    }

    /// Stops the clients (each finishes the request it is on) and returns the tally.
    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        Tally {
            answered: self.counts.answered.load(Ordering::SeqCst),
            unsent: self.counts.unsent.load(Ordering::SeqCst),
            failures: self.counts.failures.lock().expect("failures lock").clone(),
        }
    }
}

async fn client(
    addr: SocketAddr,
    reuse: bool,
    pause: Option<Duration>,
    path: &str,
    stop: &AtomicBool,
    counts: &Counts,
) {
    let mut conn: Option<TcpStream> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
        n += 1;
        let reused = conn.is_some();
        let mut stream = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    counts.unsent.fetch_add(1, Ordering::SeqCst);
                    // nothing listens (shut down): do not spin on refusals
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Err(e) => {
                    fail(counts, format!("connect: {e}"));
                    continue;
                }
            },
        };
        let outcome = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            exchange(&mut stream, path, reuse, n),
        )
        .await
        {
            Ok(o) => o,
            Err(_) => Outcome::Failed("no answer in time".into()),
        };
        match outcome {
            Outcome::Answered { close } => {
                counts.answered.fetch_add(1, Ordering::SeqCst);
                if reuse && !close {
                    conn = Some(stream);
                }
            }
            Outcome::Unsent => {
                counts.unsent.fetch_add(1, Ordering::SeqCst);
            }
            Outcome::Failed(why) => fail(
                counts,
                format!(
                    "{} connection, request {n}: {why}",
                    if reused { "reused" } else { "new" }
                ),
            ),
        }
    }
}

fn fail(counts: &Counts, why: String) {
    counts.failures.lock().expect("failures lock").push(why);
}

/// One request and its response on `s`.
async fn exchange(s: &mut TcpStream, path: &str, keep_alive: bool, n: u64) -> Outcome {
    let req = format!(
        "GET {path}?n={n} HTTP/1.1\r\nHost: gw\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    );
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return Outcome::Failed(format!("write: {e}"));
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            // a clean end of stream — unless a reset followed it (the server closed with
            // our request unread): then nothing proves the request was not processed
            Ok(0) if buf.is_empty() => match s.take_error() {
                Ok(None) => return Outcome::Unsent,
                Ok(Some(e)) | Err(e) => {
                    return Outcome::Failed(format!("reset after the end of stream: {e}"))
                }
            },
            Ok(0) => return Outcome::Failed("end of stream inside the response head".into()),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) => {
                return Outcome::Failed(format!("read after {} response bytes: {e}", buf.len()))
            }
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
    };
    let close = header("connection").is_some_and(|v| v == "close");
    let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) else {
        return Outcome::Failed(format!("no content-length: {head}"));
    };
    while buf.len() < head_end + len {
        match s.read(&mut chunk).await {
            Ok(0) => return Outcome::Failed("end of stream inside the body".into()),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) => return Outcome::Failed(format!("read inside the body: {e}")),
        }
    }
    if status != "200" {
        let body = String::from_utf8_lossy(&buf[head_end..]);
        return Outcome::Failed(format!("status {status}: {body}"));
    }
    Outcome::Answered { close }
}
