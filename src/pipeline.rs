//! The request pipeline, top to bottom: route → authenticate → (budget) → upstream → respond
//! → log. Each step delegates to its module; this file only sequences them and keeps the
//! per-request record (`Exchange`) that the access log and metrics are written from. The
//! engine enters it through the worker's [`Handler`] impl at the end of this file.

use std::sync::Arc;
use std::time::Instant;

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use crate::auth::{self, AuthError, Verified};
use crate::config::{Route, RouteAuth};
use crate::engine::drain;
use crate::engine::upstream::{self, ReqBody, UpstreamError};
use crate::engine::{Body, ConnInfo, Handler};
use crate::forward::{self, X_REQUEST_ID};
use crate::gateway::{Gateway, WorkerHandler, WorkerSnapshot};
use crate::metrics::{BodyCheck, METRICS};
use crate::respond::{self, Refusal};
use crate::routing::{self, RouteRef};
use crate::telemetry::{Step, TraceSlot};

mod agent;
mod ai;
mod connect;
mod exchange;
mod tunnel;

use exchange::{upstream_name, Exchange};

/// Serves one request with worker snapshot `w` (held until the request is logged). `id` is
/// the request's id (the client's valid `X-Request-Id` or a new one; it goes upstream and back
/// to the client from the exchange) and `grpc` whether the client speaks gRPC: the engine's
/// entry decided both.
pub async fn handle(
    w: Arc<WorkerSnapshot>,
    mut req: Request<Incoming>,
    conn: ConnInfo,
    id: HeaderValue,
    grpc: bool,
) -> Response<Body> {
    let gw = &w.gw;
    let mut ex = Exchange::begin(&w, &req, &conn, id, grpc);

    // 0. a head whose host is ambiguous or whose body we could not forward faithfully goes
    // no further
    if let Err(e) = forward::head::check(&req) {
        return ex.refuse(e.into());
    }

    // 0b. an agent of a [[tunnels]] entry dialling in (`/_tunnel/<name>`, never a route)
    if let Some(t) = agent::tunnel_of(gw, req.uri().path()) {
        return agent::accept(&w, t, req, &conn, ex).await;
    }

    // 1. route
    let route = match gw.router.select(req.method(), req.uri().path()) {
        Ok(r) => r,
        Err(e) => return ex.refuse(e.into()),
    };
    ex.route = Some(route.index);

    // 2. authenticate and authorize: the client certificate (on routes with a rule), then
    // the token (skipped on public routes)
    if let Err(e) = client_certificate(route.route, &conn, &mut ex) {
        gw.auth_failures.inc(e.reason);
        return ex.refuse(e.into());
    }
    ex.trace.enter(Step::Auth);
    let identity = authenticate(gw, route.route, &req, &mut ex.trace).await;
    ex.trace.exit(Step::Auth);
    match identity {
        Ok(identity) => ex.identity = identity,
        Err(e) => {
            gw.auth_failures.inc(e.reason);
            return ex.refuse(e.into());
        }
    }

    // 2b. a body declared longer than the route accepts goes no further (one that streams
    // past the limit is cut on its way up, in step 4)
    if let Err(r) = declared_body(gw, route, req.body()) {
        return ex.refuse(*r);
    }

    // 3. budget (only verified requests get here: bad tokens never consume budget)
    if let Err(r) = budget(gw, route, req.headers(), &mut ex).await {
        return ex.refuse(*r);
    }

    // 4. upstream — or, on a `connect` route, the TCP target its WebSocket's bytes go to
    if let Some(target) = &route.route.connect {
        return connect::open(&w, route.route, target, req, &conn, ex).await;
    }
    let upstream = gw
        .router
        .upstream(route, req.headers_mut(), ex.identity.as_deref(), ex.client);
    ex.upstream = Some(upstream);
    let forwarded = prepare_upstream(gw, route.route, req, &mut ex);
    let sent = Instant::now();
    // every try of the route's `retries`; their count and last endpoint stay on `ex.tries`
    let exchange = || {
        upstream::send_with_retries(
            &w.upstreams,
            upstream,
            route.route,
            forwarded.request,
            forwarded.path,
            &mut ex.tries,
        )
    };
    // the route's `timeout` bounds the whole exchange, every try and the wait for the head
    // included. (The exchange future is built in each arm, not held in a local both arms
    // share: that would reserve its ~2.5 KiB twice in this future.)
    let result = match route.route.streams.timeout {
        None => exchange().await,
        Some(t) => tokio::time::timeout_at((ex.start + t).into(), exchange())
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError::Timeout {
                    endpoint: format!(
                        "upstream {} (the route's timeout)",
                        upstream_name(gw, upstream)
                    ),
                    timeout: t,
                })
            }),
    };
    gw.upstream_durations[upstream].observe(sent.elapsed().as_secs_f64());
    ex.trace.attempt_done(&result);

    // 5. respond (6. the log is written when the response body completes)
    match result {
        Ok((resp, _endpoint)) => ex.respond(resp, forwarded.client_upgrade),
        Err(UpstreamError::BodyTooLarge { limit }) => {
            gw.route_metrics[route.index].body_too_large(BodyCheck::Streamed);
            ex.refuse(Refusal::body_too_large(limit))
        }
        Err(e) => {
            upstream_failed(gw, &ex, upstream, &e);
            ex.refuse((&e).into())
        }
    }
}

/// Step 2a: a route with a `client_cert` rule admits only the identities it lists; the URI SAN
/// that matched goes upstream.
fn client_certificate(r: &Route, conn: &ConnInfo, ex: &mut Exchange) -> Result<(), AuthError> {
    if let Some(rule) = &r.client_cert {
        let uri = auth::client_cert::check(rule, conn.client_cert.as_deref(), conn.tls)?;
        ex.client_uri = uri.and_then(|u| HeaderValue::from_str(u).ok());
    }
    Ok(())
}

/// Step 2: the verified identity (None on public routes).
async fn authenticate(
    gw: &Gateway,
    r: &Route,
    req: &Request<Incoming>,
    trace: &mut TraceSlot,
) -> Result<Option<Arc<Verified>>, AuthError> {
    if r.auth == RouteAuth::Public {
        return Ok(None);
    }
    let token = auth::token_from(
        req.headers(),
        &gw.config.auth.token_headers,
        gw.config.auth.max_token_bytes,
    )?;
    let (verified, cached) = gw.verifier.verify_noting_cache(token).await?;
    trace.token_cache(cached);
    auth::authorize(r, &verified, &gw.verifier, req.headers())?;
    Ok(Some(verified))
}

/// Step 2b: the body's declared length (HTTP/1.1 `Content-Length`, or HTTP/2's
/// `content-length`) within the route's `max_request_body`. Refused here, the body is never
/// read: hyper sends no `100 Continue` for it.
fn declared_body(gw: &Gateway, route: RouteRef<'_>, body: &Incoming) -> Result<(), Box<Refusal>> {
    match route.route.max_request_body {
        Some(limit) if http_body::Body::size_hint(body).lower() > limit => {
            gw.route_metrics[route.index].body_too_large(BodyCheck::Declared);
            Err(Box::new(Refusal::body_too_large(limit)))
        }
        _ => Ok(()),
    }
}

/// Step 3: every budget rule of the route must admit the request.
async fn budget(
    gw: &Gateway,
    route: RouteRef<'_>,
    headers: &http::HeaderMap,
    ex: &mut Exchange,
) -> Result<(), Box<Refusal>> {
    let Some(b) = &gw.budgets else { return Ok(()) };
    let r = route.route;
    // keys and limits first (synchronously), then the store (which may be across the network)
    let id = ex.identity.as_deref();
    let Some(plan) = b.plan(route.index, &r.name, r.cost, id, headers, ex.client) else {
        return Ok(());
    };
    ex.metered = b.metered(&plan);
    ex.trace.enter(Step::Budget);
    let decided = b.decide(plan).await;
    ex.trace.exit(Step::Budget);
    ex.budget_headers = decided.map_err(|r| Box::new(r.into()))?;
    Ok(())
}

/// The request as the upstream gets it (step 4a's result).
struct UpstreamRequest {
    /// the client's request with forwarding headers applied; its URI is set by the upstream
    /// client, which picks the endpoint
    request: Request<ReqBody>,
    /// the upstream path and query (the route's prefix stripped when configured)
    path: PathAndQuery,
    /// the client side of a protocol upgrade (WebSocket), joined to the upstream's on 101
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Step 4a: the request as the upstream gets it.
fn prepare_upstream(
    gw: &Gateway,
    r: &Route,
    req: Request<Incoming>,
    ex: &mut Exchange,
) -> UpstreamRequest {
    let (mut head, body) = req.into_parts();
    // only the route's `upgrades` are tunnelled; any other (h2c above all: a tunnel would
    // carry requests past routing and auth) loses its upgrade headers below and goes up as an
    // ordinary request, and the client's connection stays HTTP/1.1
    let upgrade = forward::is_upgrade(&head.headers, head.version)
        && forward::upgrade_allowed(&head.headers, &r.streams.upgrades);
    let on_upgrade = head.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let client_upgrade = if upgrade { on_upgrade } else { None };
    // HTTP/1.1 absolute-form (`GET http://host/path`): the target's authority, not Host,
    // names the host (RFC 9112 §3.2.2), and the upstream gets it as Host
    let absolute = head.version < Version::HTTP_2 && head.uri.authority().is_some();
    let authority = || {
        head.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    };
    let client_host = head.headers.get(HOST).cloned();
    let set_host = absolute || client_host.is_none();
    let host = match absolute {
        true => authority(),
        false => client_host.or_else(authority),
    };
    let pq = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let path = if r.strip_prefix {
        PathAndQuery::try_from(&*routing::upstream_path(r, pq))
            .unwrap_or_else(|_| PathAndQuery::from_static("/"))
    } else {
        head.uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    // gRPC needs `te: trailers` end to end; HTTP/2 allows exactly that TE, HTTP/1.1 upstreams
    // get none (TE is hop-by-hop there)
    let te_trailers = gw.config.upstreams[ex.upstream.unwrap_or(r.upstream)].protocol
        != crate::config::UpstreamProtocol::Http1
        && head.headers.get_all(http::header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    forward::strip_hop_by_hop(&mut head.headers, upgrade);
    // room for what goes on below (identity, X-Forwarded-*, request id, trace context) at
    // once: hyper sized the map for the client's headers, and each growth rehashes them all
    head.headers.reserve(12);
    if te_trailers {
        head.headers
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    if !gw.config.auth.forward_token {
        forward::remove_token(&mut head.headers, &gw.config.auth.token_headers);
    }
    if let (true, Some(h)) = (set_host, &host) {
        // HTTP/2 clients send :authority, not Host: the upstream sees the same Host either way
        head.headers.insert(HOST, h.clone());
    }
    gw.identity.apply(&mut head.headers, ex.identity.as_deref());
    if let Some(uri) = ex.client_uri.take() {
        // after `apply`, which removed any client-sent header under the identity prefix
        let name = format!("{}client-uri", gw.config.auth.identity_header_prefix);
        if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
            head.headers.insert(name, uri);
        }
    }
    forward::set_forwarded(&mut head.headers, ex.peer, host, ex.trusted_peer, ex.tls);
    head.headers.insert(X_REQUEST_ID, ex.request_id.clone());
    gw.tracer.propagate(&mut ex.trace, &mut head.headers);
    // HTTP/1.1 toward every upstream: hyper's HTTP/2 client (h2, h2c, `auto` when ALPN picks
    // h2) takes it as is, and an HTTP/1.1 connection refuses an HTTP/2 request
    head.version = Version::HTTP_11;
    let (body, counter) = ReqBody::from_client(body, r.max_request_body);
    ex.bytes_in = counter;
    UpstreamRequest {
        request: Request::from_parts(head, body),
        path,
        client_upgrade,
    }
}

fn upstream_failed(gw: &Gateway, ex: &Exchange, upstream: usize, e: &UpstreamError) {
    let name = upstream_name(gw, upstream);
    METRICS
        .upstream_errors
        .with_label_values(&[name, e.kind()])
        .inc();
    tracing::warn!(request_id = ex.request_id.to_str().unwrap_or(""), upstream = %name, error = %e, "upstream request failed");
}

/// The engine's entry point on each worker thread: the request runs on the snapshot current
/// when it arrived (a reload in the meantime does not change it mid-request).
impl Handler for WorkerHandler {
    fn started(&self) {
        crate::accesslog::spawn_flusher();
        // a shared budget store gets this worker's connection now, not on its first request
        if let Some(b) = &self.snapshot().gw.budgets {
            b.warm();
        }
    }

    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + 'static {
        // still open when the shutdown timeout passes: answered 503 `shutting_down` (the
        // exchange, dropped, logs the same); the id is fixed now so both carry the same one
        // (it goes upstream from the exchange, which replaces any the client sent)
        let id = forward::request_id(req.headers());
        let grpc = respond::is_grpc(req.headers());
        // boxed once here: the pipeline's future is ~4.7 KB, and the wrappers and hyper's
        // dispatcher each moved it by value (a memcpy of all of it, several per request)
        let pipeline = handle(self.snapshot(), req, conn, id.clone(), grpc);
        drain::or_cut_off(Box::pin(pipeline), move || {
            let mut r = match grpc {
                true => respond::grpc_refusal(&Refusal::shutting_down()),
                false => respond::refusal(&Refusal::shutting_down(), &id),
            };
            r.headers_mut().insert(X_REQUEST_ID, id);
            r
        })
    }

    fn trusts_proxy(&self, peer: std::net::IpAddr) -> bool {
        self.snapshot()
            .gw
            .config
            .server
            .trusted_proxies
            .iter()
            .any(|n| n.contains(peer))
    }
}
