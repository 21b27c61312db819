//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `GET /issuers`, `GET /upstreams`,
//! `POST /issuers/<name>/refresh`. Runs on the control-plane runtime, never on a worker.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::auth::Verifier;
use crate::budget::{Budgets, QueryError, StoreError};
use crate::config::{KeyPart, LimitKind};
use crate::gateway::Gateway;
use crate::keysync::{self, Fetcher};
use crate::metrics::METRICS;

/// A reload request's answer channel: `Ok` (what was reloaded) or the reason it was refused.
pub type ReloadReply = tokio::sync::oneshot::Sender<Result<crate::reload::Reloaded, String>>;

pub struct Admin {
    /// the running gateway, swapped at reload
    pub gateway: Arc<arc_swap::ArcSwap<Gateway>>,
    pub fetcher: Arc<Fetcher>,
    /// set at SIGTERM: /readyz turns 503 so load balancers stop sending traffic
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// to the control loop, which owns the running configuration
    pub reload: tokio::sync::mpsc::Sender<ReloadReply>,
}

pub async fn serve(listener: std::net::TcpListener, admin: Arc<Admin>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let a = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let a = a.clone();
                async move { Ok::<_, Infallible>(route(&a, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut b = serde_json::to_vec_pretty(&v).unwrap_or_default();
    b.push(b'\n');
    reply(status, "application/json", b)
}

async fn route(a: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let gw = a.gateway.load_full();
    let verifier = gw.verifier.clone();
    // probes stay open; everything else needs the admin token when one is configured
    if !matches!(path, "/healthz" | "/readyz") {
        if let Some(token) = &gw.config.server.admin_token {
            if !bearer_matches(req.headers(), &token.0) {
                let mut r = json_reply(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "unauthorized", "reason": "admin_token"}),
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"cc-gateway-admin\""),
                );
                return r;
            }
        }
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") if a.draining.load(std::sync::atomic::Ordering::Acquire) => {
            json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"ready": false, "draining": true}),
            )
        }
        (&Method::GET, "/readyz") => {
            let pending: Vec<&str> = verifier
                .issuers()
                .iter()
                .filter(|i| !i.is_loaded())
                .map(|i| i.cfg.name.as_str())
                .collect();
            if pending.is_empty() {
                json_reply(StatusCode::OK, json!({"ready": true}))
            } else {
                json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"ready": false, "keys_not_loaded": pending}),
                )
            }
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            METRICS.render(),
        ),
        (&Method::GET, "/issuers") => json_reply(StatusCode::OK, issuers_status(&verifier)),
        // every endpoint of every upstream with its health; deliberately not part of /readyz:
        // a dead backend must not take the edge out of its load balancer
        (&Method::GET, "/upstreams") => json_reply(
            StatusCode::OK,
            crate::engine::upstream::describe_pools(&gw.pools),
        ),
        (&Method::POST, p) if p.starts_with("/issuers/") && p.ends_with("/refresh") => {
            let name = &p["/issuers/".len()..p.len() - "/refresh".len()];
            let Some((idx, _)) = verifier.issuer_by_name(name) else {
                return json_reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": "not_found", "reason": "unknown_issuer", "issuer": name}),
                );
            };
            match keysync::refresh(&verifier, idx, &a.fetcher).await {
                Ok(r) => json_reply(
                    StatusCode::OK,
                    json!({"issuer": name, "result": "ok", "keys": r.keys, "kids": r.kids}),
                ),
                Err(e) => json_reply(
                    StatusCode::BAD_GATEWAY,
                    json!({"issuer": name, "result": "error", "error": e.to_string()}),
                ),
            }
        }
        (&Method::POST, "/reload") => reload(a).await,
        (&Method::GET, "/budgets") => match &gw.budgets {
            Some(b) => json_reply(StatusCode::OK, budgets_described(b)),
            None => json_reply(StatusCode::OK, json!({"rules": []})),
        },
        (m @ (&Method::GET | &Method::DELETE), p) if p.starts_with("/budgets/") => {
            budget_key(&gw, m, &p["/budgets/".len()..]).await
        }
        (_, p) if p == "/logs" || p.starts_with("/logs/") => logs(&gw, req).await,
        (_, "/healthz" | "/readyz" | "/metrics" | "/issuers" | "/reload" | "/upstreams") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
        _ => json_reply(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "reason": "no_route"}),
        ),
    }
}

async fn reload(a: &Admin) -> Response<Full<Bytes>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if a.reload.send(tx).await.is_err() {
        return json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"result": "error", "error": "shutting down"}),
        );
    }
    match rx.await {
        Ok(Ok(r)) => json_reply(
            StatusCode::OK,
            json!({"result": "ok", "generation": r.generation, "restart_needed": r.restart_needed}),
        ),
        Ok(Err(e)) => json_reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"result": "error", "error": e}),
        ),
        Err(_) => json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"result": "error", "error": "shutting down"}),
        ),
    }
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(h: &http::HeaderMap, token: &str) -> bool {
    let Some(v) = h.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()) else {
        return false;
    };
    let Some(sent) = v
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
        .map(|_| v[7..].trim_ascii())
    else {
        return false;
    };
    aws_lc_rs::constant_time::verify_slices_are_equal(sent, token.as_bytes()).is_ok()
}

/// `/logs…`: the request log's queries and feedback (`requestlog::api`); bodies are small JSON.
async fn logs(gw: &Gateway, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::{BodyExt, Limited};
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, 16 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": "payload_too_large", "reason": "body_too_large"}),
            )
        }
    };
    let rest = parts.uri.path()["/logs".len()..].to_string();
    let query = parts.uri.query().map(str::to_string);
    let (status, v) = crate::requestlog::api::admin(
        gw.config.request_log.clone(),
        parts.method,
        rest,
        query,
        body,
    )
    .await;
    json_reply(status, v)
}

/// `GET|DELETE /budgets/<rule>/<key>`; the key is percent-encoded in the path.
async fn budget_key(gw: &Gateway, m: &Method, rest: &str) -> Response<Full<Bytes>> {
    let Some(b) = &gw.budgets else {
        return json_reply(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "reason": "unknown_rule"}),
        );
    };
    let Some((rule, key)) = rest.split_once('/') else {
        return json_reply(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "reason": "no_route", "hint": "/budgets/<rule>/<key>"}),
        );
    };
    let key = percent_decode(key);
    let unknown = || {
        json_reply(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "reason": "unknown_rule", "rule": rule}),
        )
    };
    // A store that cannot answer (the cause is logged by the budgets) is a 503 with the
    // request path's reason: an operator resetting a key during an outage must not read
    // "nothing to reset", nor "unknown rule" for a rule that exists.
    let unavailable = |e: &StoreError| {
        json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "service_unavailable", "reason": "budget_store_unavailable",
                   "message": e.to_string()}),
        )
    };
    if m == Method::DELETE {
        return match b.reset(rule, &key).await {
            Ok(existed) => reset_reply(rule, &key, existed),
            Err(QueryError::Store(e)) => unavailable(&e),
            Err(QueryError::UnknownRule) => unknown(),
        };
    }
    match b.usage(rule, &key).await {
        Ok(u) => json_reply(
            StatusCode::OK,
            json!({
                "rule": rule, "key": key,
                "kind": kind_text(u.kind),
                "limit": u.limit.to_string(),
                "capacity": u.capacity,
                "used": u.used(),
                "remaining": u.remaining,
                "reset_seconds": u.reset_seconds,
            }),
        ),
        Err(QueryError::Store(e)) => unavailable(&e),
        Err(QueryError::UnknownRule) => unknown(),
    }
}

fn reset_reply(rule: &str, key: &str, existed: bool) -> Response<Full<Bytes>> {
    json_reply(
        StatusCode::OK,
        json!({"rule": rule, "key": key, "reset": true, "existed": existed}),
    )
}

/// `GET /budgets`: the store and every rule as configured.
fn budgets_described(b: &Budgets) -> serde_json::Value {
    let rules: Vec<_> = b
        .rules()
        .iter()
        .map(|r| {
            let rate = r.kind == LimitKind::Rate;
            json!({
                "name": r.name,
                "kind": kind_text(r.kind),
                "limit": r.limit.map(|l| l.to_string()),
                "burst": rate.then_some(r.burst),
                "cost": r.cost,
                "key": r.key.iter().map(key_part_text).collect::<Vec<_>>(),
                "tiers": r.tiers.as_ref().map(|t| t.claim.clone()),
                "overrides": r.overrides.len(),
            })
        })
        .collect();
    json!({ "store": b.store_shown(), "rules": rules })
}

fn kind_text(k: LimitKind) -> &'static str {
    match k {
        LimitKind::Rate => "rate",
        LimitKind::Quota => "quota",
    }
}

/// A key part as the config writes it.
fn key_part_text(k: &KeyPart) -> String {
    match k {
        KeyPart::Claim(c) => format!("claim:{c}"),
        KeyPart::Header(h) => format!("header:{h}"),
        KeyPart::Route => "route".into(),
        KeyPart::ClientIp => "client_ip".into(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn issuers_status(v: &Verifier) -> serde_json::Value {
    let list: Vec<_> = v
        .issuers()
        .iter()
        .map(|i| {
            let keys = i.current();
            json!({
                "name": i.cfg.name,
                "issuer": i.cfg.issuer,
                "source": i.cfg.source.to_string(),
                "loaded": keys.is_some(),
                "kids": keys.map(|k| k.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>()),
                "last_error": i.last_error.load_full().map(|e| e.to_string()),
            })
        })
        .collect();
    json!({ "issuers": list })
}
