//! The request body sent upstream: none, the client's body streamed through and counted, the
//! same lent to one try at a time (so that a try that never read it can hand it to the next),
//! or a small body buffered for replays.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// The body sent upstream.
pub enum ReqBody {
    Empty,
    Streamed(Incoming, Arc<AtomicU64>),
    /// the client's body, shared between the retry loop and the current try
    Lent(Arc<Lent>),
    /// a replayable copy (the whole body, read before the first try)
    Buffered(Option<Bytes>),
}

/// A client body that a try borrows: when the try fails before reading a byte of it, the
/// next try takes it over; once a byte went out it is spent (nothing replays it).
pub struct Lent {
    body: Mutex<Incoming>,
    /// a frame was taken from the body: part of it left for the upstream
    read: AtomicBool,
    counter: Arc<AtomicU64>,
}

impl Lent {
    /// Whether no try has read from the body yet, so that another try can send all of it.
    pub fn untouched(&self) -> bool {
        !self.read.load(Ordering::Relaxed)
    }
}

impl ReqBody {
    /// Wraps a client body; returns the counter of bytes that went through.
    pub fn from_client(b: Incoming) -> (ReqBody, Option<Arc<AtomicU64>>) {
        if b.is_end_stream() {
            return (ReqBody::Empty, None);
        }
        let n = Arc::new(AtomicU64::new(0));
        (ReqBody::Streamed(b, n.clone()), Some(n))
    }

    /// A streamed body made lendable (other bodies stay as they are).
    pub fn lendable(self) -> ReqBody {
        match self {
            ReqBody::Streamed(b, counter) => ReqBody::Lent(Arc::new(Lent {
                body: Mutex::new(b),
                read: AtomicBool::new(false),
                counter,
            })),
            other => other,
        }
    }

    /// Reads a streamed body whose declared length is at most `limit` into memory (the
    /// counter gets its size). Bodies without a declared length, or a longer one, are left
    /// streaming: buffering never goes past `limit` and never delays a stream.
    pub async fn buffer_up_to(self, limit: u64) -> Result<ReqBody, hyper::Error> {
        let ReqBody::Streamed(b, counter) = self else {
            return Ok(self);
        };
        if b.size_hint().upper().is_none_or(|n| n > limit) {
            return Ok(ReqBody::Streamed(b, counter));
        }
        let bytes = b.collect().await?.to_bytes();
        counter.store(bytes.len() as u64, Ordering::Relaxed);
        Ok(ReqBody::Buffered(Some(bytes)))
    }

    /// Another copy for the next try, when this body can be sent again in full.
    pub fn replay(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Empty => Some(ReqBody::Empty),
            ReqBody::Buffered(b) => Some(ReqBody::Buffered(b.clone())),
            ReqBody::Lent(l) if l.untouched() => Some(ReqBody::Lent(l.clone())),
            ReqBody::Lent(_) | ReqBody::Streamed(..) => None,
        }
    }
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Streamed(b, n) => poll_counted(b, n, cx),
            ReqBody::Lent(l) => {
                // one try at a time holds the body (the loop starts the next after this one
                // ended): the lock is never contended; a poisoned one still holds the body
                let mut b = l.body.lock().unwrap_or_else(|e| e.into_inner());
                let r = poll_counted(&mut b, &l.counter, cx);
                if let Poll::Ready(Some(_)) = &r {
                    l.read.store(true, Ordering::Relaxed);
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
            ReqBody::Lent(l) => l.body.lock().is_ok_and(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Streamed(b, _) => b.size_hint(),
            ReqBody::Lent(l) => l
                .body
                .lock()
                .map_or_else(|_| SizeHint::default(), |b| b.size_hint()),
        }
    }
}

fn poll_counted(
    b: &mut Incoming,
    n: &AtomicU64,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
    let r = Pin::new(b).poll_frame(cx);
    if let Poll::Ready(Some(Ok(f))) = &r {
        if let Some(d) = f.data_ref() {
            n.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
    }
    r
}
