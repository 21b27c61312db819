//! The gateway's side of an agent's connection: who may be an agent of a tunnel, and the
//! HTTP/2 client driven over the agent's WebSocket until it goes away.

use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::metrics::TUNNEL_METRICS;
use super::{CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, REGISTRY, STREAM_WINDOW};
use crate::auth::{AuthError, Reason, Verified};
use crate::config::Tunnel;
use crate::tcp::ws;

/// Does the verified token make its bearer an agent of `t`? Its issuer, audience and subject.
pub fn admits(t: &Tunnel, v: &Verified) -> Result<(), AuthError> {
    if v.issuer_index != t.issuer {
        return Err(AuthError::new(
            Reason::UnknownIssuer,
            format!("tunnel {} takes agent tokens of another issuer", t.name),
        ));
    }
    if !v.aud.contains(&t.audience) {
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
    // taken now, on the worker thread whose drain it is: the drain waits for this connection's
    // streams (up to shutdown_timeout) after asking the agent to move
    let draining = crate::engine::drain::draining();
    let hold = crate::engine::drain::hold();
    tokio::spawn(async move {
        let _hold = hold;
        let io = match ws::server(upgrade).await {
            Ok(s) => TokioIo::new(s),
            Err(e) => {
                tracing::debug!(tunnel, error = %e, "an agent's upgrade failed");
                return;
            }
        };
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
        let id = REGISTRY.add(&tunnel, send.clone());
        tracing::info!(tunnel, %sub, %peer, "tunnel agent connected");
        tokio::pin!(conn);
        let ended = tokio::select! {
            ended = &mut conn => ended,
            () = draining => {
                // this process is shutting down or handing its sockets to a successor: no new
                // streams here, and the agent dials again (reaching the successor) while the
                // streams it carries finish on this connection
                REGISTRY.remove(&tunnel, id);
                // the connection is driven meanwhile: the request goes out through it
                let ask = ask_to_reconnect(send);
                tokio::pin!(ask);
                let mut asked = false;
                loop {
                    tokio::select! {
                        ended = &mut conn => break ended,
                        () = &mut ask, if !asked => {
                            asked = true;
                            tracing::info!(tunnel, %sub, %peer, "draining: asked the tunnel agent to reconnect");
                        }
                    }
                }
            }
        };
        REGISTRY.remove(&tunnel, id);
        match ended {
            Ok(()) => tracing::info!(tunnel, %sub, %peer, "tunnel agent disconnected"),
            Err(e) => {
                tracing::warn!(tunnel, %sub, %peer, error = %e, "tunnel agent connection lost")
            }
        }
    });
}

/// `POST /_reconnect` to the agent: dial the gateway again now (bounded: an agent that does
/// not answer is left to notice the connection's end).
async fn ask_to_reconnect(
    mut send: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) {
    let ask = async {
        send.ready().await.ok()?;
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(super::RECONNECT_URI)
            .body(http_body_util::Empty::new())
            .ok()?;
        send.send_request(req).await.ok()
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), ask).await;
}
