//! The request body sent upstream: none, or the client's body streamed through and counted.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;

/// The body sent upstream: none, or the client's body streamed through and counted.
pub enum ReqBody {
    Empty,
    Streamed(Incoming, Arc<AtomicU64>),
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
            ReqBody::Streamed(b, n) => {
                let r = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &r {
                    if let Some(d) = f.data_ref() {
                        n.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Streamed(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Streamed(b, _) => b.size_hint(),
        }
    }
}
