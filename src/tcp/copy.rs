//! The copy both ways: tokio's `copy_bidirectional_with_sizes` (one fixed buffer per
//! direction, so a client that stops reading stops the reads from the target — back pressure,
//! never buffering — and an EOF on one side becomes a write shutdown on the other: half-close),
//! with the bytes counted as they pass and an idle timer over both directions.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Per direction: enough for bulk throughput, small enough that 10,000 connections stay cheap.
const BUF: usize = 64 * 1024;

/// How a copy ended.
#[derive(Debug)]
pub enum End {
    /// both sides closed their halves
    Closed,
    /// no byte either way for the route's `idle_timeout`
    Idle,
    /// the route's `timeout` (whole-stream deadline) passed
    Timeout,
    /// a read or write failed (a reset, most often)
    Error(std::io::Error),
}

/// Bytes and last activity of one connection, as seen on the client side.
pub struct Tally {
    start: Instant,
    /// milliseconds after `start` of the last byte either way
    last_ms: AtomicU64,
    /// from the client (toward the target)
    pub bytes_in: AtomicU64,
    /// to the client (from the target)
    pub bytes_out: AtomicU64,
    metric_in: Option<IntCounter>,
    metric_out: Option<IntCounter>,
}

impl Tally {
    pub fn new(metric_in: IntCounter, metric_out: IntCounter) -> Tally {
        Tally {
            metric_in: Some(metric_in),
            metric_out: Some(metric_out),
            ..Tally::new_inner()
        }
    }

    fn new_inner() -> Tally {
        Tally {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            metric_in: None,
            metric_out: None,
        }
    }

    /// Counts without metrics (the `connect` client, which exports none).
    pub fn unmetered() -> Tally {
        Tally {
            metric_in: None,
            metric_out: None,
            ..Tally::new_inner()
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The client's stream, counting what passes.
struct Counted<'t, S> {
    inner: S,
    tally: &'t Tally,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.tally.bytes_in.fetch_add(n, Ordering::Relaxed);
            if let Some(m) = &self.tally.metric_in {
                m.inc_by(n);
            }
            self.tally.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            let n = *n as u64;
            self.tally.bytes_out.fetch_add(n, Ordering::Relaxed);
            if let Some(m) = &self.tally.metric_out {
                m.inc_by(n);
            }
            self.tally.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways until both halves are closed, an error, or `idle` without a byte (never,
/// with `None`).
pub async fn splice<C, T>(client: C, target: &mut T, idle: Option<Duration>, tally: &Tally) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = Counted {
        inner: client,
        tally,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, target, BUF, BUF);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            r = &mut copy => return match r {
                Ok(_) => End::Closed,
                Err(e) => End::Error(e),
            },
            // woken at the earliest moment the timeout could hold; bytes since then re-arm it
            _ = idle_after(tally, idle) => {
                if idle.is_some_and(|idle| tally.last() + idle <= Instant::now()) {
                    return End::Idle;
                }
            }
        }
    }
}

/// Sleeps until the earliest moment `idle` could have passed; forever without one.
async fn idle_after(tally: &Tally, idle: Option<Duration>) {
    match idle {
        Some(idle) => tokio::time::sleep_until(tally.last() + idle).await,
        None => std::future::pending().await,
    }
}
