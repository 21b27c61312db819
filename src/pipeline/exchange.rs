//! The per-request record (`Exchange`): what happened, for the response, the metrics, the
//! access log, the request log and the trace; written once per request, when the response body
//! completes or the request is abandoned.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, Version};
use hyper::body::Incoming;

use super::{ai, tunnel};
use crate::accesslog::{Record, Stamp};
use crate::auth::Verified;
use crate::engine::body::{Done, Limits};
use crate::engine::drain;
use crate::engine::upstream;
use crate::engine::{Body, ConnInfo};
use crate::forward::{self, X_REQUEST_ID};
use crate::gateway::{Gateway, WorkerSnapshot};
use crate::metrics::METRICS;
use crate::respond::{self, Refusal};
use crate::telemetry::{Finish, HexTraceId, TraceSlot};
use crate::usage::Observed;

const RATELIMIT_POLICY: http::HeaderName = respond::RATELIMIT_POLICY;
const RATELIMIT: http::HeaderName = respond::RATELIMIT;

pub(super) fn upstream_name(gw: &Gateway, upstream: usize) -> &str {
    &gw.config.upstreams[upstream].name
}

/// The per-request record: what happened, for the response, the metrics and the access log.
/// Dropped without being answered (the client went away while we waited on keys or the
/// upstream), it still counts: status 499 `client_closed`, as nginx logs it.
pub(super) struct Exchange {
    /// the worker's snapshot (not the shared gateway): its refcount stays on this thread's
    /// cache lines
    snapshot: Arc<WorkerSnapshot>,
    /// set once a response was handed to the engine; the body's completion hook logs from there
    answered: bool,
    pub(super) start: Instant,
    pub(super) request_id: HeaderValue,
    /// the TCP peer
    pub(super) peer: IpAddr,
    /// the client (the peer, or behind trusted proxies the address they report)
    pub(super) client: IpAddr,
    pub(super) trusted_peer: bool,
    method: Method,
    version: Version,
    /// only kept when the access log or the request log is on
    path: Option<String>,
    /// the request headers `[request_log] fields` names
    log_fields: Option<crate::requestlog::Captured>,
    /// index of the selected route (`RouteRef::index`)
    pub(super) route: Option<usize>,
    /// index into the config's upstreams
    pub(super) upstream: Option<usize>,
    /// the upstream tries (`attempts`, last `endpoint`)
    pub(super) tries: upstream::Tries,
    pub(super) identity: Option<Arc<Verified>>,
    pub(super) bytes_in: Option<Arc<AtomicU64>>,
    /// RateLimit-Policy / RateLimit for an admitted response
    pub(super) budget_headers: Option<(HeaderValue, HeaderValue)>,
    /// the token budget rules the response's usage is charged to
    pub(super) metered: Option<crate::budget::Metered>,
    /// the client certificate's URI SAN the route's `client_cert` rule admitted
    pub(super) client_uri: Option<HeaderValue>,
    /// the client connected to a TLS listener (`X-Forwarded-Proto: https`)
    pub(super) tls: bool,
    /// a gRPC request: refusals and stream cuts are answered gRPC-style
    pub(super) grpc: bool,
    /// the request's trace record (empty when it is not traced)
    pub(super) trace: TraceSlot,
}

impl Exchange {
    pub(super) fn begin(
        w: &Arc<WorkerSnapshot>,
        req: &Request<Incoming>,
        conn: &ConnInfo,
        request_id: HeaderValue,
        grpc: bool,
    ) -> Self {
        let gw = &w.gw;
        let start = Instant::now();
        Exchange {
            snapshot: w.clone(),
            answered: false,
            start,
            trace: gw.tracer.begin(req, start, conn.tls),
            request_id,
            peer: conn.peer.ip(),
            client: forward::client_ip(
                req.headers(),
                conn.peer.ip(),
                &gw.config.server.trusted_proxies,
            ),
            trusted_peer: gw
                .config
                .server
                .trusted_proxies
                .iter()
                .any(|n| n.contains(conn.peer.ip())),
            method: req.method().clone(),
            version: req.version(),
            path: (gw.access_log.enabled() || gw.request_log.is_some())
                .then(|| req.uri().path().to_string()),
            log_fields: gw
                .request_log
                .as_ref()
                .and_then(|l| l.capture(req.headers())),
            route: None,
            upstream: None,
            tries: Default::default(),
            identity: None,
            bytes_in: None,
            budget_headers: None,
            metered: None,
            client_uri: None,
            tls: conn.tls,
            grpc,
        }
    }

    /// Answers with a refusal: JSON, or gRPC trailers-only to a gRPC client (then the log and
    /// metrics record the status sent, 200, with the refusal's reason).
    pub(super) fn refuse(self, r: Refusal) -> Response<Body> {
        let resp = if self.grpc {
            respond::grpc_refusal(&r)
        } else {
            respond::refusal(&r, &self.request_id)
        };
        self.finish(resp, Some(r.reason), None)
    }

    pub(super) fn respond(
        mut self,
        mut resp: Response<Incoming>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<Body> {
        let upstream_status = resp.status().as_u16();
        let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let (idle, timeout) = self.route.map_or((None, None), |r| {
            let s = &self.snapshot.gw.config.routes[r].streams;
            (s.idle_timeout, s.timeout)
        });
        let deadline = timeout.map(|t| (self.start + t, t));
        match (switching, client_upgrade) {
            (true, Some(client)) => {
                tunnel::join(client, hyper::upgrade::on(&mut resp), idle, deadline)
            }
            // the upstream switched protocols unasked (we sent no Upgrade): passing the 101
            // on would leave the client's connection switched to nothing
            (true, None) => {
                let name = self
                    .upstream
                    .map(|u| self.snapshot.gw.config.upstreams[u].name.clone())
                    .unwrap_or_default();
                METRICS
                    .upstream_errors
                    .with_label_values(&[&name, "protocol"])
                    .inc();
                tracing::warn!(request_id = self.request_id.to_str().unwrap_or(""), upstream = %name, "upstream answered 101 to a request that asked for no upgrade");
                return self.refuse(Refusal::new(
                    http::StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "the upstream failed to answer",
                ));
            }
            _ => {}
        }
        forward::strip_hop_by_hop(resp.headers_mut(), switching);
        // the client's protocol, not the upstream's: hyper answers a response marked HTTP/1.0
        // as HTTP/1.0 and closes the connection, so an HTTP/1.0 backend would cost an HTTP/1.1
        // client its keep-alive
        *resp.version_mut() = self.version;
        if let Some((policy, state)) = self.budget_headers.take() {
            resp.headers_mut().insert(RATELIMIT_POLICY, policy);
            resp.headers_mut().insert(RATELIMIT, state);
        }
        let limits = Limits {
            idle,
            deadline,
            inbound: self.bytes_in.clone(),
            grpc: self.grpc,
        };
        let tap = self.route.and_then(|r| {
            ai::tap(
                self.snapshot.gw.config.routes[r].kind,
                &self.method,
                resp.headers(),
            )
        });
        let resp = resp.map(|b| {
            let mut body = Body::upstream_limited(b, limits);
            if let Some(t) = tap {
                body.tap(t);
            }
            body
        });
        self.finish(resp, None, Some(upstream_status))
    }

    /// Answers with our own `101` (a `connect` route's WebSocket): logged like any response,
    /// with the route's RateLimit headers.
    pub(super) fn switched(mut self, mut resp: Response<Body>) -> Response<Body> {
        if let Some((policy, state)) = self.budget_headers.take() {
            resp.headers_mut().insert(RATELIMIT_POLICY, policy);
            resp.headers_mut().insert(RATELIMIT, state);
        }
        self.finish(resp, None, None)
    }

    /// Echoes the request id and arranges for metrics and the access log to be written when
    /// the response body is done.
    fn finish(
        mut self,
        mut resp: Response<Body>,
        reason: Option<std::borrow::Cow<'static, str>>,
        upstream_status: Option<u16>,
    ) -> Response<Body> {
        resp.headers_mut()
            .insert(X_REQUEST_ID, self.request_id.clone());
        let status = resp.status().as_u16();
        self.answered = true;
        resp.body_mut().on_done(Box::new(move |done: Done| {
            self.record(&Outcome {
                status,
                reason: reason
                    .as_deref()
                    .or(done.cut)
                    .or_else(|| (!done.complete && drain::is_cut_off()).then_some("shutting_down")),
                upstream_status,
                bytes_out: done.sent,
                first_byte: done.first_byte.map(tokio::time::Instant::into_std),
                complete: done.complete,
                usage: done.usage.as_ref(),
            });
        }));
        resp
    }

    /// Metrics and the access-log line, once per request.
    fn record(&mut self, outcome: &Outcome<'_>) {
        let gw = &self.snapshot.gw;
        let elapsed = self.start.elapsed();
        match self.route {
            Some(r) => gw.route_metrics[r].record(outcome.status, elapsed.as_secs_f64()),
            None => gw
                .unrouted_metrics
                .record(outcome.status, elapsed.as_secs_f64()),
        }
        let cost = outcome.usage.and_then(|o| {
            let route = self
                .route
                .map_or("_none", |r| gw.config.routes[r].name.as_str());
            ai::account(gw, route, o, outcome.upstream_status, self.metered.as_ref())
        });
        let id = self.identity.as_deref();
        let trace_id = gw.tracer.finish(
            &mut self.trace,
            &Finish {
                status: outcome.status,
                reason: outcome.reason,
                route: self.route.map(|r| &gw.config.routes[r]),
                upstream: self.upstream.map(|u| upstream_name(gw, u)),
                sub: id.and_then(|v| v.sub.as_deref()),
                realm: id.and_then(|v| v.realm.as_deref()),
                request_id: self.request_id.to_str().ok(),
                client: self.client,
                elapsed,
            },
        );
        if gw.access_log.enabled() || gw.request_log.is_some() {
            self.log(gw, elapsed, outcome, cost, trace_id.as_ref());
        }
    }

    fn log(
        &self,
        gw: &Gateway,
        elapsed: std::time::Duration,
        outcome: &Outcome<'_>,
        cost: Option<f64>,
        trace_id: Option<&HexTraceId>,
    ) {
        let cfg = &gw.config;
        let id = self.identity.as_deref();
        let rec = Record {
            time: Stamp::now(),
            request_id: self.request_id.to_str().unwrap_or(""),
            client_ip: self.client,
            method: self.method.as_str(),
            path: self.path.as_deref().unwrap_or(""),
            protocol: version_str(self.version),
            route: self.route.map(|r| cfg.routes[r].name.as_str()),
            status: outcome.status,
            duration_ms: millis(elapsed),
            // a complete response without a body byte was whole when its head went; an
            // incomplete one without any never gave the client a byte of body
            ttfb_ms: match outcome.first_byte {
                Some(t) => Some(millis(t.saturating_duration_since(self.start))),
                None => outcome.complete.then(|| millis(elapsed)),
            },
            upstream: self.upstream.map(|u| cfg.upstreams[u].name.as_str()),
            upstream_status: outcome.upstream_status,
            attempts: self.tries.attempts,
            endpoint: self.tries.endpoint.as_ref().map(|a| a.as_str()),
            sub: id.and_then(|v| v.sub.as_deref()),
            iss: id.map(|v| &*v.iss),
            realm: id.and_then(|v| v.realm.as_deref()),
            bytes_in: self
                .bytes_in
                .as_ref()
                .map_or(0, |n| n.load(Ordering::Relaxed)),
            bytes_out: outcome.bytes_out,
            reason: outcome.reason,
            incomplete: !outcome.complete,
            trace_id: trace_id.map(HexTraceId::as_str),
            ai: outcome.usage.map(|o| ai::fields(o, cost)),
        };
        gw.access_log.log_request(&rec);
        if let Some(l) = &gw.request_log {
            l.log(&rec, id, self.log_fields.as_ref());
        }
    }
}

/// Milliseconds with microsecond precision, as the logs print durations.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// How an exchange ended, as the metrics and the access log record it.
struct Outcome<'a> {
    /// the status the client got
    status: u16,
    /// the refusal's reason code, or the stream limit that cut an answered stream
    /// (`stream_idle_timeout`, `stream_timeout`); none otherwise
    reason: Option<&'a str>,
    upstream_status: Option<u16>,
    bytes_out: u64,
    /// when the response's first body byte went to the client
    first_byte: Option<Instant>,
    /// the response body ended normally
    complete: bool,
    /// what the usage tap saw (AI routes' upstream responses only)
    usage: Option<&'a Observed>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.answered {
            // cut by the shutdown timeout, or abandoned by the client
            let (status, reason) = if drain::is_cut_off() {
                (503, "shutting_down")
            } else {
                (499, "client_closed")
            };
            self.record(&Outcome {
                status,
                reason: Some(reason),
                upstream_status: None,
                bytes_out: 0,
                first_byte: None,
                complete: false,
                usage: None,
            });
        }
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP",
    }
}
