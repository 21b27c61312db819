//! Upstreams that fail at precise moments, each counting exactly what it saw: a scripted
//! HTTP/1.1 server, a raw-socket server whose keep-alive connections go stale, and an HTTP/2
//! server that refuses streams (REFUSED_STREAM) with the `h2` crate directly.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::common::servers::read_head;

/// Ends the server's tasks when the test drops it.
struct Tasks(Arc<Mutex<Vec<JoinHandle<()>>>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

/// An HTTP/1.1 server answering its name with the next status of its script (then 200), and
/// recording the method and body length of every request it saw.
pub struct Scripted {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, usize)>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
    _tasks: Tasks,
}

impl Scripted {
    pub async fn start(name: &'static str) -> Scripted {
        let (l, addr) = listen().await;
        let seen: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<u16>>> = Arc::default();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (s, t, sc) = (seen.clone(), tasks.clone(), script.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                let (s, script) = (s.clone(), script.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (s, script) = (s.clone(), script.clone());
                    async move {
                        let method = req.method().to_string();
                        let len = req
                            .into_body()
                            .collect()
                            .await
                            .map_or(0, |b| b.to_bytes().len());
                        s.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((method, len));
                        let status = script
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .pop_front()
                            .unwrap_or(200);
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(name.as_bytes())))
                                .expect("response"),
                        )
                    }
                });
                let conn = tokio::spawn(async move {
                    let b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                });
                t.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
        });
        tasks.lock().unwrap_or_else(|e| e.into_inner()).push(accept);
        Scripted {
            addr,
            seen,
            script: sc,
            _tasks: Tasks(tasks),
        }
    }

    /// The statuses of the next requests (200 after them).
    pub fn script(&self, statuses: &[u16]) {
        *self.script.lock().unwrap_or_else(|e| e.into_inner()) = statuses.iter().copied().collect();
    }

    /// (method, body length) of every request seen, in order.
    pub fn seen(&self) -> Vec<(String, usize)> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How a [`Stale`] server ends a connection's second request.
#[derive(Clone, Copy)]
pub enum Cut {
    /// close as a keep-alive timeout would, right after reading the head
    Close,
    /// read the whole request (head and `Content-Length` body), then reset (RST)
    ResetAfterBody,
}

/// Answers the first request of each connection (keep-alive, 200 "ok") and cuts the second
/// one as `cut` says, unanswered. Counts request heads.
pub struct Stale {
    pub addr: SocketAddr,
    heads: Arc<AtomicUsize>,
    _tasks: Tasks,
}

impl Stale {
    pub async fn start(cut: Cut) -> Stale {
        let (l, addr) = listen().await;
        let heads = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (h, t) = (heads.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let h = h.clone();
                let conn = tokio::spawn(async move { stale_conn(s, h, cut).await });
                t.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
        });
        tasks.lock().unwrap_or_else(|e| e.into_inner()).push(accept);
        Stale {
            addr,
            heads,
            _tasks: Tasks(tasks),
        }
    }

    pub fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }
}

async fn stale_conn(mut s: TcpStream, heads: Arc<AtomicUsize>, cut: Cut) {
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    heads.fetch_add(1, Ordering::SeqCst);
    // a body on the first request is not used by these tests
    drop(head);
    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await
        .is_err()
    {
        return;
    }
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    heads.fetch_add(1, Ordering::SeqCst);
    match cut {
        Cut::Close => drop(s),
        Cut::ResetAfterBody => {
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let at = head
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(head.len(), |p| p + 4);
            let mut have = head.len() - at;
            let mut buf = [0u8; 4096];
            while have < len {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => have += n,
                }
            }
            // the whole body was read: the application had it; now the connection resets
            let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
            drop(s);
        }
    }
}

/// An HTTP/2 (h2c) server that answers RST_STREAM(REFUSED_STREAM) to its first `refuse`
/// streams and 200 "h2" to the others. Counts streams.
pub struct Refusing {
    pub addr: SocketAddr,
    streams: Arc<AtomicUsize>,
    refuse: Arc<AtomicUsize>,
    _tasks: Tasks,
}

impl Refusing {
    pub async fn start() -> Refusing {
        let (l, addr) = listen().await;
        let streams = Arc::new(AtomicUsize::new(0));
        let refuse = Arc::new(AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (st, rf, t) = (streams.clone(), refuse.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (st, rf) = (st.clone(), rf.clone());
                let conn = tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(s).await else {
                        return;
                    };
                    while let Some(Ok((_req, mut respond))) = conn.accept().await {
                        st.fetch_add(1, Ordering::SeqCst);
                        let refused = rf
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if refused {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let resp = Response::builder().status(200).body(()).expect("response");
                        if let Ok(mut body) = respond.send_response(resp, false) {
                            let _ = body.send_data(Bytes::from_static(b"h2"), true);
                        }
                    }
                });
                t.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
        });
        tasks.lock().unwrap_or_else(|e| e.into_inner()).push(accept);
        Refusing {
            addr,
            streams,
            refuse,
            _tasks: Tasks(tasks),
        }
    }

    /// Refuses the next `n` streams.
    pub fn refuse(&self, n: usize) {
        self.refuse.store(n, Ordering::SeqCst);
    }

    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}
