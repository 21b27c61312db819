//! The request body sent upstream: none, the client's body streamed through and counted, the
//! same lent to one try at a time (so that a try that never read it, or read no more than the
//! copy kept of it, can hand it to the next), or a small body buffered for replays. Every
//! byte read from the client goes through a [`Meter`], which stops the body at the route's
//! `max_request_body`.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Why the body sent upstream failed: the client's side broke, or it went past the route's
/// limit (the pipeline answers that one `413 request_body_too_large`).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client's request body failed")]
    Client(#[source] hyper::Error),
    #[error("the request body is longer than the route's max_request_body ({limit} bytes)")]
    TooLarge { limit: u64 },
}

/// Counts the client's body bytes as they are read, and stops the body past `limit`.
pub struct Meter {
    read: Arc<AtomicU64>,
    limit: u64,
}

/// The body sent upstream.
pub enum ReqBody {
    Empty,
    Streamed(Incoming, Meter),
    /// the client's body, shared between the retry loop and the current try, which has
    /// taken the first `n` of the kept frames
    Lent(Arc<Lent>, usize),
    /// a replayable copy (the whole body, read before the first try)
    Buffered(Option<Bytes>),
}

/// A client body that a try borrows. The frames a try takes are kept (by reference, no copy)
/// while they total at most `limit`: a try can fail in a way that proves the request never
/// reached the application *after* its bytes went out — a stream above a GOAWAY's
/// last-stream-id, REFUSED_STREAM after DATA — and the next try then sends the kept frames and
/// the rest of the client's body. Past `limit` nothing is kept: a body read by a try is spent.
pub struct Lent {
    inner: Mutex<LentInner>,
    meter: Meter,
}

struct LentInner {
    body: Incoming,
    /// every frame taken from `body` so far; None once they passed `limit`
    kept: Option<Vec<Frame<Bytes>>>,
    kept_len: u64,
    limit: u64,
    /// a frame was taken from the body: part of it left for the upstream
    read: bool,
}

impl Lent {
    /// Whether another try can still send all of the body: none read it, or all it read is kept.
    pub fn replayable(&self) -> bool {
        let l = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        !l.read || l.kept.is_some()
    }
}

/// A copy of a kept frame (`Frame` is not `Clone`; a body has only data and trailers frames).
fn copy(f: &Frame<Bytes>) -> Frame<Bytes> {
    match f.data_ref() {
        Some(d) => Frame::data(d.clone()),
        None => Frame::trailers(f.trailers_ref().cloned().unwrap_or_default()),
    }
}

impl ReqBody {
    /// Wraps a client body that may carry at most `limit` bytes (None: any number); returns
    /// the counter of bytes read from the client.
    pub fn from_client(b: Incoming, limit: Option<u64>) -> (ReqBody, Option<Arc<AtomicU64>>) {
        if b.is_end_stream() {
            return (ReqBody::Empty, None);
        }
        let read = Arc::new(AtomicU64::new(0));
        let meter = Meter {
            read: read.clone(),
            limit: limit.unwrap_or(u64::MAX),
        };
        (ReqBody::Streamed(b, meter), Some(read))
    }

    /// A streamed body made lendable, keeping up to `limit` bytes of what tries read for the
    /// next try (other bodies stay as they are).
    pub fn lendable(self, limit: u64) -> ReqBody {
        match self {
            ReqBody::Streamed(body, meter) => ReqBody::Lent(
                Arc::new(Lent {
                    inner: Mutex::new(LentInner {
                        body,
                        kept: Some(Vec::new()),
                        kept_len: 0,
                        limit,
                        read: false,
                    }),
                    meter,
                }),
                0,
            ),
            other => other,
        }
    }

    /// Reads a streamed body whose declared length is at most `limit` into memory (the
    /// counter gets its size). Bodies without a declared length, or a longer one, are left
    /// streaming: buffering never goes past `limit` and never delays a stream.
    pub async fn buffer_up_to(self, limit: u64) -> Result<ReqBody, hyper::Error> {
        let ReqBody::Streamed(b, meter) = self else {
            return Ok(self);
        };
        if b.size_hint().upper().is_none_or(|n| n > limit) {
            return Ok(ReqBody::Streamed(b, meter));
        }
        // a declared length: hyper holds the body to it, and the pipeline refused one longer
        // than the route's limit before we got here
        let bytes = b.collect().await?.to_bytes();
        meter.read.store(bytes.len() as u64, Ordering::Relaxed);
        Ok(ReqBody::Buffered(Some(bytes)))
    }

    /// Another copy for the next try, when this body can be sent again in full.
    pub fn replay(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Empty => Some(ReqBody::Empty),
            ReqBody::Buffered(b) => Some(ReqBody::Buffered(b.clone())),
            ReqBody::Lent(l, _) if l.replayable() => Some(ReqBody::Lent(l.clone(), 0)),
            ReqBody::Lent(..) | ReqBody::Streamed(..) => None,
        }
    }
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Streamed(b, m) => poll_metered(b, m, cx),
            ReqBody::Lent(l, n) => {
                // one try at a time holds the body (the loop starts the next after this one
                // ended): the lock is never contended; a poisoned one still holds the body
                let mut g = l.inner.lock().unwrap_or_else(|e| e.into_inner());
                let inner = &mut *g;
                // first what an earlier try took (`replay` hands a try a Lent only while that
                // is all kept)
                if let Some(f) = inner.kept.as_ref().and_then(|k| k.get(*n)) {
                    *n += 1;
                    return Poll::Ready(Some(Ok(copy(f))));
                }
                let r = poll_metered(&mut inner.body, &l.meter, cx);
                if let Poll::Ready(Some(Ok(f))) = &r {
                    inner.read = true;
                    *n += 1;
                    inner.kept_len += f.data_ref().map_or(0, |d| d.len() as u64);
                    match &mut inner.kept {
                        Some(_) if inner.kept_len > inner.limit => inner.kept = None,
                        Some(k) => k.push(copy(f)),
                        None => {}
                    }
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Buffered(b) => b.is_none(),
            ReqBody::Streamed(b, _) => b.is_end_stream(),
            ReqBody::Lent(l, n) => l.inner.lock().is_ok_and(|i| {
                i.kept.as_ref().is_none_or(|k| *n >= k.len()) && i.body.is_end_stream()
            }),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Streamed(b, _) => b.size_hint(),
            ReqBody::Lent(l, n) => l.inner.lock().map_or_else(
                |_| SizeHint::default(),
                |i| {
                    // the kept frames still to replay, then what the client has yet to send
                    let again: u64 = i.kept.as_ref().map_or(0, |k| {
                        k.iter()
                            .skip(*n)
                            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                            .sum()
                    });
                    let rest = i.body.size_hint();
                    let mut h = SizeHint::new();
                    h.set_lower(rest.lower() + again);
                    if let Some(u) = rest.upper() {
                        h.set_upper(u + again);
                    }
                    h
                },
            ),
        }
    }
}

fn poll_metered(
    b: &mut Incoming,
    m: &Meter,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    let f = match Pin::new(b).poll_frame(cx) {
        Poll::Ready(Some(Ok(f))) => f,
        Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(BodyError::Client(e)))),
        Poll::Ready(None) => return Poll::Ready(None),
        Poll::Pending => return Poll::Pending,
    };
    if let Some(d) = f.data_ref() {
        let len = d.len() as u64;
        // the frame that crosses the limit is counted (it was read) but not sent on
        if m.read.fetch_add(len, Ordering::Relaxed) + len > m.limit {
            return Poll::Ready(Some(Err(BodyError::TooLarge { limit: m.limit })));
        }
    }
    Poll::Ready(Some(Ok(f)))
}
