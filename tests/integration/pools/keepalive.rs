//! The worker's keep-alive connections to an HTTP/1.1 upstream: reused request after request
//! (after a streamed body too), one per concurrent request, `pool_max_idle` idle ones kept,
//! closed after `pool_idle_timeout`, none kept with `pool_max_idle = 0`, and one that carried
//! a long stream back in use once the stream ended. The upstream is a raw socket server that
//! counts the connections it accepted and the ones the gateway closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use super::config;
use crate::common::servers::read_head;
use crate::common::{wait_until, Gateway, Req};

const DEADLINE: Duration = Duration::from_secs(10);

struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    /// request heads read
    heads: Arc<AtomicUsize>,
    /// answers wait for a permit (the concurrency test holds them back)
    gate: Arc<Semaphore>,
    /// `/stream` sends its head and a first chunk, then the rest once notified
    stream_end: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

/// Each answer: chunked when the path asks for it (`/chunked`), else with a Content-Length.
const PLAIN: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n";
const STREAM_END: &[u8] = b"1\r\nk\r\n0\r\n\r\n";

impl Counting {
    async fn start(open_gate: bool) -> Counting {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let heads = Arc::new(AtomicUsize::new(0));
        let stream_end = Arc::new(Notify::new());
        let gate = Arc::new(Semaphore::new(if open_gate {
            Semaphore::MAX_PERMITS
        } else {
            0
        }));
        let (a, c, h, g, n) = (
            accepted.clone(),
            closed.clone(),
            heads.clone(),
            gate.clone(),
            stream_end.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (c, h, g, n) = (c.clone(), h.clone(), g.clone(), n.clone());
                tokio::spawn(async move {
                    while let Some(head) = read_head(&mut s).await {
                        h.fetch_add(1, Ordering::SeqCst);
                        let Ok(permit) = g.acquire().await else {
                            return;
                        };
                        permit.forget();
                        let written = if head.starts_with(b"GET /stream ") {
                            let first = s.write_all(STREAM_HEAD).await;
                            n.notified().await;
                            match first {
                                Ok(()) => s.write_all(STREAM_END).await,
                                e => e,
                            }
                        } else if head.starts_with(b"GET /chunked ") {
                            s.write_all(CHUNKED).await
                        } else {
                            s.write_all(PLAIN).await
                        };
                        if written.is_err() {
                            break;
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Counting {
            addr,
            accepted,
            closed,
            heads,
            gate,
            stream_end,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    async fn wait_closed(&self, n: usize) {
        wait_until(
            &format!("{n} upstream connections closed"),
            DEADLINE,
            || async {
                match self.closed() {
                    c if c == n => Ok(()),
                    c => Err(format!("{c} closed, {} accepted", self.accepted())),
                }
            },
        )
        .await
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn gateway(dir: &std::path::Path, up: &Counting, pool_keys: &str) -> Gateway {
    let upstreams = format!(
        "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{}\"]\n{pool_keys}\n",
        up.addr
    );
    Gateway::start(&config(dir, "", &upstreams)).await
}

async fn ok(gw: &Gateway, path: &str) {
    let r = gw.send(Req::get(path)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.text(), "ok");
}

#[tokio::test]
async fn one_connection_carries_request_after_request() {
    let dir = tempfile::tempdir().unwrap();
    let up = Counting::start(true).await;
    let gw = gateway(dir.path(), &up, "").await;
    for path in ["/a", "/chunked", "/b", "/chunked", "/c"] {
        ok(&gw, path).await;
    }
    assert_eq!(up.accepted(), 1, "five requests, one upstream connection");
    assert_eq!(up.closed(), 0);
}

#[tokio::test]
async fn concurrent_requests_get_a_connection_each_and_pool_max_idle_of_them_stay() {
    let dir = tempfile::tempdir().unwrap();
    let up = Counting::start(false).await;
    let gw = Arc::new(gateway(dir.path(), &up, "pool_max_idle = 2").await);
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let gw = gw.clone();
            tokio::spawn(async move { ok(&gw, &format!("/c{i}")).await })
        })
        .collect();
    // all six heads are in before any answer goes out: six connections
    wait_until("six upstream connections", DEADLINE, || async {
        match up.accepted() {
            6 => Ok(()),
            n => Err(format!("{n} accepted")),
        }
    })
    .await;
    up.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    for t in tasks {
        t.await.unwrap();
    }
    // four of them are closed, two stay for the next requests
    up.wait_closed(4).await;
    for path in ["/d", "/e", "/f"] {
        ok(&gw, path).await;
    }
    assert_eq!(
        up.accepted(),
        6,
        "the kept connections served the later requests"
    );
    assert_eq!(up.closed(), 4);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_pool_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let up = Counting::start(true).await;
    let gw = gateway(dir.path(), &up, "pool_idle_timeout = \"300ms\"").await;
    ok(&gw, "/a").await;
    up.wait_closed(1).await;
    ok(&gw, "/b").await;
    assert_eq!(up.accepted(), 2, "the next request opened a new connection");
}

#[tokio::test]
async fn an_answer_slower_than_pool_idle_timeout_keeps_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let up = Counting::start(false).await;
    let gw = Arc::new(gateway(dir.path(), &up, "pool_idle_timeout = \"300ms\"").await);
    let slow = {
        let gw = gw.clone();
        tokio::spawn(async move { ok(&gw, "/slow").await })
    };
    wait_until("the request at the upstream", DEADLINE, || async {
        match up.heads.load(Ordering::SeqCst) {
            1 => Ok(()),
            n => Err(format!("{n} heads")),
        }
    })
    .await;
    // held longer than pool_idle_timeout (the time passing is the condition, not a
    // synchronisation), then answered
    tokio::time::sleep(Duration::from_millis(500)).await;
    up.gate.add_permits(2);
    slow.await.unwrap();
    ok(&gw, "/next").await;
    assert_eq!(
        up.accepted(),
        1,
        "the slow answer's connection served the next request"
    );
}

#[tokio::test]
async fn pool_max_idle_0_keeps_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let up = Counting::start(true).await;
    let gw = gateway(dir.path(), &up, "pool_max_idle = 0").await;
    for path in ["/a", "/chunked", "/b"] {
        ok(&gw, path).await;
    }
    assert_eq!(up.accepted(), 3, "a connection per request");
    up.wait_closed(3).await;
}

#[tokio::test]
async fn a_connection_busy_with_a_long_stream_is_used_again_once_the_stream_ended() {
    let dir = tempfile::tempdir().unwrap();
    let up = Counting::start(false).await;
    let gw = Arc::new(gateway(dir.path(), &up, "").await);
    up.gate.add_permits(2); // the stream and /a
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut stream, b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // busy past the gateway's one-second mark: the next checkout parks that connection and
    // opens another (the time passing is the condition here, not a synchronisation)
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ok(&gw, "/a").await;
    assert_eq!(up.accepted(), 2);
    up.stream_end.notify_one();
    let rest = read_until(&mut stream, b"0\r\n\r\n").await;
    assert!(rest.contains('k'), "{rest:?}");
    // the parked one is idle again: two requests held at the upstream at once find the two
    // connections, not a third
    let held: Vec<_> = ["/b", "/c"]
        .into_iter()
        .map(|p| {
            let gw = gw.clone();
            tokio::spawn(async move { ok(&gw, p).await })
        })
        .collect();
    wait_until("both requests at the upstream", DEADLINE, || async {
        match up.heads.load(Ordering::SeqCst) {
            4 => Ok(()),
            n => Err(format!("{n} heads, {} connections", up.accepted())),
        }
    })
    .await;
    assert_eq!(up.accepted(), 2, "no third connection");
    up.gate.add_permits(2);
    for t in held {
        t.await.unwrap();
    }
}

/// Reads from `s` until what was read contains `end` (within the deadline).
async fn read_until(s: &mut tokio::net::TcpStream, end: &[u8]) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        while !got.windows(end.len()).any(|w| w == end) {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {end:?} in {got:?}"));
    String::from_utf8_lossy(&got).into_owned()
}
