//! Response body: the upstream's body streamed through frame by frame (SSE reaches the client
//! event by event), or a small body of our own. Counts the bytes it sends and calls a
//! completion hook once, when the body ends or is dropped (client gone), so access logs and
//! duration metrics cover the whole response. An upstream body may carry the route's stream
//! limits (`Limits`: `idle_timeout`, `timeout`): when one expires, a gRPC stream ends with
//! `grpc-status: 4` in its trailers (its headers are already sent, and a bare reset would tell
//! the client nothing), any other body ends with an error (the client sees a truncated
//! response, never a complete-looking one). A gRPC stream the upstream breaks ends likewise,
//! with `grpc-status: 14` (UNAVAILABLE).
//!
//! An AI route's body also carries a usage [`Tap`]: it looks at each data frame as the frame
//! passes (a bounded scan or copy; the frame itself goes on unchanged, never held back for a
//! later one) and its findings go to the completion hook — also when the client went away mid-stream, with what was seen
//! up to then.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::usage::{Observed, Tap};

/// How a body ended, for its completion hook.
#[derive(Debug)]
pub struct Done {
    /// bytes sent
    pub sent: u64,
    /// the body ended normally
    pub complete: bool,
    /// the reason code when a stream limit ended it: `stream_idle_timeout` or `stream_timeout`
    pub cut: Option<&'static str>,
    /// what the usage tap saw (bodies with a tap only)
    pub usage: Option<Observed>,
    /// when the first data byte was handed to the client (none: the body had none)
    pub first_byte: Option<Instant>,
}

/// Called once, when the body ends or is dropped.
pub type OnDone = Box<dyn FnOnce(Done) + Send>;

pub struct Body {
    kind: Kind,
    sent: u64,
    /// see `Done::first_byte`; read from the clock only for a body with a completion hook
    first_byte: Option<Instant>,
    on_done: Option<OnDone>,
    limits: Option<Box<Watch>>,
    /// a gRPC response: ended by trailers, never by an error
    grpc: bool,
    /// reads AI usage off the data frames (AI routes only)
    tap: Option<Box<Tap>>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
    /// a gRPC stream cut by a limit: its closing trailers, then the end
    Trailers(Option<HeaderMap>),
}

/// Why a response body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Upstream(#[from] hyper::Error),
    #[error("stream idle for {0:?} (idle_timeout)")]
    Idle(Duration),
    #[error("stream exceeded the route's timeout of {0:?}")]
    Timeout(Duration),
}

impl BodyError {
    /// The reason code of a cut (access log, `grpc-message`).
    pub fn reason(&self) -> &'static str {
        match self {
            BodyError::Upstream(_) => "upstream_unavailable",
            BodyError::Idle(_) => "stream_idle_timeout",
            BodyError::Timeout(_) => "stream_timeout",
        }
    }
}

/// A route's limits on a streamed response.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// no bytes either way for this long ends the stream
    pub idle: Option<Duration>,
    /// the stream ends at this instant (the request's arrival + the route's `timeout`)
    pub deadline: Option<(std::time::Instant, Duration)>,
    /// bytes the client has sent so far (its request body): activity the other way
    pub inbound: Option<Arc<AtomicU64>>,
    /// end with gRPC trailers rather than an error
    pub grpc: bool,
}

/// Timers of a limited body. The idle timer is armed only when the upstream has nothing to
/// send (a busy stream never touches the timer wheel); when it fires it re-checks the last
/// activity either way before ending anything.
struct Watch {
    limits: Limits,
    last_activity: Instant,
    inbound_seen: u64,
    idle_timer: Option<Pin<Box<Sleep>>>,
    deadline_timer: Option<Pin<Box<Sleep>>>,
}

impl Body {
    pub fn upstream(b: Incoming) -> Self {
        Body {
            kind: Kind::Upstream(b),
            sent: 0,
            first_byte: None,
            on_done: None,
            limits: None,
            grpc: false,
            tap: None,
        }
    }

    /// An upstream body under a route's stream limits.
    pub fn upstream_limited(b: Incoming, limits: Limits) -> Self {
        let mut body = Body::upstream(b);
        body.grpc = limits.grpc;
        if limits.idle.is_some() || limits.deadline.is_some() {
            body.limits = Some(Box::new(Watch {
                inbound_seen: limits
                    .inbound
                    .as_ref()
                    .map_or(0, |n| n.load(Ordering::Relaxed)),
                limits,
                last_activity: Instant::now(),
                idle_timer: None,
                deadline_timer: None,
            }));
        }
        body
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Body {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
            sent: 0,
            first_byte: None,
            on_done: None,
            limits: None,
            grpc: false,
            tap: None,
        }
    }

    pub fn empty() -> Self {
        Body {
            kind: Kind::Full(None),
            sent: 0,
            first_byte: None,
            on_done: None,
            limits: None,
            grpc: false,
            tap: None,
        }
    }

    pub fn on_done(&mut self, f: OnDone) {
        self.on_done = Some(f);
    }

    /// Watches the data frames for AI usage; the result goes to the completion hook.
    pub fn tap(&mut self, t: Tap) {
        self.tap = Some(Box::new(t));
    }

    fn finish(&mut self, complete: bool) {
        self.finish_with(complete, None);
    }

    fn finish_with(&mut self, complete: bool, cut: Option<&'static str>) {
        if let Some(f) = self.on_done.take() {
            f(Done {
                sent: self.sent,
                complete,
                cut,
                usage: self.tap.take().map(|t| t.finish()),
                first_byte: self.first_byte,
            });
        }
    }

    /// A limit expired or the upstream broke: the upstream stream is dropped (which cancels
    /// it upstream) and the client gets gRPC trailers or an error.
    fn end(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        tracing::debug!(error = %e, "ending a stream");
        self.limits = None;
        let (code, cut, message) = match &e {
            // the cause (addresses) stays in our logs, as for a refusal
            BodyError::Upstream(_) => (
                crate::grpc::code::UNAVAILABLE,
                None,
                "upstream_unavailable: the upstream broke the stream".to_string(),
            ),
            _ => (
                crate::grpc::code::DEADLINE_EXCEEDED,
                Some(e.reason()),
                format!("{}: {e}", e.reason()),
            ),
        };
        self.finish_with(false, cut);
        if self.grpc {
            let mut t = HeaderMap::new();
            t.insert(crate::grpc::GRPC_STATUS, HeaderValue::from(code));
            t.insert(crate::grpc::GRPC_MESSAGE, crate::grpc::message(&message));
            self.kind = Kind::Trailers(None);
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        self.kind = Kind::Full(None);
        Poll::Ready(Some(Err(e)))
    }
}

impl Watch {
    /// Polls the limits while the upstream is quiet: `Some(e)` when one expired.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Option<BodyError> {
        if let Some((at, total)) = self.limits.deadline {
            let t = self
                .deadline_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::from_std(at))));
            if t.as_mut().poll(cx).is_ready() {
                return Some(BodyError::Timeout(total));
            }
        }
        let idle = self.limits.idle?;
        loop {
            let timer = self.idle_timer.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(self.last_activity + idle))
            });
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            // the client sent bytes meanwhile: that is activity too (noticed now, so a stream
            // with only client traffic is ended at most one idle period late, never early)
            if let Some(n) = &self.limits.inbound {
                let seen = n.load(Ordering::Relaxed);
                if seen != self.inbound_seen {
                    self.inbound_seen = seen;
                    self.last_activity = Instant::now();
                }
            }
            let until = self.last_activity + idle;
            if until <= Instant::now() {
                return Some(BodyError::Idle(idle));
            }
            timer.as_mut().reset(until);
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // an empty body is never polled; otherwise the client went away mid-body
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let r = match &mut this.kind {
            Kind::Upstream(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => return this.end(e.into()),
                Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(BodyError::from))),
                Poll::Pending => {
                    let expired = this.limits.as_mut().and_then(|w| w.poll_expired(cx));
                    return match expired {
                        Some(e) => this.end(e),
                        None => Poll::Pending,
                    };
                }
            },
            Kind::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            Kind::Trailers(t) => Poll::Ready(t.take().map(|t| Ok(Frame::trailers(t)))),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    if this.sent == 0 && !d.is_empty() && this.on_done.is_some() {
                        this.first_byte = Some(Instant::now());
                    }
                    this.sent += d.len() as u64;
                    if let Some(t) = &mut this.tap {
                        t.data(d);
                    }
                    if let Some(w) = &mut this.limits {
                        w.last_activity = Instant::now();
                    }
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Full(b) => b.is_none(),
            Kind::Trailers(t) => t.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b) => b.size_hint(),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Trailers(_) => SizeHint::default(),
        }
    }
}
