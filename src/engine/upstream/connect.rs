//! The upstream connector: TCP (nodelay, keepalive, connect timeout), then TLS when the upstream
//! has `tls`. Our own rather than hyper-rustls's so that the client config can rotate with its
//! files, the server name can be set per upstream, and a TLS failure stays recognisable as one
//! (`upstream_tls_error`) all the way up through hyper's errors.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::tls::client::{ClientTlsError, RotatingClientConfig};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Tcp(Box<dyn std::error::Error + Send + Sync>),
    #[error("upstream TLS settings: {0}")]
    Settings(#[from] ClientTlsError),
    // the rustls error is the io::Error's payload; not a #[source], so that error chains do not
    // print it twice
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("{0:?} is not a valid TLS server name (set tls.sni)")]
    ServerName(String),
    #[error("the server did not agree to HTTP/2 over TLS (ALPN h2)")]
    NoH2,
    /// an endpoint behind a tunnel (`tunnel:<tunnel>/<service>`): no agent, or it failed
    #[error(transparent)]
    Tunnel(#[from] crate::tunnel::OpenError),
}

impl ConnectError {
    pub fn is_tls(&self) -> bool {
        !matches!(self, ConnectError::Tcp(_) | ConnectError::Tunnel(_))
    }
}

/// The TLS half of a connector.
pub struct TlsConnect {
    pub config: RotatingClientConfig,
    /// None: the endpoint's host
    pub sni: Option<ServerName<'static>>,
    /// `protocol = "h2"`: a server that does not pick `h2` by ALPN is refused
    pub require_h2: bool,
    /// The last TLS failure after the handshake (a TLS 1.3 server refusing our client
    /// certificate says so only then). On HTTP/2 hyper reports the request on such a connection
    /// as merely "canceled"; this lets `send` still tell it was TLS.
    pub late_failure: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl TlsConnect {
    /// Passes an I/O result through, remembering a TLS failure in it.
    fn note<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            if is_tls_failure(e) {
                let mut g = self.late_failure.lock().unwrap_or_else(|p| p.into_inner());
                *g = Some((std::time::Instant::now(), e.to_string()));
            }
        }
        r
    }

    /// The TLS failure seen on a connection within `window`, if any.
    pub fn recent_failure(&self, window: std::time::Duration) -> Option<String> {
        let g = self.late_failure.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .filter(|(at, _)| at.elapsed() <= window)
            .map(|(_, what)| what.clone())
    }
}

/// The TLS server name for an endpoint authority that is an address resolved from a
/// configured hostname (the certificate names the host, not the address).
pub type HostOf = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct Connector {
    pub http: HttpConnector,
    pub tls: Option<Arc<TlsConnect>>,
    pub host_of: HostOf,
}

/// A connection to an upstream, plain or TLS, or a stream through a tunnel's agent.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>, Arc<TlsConnect>),
    Tunnel(crate::tunnel::TunnelStream),
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Conn>, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx)
            .map_err(|e| ConnectError::Tcp(Box::new(e)))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Some((tunnel, service)) = uri.host().and_then(crate::config::tunnel_of_host) {
            // never resolved or dialled: the agent of the tunnel opens the stream
            let (tunnel, service) = (tunnel.to_string(), service.to_string());
            return Box::pin(async move {
                let s = crate::tunnel::open(&tunnel, &service).await?;
                Ok(TokioIo::new(Conn::Tunnel(s)))
            });
        }
        let tcp = tower_service::Service::<Uri>::call(&mut self.http, uri.clone());
        let tls = self.tls.clone();
        let resolved_from = uri.authority().and_then(|a| (self.host_of)(a.as_str()));
        Box::pin(async move {
            let tcp = tcp
                .await
                .map_err(|e| ConnectError::Tcp(Box::new(e)))?
                .into_inner();
            let Some(tls) = tls else {
                return Ok(TokioIo::new(Conn::Plain(tcp)));
            };
            let config = tls.config.current()?;
            let name = match &tls.sni {
                Some(n) => n.clone(),
                None => {
                    let host = resolved_from.as_deref().or(uri.host()).unwrap_or("");
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    ServerName::try_from(host.to_string())
                        .map_err(|_| ConnectError::ServerName(host.to_string()))?
                }
            };
            let s = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(ConnectError::Handshake)?;
            if tls.require_h2 && s.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(ConnectError::NoH2);
            }
            Ok(TokioIo::new(Conn::Tls(Box::new(s), tls)))
        })
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Plain(s) => s.connected(),
            Conn::Tunnel(_) => Connected::new(),
            Conn::Tls(s, _) => {
                let (tcp, session) = s.get_ref();
                let c = tcp.connected();
                // `auto`: the pool treats this connection as HTTP/2 (multiplexed) when ALPN said so
                if session.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, tls) => tls.note(Pin::new(s.as_mut()).poll_read(cx, buf)),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, b),
            Conn::Tunnel(s) => Pin::new(s).poll_write(cx, b),
            Conn::Tls(s, tls) => {
                let r = Pin::new(s.as_mut()).poll_write(cx, b);
                probe_on_write_error(s, tls, cx, &r);
                tls.note(r)
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tunnel(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, tls) => {
                let r = Pin::new(s.as_mut()).poll_write_vectored(cx, bufs);
                probe_on_write_error(s, tls, cx, &r);
                tls.note(r)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tunnel(s) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tunnel(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, tls) => {
                let r = Pin::new(s.as_mut()).poll_flush(cx);
                probe_on_write_error(s, tls, cx, &r);
                tls.note(r)
            }
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, tls) => {
                let r = Pin::new(s.as_mut()).poll_shutdown(cx);
                probe_on_write_error(s, tls, cx, &r);
                tls.note(r)
            }
        }
    }
}

/// A write that fails (broken pipe, reset) on a TLS connection is often a server that sent a
/// fatal alert and closed (a TLS 1.3 server refusing our client certificate): the alert may
/// still wait in the socket, unread because the writer failed first. Read it straight from the
/// socket (tokio would answer "not ready" until its next poll) and let rustls decode it, so the
/// cause is known.
fn probe_on_write_error<T>(
    s: &mut TlsStream<TcpStream>,
    tls: &TlsConnect,
    _cx: &mut Context<'_>,
    r: &Poll<io::Result<T>>,
) {
    use std::io::Read as _;
    if !matches!(r, Poll::Ready(Err(_))) {
        return;
    }
    let (tcp, session) = s.get_mut();
    let sock = socket2::SockRef::from(&*tcp);
    let mut buf = [0u8; 512];
    // non-blocking socket: returns at once
    let Ok(n) = (&*sock).read(&mut buf) else {
        return;
    };
    let mut rd = buf.get(..n).unwrap_or_default();
    while !rd.is_empty() {
        if session.read_tls(&mut rd).is_err() {
            return;
        }
        if let Err(e) = session.process_new_packets() {
            let mut g = tls.late_failure.lock().unwrap_or_else(|p| p.into_inner());
            *g = Some((std::time::Instant::now(), e.to_string()));
            return;
        }
    }
}

/// Whether a failure anywhere in this error's chain is a TLS one: our connector's, or rustls's
/// (a server that wants a client certificate we lack says so with an alert after a TLS 1.3
/// handshake, so it surfaces on the first read, inside hyper's error, as an io::Error).
pub fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(ce) = c.downcast_ref::<ConnectError>() {
            return ce.is_tls();
        }
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<io::Error>() {
            // io::Error's source() skips its payload: look at it directly
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
            {
                return true;
            }
        }
        cur = c.source();
    }
    false
}
