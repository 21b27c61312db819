//! The worker's keep-alive connections to an HTTP/1.1 upstream: reused request after request
//! (after a streamed body too), one per concurrent request, `pool_max_idle` idle ones kept,
//! closed after `pool_idle_timeout`, none kept with `pool_max_idle = 0`. The upstream is a raw
//! socket server that counts the connections it accepted and the ones the gateway closed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::config;
use crate::common::servers::read_head;
use crate::common::{wait_until, Gateway, Req};

const DEADLINE: Duration = Duration::from_secs(10);

struct Counting {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    /// answers wait for a permit (the concurrency test holds them back)
    gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

/// Each answer: chunked when the path asks for it (`/chunked`), else with a Content-Length.
const PLAIN: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";

impl Counting {
    async fn start(open_gate: bool) -> Counting {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let gate = Arc::new(Semaphore::new(if open_gate {
            Semaphore::MAX_PERMITS
        } else {
            0
        }));
        let (a, c, g) = (accepted.clone(), closed.clone(), gate.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (c, g) = (c.clone(), g.clone());
                tokio::spawn(async move {
                    while let Some(head) = read_head(&mut s).await {
                        let Ok(permit) = g.acquire().await else {
                            return;
                        };
                        permit.forget();
                        let chunked = head.starts_with(b"GET /chunked ");
                        if s.write_all(if chunked { CHUNKED } else { PLAIN })
                            .await
                            .is_err()
                        {
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
            gate,
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
