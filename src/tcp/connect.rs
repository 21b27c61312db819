//! TCP over WebSocket, the gateway's side: a `connect` route's authorised WebSocket upgrade
//! becomes a byte stream to the route's target. The target is dialled before the `101` is
//! sent, so a client whose target is down gets an HTTP answer, not a WebSocket that closes at
//! once. The stream is then counted, bounded and logged exactly like an L4 route's connection
//! (`cc_gateway_tcp_*{route=<the HTTP route>}`, one `"kind":"tcp"` access-log line).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;

use super::conn::{relay, Conn, Refusal};
use super::target::{self, OpenError};
use super::ws;
use crate::config::TcpTarget;
use crate::gateway::Gateway;
use crate::metrics::TCP_METRICS;

/// How long dialling a `connect` route's target may take (an upstream target uses its own
/// `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Turns the round-robin over upstream targets' endpoints (all `connect` routes share it:
/// fairness per route is not worth a map lookup per stream).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Where a stream comes from and goes to, for its metrics and log line.
pub struct StreamInfo {
    pub gateway: Arc<Gateway>,
    /// the HTTP route's name (the `route` label)
    pub route: String,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub started: Instant,
    /// the route's `idle_timeout` and the end of its `timeout`
    pub idle: Option<Duration>,
    pub deadline: Option<Instant>,
}

/// A dialled target, waiting for the client's upgrade to complete.
pub struct Dialled {
    stream: Box<dyn super::Io>,
    target: String,
}

/// Series of `connect` routes exist from startup at 0, as L4 routes' do.
pub fn register_series(config: &crate::config::Config) {
    for r in config.routes.iter().filter(|r| r.connect.is_some()) {
        for result in [
            "ok",
            Refusal::ConnectFailed.reason(),
            Refusal::TunnelUnavailable.reason(),
        ] {
            TCP_METRICS
                .connections
                .with_label_values(&[&r.name, result]);
        }
        TCP_METRICS.open.with_label_values(&[&r.name]);
    }
}

/// Connects to the route's target (directly, or through a tunnel's agent); a failure is
/// counted and logged as an L4 route's (the HTTP answer is the caller's).
pub async fn dial(info: &StreamInfo, target: &TcpTarget) -> Result<Dialled, OpenError> {
    let conn = info.conn();
    let config = &info.gateway.config;
    let dial = match target::pick(target, config, &NEXT) {
        Ok(d) => d,
        Err(e) => {
            conn.refuse(&info.route, None, Refusal::ConnectFailed);
            return Err(e.into());
        }
    };
    let timeout = match target {
        TcpTarget::Upstream(u) => config
            .upstreams
            .get(*u)
            .map_or(CONNECT_TIMEOUT, |u| u.connect_timeout),
        _ => CONNECT_TIMEOUT,
    };
    match target::open(target, &dial, config, timeout, None).await {
        Ok(stream) => Ok(Dialled {
            stream,
            target: dial,
        }),
        Err(e) => {
            conn.refuse(&info.route, Some(&dial), Refusal::of(&e));
            Err(e)
        }
    }
}

/// Once the client's connection has switched protocols, carries its WebSocket's bytes to the
/// dialled target (in a task of its own, on this worker).
pub fn carry(info: StreamInfo, mut dialled: Dialled, upgrade: OnUpgrade) {
    let hold = crate::engine::drain::hold();
    tokio::spawn(async move {
        let _hold = hold;
        let mut stream = match ws::server(upgrade).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(route = %info.route, error = %e, "the WebSocket upgrade failed");
                return;
            }
        };
        let conn = info.conn();
        relay(
            &conn,
            &info.route,
            &dialled.target,
            &mut stream,
            &mut dialled.stream,
            info.idle,
            info.deadline,
        )
        .await;
        stream.close().await;
    });
}

impl StreamInfo {
    fn conn(&self) -> Conn {
        Conn {
            started: self.started,
            peer: self.peer,
            local: self.local,
            gateway: self.gateway.clone(),
        }
    }
}
