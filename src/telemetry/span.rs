//! One request's trace record (`Trace`, behind the pipeline's `TraceSlot`) and the OTLP spans
//! built from it when it is exported.
//!
//! The record is a handful of `Instant`s: steps open and close with one call each, and the
//! spans (names, attributes, wall-clock times) are only materialised at export.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Version};

use super::otlp::{self, kv_int, kv_str, KeyValue, Span};
use super::traceparent::{self, TraceParent};
use crate::config::Route;

/// The pipeline's handle on its request's trace: empty (every call a no-op) when the request
/// is not traced.
#[derive(Default)]
pub struct TraceSlot(pub(super) Option<Box<Trace>>);

/// A step recorded as a child span of the server span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `auth.verify`
    Auth,
    /// `budget.decide`
    Budget,
}

pub(super) struct Trace {
    trace_id: [u8; 16],
    /// the server span
    span_id: [u8; 8],
    /// the client's span (with a valid `traceparent`)
    parent: Option<[u8; 8]>,
    pub(super) sampled: bool,
    tracestate: Option<HeaderValue>,
    /// wall clock at `start` (ns since the epoch): span times are `start` + monotonic offsets
    wall_start: u64,
    start: Instant,
    /// `Host` / `:authority`, for `server.address`
    host: Option<HeaderValue>,
    uri: http::Uri,
    method: Method,
    version: Version,
    tls: bool,
    /// `X-Request-Id` (set by the handler before the pipeline runs)
    request_id: Option<HeaderValue>,
    auth: Option<Timing>,
    token_cache: Option<bool>,
    budget: Option<Timing>,
    /// one per upstream attempt, in order
    attempts: Vec<Attempt>,
}

#[derive(Clone, Copy)]
struct Timing {
    start: Instant,
    end: Option<Instant>,
}

struct Attempt {
    span_id: [u8; 8],
    time: Timing,
    endpoint: Option<String>,
    status: Option<u16>,
    error: Option<String>,
}

/// What the pipeline knows at the end of a request, for the server span's attributes.
pub struct Finish<'a> {
    pub status: u16,
    pub reason: Option<&'a str>,
    pub route: Option<&'a Route>,
    pub upstream: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub realm: Option<&'a str>,
    pub client: IpAddr,
    pub elapsed: Duration,
}

/// A trace id in lowercase hex, as logged.
#[derive(Clone, Copy)]
pub struct HexTraceId([u8; 32]);

impl HexTraceId {
    pub fn as_str(&self) -> &str {
        // only ASCII hex digits are ever written into it
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl TraceSlot {
    pub(super) fn trace(&self) -> Option<&Trace> {
        self.0.as_deref()
    }

    /// Marks the start of a step.
    pub fn enter(&mut self, step: Step) {
        if let Some(t) = &mut self.0 {
            *t.timing(step) = Some(Timing {
                start: Instant::now(),
                end: None,
            });
        }
    }

    /// Marks the end of a step (a step left open ends with the request).
    pub fn exit(&mut self, step: Step) {
        if let Some(Some(timing)) = self.0.as_mut().map(|t| t.timing(step)) {
            timing.end = Some(Instant::now());
        }
    }

    /// `auth.verify`'s `cc.token_cache`: whether the token came from the cache.
    pub fn token_cache(&mut self, hit: bool) {
        if let Some(t) = &mut self.0 {
            t.token_cache = Some(hit);
        }
    }

    /// Opens an `upstream.attempt` span; returns the `traceparent` (and `tracestate`) to send
    /// with it when the trace is propagated (sampled, or the client sent one).
    pub(super) fn begin_attempt(&mut self) -> Option<(HeaderValue, Option<HeaderValue>)> {
        let t = self.0.as_mut()?;
        let span_id = span_id();
        t.attempts.push(Attempt {
            span_id,
            time: Timing {
                start: Instant::now(),
                end: None,
            },
            endpoint: None,
            status: None,
            error: None,
        });
        if !t.propagated() {
            return None;
        }
        let tp = traceparent::format(&t.trace_id, &span_id, t.sampled);
        let tp = HeaderValue::from_str(&tp).ok()?;
        Some((tp, t.tracestate.clone()))
    }

    /// The current attempt's outcome: the endpoint and status that answered, or the error. A
    /// failed attempt ends now; one that got a response stays open until the response body is
    /// done (the request's end), so its span covers the whole exchange.
    pub fn attempt_done<T>(
        &mut self,
        result: &Result<(http::Response<T>, http::uri::Authority), impl std::fmt::Display>,
    ) {
        let Some(a) = self.0.as_mut().and_then(|t| t.attempts.last_mut()) else {
            return;
        };
        match result {
            Ok((resp, endpoint)) => {
                a.status = Some(resp.status().as_u16());
                a.endpoint = Some(endpoint.to_string());
            }
            Err(e) => {
                a.error = Some(e.to_string());
                a.time.end = Some(Instant::now());
            }
        }
    }
}

impl Trace {
    pub(super) fn new<B>(
        req: &http::Request<B>,
        start: Instant,
        tls: bool,
        client: Option<TraceParent>,
        sampled: bool,
        tracestate: Option<HeaderValue>,
    ) -> Trace {
        let wall_start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            // `start` was taken a moment earlier
            .saturating_sub(start.elapsed().as_nanos() as u64);
        Trace {
            trace_id: client.map_or_else(trace_id, |c| c.trace_id),
            span_id: span_id(),
            parent: client.map(|c| c.parent_id),
            sampled,
            tracestate,
            wall_start,
            start,
            host: req.headers().get(http::header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
            uri: req.uri().clone(),
            method: req.method().clone(),
            version: req.version(),
            tls,
            request_id: req.headers().get(crate::forward::X_REQUEST_ID).cloned(),
            auth: None,
            token_cache: None,
            budget: None,
            attempts: Vec::new(),
        }
    }

    fn timing(&mut self, step: Step) -> &mut Option<Timing> {
        match step {
            Step::Auth => &mut self.auth,
            Step::Budget => &mut self.budget,
        }
    }

    /// The upstream hears of this trace: it is sampled, or the client's trace goes on.
    pub(super) fn propagated(&self) -> bool {
        self.sampled || self.parent.is_some()
    }

    pub(super) fn hex_id(&self) -> HexTraceId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in self.trace_id.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        HexTraceId(out)
    }

    fn nanos(&self, at: Instant) -> u64 {
        self.wall_start + at.saturating_duration_since(self.start).as_nanos() as u64
    }

    /// The server span and its children, as exported.
    pub(super) fn spans(&self, f: &Finish<'_>) -> Vec<Span> {
        let end = self.start + f.elapsed;
        let end_ns = self.nanos(end);
        let mut spans = Vec::with_capacity(3 + self.attempts.len());
        let mut server = self.span(
            self.span_id,
            self.parent,
            server_name(&self.method, f),
            otlp::KIND_SERVER,
            self.start,
            end,
        );
        server.trace_state = self
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        server.attributes = self.server_attributes(f);
        if f.status >= 500 {
            server.status = Some(otlp::Status {
                message: f.reason.unwrap_or("").to_string(),
                code: otlp::STATUS_ERROR,
            });
        }
        server.end_time_unix_nano = end_ns;
        // a public route verifies nothing: no `auth.verify` span
        let public = f
            .route
            .is_some_and(|r| r.auth == crate::config::RouteAuth::Public);
        if let Some(t) = self.auth.filter(|_| !public) {
            let mut s = self.child("auth.verify", otlp::KIND_INTERNAL, t, end);
            if let Some(hit) = self.token_cache {
                s.attributes
                    .push(kv_str("cc.token_cache", if hit { "hit" } else { "miss" }));
            }
            spans.push(s);
        }
        if let Some(t) = self.budget {
            spans.push(self.child("budget.decide", otlp::KIND_INTERNAL, t, end));
        }
        for a in &self.attempts {
            spans.push(self.attempt(a, f, end));
        }
        spans.insert(0, server);
        spans
    }

    fn server_attributes(&self, f: &Finish<'_>) -> Vec<KeyValue> {
        let mut a = vec![
            kv_str("http.request.method", self.method.as_str()),
            kv_str("url.path", self.uri.path()),
            kv_str("url.scheme", if self.tls { "https" } else { "http" }),
            kv_str("network.protocol.version", protocol_version(self.version)),
            kv_str("client.address", f.client.to_string()),
            kv_int("http.response.status_code", i64::from(f.status)),
        ];
        if let Some((host, port)) = self
            .host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(split_host)
        {
            a.push(kv_str("server.address", host));
            if let Some(p) = port {
                a.push(kv_int("server.port", i64::from(p)));
            }
        }
        if let Some(id) = self.request_id.as_ref().and_then(|v| v.to_str().ok()) {
            a.push(kv_str("cc.request_id", id));
        }
        if let Some(q) = self.uri.query() {
            a.push(kv_str("url.query", q));
        }
        if let Some(r) = f.route {
            a.push(kv_str("http.route", r.path_prefix.as_str()));
            a.push(kv_str("cc.route", r.name.as_str()));
        }
        let optional = [
            ("cc.reason", f.reason),
            ("cc.sub", f.sub),
            ("cc.realm", f.realm),
            ("cc.upstream", f.upstream),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                a.push(kv_str(k, v));
            }
        }
        if f.status >= 500 {
            a.push(kv_str("error.type", f.status.to_string()));
        }
        a
    }

    fn attempt(&self, at: &Attempt, f: &Finish<'_>, end: Instant) -> Span {
        let mut s = self.child("upstream.attempt", otlp::KIND_CLIENT, at.time, end);
        s.span_id = at.span_id.to_vec();
        s.attributes
            .push(kv_str("http.request.method", self.method.as_str()));
        if let Some(u) = f.upstream {
            s.attributes.push(kv_str("cc.upstream", u));
        }
        if let Some((host, port)) = at.endpoint.as_deref().map(split_host) {
            s.attributes.push(kv_str("server.address", host));
            if let Some(p) = port {
                s.attributes.push(kv_int("server.port", i64::from(p)));
            }
        }
        if let Some(code) = at.status {
            s.attributes
                .push(kv_int("http.response.status_code", i64::from(code)));
            if code >= 400 {
                s.attributes.push(kv_str("error.type", code.to_string()));
                s.status = Some(otlp::Status {
                    message: String::new(),
                    code: otlp::STATUS_ERROR,
                });
            }
        }
        if let Some(e) = &at.error {
            s.attributes.push(kv_str("error.type", "upstream_error"));
            s.status = Some(otlp::Status {
                message: e.clone(),
                code: otlp::STATUS_ERROR,
            });
        }
        s
    }

    fn child(&self, name: &str, kind: i32, t: Timing, end: Instant) -> Span {
        let id = span_id();
        self.span(
            id,
            Some(self.span_id),
            name.to_string(),
            kind,
            t.start,
            t.end.unwrap_or(end),
        )
    }

    fn span(
        &self,
        id: [u8; 8],
        parent: Option<[u8; 8]>,
        name: String,
        kind: i32,
        start: Instant,
        end: Instant,
    ) -> Span {
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: id.to_vec(),
            trace_state: String::new(),
            parent_span_id: parent.map_or_else(Vec::new, |p| p.to_vec()),
            name,
            kind,
            start_time_unix_nano: self.nanos(start),
            end_time_unix_nano: self.nanos(end),
            attributes: Vec::new(),
            status: None,
        }
    }
}

/// `GET api` (method and route name), or the method alone for a request no route matched.
fn server_name(method: &Method, f: &Finish<'_>) -> String {
    match f.route {
        Some(r) => format!("{method} {}", r.name),
        None => method.to_string(),
    }
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        _ => "",
    }
}

/// `host:port` → (host, port); brackets of an IPv6 literal removed.
fn split_host(s: &str) -> (&str, Option<u16>) {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            (h, p.parse().ok())
        }
        _ => (s, None),
    };
    (host.trim_start_matches('[').trim_end_matches(']'), port)
}

/// Random, never all-zero (the spec's invalid id).
fn trace_id() -> [u8; 16] {
    let v = fastrand::u128(1..);
    v.to_be_bytes()
}

fn span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::split_host;

    #[test]
    fn hosts_split() {
        assert_eq!(split_host("a.example:8080"), ("a.example", Some(8080)));
        assert_eq!(split_host("a.example"), ("a.example", None));
        assert_eq!(split_host("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host("::1"), ("::1", None));
    }
}
