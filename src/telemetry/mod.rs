//! OpenTelemetry traces: a server span per request with children for its steps, exported as
//! OTLP/HTTP protobuf by a thread of its own (`export`).
//!
//! Cost model. Without `[telemetry]` nothing happens at all. With it, a request that is
//! neither head-sampled nor carrying a client `traceparent` costs one header lookup and one
//! random number — no allocation, no clock read — unless `keep_errors` is on: then every
//! request keeps a small record (one allocation, one wall-clock read, an `Instant` per step)
//! because whether it is an error or slow is only known at its end (the tail decision). A
//! request that is exported has its record sealed on the worker (its strings copied into one
//! buffer) and queued as is; its spans are encoded to protobuf by the export thread
//! (`encode`), so the workers build no OTLP message and read no wall clock.
//!
//! Why not the `opentelemetry` SDK: it would put its span objects, context and locks on every
//! sampled request and pull a large dependency tree; the gateway's spans are a fixed shape
//! known per step, so a plain record written as protobuf at the end does the same job (`otlp`
//! holds the hand-written encoding).
//!
//! Propagation (see `Tracer::propagate`): the client's `traceparent`/`tracestate` are always
//! removed from the upstream request when `[telemetry]` is on; ours, naming the
//! `upstream.attempt` span, replaces them when the request is sampled or the client sent a
//! valid one (its trace goes on through us, sampled or not). A malformed one is never
//! forwarded.

mod encode;
mod export;
mod otlp;
mod span;
pub mod traceparent;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Telemetry;
use export::Exporter;
use span::Trace;
pub use span::{Finish, HexTraceId, Step, TraceSlot};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The process's trace exporter (or nothing, without `[telemetry]`). Cheap to clone; kept
/// across reloads that leave `[telemetry]` unchanged.
#[derive(Clone, Default)]
pub struct Tracer {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    cfg: Telemetry,
    exporter: Exporter,
}

impl Tracer {
    /// Starts the export thread for `cfg`; `None` is a tracer that records nothing.
    pub fn start(cfg: Option<&Telemetry>) -> Tracer {
        let Some(cfg) = cfg else {
            return Tracer::default();
        };
        match Exporter::start(cfg) {
            Ok(exporter) => Tracer {
                inner: Some(Arc::new(Inner {
                    cfg: cfg.clone(),
                    exporter,
                })),
            },
            Err(e) => {
                tracing::error!(error = %e, "traces disabled: cannot start the export thread");
                Tracer::default()
            }
        }
    }

    pub fn config(&self) -> Option<&Telemetry> {
        self.inner.as_ref().map(|i| &i.cfg)
    }

    /// The request's trace record, if it gets one: a client `traceparent` continues its trace
    /// (and its sampled flag decides), otherwise a new trace is head-sampled at
    /// `sample_ratio`; `keep_errors` records the rest too, for the decision at the end.
    pub fn begin<B>(&self, req: &http::Request<B>, start: Instant, tls: bool) -> TraceSlot {
        let Some(inner) = &self.inner else {
            return TraceSlot::default();
        };
        let client = client_parent(req.headers());
        let sampled = match &client {
            Some(tp) => tp.sampled,
            None => head_sample(inner.cfg.sample_ratio),
        };
        if !sampled && client.is_none() && !inner.cfg.keep_errors {
            return TraceSlot::default();
        }
        let tracestate = client.and_then(|_| tracestate(req.headers()));
        TraceSlot(Some(Box::new(Trace::new(
            req, start, tls, client, sampled, tracestate,
        ))))
    }

    /// Sets the upstream request's trace headers (step 4a): see the module's doc.
    pub fn propagate(&self, slot: &mut TraceSlot, headers: &mut HeaderMap) {
        if self.inner.is_none() {
            return;
        }
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        if let Some((tp, ts)) = slot.begin_attempt() {
            headers.insert(TRACEPARENT, tp);
            if let Some(ts) = ts {
                headers.insert(TRACESTATE, ts);
            }
        }
    }

    /// The end of the request: exports its spans if it was sampled or, with `keep_errors`, if
    /// it was refused, answered 5xx or slow. Returns the trace id to log — set when the trace
    /// is visible somewhere (exported, or carried on to the upstream), absent otherwise.
    pub fn finish(&self, slot: &mut TraceSlot, f: &Finish<'_>) -> Option<HexTraceId> {
        let (Some(inner), Some(t)) = (&self.inner, slot.trace()) else {
            return None;
        };
        let kept = t.sampled
            || (inner.cfg.keep_errors
                && (f.reason.is_some()
                    || f.status >= 500
                    || f.elapsed >= inner.cfg.slow_threshold));
        let id = (kept || t.propagated()).then(|| t.hex_id());
        if kept {
            if let Some(mut t) = slot.0.take() {
                t.seal(f);
                inner.exporter.send(t);
            }
        }
        id
    }

    /// Exports what is queued, waiting at most `timeout` (shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Some(i) = &self.inner {
            i.exporter.flush(timeout);
        }
    }
}

/// The client's `traceparent`, if it sent exactly one and it parses.
fn client_parent(h: &HeaderMap) -> Option<traceparent::TraceParent> {
    let mut all = h.get_all(TRACEPARENT).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return None; // several: ambiguous, a new trace
    }
    traceparent::parse(first.as_bytes())
}

/// The client's `tracestate`, its headers joined (the spec lets a list be split).
fn tracestate(h: &HeaderMap) -> Option<HeaderValue> {
    let mut all = h.get_all(TRACESTATE).iter();
    let first = all.next()?;
    let mut joined = first.as_bytes().to_vec();
    for v in all {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    // the spec bounds it: 32 members of at most 256 bytes
    if joined.len() > 8192 {
        return None;
    }
    HeaderValue::from_bytes(&joined).ok()
}

fn head_sample(ratio: f64) -> bool {
    if ratio >= 1.0 {
        true
    } else if ratio <= 0.0 {
        false
    } else {
        fastrand::f64() < ratio
    }
}
