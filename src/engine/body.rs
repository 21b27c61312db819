//! Response body: the upstream's body streamed through frame by frame (SSE reaches the client
//! event by event), or a small body of our own. Counts the bytes it sends and calls a
//! completion hook once, when the body ends or is dropped (client gone), so access logs and
//! duration metrics cover the whole response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

/// Called once with (bytes sent, whether the body ended normally).
pub type OnDone = Box<dyn FnOnce(u64, bool) + Send>;

pub struct Body {
    kind: Kind,
    sent: u64,
    on_done: Option<OnDone>,
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl Body {
    pub fn upstream(b: Incoming) -> Self {
        Body {
            kind: Kind::Upstream(b),
            sent: 0,
            on_done: None,
        }
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Body {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
            sent: 0,
            on_done: None,
        }
    }

    pub fn empty() -> Self {
        Body {
            kind: Kind::Full(None),
            sent: 0,
            on_done: None,
        }
    }

    pub fn on_done(&mut self, f: OnDone) {
        self.on_done = Some(f);
    }

    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_done.take() {
            f(self.sent, complete);
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = match &mut this.kind {
            Kind::Upstream(b) => Pin::new(b).poll_frame(cx),
            Kind::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
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
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b) => b.size_hint(),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
