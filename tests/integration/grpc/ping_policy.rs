//! A strict gRPC server's PING policy, emulated: an HTTP/2 frame relay in front of the tonic
//! upstream (tonic enforces no ping policy) that applies grpc-go's keepalive enforcement with
//! its defaults — and C-core's, which is the same — to the PINGs the gateway sends:
//!
//! - a PING that arrives after the server sent DATA or HEADERS resets the strikes;
//! - otherwise a PING less than `min_time` (default 5 minutes) after the previous one is a
//!   strike (the first PING of a connection never is);
//! - more than 2 strikes: `GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings")` and the connection is
//!   closed.
//!
//! The tests here use a short `min_time` and intervals around it; `streams.rs` runs the real
//! 5-minute policy against the default configuration over a 120 s silence.

use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::common::h2frame::{read_frame, Frame, ACK, DATA, GOAWAY, HEADERS, PING, PREFACE};

const ENHANCE_YOUR_CALM: u32 = 0xb;
/// grpc-go's `maxPingStrikes`, C-core's `GRPC_ARG_HTTP2_MAX_PING_STRIKES` default
const MAX_PING_STRIKES: u32 = 2;

/// What the policy saw, over all connections.
#[derive(Default)]
pub(crate) struct Seen {
    /// PINGs (not ACKs) received from the gateway
    pub(crate) pings: AtomicUsize,
    /// GOAWAY too_many_pings sent
    pub(crate) goaways: AtomicUsize,
    /// wakes a test waiting for either counter to move
    pub(crate) changed: Notify,
}

/// The relay: the gateway connects to `addr`, each connection is relayed to `upstream`.
pub(crate) struct StrictServer {
    pub(crate) addr: SocketAddr,
    pub(crate) seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StrictServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StrictServer {
    pub(crate) async fn start(upstream: SocketAddr, min_time: Duration) -> StrictServer {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, min_time, s.clone()));
            }
        });
        StrictServer { addr, seen, task }
    }

    pub(crate) fn pings(&self) -> usize {
        self.seen.pings.load(Ordering::SeqCst)
    }

    pub(crate) fn goaways(&self) -> usize {
        self.seen.goaways.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `cond` holds, woken by each PING and GOAWAY.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        cond: impl Fn(&Self) -> bool,
    ) {
        tokio::time::timeout(within, async {
            loop {
                let changed = self.seen.changed.notified();
                if cond(self) {
                    return;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: not within {within:?} (pings {}, goaways {})",
                self.pings(),
                self.goaways()
            )
        });
    }
}

/// The policy's state for one connection.
struct Policy {
    /// the server sent DATA or HEADERS since the last PING
    reset: bool,
    strikes: u32,
    last_ping: Option<Instant>,
    /// the highest stream the client opened (GOAWAY's last-stream-id)
    last_stream: u32,
}

async fn relay(client: TcpStream, server: TcpStream, min_time: Duration, seen: Arc<Seen>) {
    let (mut cr, cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let cw = Arc::new(tokio::sync::Mutex::new(cw));
    let policy = Arc::new(Mutex::new(Policy {
        reset: false,
        strikes: 0,
        last_ping: None,
        last_stream: 0,
    }));

    // server → gateway, frame by frame (so a GOAWAY can be put between two frames)
    let down = {
        let (cw, policy) = (cw.clone(), policy.clone());
        tokio::spawn(async move {
            while let Some(Frame { head, payload }) = read_frame(&mut sr).await {
                if head[3] == DATA || head[3] == HEADERS {
                    policy.lock().expect("policy").reset = true;
                }
                let mut w = cw.lock().await;
                if w.write_all(&head).await.is_err() || w.write_all(&payload).await.is_err() {
                    return;
                }
            }
            let _ = cw.lock().await.shutdown().await;
        })
    };

    // gateway → server: the preface, then frames, each PING judged by the policy
    let mut preface = [0u8; PREFACE.len()];
    if cr.read_exact(&mut preface).await.is_err() || sw.write_all(&preface).await.is_err() {
        down.abort();
        return;
    }
    while let Some(f) = read_frame(&mut cr).await {
        let (kind, stream) = (f.kind(), f.stream());
        let Frame { head, payload } = f;
        let too_many = {
            let mut p = policy.lock().expect("policy");
            if kind == HEADERS {
                p.last_stream = p.last_stream.max(stream);
            }
            if kind == PING && head[4] & ACK == 0 {
                let now = Instant::now();
                if std::mem::take(&mut p.reset) {
                    p.strikes = 0;
                } else if p
                    .last_ping
                    .is_some_and(|t| now.duration_since(t) < min_time)
                {
                    p.strikes += 1;
                }
                p.last_ping = Some(now);
                (p.strikes > MAX_PING_STRIKES).then_some(p.last_stream)
            } else {
                None
            }
        };
        if kind == PING && head[4] & ACK == 0 {
            seen.pings.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(last_stream) = too_many {
            let debug = b"too_many_pings";
            let mut frame = Vec::with_capacity(9 + 8 + debug.len());
            let len = 8 + debug.len();
            frame.extend_from_slice(&[0, 0, len as u8, GOAWAY, 0, 0, 0, 0, 0]);
            frame.extend_from_slice(&last_stream.to_be_bytes());
            frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
            frame.extend_from_slice(debug);
            {
                let mut w = cw.lock().await;
                let _ = w.write_all(&frame).await;
                let _ = w.shutdown().await;
            }
            seen.goaways.fetch_add(1, Ordering::SeqCst);
            seen.changed.notify_waiters();
            down.abort();
            return;
        }
        seen.changed.notify_waiters();
        if sw.write_all(&head).await.is_err() || sw.write_all(&payload).await.is_err() {
            break;
        }
    }
    down.abort();
}

/// A gateway whose gRPC route goes through the strict server, with `upstream_keys` on the
/// upstream; a tonic client (h2c) that has opened a `Held` stream and read its first message.
async fn held_stream_through(
    strict: &StrictServer,
    upstream_keys: &str,
) -> (Fixture, Streaming<Msg>) {
    let extra = grpc_route(strict.addr).replace(
        "protocol = \"h2c\"",
        &format!("protocol = \"h2c\"\n{upstream_keys}"),
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let mut g = h2c_client(fx.gw.addr).await;
    g.ready().await.unwrap();
    let mut s = g
        .server_streaming(
            Request::new(msg("held")),
            PathAndQuery::from_static("/test.Echo/Held"),
            codec(),
        )
        .await
        .expect("Held call")
        .into_inner();
    assert_eq!(s.message().await.unwrap().unwrap().text, "held-1");
    (fx, s)
}

const MIN_TIME: Duration = Duration::from_millis(400);

#[tokio::test]
async fn pings_closer_than_a_strict_servers_min_time_draw_too_many_pings() {
    // the control: without it the test below could pass with a policy that never fires
    let up = start_upstream().await;
    let strict = StrictServer::start(up.addr, MIN_TIME).await;
    let (_fx, mut s) = held_stream_through(&strict, "http2_keepalive_interval = \"50ms\"").await;
    strict
        .wait_for("GOAWAY too_many_pings", Duration::from_secs(10), |s| {
            s.goaways() == 1
        })
        .await;
    // the call does not survive it
    let end = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("the stream ended in time");
    assert!(end.is_err(), "{end:?}");
}

#[tokio::test]
async fn pings_at_a_strict_servers_min_time_never_strike() {
    // hyper times each PING from the last frame read, the previous PONG included: at the
    // server, PINGs at the configured interval are always more than that interval apart. This
    // is what makes the default upstream interval (5m) safe with a default gRPC server (5m).
    let up = start_upstream().await;
    let strict = StrictServer::start(up.addr, MIN_TIME).await;
    let (_fx, mut s) = held_stream_through(
        &strict,
        &format!("http2_keepalive_interval = \"{}ms\"", MIN_TIME.as_millis()),
    )
    .await;
    // 5 PINGs on the silent stream: 4 chances to strike, 3 strikes would have ended it
    strict
        .wait_for("5 PINGs", Duration::from_secs(20), |s| {
            s.pings() >= 5 || s.goaways() > 0
        })
        .await;
    assert_eq!(strict.goaways(), 0, "after {} PINGs", strict.pings());
    up.proceed.notify_one();
    assert_eq!(s.message().await.unwrap().unwrap().text, "held-2");
    assert!(s.message().await.unwrap().is_none(), "ends OK");
    assert_eq!(strict.goaways(), 0);
}
