//! Step 0: an agent of a `[[tunnels]]` entry dialling in on `/_tunnel/<name>` (never a route).
//! Its token is verified like any other, then must name the tunnel's issuer, audience and one
//! of its subjects; the WebSocket it opens carries the tunnel (`crate::tunnel::accept`).

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::connect::{switching, websocket_required};
use super::exchange::Exchange;
use crate::auth::{self, AuthError};
use crate::config::Tunnel;
use crate::engine::{Body, ConnInfo};
use crate::gateway::{Gateway, WorkerSnapshot};
use crate::tcp::ws;
use crate::tunnel::accept;

const PREFIX: &str = "/_tunnel/";

/// The tunnel whose agents dial in on `path`, if any.
pub(super) fn tunnel_of<'g>(gw: &'g Gateway, path: &str) -> Option<&'g Tunnel> {
    if gw.config.tunnels.is_empty() {
        return None;
    }
    let name = path.strip_prefix(PREFIX)?;
    gw.config.tunnels.iter().find(|t| t.name == name)
}

pub(super) async fn accept(
    w: &Arc<WorkerSnapshot>,
    t: &Tunnel,
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    mut ex: Exchange,
) -> Response<Body> {
    let gw = &w.gw;
    let key = match ws::accept_key(req.method(), req.version(), req.headers()) {
        Ok(k) => k,
        Err(why) => {
            accept::counted(&t.name, "websocket_required");
            return ex.refuse(websocket_required(why));
        }
    };
    let sub = match agent_identity(gw, t, &req).await {
        Ok(v) => {
            let sub = v.sub.as_deref().unwrap_or("").to_string();
            ex.identity = Some(v);
            sub
        }
        Err(e) => {
            accept::counted(&t.name, e.reason.code());
            gw.auth_failures.inc(e.reason);
            tracing::warn!(tunnel = %t.name, peer = %conn.peer, reason = e.reason.code(), detail = %e.detail, "tunnel agent refused");
            return ex.refuse(e.into());
        }
    };
    let (Ok(accept_value), Some(upgrade)) = (
        HeaderValue::from_str(&key),
        req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>(),
    ) else {
        return ex.refuse(websocket_required("the connection cannot be upgraded"));
    };
    accept::counted(&t.name, "ok");
    accept::serve(t.name.clone(), sub, conn.peer, upgrade);
    ex.switched(switching(accept_value))
}

/// The agent's verified token.
async fn agent_identity(
    gw: &Gateway,
    t: &Tunnel,
    req: &Request<Incoming>,
) -> Result<Arc<crate::auth::Verified>, AuthError> {
    let token = auth::token_from(
        req.headers(),
        &gw.config.auth.token_headers,
        gw.config.auth.max_token_bytes,
    )?;
    let (verified, _) = gw.verifier.verify_noting_cache(token).await?;
    accept::admits(t, &verified)?;
    Ok(verified)
}
