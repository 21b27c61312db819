//! One request's trace record (`Trace`, behind the pipeline's `TraceSlot`).
//!
//! The request path only records: a handful of `Instant`s while the request runs, then at its
//! end (`seal`, only for a trace that is exported) the few strings the spans need copied into
//! one buffer, so the record no longer borrows the connection's read buffer nor the config.
//! The spans themselves — names, attributes, wall-clock times, protobuf — are made on the export
//! thread (`encode`), which frees the record there: a sampled request costs the worker no
//! allocation beyond the record, its text buffer, its attempts and the `traceparent` header.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Version};

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
    pub(super) trace_id: [u8; 16],
    /// the server span
    pub(super) span_id: [u8; 8],
    /// the client's span (with a valid `traceparent`)
    pub(super) parent: Option<[u8; 8]>,
    pub(super) sampled: bool,
    pub(super) start: Instant,
    pub(super) method: Method,
    pub(super) version: Version,
    pub(super) tls: bool,
    pub(super) auth: Option<Timing>,
    pub(super) token_cache: Option<bool>,
    pub(super) budget: Option<Timing>,
    /// one per upstream attempt, in order
    pub(super) attempts: Vec<Attempt>,
    /// every string the spans carry, back to back (`Text` ranges into it)
    pub(super) text: String,
    /// borrowed from the request until `seal` copies what it needs into `text`
    live: Option<Live>,
    /// set by `seal`
    pub(super) end: Option<Sealed>,
}

/// What the request lends the record while it runs: cheap clones (refcounts on the
/// connection's buffer), dropped at `seal` so a queued record never holds that buffer.
struct Live {
    tracestate: Option<HeaderValue>,
    /// `Host`, for `server.address`
    host: Option<HeaderValue>,
    uri: http::Uri,
    /// `X-Request-Id` (set by the handler before the pipeline runs)
    request_id: Option<HeaderValue>,
}

/// A range of `Trace::text`.
#[derive(Clone, Copy, Default)]
pub(super) struct Text {
    at: u32,
    len: u32,
}

impl Text {
    pub(super) fn of<'a>(&self, text: &'a str) -> &'a str {
        let (at, len) = (self.at as usize, self.len as usize);
        text.get(at..at + len).unwrap_or("")
    }
}

/// Appends `s` to `text` and returns where it went.
fn put(text: &mut String, s: &str) -> Text {
    let at = text.len();
    text.push_str(s);
    range(text, at)
}

fn range(text: &str, at: usize) -> Text {
    Text {
        at: at as u32,
        len: (text.len() - at) as u32,
    }
}

#[derive(Clone, Copy)]
pub(super) struct Timing {
    pub(super) start: Instant,
    pub(super) end: Option<Instant>,
}

pub(super) struct Attempt {
    pub(super) span_id: [u8; 8],
    pub(super) time: Timing,
    pub(super) endpoint: Option<Text>,
    pub(super) status: Option<u16>,
    pub(super) error: Option<Text>,
}

/// The request's end, as the server span reports it (strings are ranges of `Trace::text`).
pub(super) struct Sealed {
    pub(super) end: Instant,
    pub(super) status: u16,
    pub(super) client: IpAddr,
    /// a public route verifies nothing: no `auth.verify` span
    pub(super) public: bool,
    pub(super) tracestate: Option<Text>,
    pub(super) host: Option<Text>,
    pub(super) path: Text,
    pub(super) query: Option<Text>,
    pub(super) request_id: Option<Text>,
    /// the route's `path_prefix` and name
    pub(super) route: Option<(Text, Text)>,
    pub(super) reason: Option<Text>,
    pub(super) sub: Option<Text>,
    pub(super) realm: Option<Text>,
    pub(super) upstream: Option<Text>,
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

/// Room for the usual strings (host, path, request id, route, identity, endpoint) without
/// growing: one allocation per exported request.
const TEXT_CAPACITY: usize = 256;

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
        // formatted on the stack: the header value is the only allocation
        let tp = traceparent::format_bytes(&t.trace_id, &span_id, t.sampled);
        let tp = HeaderValue::from_bytes(&tp).ok()?;
        let ts = t.live.as_ref().and_then(|l| l.tracestate.clone());
        Some((tp, ts))
    }

    /// The current attempt's outcome: the endpoint and status that answered, or the error. A
    /// failed attempt ends now; one that got a response stays open until the response body is
    /// done (the request's end), so its span covers the whole exchange.
    pub fn attempt_done<T>(
        &mut self,
        result: &Result<(http::Response<T>, http::uri::Authority), impl std::fmt::Display>,
    ) {
        let Some(t) = self.0.as_deref_mut() else {
            return;
        };
        let text = &mut t.text;
        let Some(a) = t.attempts.last_mut() else {
            return;
        };
        if text.capacity() == 0 {
            text.reserve(TEXT_CAPACITY);
        }
        match result {
            Ok((resp, endpoint)) => {
                a.status = Some(resp.status().as_u16());
                a.endpoint = Some(put(text, endpoint.as_str()));
            }
            Err(e) => {
                let at = text.len();
                // writing into a String cannot fail
                let _ = write!(text, "{e}");
                a.error = Some(range(text, at));
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
        Trace {
            trace_id: client.map_or_else(trace_id, |c| c.trace_id),
            span_id: span_id(),
            parent: client.map(|c| c.parent_id),
            sampled,
            start,
            method: req.method().clone(),
            version: req.version(),
            tls,
            auth: None,
            token_cache: None,
            budget: None,
            attempts: Vec::new(),
            text: String::new(),
            live: Some(Live {
                tracestate,
                host: req.headers().get(http::header::HOST).cloned(),
                uri: req.uri().clone(),
                request_id: req.headers().get(crate::forward::X_REQUEST_ID).cloned(),
            }),
            end: None,
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

    /// How many spans the record makes (what a drop counts).
    pub(super) fn span_count(&self) -> u64 {
        let public = self.end.as_ref().is_some_and(|e| e.public);
        1 + u64::from(self.auth.is_some() && !public)
            + u64::from(self.budget.is_some())
            + self.attempts.len() as u64
    }

    /// The request's end, on the worker, for a trace that is exported: copies the strings its
    /// spans carry into `text` and lets go of the request's and the config's, so the record can
    /// travel to the export thread on its own.
    pub(super) fn seal(&mut self, f: &Finish<'_>) {
        let end = self.start + f.elapsed;
        for t in [&mut self.auth, &mut self.budget]
            .into_iter()
            .flatten()
            .map(|t| &mut t.end)
            .chain(self.attempts.iter_mut().map(|a| &mut a.time.end))
        {
            t.get_or_insert(end);
        }
        if self.text.capacity() == 0 {
            self.text.reserve(TEXT_CAPACITY);
        }
        let live = self.live.take();
        let text = &mut self.text;
        let mut opt = |s: Option<&str>| s.map(|s| put(text, s));
        let (tracestate, host, request_id, query) = match &live {
            Some(l) => (
                opt(l.tracestate.as_ref().and_then(|v| v.to_str().ok())),
                // `Host`, or an HTTP/2 request's `:authority`
                opt(l
                    .host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| l.uri.authority().map(|a| a.as_str()))),
                opt(l.request_id.as_ref().and_then(|v| v.to_str().ok())),
                opt(l.uri.query()),
            ),
            None => (None, None, None, None),
        };
        let path = put(text, live.as_ref().map_or("", |l| l.uri.path()));
        let route = f.route.map(|r| {
            (
                put(text, r.path_prefix.as_str()),
                put(text, r.name.as_str()),
            )
        });
        let mut opt = |s: Option<&str>| s.map(|s| put(text, s));
        self.end = Some(Sealed {
            end,
            status: f.status,
            client: f.client,
            public: f
                .route
                .is_some_and(|r| r.auth == crate::config::RouteAuth::Public),
            tracestate,
            host,
            path,
            query,
            request_id,
            route,
            reason: opt(f.reason),
            sub: opt(f.sub),
            realm: opt(f.realm),
            upstream: opt(f.upstream),
        });
    }
}

/// Random, never all-zero (the spec's invalid id). `fastrand` is a per-thread wyrand: a few
/// instructions, no lock, no syscall.
fn trace_id() -> [u8; 16] {
    let v = fastrand::u128(1..);
    v.to_be_bytes()
}

pub(super) fn span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

/// A sealed record of a plain request, for the exporter's tests.
#[cfg(test)]
pub(super) fn sealed_for_test() -> Box<Trace> {
    let req = http::Request::get("http://a.example/x?q=1")
        .body(())
        .unwrap();
    let mut t = Box::new(Trace::new(&req, Instant::now(), false, None, true, None));
    t.seal(&Finish {
        status: 200,
        reason: None,
        route: None,
        upstream: None,
        sub: None,
        realm: None,
        client: IpAddr::from([127, 0, 0, 1]),
        elapsed: Duration::from_millis(1),
    });
    t
}
