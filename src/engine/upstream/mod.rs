//! Upstream client, one per worker and upstream: a keep-alive pool (hyper-util's client) whose
//! connections live on the worker's own runtime. Endpoints are used round-robin. HTTP/1.1, or
//! HTTP/2 (`h2` over TLS, `h2c` cleartext, `auto` by ALPN) where one connection per endpoint
//! carries every concurrent request as its own stream; TLS in `connect.rs`.

mod connect;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Upstream, UpstreamProtocol};
use crate::tls::client::{ClientTlsFiles, RotatingClientConfig};
use connect::{Connector, TlsConnect};

/// TCP keepalive on upstream sockets: NATs and load balancers between us and a backend drop
/// quiet connections after a few minutes; probes after 30 s of silence keep the mapping alive
/// and find a dead peer within about a minute.
const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

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

/// Why an upstream exchange failed; maps to `upstream_unavailable` / `upstream_timeout` /
/// `upstream_tls_error`.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    /// unknown CA, name mismatch, expired certificate, a client certificate demanded that we do
    /// not have, unreadable TLS files: never retried without TLS or verification
    #[error("TLS with {endpoint} failed: {detail}")]
    Tls { endpoint: String, detail: String },
    #[error("{endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("{endpoint}: {detail}")]
    Protocol { endpoint: String, detail: String },
    #[error("bad upstream request URI: {0}")]
    Uri(String),
}

impl UpstreamError {
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Protocol { .. } | UpstreamError::Uri(_) => "protocol",
        }
    }
}

pub struct UpstreamClient {
    pub name: String,
    endpoints: Vec<Authority>,
    next: AtomicUsize,
    read_timeout: Duration,
    scheme: Scheme,
    tls: Option<Arc<TlsConnect>>,
    client: Client<Connector, ReqBody>,
}

impl UpstreamClient {
    pub fn new(u: &Upstream) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(u.connect_timeout));
        // the scheme is ours (https for TLS upstreams), the connector makes the TLS itself
        http.enforce_http(false);
        http.set_keepalive(Some(TCP_KEEPALIVE_TIME));
        http.set_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL));
        http.set_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
        let alpn: Vec<Vec<u8>> = match u.protocol {
            UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
            UpstreamProtocol::H2 => vec![b"h2".to_vec()],
            UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            UpstreamProtocol::H2c => Vec::new(),
        };
        let tls = u.tls.as_ref().map(|t| {
            Arc::new(TlsConnect {
                config: RotatingClientConfig::new(
                    u.name.clone(),
                    ClientTlsFiles {
                        ca: t.ca.clone(),
                        client_cert: t.client_cert.clone(),
                        alpn,
                    },
                ),
                // validated by the config
                sni: t
                    .sni
                    .as_ref()
                    .and_then(|s| rustls::pki_types::ServerName::try_from(s.clone()).ok()),
                require_h2: u.protocol == UpstreamProtocol::H2,
                late_failure: std::sync::Mutex::new(None),
            })
        });
        let scheme = if tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let tls_state = tls.clone();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(u.pool_idle_timeout)
            .pool_max_idle_per_host(u.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // h2/h2c: every request of this worker to an endpoint is a stream on one connection
            .http2_only(matches!(
                u.protocol,
                UpstreamProtocol::H2 | UpstreamProtocol::H2c
            ))
            // PING only while requests are open (a long quiet gRPC stream), never on an idle
            // pooled connection: a gRPC server counts pings without streams as abuse
            // (too_many_pings GOAWAY); TCP keepalive covers the idle pool
            .http2_keep_alive_interval(Some(u.http2_keepalive_interval))
            .http2_keep_alive_timeout(u.http2_keepalive_timeout)
            .http2_keep_alive_while_idle(false)
            .build(Connector { http, tls });
        UpstreamClient {
            name: u.name.clone(),
            scheme,
            tls: tls_state,
            // validated as authorities by the config
            endpoints: u.endpoints.iter().filter_map(|e| e.parse().ok()).collect(),
            next: AtomicUsize::new(0),
            read_timeout: u.read_timeout,
            client,
        }
    }

    fn pick(&self) -> Option<&Authority> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first(),
            n => self
                .endpoints
                .get(self.next.fetch_add(1, Ordering::Relaxed) % n),
        }
    }

    /// Sends `req` (whose URI carries only path and query) to the next endpoint. The
    /// response body is streamed, not buffered; `read_timeout` bounds the wait for the response
    /// head. Returns the endpoint used, for logs.
    pub async fn send(
        &self,
        mut req: Request<ReqBody>,
        path: PathAndQuery,
    ) -> Result<(Response<Incoming>, Authority), UpstreamError> {
        let Some(ep) = self.pick() else {
            return Err(UpstreamError::Uri("upstream has no endpoints".into()));
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(ep.clone());
        parts.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| UpstreamError::Uri(e.to_string()))?;
        let endpoint = ep.as_str();
        match tokio::time::timeout(self.read_timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok((resp, ep.clone())),
            Ok(Err(e)) if connect::is_tls_failure(&e) => Err(UpstreamError::Tls {
                endpoint: endpoint.into(),
                detail: error_chain(&e),
            }),
            Ok(Err(e)) if self.late_tls_failure(&e).is_some() => Err(UpstreamError::Tls {
                endpoint: endpoint.into(),
                detail: format!(
                    "{}: {}",
                    error_chain(&e),
                    self.late_tls_failure(&e).unwrap_or_default()
                ),
            }),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect {
                endpoint: endpoint.into(),
                detail: error_chain(&e),
            }),
            Ok(Err(e)) => Err(UpstreamError::Protocol {
                endpoint: endpoint.into(),
                detail: error_chain(&e),
            }),
            Err(_) => Err(UpstreamError::Timeout {
                endpoint: endpoint.into(),
                timeout: self.read_timeout,
            }),
        }
    }
}

impl UpstreamClient {
    /// A request canceled because its connection died of a TLS alert just now (HTTP/2 hides the
    /// cause from the request): the TLS failure. Scoped to this worker's client for this
    /// upstream and to the last two seconds.
    fn late_tls_failure(&self, e: &hyper_util::client::legacy::Error) -> Option<String> {
        let canceled = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<hyper::Error>())
            .is_some_and(|h| h.is_canceled() || h.is_incomplete_message());
        if !e.is_connect() && canceled {
            return self.tls.as_ref()?.recent_failure(Duration::from_secs(2));
        }
        None
    }
}

/// An error with its sources, `a: b: c` (hyper's errors say little without their causes).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
