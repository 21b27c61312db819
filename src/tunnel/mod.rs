//! Outbound tunnels (`[[tunnels]]`): an agent inside a private network dials *out* to the
//! gateway (`cc-gateway tunnel`), and the gateway carries client streams to the services it
//! exposes over that one connection. The gateway never connects into the agent's network.
//!
//! The connection is a WebSocket (so it passes every proxy and load balancer an HTTPS request
//! does, and is authenticated like any request: the agent's token), and over it HTTP/2 — hyper
//! on both ends, the gateway as the HTTP/2 *client*: each stream is a `CONNECT <service>:1`
//! the agent answers `200` after it reached the service, then the stream's DATA frames carry the
//! bytes. HTTP/2 rather than `yamux` because it is already in the tree (hyper, h2), its flow
//! control bounds what each stream and the connection may have in flight (back pressure per
//! stream: one slow client never stalls the others), `END_STREAM` is half-close, and its PING
//! keeps the connection alive through NATs and detects a dead agent.
//!
//! [`Registry`]: the connected agents of each tunnel, shared by all workers (an agent's
//! connection is driven on the worker that accepted it; streams are opened from any worker
//! and copied on the worker of their client). [`open`] picks an agent round-robin and fails
//! over to the next when one's connection is gone.

pub mod accept;
pub mod agent;
pub mod metrics;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::runtime::Handle;

use metrics::TUNNEL_METRICS;

/// HTTP/2 windows on both ends: per stream (what one slow reader can leave in flight) and per
/// connection (what all streams of one agent can).
pub(crate) const STREAM_WINDOW: u32 = 256 * 1024;
pub(crate) const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// PINGs both ways: NATs keep the connection, and a vanished agent is found within
/// interval + timeout.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an agent may take to answer a stream's `CONNECT` (it connects to its service
/// first).
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// The gateway's request to an agent to dial again (it is draining).
pub(crate) const RECONNECT_URI: &str = "http://agent/_reconnect";

/// A stream to a service behind a tunnel: bytes both ways, half-close as `END_STREAM`.
pub type TunnelStream = TokioIo<hyper::upgrade::Upgraded>;

/// Why a stream could not be opened (the `tunnel_streams_total` result).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no agent of tunnel {0} is connected")]
    Unavailable(String),
    #[error("no agent of tunnel {tunnel} exposes {service:?}")]
    UnknownService { tunnel: String, service: String },
    #[error("the agent of tunnel {tunnel} could not reach {service:?}")]
    ConnectFailed { tunnel: String, service: String },
    #[error("tunnel {tunnel}: {detail}")]
    Error { tunnel: String, detail: String },
}

impl OpenError {
    pub fn result(&self) -> &'static str {
        match self {
            OpenError::Unavailable(_) => "unavailable",
            OpenError::UnknownService { .. } => "unknown_service",
            OpenError::ConnectFailed { .. } => "connect_failed",
            OpenError::Error { .. } => "error",
        }
    }
}

/// One connected agent.
struct Agent {
    id: u64,
    send: SendRequest<Empty<Bytes>>,
    /// the worker driving the agent's connection: a stream carried there crosses no thread
    home: Handle,
}

/// The connected agents of every tunnel.
#[derive(Default)]
pub struct Registry {
    agents: Mutex<HashMap<String, Vec<Agent>>>,
    next: AtomicUsize,
    ids: AtomicU64,
}

/// The one registry: agents stay connected across reloads.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

impl Registry {
    /// Adds an agent; the returned id removes it.
    fn add(&self, tunnel: &str, send: SendRequest<Empty<Bytes>>) -> u64 {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let mut map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(tunnel.to_string()).or_default().push(Agent {
            id,
            send,
            home: Handle::current(),
        });
        TUNNEL_METRICS.agents.with_label_values(&[tunnel]).inc();
        id
    }

    fn remove(&self, tunnel: &str, id: u64) {
        let mut map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(tunnel) {
            let before = list.len();
            list.retain(|a| a.id != id);
            if list.len() < before {
                TUNNEL_METRICS.agents.with_label_values(&[tunnel]).dec();
            }
        }
    }

    /// The live agents' senders, starting at the next in turn, those driven by this worker
    /// first (cloned out: the lock is never held across an await). A stream's bytes pass
    /// between its client's task and the agent connection's task; on one worker that is a
    /// local wake-up, across workers a thread wake-up per message each way, which cost a
    /// quarter of the tunnel's throughput when measured (bench/tcp.sh).
    fn candidates(&self, tunnel: &str) -> Vec<SendRequest<Empty<Bytes>>> {
        let map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get(tunnel) else {
            return Vec::new();
        };
        let live: Vec<&Agent> = list.iter().filter(|a| !a.send.is_closed()).collect();
        if live.is_empty() {
            return Vec::new();
        }
        let here = Handle::try_current().ok().map(|h| h.id());
        let start = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
        let mut turn: Vec<&Agent> = (0..live.len())
            .map(|i| live[(start + i) % live.len()])
            .collect();
        // stable: the turn order stays among the local agents and among the others
        turn.sort_by_key(|a| Some(a.home.id()) != here);
        turn.into_iter().map(|a| a.send.clone()).collect()
    }

    /// The worker a new stream of `tunnel` is best carried on: the one driving the connection
    /// of the agent whose turn is next (`None` with no agent connected).
    pub fn home(&self, tunnel: &str) -> Option<Handle> {
        let map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let live: Vec<&Agent> = map
            .get(tunnel)?
            .iter()
            .filter(|a| !a.send.is_closed())
            .collect();
        if live.is_empty() {
            return None;
        }
        // a peek, not a turn: `candidates` takes the turn, starting at this same agent (it is
        // local there), so the rotation across agents stays even
        let i = self.next.load(Ordering::Relaxed) % live.len();
        Some(live[i].home.clone())
    }

    /// How many agents of `tunnel` are connected.
    pub fn connected(&self, tunnel: &str) -> usize {
        let map = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        map.get(tunnel)
            .map_or(0, |l| l.iter().filter(|a| !a.send.is_closed()).count())
    }
}

/// Opens a stream to `service` through an agent of `tunnel`: agents in turn, the next one when
/// an agent's connection fails. Counted in `tunnel_streams_total`.
pub async fn open(tunnel: &str, service: &str) -> Result<TunnelStream, OpenError> {
    let r = open_uncounted(tunnel, service).await;
    let result = r.as_ref().map_or_else(OpenError::result, |_| "ok");
    TUNNEL_METRICS
        .streams
        .with_label_values(&[tunnel, result])
        .inc();
    r
}

async fn open_uncounted(tunnel: &str, service: &str) -> Result<TunnelStream, OpenError> {
    let mut last = OpenError::Unavailable(tunnel.to_string());
    for mut send in REGISTRY.candidates(tunnel) {
        match tokio::time::timeout(OPEN_TIMEOUT, open_on(&mut send, tunnel, service)).await {
            Ok(Ok(s)) => return Ok(s),
            // the agent answered: another agent of the same tunnel serves the same services
            Ok(Err(e @ (OpenError::UnknownService { .. } | OpenError::ConnectFailed { .. }))) => {
                return Err(e)
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = OpenError::Error {
                    tunnel: tunnel.to_string(),
                    detail: format!("the agent did not answer within {OPEN_TIMEOUT:?}"),
                }
            }
        }
    }
    Err(last)
}

async fn open_on(
    send: &mut SendRequest<Empty<Bytes>>,
    tunnel: &str,
    service: &str,
) -> Result<TunnelStream, OpenError> {
    let error = |detail: String| OpenError::Error {
        tunnel: tunnel.to_string(),
        detail,
    };
    send.ready()
        .await
        .map_err(|e| error(format!("the agent's connection failed: {e}")))?;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{service}:1"))
        .body(Empty::new())
        .map_err(|e| error(format!("service {service:?}: {e}")))?;
    let mut resp = send
        .send_request(req)
        .await
        .map_err(|e| error(format!("the agent's connection failed: {e}")))?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            return Err(OpenError::UnknownService {
                tunnel: tunnel.to_string(),
                service: service.to_string(),
            })
        }
        StatusCode::BAD_GATEWAY => {
            return Err(OpenError::ConnectFailed {
                tunnel: tunnel.to_string(),
                service: service.to_string(),
            })
        }
        other => return Err(error(format!("the agent answered {other}"))),
    }
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| error(format!("the stream did not open: {e}")))?;
    Ok(TokioIo::new(upgraded))
}
