//! A connection must bring its first request within `header_read_timeout`.
//!
//! hyper's header-read timer starts only once its HTTP/1 connection reads a head, and the
//! auto-detecting builder (HTTP/1.1 or h2c) first waits for enough bytes to tell the two apart
//! with no deadline at all: a client that connects and sends nothing — or a few bytes of the
//! HTTP/2 preface — would hold its connection, and its slot in the worker, forever. This bounds
//! everything before the first request; later requests are hyper's business (its header-read
//! timer for HTTP/1.1, PINGs for HTTP/2). One timer per connection, none per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

pin_project_lite::pin_project! {
    /// `conn` until it ends, or until `timeout` passes before `arrived` is set. Resolves to
    /// `None` when the deadline cut the connection (dropping it closes the socket).
    pub struct FirstRequest<F> {
        #[pin]
        conn: F,
        deadline: Option<Pin<Box<Sleep>>>,
        arrived: Arc<AtomicBool>,
    }
}

impl<F> FirstRequest<F> {
    /// `arrived` is set by the service when it is called (a request head is in).
    pub fn new(conn: F, timeout: Option<Duration>, arrived: Arc<AtomicBool>) -> Self {
        FirstRequest {
            conn,
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            arrived,
        }
    }
}

impl<F: Future> Future for FirstRequest<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.conn.poll(cx) {
            return Poll::Ready(Some(out));
        }
        if let Some(d) = this.deadline {
            if this.arrived.load(Ordering::Relaxed) {
                *this.deadline = None;
            } else if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time, short: each case is decided by ordering, not by how fast the machine is —
    // the connection is polled before the deadline, so a request seen on the first poll
    // always wins, and a connection that never sees one always loses.
    #[tokio::test]
    async fn cuts_a_connection_without_a_request_and_keeps_one_with_a_request() {
        let t = Some(Duration::from_millis(50));
        // nothing arrives: cut at the deadline
        let silent = FirstRequest::new(std::future::pending::<()>(), t, Arc::default());
        assert_eq!(silent.await, None);

        // a request arrived before the deadline: the connection lives past it, to its end
        let arrived = Arc::new(AtomicBool::new(false));
        let flag = arrived.clone();
        let conn = async move {
            flag.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            "ended"
        };
        assert_eq!(FirstRequest::new(conn, t, arrived).await, Some("ended"));

        // no timeout configured: never cut
        let conn = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            "ended"
        };
        assert_eq!(
            FirstRequest::new(conn, None, Arc::default()).await,
            Some("ended")
        );
    }
}
