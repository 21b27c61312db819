//! Upstream HTTP/1.1 client, one per worker and upstream: a keep-alive pool (hyper-util's
//! client) whose connections live on the worker's own runtime. Endpoints are used round-robin.

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

use crate::config::Upstream;

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

/// Why an upstream exchange failed; maps to `upstream_unavailable` / `upstream_timeout`.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
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
    client: Client<HttpConnector, ReqBody>,
}

impl UpstreamClient {
    pub fn new(u: &Upstream) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(u.connect_timeout));
        conn.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(u.pool_idle_timeout)
            .pool_max_idle_per_host(u.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(conn);
        UpstreamClient {
            name: u.name.clone(),
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
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(ep.clone());
        parts.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| UpstreamError::Uri(e.to_string()))?;
        let endpoint = ep.as_str();
        match tokio::time::timeout(self.read_timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok((resp, ep.clone())),
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
