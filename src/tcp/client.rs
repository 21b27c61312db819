//! `cc-gateway connect`: a local port whose connections each open a WebSocket to a gateway's
//! `connect` route, so `psql -h 127.0.0.1 -p 5433` reaches a database behind the gateway
//! without a VPN. Each connection re-reads the token file (a rotated token is used at once)
//! and carries its bytes with the same bounded copy as the gateway ([`super::copy::splice`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Uri};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

use super::copy::{self, End, Tally};
use super::ws::{self, WsStream};
use crate::tls::client::{ClientTlsError, ClientTlsFiles};

/// What `cc-gateway connect` was asked for.
pub struct Options {
    pub remote: Remote,
    pub listen: SocketAddr,
}

/// The gateway URL to open WebSockets to, and how (also the tunnel agent's).
#[derive(Clone)]
pub struct Remote {
    /// `ws://` or `wss://host[:port]/path`
    pub url: Uri,
    /// the token, read again for each connection (none: no `Authorization`, for public routes)
    pub token_file: Option<PathBuf>,
    /// a private CA for the gateway's certificate (default: the system roots)
    pub ca: Option<PathBuf>,
    /// a client certificate and key, for a gateway that asks for one (mTLS)
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--url {0}: expected ws://host[:port]/path or wss://…")]
    Url(String),
    #[error("TLS: {0}")]
    Tls(#[from] ClientTlsError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("reading the token file {0}: {1}")]
    Token(PathBuf, std::io::Error),
    #[error("the token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("the token file {0} must hold one token (no line breaks or control characters)")]
    BadToken(PathBuf),
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS handshake with {0}: {1}")]
    Handshake(String, std::io::Error),
    /// the gateway answered without switching protocols: its status and reason
    #[error("the gateway refused: {status} {reason}: {message}")]
    Refused {
        status: u16,
        reason: String,
        message: String,
    },
    #[error("WebSocket handshake: {0}")]
    WebSocket(Box<WsError>),
}

/// Where and how to reach the gateway, checked once (also the tunnel agent's dialer).
pub(crate) struct Gateway {
    url: Uri,
    /// `host:port` to dial
    addr: String,
    /// TLS (`wss://`): the config and the name the certificate must have
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    token_file: Option<PathBuf>,
}

impl Gateway {
    pub(crate) fn new(o: &Remote) -> Result<Gateway, ClientError> {
        let bad = || ClientError::Url(o.url.to_string());
        let secure = match o.url.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(bad()),
        };
        let host = o.url.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let port = o.url.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let addr = format!("{host}:{port}");
        let tls = if secure {
            let config = crate::tls::client::build(&ClientTlsFiles {
                ca: o.ca.clone(),
                client_cert: o.client_cert.clone(),
                alpn: vec![b"http/1.1".to_vec()],
            })?;
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(bare.to_string()).map_err(|_| bad())?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Gateway {
            url: o.url.clone(),
            addr,
            tls,
            token_file: o.token_file.clone(),
        })
    }

    fn token(&self) -> Result<Option<HeaderValue>, ClientError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| ClientError::Token(path.clone(), e))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(ClientError::EmptyToken(path.clone()));
        }
        let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ClientError::BadToken(path.clone()))?;
        v.set_sensitive(true);
        Ok(Some(v))
    }

    /// Opens one WebSocket and carries `local`'s bytes over it until both sides are done.
    async fn serve(&self, local: TcpStream) -> Result<End, ClientError> {
        let mut stream = self.websocket().await?;
        let end = copy::splice(local, &mut stream, None, &Tally::unmetered()).await;
        stream.close().await;
        Ok(end)
    }

    /// A new WebSocket to the URL, with the token as it is in its file now.
    pub(crate) async fn websocket(&self) -> Result<WsStream<Box<dyn super::Io>>, ClientError> {
        let token = self.token()?;
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| ClientError::Connect(self.addr.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn super::Io> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ClientError::Handshake(self.addr.clone(), e))?,
            ),
        };
        let mut req = self
            .url
            .clone()
            .into_client_request()
            .map_err(|e| ClientError::WebSocket(Box::new(e)))?;
        if let Some(t) = token {
            req.headers_mut().insert(AUTHORIZATION, t);
        }
        let (socket, _) = tokio_tungstenite::client_async_with_config(req, io, Some(ws::config()))
            .await
            .map_err(refused)?;
        Ok(WsStream::new(socket))
    }
}

/// A handshake the gateway answered with a refusal: its JSON reason, when there is one.
fn refused(e: WsError) -> ClientError {
    let WsError::Http(resp) = e else {
        return ClientError::WebSocket(Box::new(e));
    };
    let body: serde_json::Value = resp
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    let text = |k: &str| body[k].as_str().unwrap_or("").to_string();
    ClientError::Refused {
        status: resp.status().as_u16(),
        reason: text("reason"),
        message: text("message"),
    }
}

/// Listens on `o.listen` and serves each connection over its own WebSocket until the process
/// ends. `ready` gets the bound address (a port 0 resolved) once it listens.
pub async fn run(o: Options, ready: impl FnOnce(SocketAddr)) -> Result<(), ClientError> {
    let gateway = Arc::new(Gateway::new(&o.remote)?);
    let listener = TcpListener::bind(o.listen)
        .await
        .map_err(|e| ClientError::Listen(o.listen, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| ClientError::Listen(o.listen, e))?;
    ready(bound);
    loop {
        let (local, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // out of descriptors, most often: the next accept may succeed
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = local.set_nodelay(true);
        let gateway = gateway.clone();
        tokio::spawn(async move {
            match gateway.serve(local).await {
                Ok(End::Closed) => tracing::info!(%peer, "connection closed"),
                Ok(End::Error(e)) => tracing::info!(%peer, error = %e, "connection ended"),
                Ok(_) => {}
                Err(e) => tracing::error!(%peer, error = %e, "cannot open the stream"),
            }
        });
    }
}
