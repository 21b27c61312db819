//! One accepted L4 connection, on the worker that accepted it: pick the route, refuse or
//! connect, carry the bytes, then count and log it once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;

use super::copy::{self, End, Tally};
use super::{target, Key, Shared, Slot};
use crate::config::{TcpRoute, TcpTarget};
use crate::gateway::Gateway;
use crate::metrics::TCP_METRICS;

/// The TLS handshake's bound when `server.header_read_timeout` is off.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused TLS connection's `close_notify` may take to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection was refused: the `result` label and the log's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// the route's `max_connections` are open
    Limit,
    /// no client certificate, or one the route's `client_cert` rule does not admit
    ClientCert,
    /// the TLS handshake failed or timed out
    Tls,
    /// the target could not be reached
    ConnectFailed,
    /// no route on this address (removed by a reload), or none for the SNI name
    NoRoute,
    /// the target is behind a tunnel none of whose agents is connected
    TunnelUnavailable,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Limit,
        Refusal::ClientCert,
        Refusal::Tls,
        Refusal::ConnectFailed,
        Refusal::NoRoute,
        Refusal::TunnelUnavailable,
    ];

    /// The refusal for a target that could not be opened.
    pub fn of(e: &target::OpenError) -> Refusal {
        match e {
            target::OpenError::Tunnel(crate::tunnel::OpenError::Unavailable(_)) => {
                Refusal::TunnelUnavailable
            }
            _ => Refusal::ConnectFailed,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Limit => "limit",
            Refusal::ClientCert => "client_cert",
            Refusal::Tls => "tls",
            Refusal::ConnectFailed => "connect_failed",
            Refusal::NoRoute => "no_route",
            Refusal::TunnelUnavailable => "tunnel_unavailable",
        }
    }
}

/// One access-log line per L4 connection.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    /// tells these lines from HTTP requests' in the same log
    kind: &'static str,
    route: &'a str,
    client: String,
    listen: String,
    target: Option<&'a str>,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    /// `ok` or the refusal reason, as in `tcp_connections_total{result}`
    result: &'a str,
    /// why it ended: a refusal reason, `idle_timeout`, `error`; absent for a clean close
    reason: Option<&'a str>,
}

/// Where a connection is, for its log line.
pub(super) struct Conn {
    pub(super) started: Instant,
    pub(super) peer: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) gateway: Arc<Gateway>,
}

impl Conn {
    pub(super) fn log(
        &self,
        route: &str,
        target: Option<&str>,
        result: &str,
        reason: Option<&str>,
        bytes: (u64, u64),
    ) {
        let log = &self.gateway.access_log;
        if !log.enabled() {
            return;
        }
        log.log(&Line {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            kind: "tcp",
            route,
            client: self.peer.to_string(),
            listen: self.local.to_string(),
            target,
            duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
            bytes_in: bytes.0,
            bytes_out: bytes.1,
            result,
            reason,
        });
    }

    pub(super) fn refuse(&self, route: &str, target: Option<&str>, why: Refusal) {
        TCP_METRICS
            .connections
            .with_label_values(&[route, why.reason()])
            .inc();
        tracing::debug!(route, client = %self.peer, reason = why.reason(), "L4 connection refused");
        self.log(route, target, why.reason(), Some(why.reason()), (0, 0));
    }
}

/// Serves one connection accepted on `local`, the socket bound for the configured address
/// `configured`.
pub async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    key: Arc<Key>,
) {
    let conn = Conn {
        started: Instant::now(),
        peer,
        local,
        gateway: shared.gateway.load_full(),
    };
    let config = conn.gateway.config.clone();
    let candidates: Vec<&TcpRoute> = config.tcp_routes.iter().filter(|r| key.serves(r)).collect();
    let Some(first) = candidates.first() else {
        return conn.refuse("", None, Refusal::NoRoute);
    };
    if !first.tls {
        if let Some(home) = tunnel_home(first, &config) {
            return hand_over(home, shared, conn, first.name.clone(), stream);
        }
        return carry(&shared, &conn, first, stream).await;
    }
    // TLS routes: one listen address may serve several, told apart by SNI
    let label = if candidates.len() == 1 {
        &first.name[..]
    } else {
        ""
    };
    let Some(server) = &shared.tls else {
        return conn.refuse(label, None, Refusal::Tls);
    };
    let timeout = config
        .server
        .header_read_timeout
        .unwrap_or(HANDSHAKE_TIMEOUT);
    let Some((stream, cert)) = server.accept(stream, Some(timeout)).await else {
        return conn.refuse(label, None, Refusal::Tls);
    };
    let sni = stream
        .get_ref()
        .1
        .server_name()
        .map(str::to_ascii_lowercase);
    let Some(route) = by_server_name(&candidates, sni.as_deref()) else {
        conn.refuse(label, None, Refusal::NoRoute);
        return close_notify(stream).await;
    };
    if let Some(rule) = &route.client_cert {
        if let Err(e) = crate::auth::client_cert::check(rule, cert.as_deref(), true) {
            tracing::debug!(route = %route.name, client = %peer, error = %e, "client certificate refused");
            conn.refuse(&route.name, None, Refusal::ClientCert);
            return close_notify(stream).await;
        }
    }
    carry(&shared, &conn, route, stream).await;
}

/// For a route into a tunnel, the worker driving the connection of the agent that should
/// carry the stream, when that is not this one.
fn tunnel_home(route: &TcpRoute, config: &crate::config::Config) -> Option<Handle> {
    let TcpTarget::Tunnel { tunnel, .. } = &route.target else {
        return None;
    };
    let home = crate::tunnel::REGISTRY.home(&config.tunnels.get(*tunnel)?.name)?;
    (home.id() != Handle::current().id()).then_some(home)
}

/// Moves a plaintext connection to the worker `home` and carries it there: its bytes then
/// go to the agent's connection without waking another thread per message (the tunnel's
/// throughput measured a quarter higher). TLS connections stay where they were accepted:
/// their session state cannot move between reactors.
fn hand_over(home: Handle, shared: Arc<Shared>, conn: Conn, name: String, stream: TcpStream) {
    let std = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(route = %name, client = %conn.peer, error = %e, "L4 hand-over failed");
            return conn.refuse(&name, None, Refusal::ConnectFailed);
        }
    };
    home.spawn(async move {
        // the new worker's drain now waits for the connection
        let _hold = crate::engine::drain::hold();
        let stream = match TcpStream::from_std(std) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(route = %name, client = %conn.peer, error = %e, "L4 hand-over failed");
                return conn.refuse(&name, None, Refusal::ConnectFailed);
            }
        };
        // the same configuration the connection was admitted under
        let config = conn.gateway.config.clone();
        match config.tcp_routes.iter().find(|r| r.name == name) {
            Some(route) => carry(&shared, &conn, route, stream).await,
            None => conn.refuse(&name, None, Refusal::NoRoute),
        }
    });
}

/// Ends a TLS connection refused after its handshake cleanly (`close_notify`), so the client
/// sees an orderly close rather than a truncation; bounded, as the client may not read.
async fn close_notify(mut stream: impl AsyncWrite + Unpin) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

/// The route for an SNI name: one that lists it, else one matching it by wildcard, else the
/// one without `server_names`.
fn by_server_name<'r>(routes: &[&'r TcpRoute], sni: Option<&str>) -> Option<&'r TcpRoute> {
    let wildcard = |pattern: &str, name: &str| {
        pattern.strip_prefix("*.").is_some_and(|suffix| {
            name.split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix)
        })
    };
    if let Some(name) = sni {
        if let Some(r) = routes
            .iter()
            .find(|r| r.server_names.iter().any(|n| n == name))
        {
            return Some(r);
        }
        if let Some(r) = routes
            .iter()
            .find(|r| r.server_names.iter().any(|n| wildcard(n, name)))
        {
            return Some(r);
        }
    }
    routes.iter().find(|r| r.server_names.is_empty()).copied()
}

/// Admits `client` on `route` (its `max_connections`), connects to the target and copies.
async fn carry<S>(shared: &Shared, conn: &Conn, route: &TcpRoute, client: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = &route.name[..];
    let state = shared.route(name);
    let Some(_slot) = Slot::take(state.clone(), route.max_connections) else {
        return conn.refuse(name, None, Refusal::Limit);
    };
    let dial = match target::pick(&route.target, &conn.gateway.config, &state.next) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(route = name, error = %e, "L4 target unavailable");
            return conn.refuse(name, None, Refusal::ConnectFailed);
        }
    };
    let proxy = route.proxy_protocol.then_some((conn.peer, conn.local));
    let config = &conn.gateway.config;
    let mut upstream =
        match target::open(&route.target, &dial, config, route.connect_timeout, proxy).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(route = name, error = %e, "L4 target unreachable");
                return conn.refuse(name, Some(&dial), Refusal::of(&e));
            }
        };
    relay(
        conn,
        name,
        &dial,
        client,
        &mut upstream,
        Some(route.idle_timeout),
        None,
    )
    .await;
}

/// Carries an admitted connection's bytes to its connected target until both sides close,
/// `idle` passes without a byte or the `deadline` comes, then counts and logs it.
pub(super) async fn relay<S, T>(
    conn: &Conn,
    name: &str,
    dial: &str,
    client: S,
    upstream: &mut T,
    idle: Option<Duration>,
    deadline: Option<Instant>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    TCP_METRICS
        .connections
        .with_label_values(&[name, "ok"])
        .inc();
    let open = TCP_METRICS.open.with_label_values(&[name]);
    open.inc();
    let tally = Tally::new(
        TCP_METRICS.bytes.with_label_values(&[name, "in"]),
        TCP_METRICS.bytes.with_label_values(&[name, "out"]),
    );
    let end = match deadline {
        None => copy::splice(client, upstream, idle, &tally).await,
        Some(at) => {
            tokio::time::timeout_at(at.into(), copy::splice(client, upstream, idle, &tally))
                .await
                .unwrap_or(End::Timeout)
        }
    };
    open.dec();
    let reason = match &end {
        End::Closed => None,
        End::Timeout => Some("timeout"),
        End::Idle => Some("idle_timeout"),
        End::Error(e) => {
            tracing::debug!(route = name, client = %conn.peer, error = %e, "L4 connection ended");
            Some("error")
        }
    };
    let bytes = (
        tally.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
        tally.bytes_out.load(std::sync::atomic::Ordering::Relaxed),
    );
    conn.log(name, Some(dial), "ok", reason, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, names: &[&str]) -> TcpRoute {
        TcpRoute {
            name: name.into(),
            listen: vec![],
            target: TcpTarget::Address {
                host: "h".into(),
                port: 1,
            },
            tls: true,
            server_names: names.iter().map(|n| n.to_string()).collect(),
            client_cert: None,
            idle_timeout: Duration::from_secs(1),
            max_connections: 1,
            proxy_protocol: false,
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn exact_names_win_over_wildcards_over_the_default() {
        let (exact, wild, default) = (
            route("exact", &["db.example.org"]),
            route("wild", &["*.example.org"]),
            route("default", &[]),
        );
        let all = [&default, &wild, &exact];
        let pick = |sni| by_server_name(&all, sni).map(|r| r.name.as_str());
        assert_eq!(pick(Some("db.example.org")), Some("exact"));
        assert_eq!(pick(Some("pg.example.org")), Some("wild"));
        // one label only
        assert_eq!(pick(Some("a.b.example.org")), Some("default"));
        assert_eq!(pick(None), Some("default"));
        assert_eq!(
            by_server_name(&[&exact], Some("other.org")).map(|r| &r.name[..]),
            None
        );
    }
}
