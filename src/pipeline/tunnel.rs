//! The bounds of an upgraded connection (WebSocket tunnel): every byte either way is noted as
//! activity, so the route's `idle_timeout` can end a silent tunnel and its `timeout` a long
//! one. A tunnel carries no frames the gateway understands, so ending it is closing both
//! connections.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Joins the client's and the upstream's upgraded connections (WebSocket) and copies bytes
/// both ways until either side closes, no byte has crossed either way for `idle`, or the
/// route's deadline passes (then both connections are closed).
pub fn join(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Option<Duration>,
    deadline: Option<(std::time::Instant, Duration)>,
) {
    tokio::spawn(async move {
        let (c, u) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let activity = Activity::new();
        let mut c = Counted::new(hyper_util::rt::TokioIo::new(c), activity.clone());
        let mut u = hyper_util::rt::TokioIo::new(u);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
            why = expiry(activity, idle, deadline) => {
                tracing::debug!(why, "closing a tunnel");
            }
        }
    });
}

/// When bytes last crossed, as milliseconds since `base`.
#[derive(Clone)]
pub struct Activity {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = self.base.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One side of the tunnel whose reads and writes (both directions, since every byte the tunnel
/// moves is read from or written to this side) count as activity.
pub struct Counted<T> {
    inner: T,
    activity: Activity,
}

impl<T> Counted<T> {
    pub fn new(inner: T, activity: Activity) -> Self {
        Counted { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                this.activity.touch();
            }
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Resolves when the tunnel must end: no activity for `idle`, or `deadline` reached. Names
/// which, for the log. Never resolves without limits.
pub async fn expiry(
    activity: Activity,
    idle: Option<Duration>,
    deadline: Option<(std::time::Instant, Duration)>,
) -> &'static str {
    let deadline = async {
        match deadline {
            Some((at, _)) => tokio::time::sleep_until(Instant::from_std(at)).await,
            None => std::future::pending().await,
        }
    };
    let idle = async {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let until = activity.last() + idle;
            if until <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    };
    tokio::select! {
        _ = deadline => "timeout",
        _ = idle => "idle_timeout",
    }
}
