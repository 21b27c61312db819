//! Worker threads: each runs a current-thread tokio runtime that accepts on its own listeners
//! and serves HTTP/1.1 and HTTP/2 (h2c prior knowledge, or h2 by ALPN over TLS) connections,
//! with upgrades. On a TLS listener the handshake runs in the connection's task, never in the
//! accept loop.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::drain;
use super::first_request::FirstRequest;
use super::listener::Listening;
use super::proxy_protocol::{self, ProxyError};
use super::{ConnInfo, Handler};
use crate::metrics::METRICS;
use crate::tls::server::TlsServer;

/// Connection-level settings shared by all workers.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub max_header_bytes: usize,
    pub header_read_timeout: Option<Duration>,
    pub shutdown_timeout: Duration,
    /// every connection starts with a PROXY protocol header (`server.proxy_protocol`)
    pub proxy_protocol: bool,
    /// HTTP/2 PINGs toward clients (None: off) and how long one may go unanswered
    pub http2_keepalive_interval: Option<Duration>,
    pub http2_keepalive_timeout: Duration,
    /// this worker's share of `server.max_connections` (None: unlimited)
    pub max_connections_per_worker: Option<usize>,
}

/// How the workers stop accepting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Serving,
    /// shutdown: accept what the kernel has already queued (closing a listening socket resets
    /// the connections queued in it), then close the listeners
    Close,
    /// binary upgrade: a successor process holds the same listening sockets and accepts from
    /// them; close this process's copies only (the sockets and their queues live on)
    HandOver,
}

/// The running worker threads (one per entry of the listeners); `shutdown` stops accepting
/// and drains connections.
pub struct WorkerThreads {
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: watch::Sender<Stop>,
}

impl WorkerThreads {
    /// Starts one thread per entry of `listeners`. `handler_for(i)` hands over worker i's
    /// handler; it is called on that worker's thread, inside its runtime, before the worker
    /// accepts — so whatever the handler spawns at `started` (and the connections its pools
    /// open later) lives on that runtime.
    pub fn start<H, F>(
        listeners: Vec<Vec<Listening>>,
        opts: ServeOptions,
        handler_for: F,
    ) -> std::io::Result<WorkerThreads>
    where
        H: Handler,
        F: Fn(usize) -> Arc<H> + Send + Sync + 'static,
    {
        let (stop, stop_rx) = watch::channel(Stop::Serving);
        let handler_for = Arc::new(handler_for);
        let mut threads = Vec::new();
        for (i, socks) in listeners.into_iter().enumerate() {
            let handler_for = handler_for.clone();
            let opts = opts.clone();
            let stop_rx = stop_rx.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("cc-worker-{i}"))
                    .spawn(move || {
                        rt.block_on(async move {
                            let handler = handler_for(i);
                            run_worker(handler, socks, opts, stop_rx).await;
                        });
                    })?,
            );
        }
        Ok(WorkerThreads { threads, stop })
    }

    /// Stops accepting (`how`), lets open connections finish (up to the shutdown timeout:
    /// then requests still open are answered 503 `shutting_down`), joins.
    pub fn shutdown(self, how: Stop) {
        let _ = self.stop.send(how);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// After the shutdown timeout, how long the requests it cut get to have their 503 written.
const CUT_OFF_GRACE: Duration = Duration::from_secs(1);
/// How long a draining worker keeps answering requests on its open HTTP/1 connections (each
/// answer says `Connection: close`) before the graceful drain closes the idle ones: a
/// keep-alive client sends its next request right after an answer, and closing the connection
/// under that request costs it a retry (or, for a client that retries nothing, an error).
const CLOSE_WINDOW: Duration = Duration::from_secs(1);
const CLOSE_POLL: Duration = Duration::from_millis(10);

/// A worker's HTTP/1 + HTTP/2 connection builder. `keep_alive: false` for the connections
/// accepted while closing: each answers the request it came with, `Connection: close`.
fn builder(opts: &ServeOptions, keep_alive: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    {
        let mut h1 = builder.http1();
        h1.timer(TokioTimer::new())
            .keep_alive(keep_alive)
            .max_buf_size(opts.max_header_bytes.max(8192));
        h1.header_read_timeout(opts.header_read_timeout);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(opts.max_header_bytes.min(u32::MAX as usize) as u32)
        // PINGs keep NATs and load balancers from dropping quiet long-lived streams, and
        // find dead clients
        .keep_alive_interval(opts.http2_keepalive_interval)
        .keep_alive_timeout(opts.http2_keepalive_timeout);
    builder
}

/// What every accept loop of a worker shares.
struct Accepting<H> {
    handler: Arc<H>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// for the connections accepted while closing
    last_builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: GracefulShutdown,
    /// held by each connection accepted while closing: all dropped = all of them ended
    last: tokio::sync::mpsc::Sender<()>,
    /// held by every connection until its lingering close ends
    lingering: tokio::sync::mpsc::Sender<()>,
    handshake_timeout: Option<Duration>,
    proxy_protocol: bool,
    /// one permit per open connection (`server.max_connections`); None: unlimited
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

async fn run_worker<H: Handler>(
    handler: Arc<H>,
    socks: Vec<Listening>,
    opts: ServeOptions,
    mut stop: watch::Receiver<Stop>,
) {
    handler.started();
    super::timer::keep_wheel_armed();
    let (cut_tx, cut_rx) = watch::channel(false);
    drain::install(cut_rx);
    let (hold_tx, mut hold_rx) = tokio::sync::mpsc::channel::<()>(1);
    drain::install_hold(hold_tx);
    let (draining_tx, draining_rx) = watch::channel(false);
    drain::install_draining(draining_rx);
    let mut stopping = stop.clone();
    tokio::spawn(async move {
        if stopping.wait_for(|s| *s != Stop::Serving).await.is_ok() {
            let _ = draining_tx.send(true);
        }
    });
    let (last, mut last_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (lingering, mut lingering_rx) = tokio::sync::mpsc::channel::<()>(1);
    let ctx = Arc::new(Accepting {
        handler,
        builder: Arc::new(builder(&opts, true)),
        last_builder: Arc::new(builder(&opts, false)),
        graceful: GracefulShutdown::new(),
        last,
        lingering,
        handshake_timeout: opts.header_read_timeout,
        proxy_protocol: opts.proxy_protocol,
        slots: opts
            .max_connections_per_worker
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
    });
    let mut accepts = tokio::task::JoinSet::new();
    for Listening { socket, tls } in socks {
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register listener");
                continue;
            }
        };
        accepts.spawn(accept_loop(listener, tls, ctx.clone(), stop.clone()));
    }
    let _ = stop.wait_for(|s| *s != Stop::Serving).await;
    drain::set_closing();
    drain::release_hold();
    while accepts.join_next().await.is_some() {}
    // listeners are closed now (or in the successor's hands); drain open connections
    let Ok(ctx) = Arc::try_unwrap(ctx) else {
        tracing::warn!("connections still referenced at shutdown");
        return;
    };
    let Accepting {
        graceful,
        last,
        lingering,
        ..
    } = ctx;
    drop((last, lingering));
    // busy HTTP/1 connections end by themselves now, after their next answer
    let window = CLOSE_WINDOW.min(opts.shutdown_timeout / 4);
    let began = tokio::time::Instant::now();
    while graceful.count() > 0 && began.elapsed() < window {
        tokio::time::sleep(CLOSE_POLL).await;
    }
    // every connection's IO dropped, lingering close included: HTTP connections drained,
    // those accepted while closing answered, upgraded ones (WebSocket tunnels, which hyper's
    // graceful drain no longer sees) ended by their peers, and every `drain::hold` released
    let all_closed = async move {
        graceful.shutdown().await;
        let _ = last_rx.recv().await;
        let _ = lingering_rx.recv().await;
        // L4 connections, connect streams and tunnel agents (`drain::hold`)
        let _ = hold_rx.recv().await;
    };
    tokio::pin!(all_closed);
    if tokio::time::timeout(opts.shutdown_timeout, &mut all_closed)
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown timeout reached with connections still open: open requests are answered 503 shutting_down"
        );
        let _ = cut_tx.send(true);
        let _ = tokio::time::timeout(CUT_OFF_GRACE, &mut all_closed).await;
    }
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    tls: Option<Arc<TlsServer>>,
    ctx: Arc<Accepting<H>>,
    mut stop: watch::Receiver<Stop>,
) {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    loop {
        // at the connection limit, stop accepting until a connection ends: the next ones wait
        // in the kernel's queue (as nginx's worker_connections and HAProxy's maxconn do)
        let slot = match &ctx.slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    METRICS.connections_limited.inc();
                    tracing::debug!("at max_connections: not accepting until a connection ends");
                    tokio::select! {
                        p = slots.clone().acquire_owned() => p.ok(),
                        _ = stop.wait_for(|s| *s != Stop::Serving) => break,
                    }
                }
            },
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s != Stop::Serving) => break,
        };
        match accepted {
            Ok((stream, peer)) => spawn_connection(stream, peer, local, &tls, &ctx, false, slot),
            Err(e) => {
                // EMFILE and the like: back off instead of spinning
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    if *stop.borrow() != Stop::Close {
        return;
    }
    // the connections the kernel completed before this close: accepted and answered (and
    // closed: past the limit, as the kernel already took them), not reset with the socket
    super::listener::close_serving_queue(listener, |s, peer| {
        spawn_connection(s, peer, local, &tls, &ctx, true, None)
    });
}

/// Serves one accepted connection on its own task. `last`: accepted while closing — it
/// answers one request and closes, outside the graceful drain (which would close it before
/// reading the request it came with).
fn spawn_connection<H: Handler>(
    mut stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    tls: &Option<Arc<TlsServer>>,
    ctx: &Arc<Accepting<H>>,
    last: bool,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let _ = stream.set_nodelay(true);
    tcp_keepalive(&stream);
    let mut conn_info = ConnInfo {
        peer,
        local,
        tls: tls.is_some(),
        client_cert: None,
    };
    // the task holds what it needs, not `ctx`: the worker takes `ctx` back whole to drain
    let tls = tls.clone();
    let h = ctx.handler.clone();
    let (handshake_timeout, proxy_protocol) = (ctx.handshake_timeout, ctx.proxy_protocol);
    let watcher = (!last).then(|| ctx.graceful.watcher());
    let held = last.then(|| ctx.last.clone());
    let lingering = ctx.lingering.clone();
    let builder = if last {
        ctx.last_builder.clone()
    } else {
        ctx.builder.clone()
    };
    tokio::spawn(async move {
        let (_held, _slot) = (held, slot);
        METRICS.connections.inc();
        if proxy_protocol {
            match proxy_header(&mut stream, &*h, peer, handshake_timeout).await {
                Ok(Some(client)) => conn_info.peer = client,
                Ok(None) => {}
                Err(e) => {
                    METRICS
                        .proxy_protocol_errors
                        .with_label_values(&[e.reason()])
                        .inc();
                    tracing::debug!(peer = %peer, error = %e, "connection closed");
                    METRICS.connections.dec();
                    return;
                }
            }
        }
        let stream = drain::Lingering::new(stream, lingering);
        match tls {
            None => serve(stream, conn_info, h, &builder, watcher, handshake_timeout).await,
            Some(tls) => {
                if let Some((stream, client_cert)) = tls.accept(stream, handshake_timeout).await {
                    let conn_info = ConnInfo {
                        client_cert,
                        ..conn_info
                    };
                    serve(stream, conn_info, h, &builder, watcher, handshake_timeout).await;
                }
            }
        }
        METRICS.connections.dec();
    });
}

/// The PROXY header of a connection from `peer`, bounded by `timeout`: the client's address
/// (the connection's peer from now on), or `None` to keep `peer`.
async fn proxy_header<H: Handler>(
    stream: &mut tokio::net::TcpStream,
    h: &H,
    peer: std::net::SocketAddr,
    timeout: Option<Duration>,
) -> Result<Option<std::net::SocketAddr>, ProxyError> {
    if !h.trusts_proxy(peer.ip()) {
        return Err(ProxyError::Untrusted);
    }
    let read = proxy_protocol::read_header(stream);
    match timeout {
        Some(t) => tokio::time::timeout(t, read)
            .await
            .unwrap_or(Err(ProxyError::Timeout)),
        None => read.await,
    }
}

/// Serves HTTP on an established (plaintext or TLS) connection until it ends, or until
/// `first_request` (`header_read_timeout`) passes before its first request head is in.
async fn serve<H, IO>(
    io: IO,
    conn_info: ConnInfo,
    h: Arc<H>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Option<Watcher>,
    first_request: Option<Duration>,
) where
    H: Handler,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn_info.peer;
    let arrived = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = arrived.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        seen.store(true, std::sync::atomic::Ordering::Relaxed);
        let http1 = req.version() < http::Version::HTTP_2;
        // `map`, not an `async` block around the handler's future: the block would hold that
        // future twice (capture and await slot) and hyper copies it per request
        h.clone()
            .handle(req, conn_info.clone())
            .map(move |mut resp| {
                // a draining worker's HTTP/1 answers end their connections (see CLOSE_WINDOW)
                if http1
                    && drain::closing()
                    && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, std::convert::Infallible>(resp)
            })
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let result = match watcher {
        Some(w) => FirstRequest::new(w.watch(conn.into_owned()), first_request, arrived).await,
        None => FirstRequest::new(conn, first_request, arrived).await,
    };
    match result {
        // errors on one connection (client gone, bad request) end that connection only
        Some(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Some(Ok(())) => {}
        None => tracing::debug!(peer = %peer, "closed: no request within header_read_timeout"),
    }
}

/// TCP keepalive probes on an accepted connection: a quiet HTTP/1.1 stream or WebSocket
/// (which has no PING of its own) is not dropped by NATs and load balancers, and a vanished
/// peer is found. 30 s idle is under the common 60–350 s NAT and LB idle cuts.
pub(crate) fn tcp_keepalive(stream: &tokio::net::TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}
