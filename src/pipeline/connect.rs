//! Step 4 on a `connect` route: instead of a request to an upstream, the authorised WebSocket
//! upgrade becomes a byte stream to the route's TCP target (`tcp::connect`). The target is
//! dialled first, so a refusal is still an HTTP answer with a reason.

use std::sync::Arc;
use std::time::Instant;

use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::exchange::Exchange;
use crate::config::{Route, TcpTarget};
use crate::engine::{Body, ConnInfo};
use crate::gateway::WorkerSnapshot;
use crate::respond::Refusal;
use crate::tcp::{connect, ws};

pub(super) async fn open(
    w: &Arc<WorkerSnapshot>,
    route: &Route,
    target: &TcpTarget,
    mut req: Request<Incoming>,
    conn: &ConnInfo,
    ex: Exchange,
) -> Response<Body> {
    let accept = ws::accept_key(req.method(), req.version(), req.headers())
        .and_then(|k| HeaderValue::from_str(&k).map_err(|_| "Sec-WebSocket-Key is malformed"));
    let (accept, upgrade) = match (
        accept,
        req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>(),
    ) {
        (Ok(a), Some(u)) => (a, u),
        (Err(why), _) => return ex.refuse(websocket_required(why)),
        (Ok(_), None) => return ex.refuse(websocket_required("the connection cannot be upgraded")),
    };
    let info = connect::StreamInfo {
        gateway: w.gw.clone(),
        route: route.name.clone(),
        peer: conn.peer,
        local: conn.local,
        started: Instant::now(),
        idle: route.streams.idle_timeout,
        deadline: route.streams.timeout.map(|t| ex.start + t),
    };
    let dialled = match connect::dial(&info, target).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(request_id = ex.request_id.to_str().unwrap_or(""), route = %route.name, error = %e, "connect target unreachable");
            return ex.refuse(unreachable(&e));
        }
    };
    connect::carry(info, dialled, upgrade);
    ex.switched(switching(accept))
}

/// Our own `101` to a WebSocket handshake whose key gave `accept`.
pub(super) fn switching(accept: HeaderValue) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// 426: a connect route (and a tunnel's agent endpoint) speaks only WebSocket (RFC 6455 over
/// HTTP/1.1).
pub(super) fn websocket_required(why: &'static str) -> Refusal {
    let mut r = Refusal::new(StatusCode::UPGRADE_REQUIRED, "websocket_required", why);
    r.headers
        .push((UPGRADE, HeaderValue::from_static("websocket")));
    r.headers
        .push((CONNECTION, HeaderValue::from_static("Upgrade")));
    r
}

/// 503 `tunnel_unavailable` when no agent of the target's tunnel is connected (retry later);
/// 502 `upstream_unavailable` when the target (or the agent's service) cannot be reached.
fn unreachable(e: &crate::tcp::OpenError) -> Refusal {
    if let crate::tcp::OpenError::Tunnel(crate::tunnel::OpenError::Unavailable(_)) = e {
        let mut r = Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "tunnel_unavailable",
            "no agent of the target's tunnel is connected",
        );
        r.retry_after = Some(1);
        return r;
    }
    Refusal::new(
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
        "the route's connect target could not be reached",
    )
}
