//! One request's trace record (`Trace`, behind the pipeline's `TraceSlot`).
//!
//! The request path only records: a handful of `Instant`s while the request runs, then at its
//! end (`seal`, only for a trace that is exported) the few strings the spans need copied into
//! one buffer, so the record no longer borrows the connection's read buffer nor the config.
//! The spans themselves — names, attributes, wall-clock times, protobuf — are made on the export
//! thread (`encode`), which frees the record there: a sampled request costs the worker no
//! allocation beyond the record itself (strings inline, up to a bound) and the `traceparent`
//! header.

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
    /// the first upstream attempt (inline: the usual request has one), then any retries
    first_attempt: Option<Attempt>,
    retries: Vec<Attempt>,
    /// every string the spans carry, back to back (`Text` ranges into it)
    pub(super) text: TextBuf,
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

/// Room for the usual strings (host, path, request id, route, identity, endpoint) inside the
/// record itself: an exported request then costs the worker one allocation, not three.
const INLINE_TEXT: usize = 256;

/// The record's strings, back to back: inline while they fit, moved whole to the heap past
/// that (so earlier `Text` ranges stay valid).
pub(super) struct TextBuf {
    inline: [u8; INLINE_TEXT],
    len: usize,
    /// in use once the inline room ran out
    heap: Option<String>,
}

impl TextBuf {
    fn new() -> TextBuf {
        TextBuf {
            inline: [0; INLINE_TEXT],
            len: 0,
            heap: None,
        }
    }

    fn len(&self) -> usize {
        self.heap.as_ref().map_or(self.len, String::len)
    }

    pub(super) fn as_str(&self) -> &str {
        match &self.heap {
            Some(h) => h,
            // only whole `str`s are ever copied in: always UTF-8
            None => std::str::from_utf8(&self.inline[..self.len]).unwrap_or(""),
        }
    }

    /// Appends `s` and returns where it went.
    fn put(&mut self, s: &str) -> Text {
        let at = self.len();
        self.push(s);
        self.since(at)
    }

    fn push(&mut self, s: &str) {
        if self.heap.is_none() && self.len + s.len() <= INLINE_TEXT {
            self.inline[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
            return;
        }
        let heap = self.heap.get_or_insert_with(|| {
            let mut h = String::with_capacity(2 * INLINE_TEXT + s.len());
            h.push_str(std::str::from_utf8(&self.inline[..self.len]).unwrap_or(""));
            h
        });
        heap.push_str(s);
    }

    fn since(&self, at: usize) -> Text {
        Text {
            at: at as u32,
            len: (self.len() - at) as u32,
        }
    }
}

impl std::fmt::Write for TextBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s);
        Ok(())
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
    /// `X-Request-Id` (the exchange's: the handler set the header to it)
    pub request_id: Option<&'a str>,
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
        let a = Attempt {
            span_id,
            time: Timing {
                start: Instant::now(),
                end: None,
            },
            endpoint: None,
            status: None,
            error: None,
        };
        match t.first_attempt {
            None => t.first_attempt = Some(a),
            Some(_) => t.retries.push(a),
        }
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
        let Some(a) = t.retries.last_mut().or(t.first_attempt.as_mut()) else {
            return;
        };
        match result {
            Ok((resp, endpoint)) => {
                a.status = Some(resp.status().as_u16());
                a.endpoint = Some(text.put(endpoint.as_str()));
            }
            Err(e) => {
                let at = text.len();
                // writing into a TextBuf cannot fail
                let _ = write!(text, "{e}");
                a.error = Some(text.since(at));
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
            first_attempt: None,
            retries: Vec::new(),
            text: TextBuf::new(),
            live: Some(Live {
                tracestate,
                host: req.headers().get(http::header::HOST).cloned(),
                uri: req.uri().clone(),
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

    /// The upstream attempts, in order.
    pub(super) fn attempts(&self) -> impl Iterator<Item = &Attempt> {
        self.first_attempt.iter().chain(&self.retries)
    }

    /// How many spans the record makes (what a drop counts).
    pub(super) fn span_count(&self) -> u64 {
        let public = self.end.as_ref().is_some_and(|e| e.public);
        1 + u64::from(self.auth.is_some() && !public)
            + u64::from(self.budget.is_some())
            + self.attempts().count() as u64
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
            .chain(self.first_attempt.iter_mut().map(|a| &mut a.time.end))
            .chain(self.retries.iter_mut().map(|a| &mut a.time.end))
        {
            t.get_or_insert(end);
        }
        let live = self.live.take();
        let text = &mut self.text;
        let mut opt = |s: Option<&str>| s.map(|s| text.put(s));
        let request_id = opt(f.request_id);
        let (tracestate, host, query) = match &live {
            Some(l) => (
                opt(l.tracestate.as_ref().and_then(|v| v.to_str().ok())),
                // `Host`, or an HTTP/2 request's `:authority`
                opt(l
                    .host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| l.uri.authority().map(|a| a.as_str()))),
                opt(l.uri.query()),
            ),
            None => (None, None, None),
        };
        let path = text.put(live.as_ref().map_or("", |l| l.uri.path()));
        let route = f
            .route
            .map(|r| (text.put(r.path_prefix.as_str()), text.put(r.name.as_str())));
        let mut opt = |s: Option<&str>| s.map(|s| text.put(s));
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
        request_id: Some("r-1"),
        client: IpAddr::from([127, 0, 0, 1]),
        elapsed: Duration::from_millis(1),
    });
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_spills_whole_and_keeps_its_ranges() {
        let mut t = TextBuf::new();
        let a = t.put("host.example");
        let long = "p".repeat(INLINE_TEXT);
        assert!(t.heap.is_none());
        let b = t.put(&long);
        assert!(t.heap.is_some(), "past the inline room: on the heap");
        let at = t.len();
        let n = 1;
        let _ = write!(t, "{n}-x");
        let c = t.since(at);
        let s = t.as_str();
        assert_eq!(
            (a.of(s), b.of(s), c.of(s)),
            ("host.example", long.as_str(), "1-x")
        );
    }

    #[test]
    fn a_sealed_record_counts_its_spans() {
        let t = sealed_for_test();
        // the server span alone: no step, no attempt
        assert_eq!(t.span_count(), 1);
        let e = t.end.as_ref().unwrap();
        let s = t.text.as_str();
        assert_eq!(e.path.of(s), "/x");
        assert_eq!(e.query.map(|q| q.of(s)), Some("q=1"));
        assert_eq!(e.host.map(|h| h.of(s)), Some("a.example"));
        assert_eq!(e.request_id.map(|r| r.of(s)), Some("r-1"));
    }
}
