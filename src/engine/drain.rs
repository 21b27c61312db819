//! What draining needs below HTTP: the worker's cut-off signal (the moment `shutdown_timeout`
//! ends the wait for open requests) and the lingering close of a connection.
//!
//! The cut-off is per worker thread (thread-per-core: a request's handler runs on the thread
//! that accepted its connection), so it is a thread-local the worker sets before it accepts
//! and the handler reads when a request starts: no process-wide state, no lookup per poll.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

thread_local! {
    static CUT_OFF: RefCell<Option<watch::Receiver<bool>>> = const { RefCell::new(None) };
    static DRAINING: RefCell<Option<watch::Receiver<bool>>> = const { RefCell::new(None) };
    static HOLD: RefCell<Option<tokio::sync::mpsc::Sender<()>>> = const { RefCell::new(None) };
    static CLOSING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this worker as draining: from now on its HTTP/1 answers close their connections.
pub(super) fn set_closing() {
    CLOSING.with(|c| c.set(true));
}

/// Is this worker draining? A request that reached an open connection is still answered, with
/// `Connection: close`, rather than cut off by the connection closing under it.
pub fn closing() -> bool {
    CLOSING.with(Cell::get)
}

/// Keeps this worker's drain waiting while it lives (up to `shutdown_timeout`, like an open
/// HTTP request): for connections the HTTP server does not track — L4 connections, `connect`
/// streams, tunnel agents.
#[derive(Clone)]
pub struct Hold {
    _tx: tokio::sync::mpsc::Sender<()>,
}

/// A hold on this worker's drain; `None` off a worker thread or once the drain began (nothing
/// new should start holding it then).
pub fn hold() -> Option<Hold> {
    HOLD.with(|h| h.borrow().clone()).map(|tx| Hold { _tx: tx })
}

/// Installs this worker's hold channel; the worker awaits its receiver when draining.
pub(super) fn install_hold(tx: tokio::sync::mpsc::Sender<()>) {
    HOLD.with(|h| *h.borrow_mut() = Some(tx));
}

/// Drops the worker's own sender, so the receiver ends once the last `Hold` is gone.
pub(super) fn release_hold() {
    HOLD.with(|h| h.borrow_mut().take());
}

/// Installs this worker thread's drain signal (true: it stopped accepting and drains).
pub(super) fn install_draining(rx: watch::Receiver<bool>) {
    DRAINING.with(|c| *c.borrow_mut() = Some(rx));
}

/// Resolves when this worker starts draining (shutdown, or a binary upgrade handing its
/// sockets over); never resolves off a worker thread. For long-lived connections that should
/// move before the drain's end: a tunnel's agents are asked to reconnect (to the successor).
pub fn draining() -> impl std::future::Future<Output = ()> + Send + 'static {
    let rx = DRAINING.with(|c| c.borrow().clone());
    async move {
        match rx {
            Some(mut rx) => {
                let _ = rx.wait_for(|d| *d).await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Installs this worker thread's cut-off signal (true: `shutdown_timeout` has passed).
pub(super) fn install(rx: watch::Receiver<bool>) {
    CUT_OFF.with(|c| *c.borrow_mut() = Some(rx));
}

pin_project_lite::pin_project! {
    /// [`or_cut_off`]'s future: `fut` and the cut-off signal side by side, `fut` polled first.
    /// A named type rather than `select!` in an `async` block: that block would hold `fut`
    /// twice (its capture and the macro's copy), and the request future is the largest value
    /// the engine moves per request (hyper copies it into the connection's slot).
    pub struct OrCutOff<F: std::future::Future, C, G> {
        #[pin]
        fut: F,
        #[pin]
        cut: C,
        on_cut: Option<G>,
    }
}

impl<F, C, G> std::future::Future for OrCutOff<F, C, G>
where
    F: std::future::Future,
    C: std::future::Future<Output = ()>,
    G: FnOnce() -> F::Output,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(out);
        }
        match this.cut.poll(cx) {
            Poll::Ready(()) => match this.on_cut.take() {
                Some(g) => Poll::Ready(g()),
                // polled again after it ended: nothing more will come
                None => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `fut`, unless this worker's `shutdown_timeout` passes first: then `fut` is dropped and the
/// answer is `on_cut()`.
pub fn or_cut_off<F, G>(
    fut: F,
    on_cut: G,
) -> OrCutOff<F, impl std::future::Future<Output = ()> + Send + 'static, G>
where
    F: std::future::Future,
    G: FnOnce() -> F::Output,
{
    OrCutOff {
        fut,
        cut: cut_off(),
        on_cut: Some(on_cut),
    }
}

/// Resolves when this worker's `shutdown_timeout` has passed with the request still open;
/// never resolves off a worker thread. Taken when the request starts.
pub fn cut_off() -> impl std::future::Future<Output = ()> + Send + 'static {
    let rx = CUT_OFF.with(|c| c.borrow().clone());
    async move {
        match rx {
            Some(mut rx) => {
                // an Err means the worker is gone: nothing is left to wait for
                let _ = rx.wait_for(|cut| *cut).await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Has this worker's `shutdown_timeout` passed? (A request dropped now was cut by shutdown,
/// not abandoned by its client.)
pub fn is_cut_off() -> bool {
    CUT_OFF.with(|c| c.borrow().as_ref().is_some_and(|rx| *rx.borrow()))
}

/// How long a closed connection keeps reading (and discarding) what the client still sends.
const LINGER: Duration = Duration::from_secs(5);
/// Past this many discarded bytes the client is not racing a close, it is streaming: stop.
const LINGER_BYTES: u64 = 1 << 20;

/// A client connection that closes by halves. When the server side is done with it (hyper
/// closing an idle keep-alive connection at drain, say), it sends FIN and keeps reading until
/// the client closes too, instead of closing outright: a request that was already on its way
/// would otherwise find the socket closed with unread data, and the kernel answers that with
/// a reset — the client could not tell whether its request was processed. With a FIN first,
/// the client reads a clean end of stream before any byte of an answer: the request was
/// provably never processed, and HTTP clients retry it on a new connection.
pub struct Lingering {
    stream: Option<TcpStream>,
    /// held until the lingering read ends: the worker waits for every holder before its
    /// runtime goes (dropping the task would close with unread data, a reset)
    held: Option<tokio::sync::mpsc::Sender<()>>,
}

impl Lingering {
    pub fn new(stream: TcpStream, held: tokio::sync::mpsc::Sender<()>) -> Self {
        Lingering {
            stream: Some(stream),
            held: Some(held),
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let held = self.held.take();
        // off a runtime (never on a worker) the stream just closes
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let _held = held;
            let _ = stream.shutdown().await;
            let mut buf = [0u8; 4096];
            let mut discarded = 0u64;
            let _ = tokio::time::timeout(LINGER, async {
                while discarded < LINGER_BYTES {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => discarded += n as u64,
                    }
                }
            })
            .await;
        });
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
