//! A worker's client for one upstream, and the worker's balancing state over the upstream's
//! shared pool. HTTP/1.1 goes over the worker's own keep-alive connections (`h1.rs`); HTTP/2
//! (`h2` over TLS, `h2c` cleartext, `auto` by ALPN) over hyper-util's client, where one
//! connection per endpoint carries every concurrent request as its own stream. Connections
//! live on the worker's own runtime.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::balance::{Choice, Local};
use super::body::ReqBody;
use super::connect::{self, Connector, HostOf, TlsConnect};
use super::error::{causes, classify, error_chain, Failed, Failure, UpstreamError};
use super::h1::{H1Pool, SendError};
use super::health::{now_ms, EndpointId, Outcome};
use super::pool::Pool;
use crate::config::{Balance, Upstream, UpstreamProtocol};
use crate::tls::client::{ClientTlsFiles, RotatingClientConfig};

/// TCP keepalive on upstream sockets: NATs and load balancers between us and a backend drop
/// quiet connections after a few minutes; probes after 30 s of silence keep the mapping alive
/// and find a dead peer within about a minute.
const TCP_KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE_RETRIES: u32 = 3;

/// An HTTP client for an upstream's protocol and TLS: the workers' clients, and the active
/// checker's (so that checks go the way requests go).
pub struct Built {
    pub client: Client<Connector, ReqBody>,
    pub scheme: Scheme,
    pub tls: Option<Arc<TlsConnect>>,
    /// the connector the client dials with (TCP, TLS, tunnels)
    pub connector: Connector,
}

/// The TLS server name of a resolved address: the host it was resolved from.
pub fn host_of(pool: Weak<Pool>) -> HostOf {
    Arc::new(move |authority: &str| {
        let p = pool.upgrade()?;
        let set = p.set.load();
        let e = set
            .endpoints
            .iter()
            .find(|e| e.authority.as_str() == authority)?;
        e.host.clone()
    })
}

/// `retry_canceled`: hyper-util's own retry of a request handed back unsent by a pooled
/// connection (same endpoint, uncounted, unbounded). The workers' clients turn it off: the
/// retry loop (`retry.rs`) does it counted, bounded and on another endpoint where one exists.
pub fn build(u: &Upstream, host_of: HostOf, retry_canceled: bool) -> Built {
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
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(u.pool_idle_timeout)
        .pool_max_idle_per_host(u.pool_max_idle)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .retry_canceled_requests(retry_canceled)
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
        .build(Connector {
            http: http.clone(),
            tls: tls.clone(),
            host_of: host_of.clone(),
        });
    Built {
        client,
        scheme,
        tls: tls.clone(),
        connector: Connector { http, tls, host_of },
    }
}

pub struct UpstreamClient {
    /// the process's pool for this upstream (shared health); this client is kept across a
    /// reload exactly while the new gateway keeps the pool
    pub pool: Arc<Pool>,
    local: Local,
    read_timeout: Duration,
    scheme: Scheme,
    tls: Option<Arc<TlsConnect>>,
    client: Client<Connector, ReqBody>,
    /// HTTP/1.1 upstreams: this worker's connections, without hyper-util's pool
    h1: Option<H1Pool>,
}

/// Takes a request out of the worker's in-flight count however it ends, the future dropped
/// by a route timeout or a departed client included.
struct InFlight<'a> {
    /// None: nothing to take out (round robin)
    local: Option<&'a Local>,
    choice: &'a Choice,
    latency: Option<Duration>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.local {
            l.finish(self.choice, self.latency);
        }
    }
}

impl UpstreamClient {
    pub fn new(pool: Arc<Pool>) -> Self {
        let b = build(&pool.config, host_of(Arc::downgrade(&pool)), false);
        let c = &pool.config;
        let h1 = (c.protocol == UpstreamProtocol::Http1).then(|| {
            H1Pool::new(
                b.connector,
                b.scheme.clone(),
                c.pool_max_idle,
                c.pool_idle_timeout,
            )
        });
        UpstreamClient {
            h1,
            read_timeout: pool.config.read_timeout,
            pool,
            local: Local::new(),
            scheme: b.scheme,
            tls: b.tls,
            client: b.client,
        }
    }

    /// A usable endpoint not in `exclude` (gateway's region first); None when none is.
    pub fn pick(&self, exclude: &[EndpointId]) -> Option<Choice> {
        let set = self.pool.set.load_full();
        self.local
            .pick(&set, self.pool.config.balance, exclude, now_ms())
    }

    /// Panic mode: every endpoint is out of rotation. The one that failed least recently (one
    /// that never failed first) is the best bet.
    pub fn panic_pick(&self, exclude: &[EndpointId]) -> Option<Choice> {
        let set = self.pool.set.load_full();
        let index = set
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| !exclude.contains(&e.state.id))
            .min_by_key(|(_, e)| e.state.last_failure())
            .map(|(i, _)| i)?;
        Some(Choice { set, index })
    }

    /// Sends `req` (whose URI carries only path and query) to the chosen endpoint and records
    /// how it went in the endpoint's health. The response body is streamed, not buffered;
    /// `read_timeout` bounds the wait for the response head, and a route's `per_try_timeout`
    /// when shorter (so that a try it cuts counts against the endpoint's health as a timeout).
    pub async fn attempt(
        &self,
        c: &Choice,
        mut req: Request<ReqBody>,
        path: PathAndQuery,
        per_try: Option<Duration>,
    ) -> Result<Response<Incoming>, Failed> {
        let limit = per_try.map_or(self.read_timeout, |t| t.min(self.read_timeout));
        let ep = c.endpoint();
        // HTTP/1.1 (CONNECT aside, whose target is an authority): origin-form, our own pool;
        // otherwise hyper-util's client, which wants the absolute URI as its pool key
        let h1 = self
            .h1
            .as_ref()
            .filter(|_| req.method() != http::Method::CONNECT);
        *req.uri_mut() = match h1 {
            Some(_) => Uri::from(path),
            None => {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(self.scheme.clone());
                parts.authority = Some(ep.authority.clone());
                parts.path_and_query = Some(path);
                Uri::from_parts(parts)
                    .map_err(|e| Failed::other(UpstreamError::Uri(e.to_string())))?
            }
        };
        // the upstream's own `headers` (credentials for it, say) replace anything the client sent
        for h in &self.pool.config.headers {
            req.headers_mut().insert(h.name.clone(), h.value.clone());
        }
        // in-flight counts and latency are what peak EWMA weighs; round robin needs neither
        let ewma = self.pool.config.balance == Balance::PeakEwma;
        if ewma {
            self.local.start(c);
        }
        let mut flight = InFlight {
            local: ewma.then_some(&self.local),
            choice: c,
            latency: None,
        };
        let sent = Instant::now();
        let exchange = async {
            match h1 {
                Some(h1) => h1.send(ep, req, sent).await,
                None => Ok(self.client.request(req).await?),
            }
        };
        let result = tokio::time::timeout(limit, exchange).await;
        let endpoint = ep.authority.as_str();
        let outlier = &self.pool.config.outlier;
        let client_side = matches!(&result, Ok(Err(e)) if body_broke_off(e));
        let too_large = match &result {
            Ok(Err(e)) if client_side => body_too_large(e),
            _ => None,
        };
        let failure = match &result {
            Ok(Err(e)) if !client_side => classify(e),
            Err(_) => Failure::Timeout,
            _ => Failure::Other,
        };
        let r = match result {
            Ok(Err(_)) if let Some(limit) = too_large => UpstreamError::BodyTooLarge { limit },
            Ok(Ok(resp)) => {
                let latency = sent.elapsed();
                flight.latency = Some(latency);
                let outcome = if resp.status().is_server_error() {
                    Outcome::Status5xx
                } else {
                    Outcome::Ok
                };
                let error = (outcome != Outcome::Ok).then(|| format!("answered {}", resp.status()));
                ep.state.record(outcome, Some(latency), error, outlier);
                return Ok(resp);
            }
            Ok(Err(e)) if connect::is_tls_failure(&e) => UpstreamError::Tls {
                endpoint: endpoint.into(),
                detail: error_chain(&e),
            },
            Ok(Err(e)) if self.late_tls_failure(&e).is_some() => UpstreamError::Tls {
                endpoint: endpoint.into(),
                detail: format!(
                    "{}: {}",
                    error_chain(&e),
                    self.late_tls_failure(&e).unwrap_or_default()
                ),
            },
            Ok(Err(e)) if e.is_connect() && no_agent(&e) => UpstreamError::TunnelUnavailable {
                endpoint: endpoint.into(),
                detail: error_chain(&e),
            },
            Ok(Err(e)) if e.is_connect() => UpstreamError::Connect {
                endpoint: endpoint.into(),
                detail: error_chain(&e),
            },
            Ok(Err(e)) => UpstreamError::Protocol {
                endpoint: endpoint.into(),
                detail: error_chain(&e),
            },
            Err(_) => UpstreamError::Timeout {
                endpoint: endpoint.into(),
                timeout: limit,
            },
        };
        let outcome = match &r {
            UpstreamError::Tls { .. } => Outcome::Tls,
            UpstreamError::Connect { .. } | UpstreamError::TunnelUnavailable { .. } => {
                Outcome::Connect
            }
            UpstreamError::Timeout { .. } => Outcome::Timeout,
            _ => Outcome::Protocol,
        };
        if client_side {
            ep.state.count(outcome);
        } else {
            ep.state.record(outcome, None, Some(r.to_string()), outlier);
        }
        // a TLS failure is never retried: the next endpoint has the same trust and identity
        let failure = match r {
            UpstreamError::Tls { .. } => Failure::Other,
            _ => failure,
        };
        Err(Failed { error: r, failure })
    }

    /// A request canceled, or failed with its connection's I/O error, because the connection
    /// died of a TLS alert just now (HTTP/2 hides the cause from the request: h2 passes a
    /// connection error on to its streams as text, without the rustls error): the TLS failure.
    /// Scoped to this worker's client for this upstream and to the last two seconds.
    fn late_tls_failure(&self, e: &SendError) -> Option<String> {
        let canceled = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<hyper::Error>())
            .is_some_and(|h| {
                h.is_canceled()
                    || h.is_incomplete_message()
                    || std::error::Error::source(h).is_some_and(|s| s.is::<std::io::Error>())
            });
        if !e.is_connect() && canceled {
            return self.tls.as_ref()?.recent_failure(Duration::from_secs(2));
        }
        None
    }
}

/// The endpoint is behind a tunnel none of whose agents is connected.
fn no_agent(e: &SendError) -> bool {
    causes(e).any(|c| {
        matches!(
            c.downcast_ref(),
            Some(connect::ConnectError::Tunnel(
                crate::tunnel::OpenError::Unavailable(_)
            ))
        )
    })
}

/// The client's body went past the route's limit: the limit.
fn body_too_large(e: &SendError) -> Option<u64> {
    causes(e).find_map(|c| match c.downcast_ref() {
        Some(super::BodyError::TooLarge { limit }) => Some(*limit),
        _ => None,
    })
}

/// The client's own body failed (it went away mid-upload, or past the route's limit): hyper
/// reports it as a "user" error. Not the endpoint's fault, so not counted against its health.
fn body_broke_off(e: &SendError) -> bool {
    causes(e).any(|c| {
        c.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
    })
}
