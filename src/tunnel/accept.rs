//! The gateway's side of an agent's connection: who may be an agent of a tunnel, and the
//! HTTP/2 client driven over the agent's WebSocket until it goes away.

use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::metrics::TUNNEL_METRICS;
use super::{CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, REGISTRY, STREAM_WINDOW};
use crate::auth::{AuthError, Reason, Verified};
use crate::config::Tunnel;
use crate::tcp::ws::{self, WsStream};

/// Does the verified token make its bearer an agent of `t`? Its issuer, audience and subject.
pub fn admits(t: &Tunnel, v: &Verified) -> Result<(), AuthError> {
    if v.issuer_index != t.issuer {
        return Err(AuthError::new(
            Reason::UnknownIssuer,
            format!("tunnel {} takes agent tokens of another issuer", t.name),
        ));
    }
    if !v.aud.iter().any(|a| **a == *t.audience) {
        return Err(AuthError::new(
            Reason::AudienceMismatch,
            format!("token audience does not include {:?}", t.audience),
        ));
    }
    let sub = v.sub.as_deref().unwrap_or("");
    if !t.subjects.iter().any(|s| s == sub) {
        return Err(AuthError::new(
            Reason::InsufficientScope,
            format!("{sub:?} is not an agent of tunnel {}", t.name),
        ));
    }
    Ok(())
}

/// Counts an agent's connection attempt (`ok` or the refusal's reason).
pub fn counted(tunnel: &str, result: &str) {
    TUNNEL_METRICS
        .agent_connections
        .with_label_values(&[tunnel, result])
        .inc();
}

/// Once the agent's connection has switched to WebSocket: HTTP/2 over it, the agent
/// registered until the connection ends (in a task of its own, on this worker).
pub fn serve(tunnel: String, sub: String, peer: SocketAddr, upgrade: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(tunnel, error = %e, "an agent's upgrade failed");
                return;
            }
        };
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(ws::config()),
        )
        .await;
        let io = TokioIo::new(WsStream::new(socket));
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(io)
            .await;
        let (send, conn) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(tunnel, %sub, %peer, error = %e, "an agent's HTTP/2 handshake failed");
                return;
            }
        };
        let id = REGISTRY.add(&tunnel, send);
        tracing::info!(tunnel, %sub, %peer, "tunnel agent connected");
        let ended = conn.await;
        REGISTRY.remove(&tunnel, id);
        match ended {
            Ok(()) => tracing::info!(tunnel, %sub, %peer, "tunnel agent disconnected"),
            Err(e) => {
                tracing::warn!(tunnel, %sub, %peer, error = %e, "tunnel agent connection lost")
            }
        }
    });
}
