//! A worker's HTTP/1.1 connections to one upstream, on hyper's connection API without
//! hyper-util's pool. That pool hashes a scheme+authority key (SipHash) on every checkout and
//! return, and spawns a task per request that waits for the connection to be free again; here
//! the worker's connections sit in one short list, found by the endpoint's id, and go back on
//! it as soon as the response head is in: a connection counts as idle when hyper says it can
//! take a request (`is_ready`), which it does once the previous response body has been read to
//! its end; one still busy a second after it was handed out (a stream) is parked out of the
//! checkouts' way until the sweep finds it idle. Under callgrind (`bench/instructions.sh`, warm
//! token) that took the gateway from 54.5k to 47.0k instructions per request — what the
//! anchors' bare hyper hop saves the same way (`--client thin`: 34.4k → 26.8k).
//!
//! HTTP/2 (`h2`, `h2c`, `auto`) keeps hyper-util's client: one multiplexed connection per
//! endpoint, nothing to win per request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::Scheme;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};

use super::body::ReqBody;
use super::connect::{ConnectError, Connector};
use super::health::EndpointId;
use super::pool::Endpoint;

/// Why a request did not get its response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// no connection could be made: nothing was sent
    #[error("client error (Connect)")]
    Connect(#[source] ConnectError),
    /// hyper handed the request back unsent: the connection closed before a byte of it was
    /// written
    #[error("client error (Canceled)")]
    Canceled(#[source] hyper::Error),
    /// the exchange failed after (part of) the request went out
    #[error("client error (SendRequest)")]
    Send(#[source] hyper::Error),
    /// from hyper-util's client (HTTP/2 upstreams)
    #[error(transparent)]
    Legacy(#[from] hyper_util::client::legacy::Error),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Connect(_) => true,
            SendError::Legacy(e) => e.is_connect(),
            SendError::Canceled(_) | SendError::Send(_) => false,
        }
    }

    /// The request provably never left (hyper gave it back).
    pub fn is_canceled(&self) -> bool {
        match self {
            SendError::Canceled(_) => true,
            // hyper-util's `Canceled` kind is exactly that (its `is_canceled` is private; its
            // Display names the kind)
            SendError::Legacy(e) => e.to_string() == "client error (Canceled)",
            SendError::Connect(_) | SendError::Send(_) => false,
        }
    }
}

struct Idle {
    endpoint: EndpointId,
    sender: SendRequest<ReqBody>,
    /// when it was last handed out, or came back from the parked ones: it has been idle (or
    /// busy, while hyper does not call it ready) since then at most
    since: Instant,
}

/// A connection still busy this long after it was handed out (a stream: SSE, a download) is
/// parked: checkouts stop looking at it, and the sweep brings it back once it is idle. Without
/// this, every checkout would walk past every open stream of the worker.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// What a listed connection is at a given moment.
enum Is {
    Closed,
    /// an exchange still runs on it
    Busy,
    /// busy past `PARK_AFTER`
    LongBusy,
    /// idle past `pool_idle_timeout`
    Expired,
    Idle,
}

impl Idle {
    fn is(&self, now: Instant, idle_timeout: Duration) -> Is {
        let age = now.saturating_duration_since(self.since);
        if self.sender.is_closed() {
            Is::Closed
        } else if !self.sender.is_ready() {
            if age >= PARK_AFTER {
                Is::LongBusy
            } else {
                Is::Busy
            }
        } else if age >= idle_timeout {
            Is::Expired
        } else {
            Is::Idle
        }
    }
}

#[derive(Default)]
struct Lists {
    /// handed out less than `PARK_AFTER` ago, or idle; the most recently used at the end
    recent: Vec<Idle>,
    /// busy for longer
    parked: Vec<Idle>,
}

type List = Mutex<Lists>;

pub struct H1Pool {
    connector: Connector,
    scheme: Scheme,
    /// this worker's pooled connections, busy or idle
    list: Arc<List>,
    max_idle: usize,
    idle_timeout: Duration,
    sweeping: AtomicBool,
}

impl H1Pool {
    pub fn new(
        connector: Connector,
        scheme: Scheme,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> H1Pool {
        H1Pool {
            connector,
            scheme,
            list: Arc::new(Mutex::new(Lists::default())),
            max_idle,
            idle_timeout,
            sweeping: AtomicBool::new(false),
        }
    }

    /// Sends `req` (its URI only a path and query: origin-form on the wire) to `ep` on an idle
    /// connection of this worker, or a new one. `now` is when the try started.
    pub async fn send(
        &self,
        ep: &Endpoint,
        mut req: Request<ReqBody>,
        now: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        let id = ep.state.id;
        if !req.headers().contains_key(HOST) {
            // an HTTP/1.0 client without Host: the endpoint's authority, as hyper-util does
            if let Ok(v) = HeaderValue::from_str(ep.authority.as_str()) {
                req.headers_mut().insert(HOST, v);
            }
        }
        let mut sender = match self.checkout(id, now) {
            Some(s) => s,
            None => self.connect(ep).await?,
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                self.checkin(id, sender);
                Ok(resp)
            }
            Err(mut e) => {
                let unsent = e.take_message().is_some();
                let e = e.into_error();
                Err(if unsent {
                    SendError::Canceled(e)
                } else {
                    SendError::Send(e)
                })
            }
        }
    }

    /// The most recently used idle connection to `id`, else a parked one idle again; closed
    /// and expired ones are dropped and long-busy ones parked on the way.
    fn checkout(&self, id: EndpointId, now: Instant) -> Option<SendRequest<ReqBody>> {
        let mut guard = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let lists = &mut *guard;
        let mut i = lists.recent.len();
        while i > 0 {
            i -= 1;
            let Some(e) = lists.recent.get(i) else { break };
            let (is, endpoint) = (e.is(now, self.idle_timeout), e.endpoint);
            match is {
                // dropping the sender closes the connection
                Is::Closed | Is::Expired => drop(lists.recent.swap_remove(i)),
                Is::LongBusy => {
                    let e = lists.recent.swap_remove(i);
                    lists.parked.push(e);
                }
                Is::Idle if endpoint == id => return Some(lists.recent.swap_remove(i).sender),
                Is::Busy | Is::Idle => {}
            }
        }
        // none idle among the recent ones: a parked one whose stream has ended since the last
        // sweep serves before a new connection is opened
        let i = lists
            .parked
            .iter()
            .position(|e| e.endpoint == id && !e.sender.is_closed() && e.sender.is_ready())?;
        Some(lists.parked.swap_remove(i).sender)
    }

    /// Puts a connection whose response head just came back on the list: it is idle again
    /// once the body has been read. Past `pool_max_idle` idle ones to the endpoint it is
    /// dropped, and hyper closes it when this exchange ends. Its time starts now, not when the
    /// try began: an answer slower than `pool_idle_timeout` (a long LLM completion) must not
    /// make its connection look idle that long.
    fn checkin(&self, id: EndpointId, sender: SendRequest<ReqBody>) {
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        let mut lists = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        // counted only when the list could hold that many (never at the default 1024)
        if lists.recent.len() >= self.max_idle {
            let idle = lists
                .recent
                .iter()
                .filter(|e| e.endpoint == id && e.sender.is_ready())
                .count();
            if idle >= self.max_idle {
                return;
            }
        }
        lists.recent.push(Idle {
            endpoint: id,
            sender,
            since: Instant::now(),
        });
        drop(lists);
        self.sweep_from_now_on();
    }

    /// Closes idle connections past `pool_idle_timeout` when no request comes to find them,
    /// parks long-busy ones and brings back parked ones that are idle again: one task per
    /// worker pool, every half timeout (at most a second), gone with the pool.
    fn sweep_from_now_on(&self) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let list = Arc::downgrade(&self.list);
        let (timeout, max_idle) = (self.idle_timeout, self.max_idle);
        let period = (timeout / 2).clamp(Duration::from_millis(10), PARK_AFTER);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !sweep(&list, timeout, max_idle) {
                    return;
                }
            }
        });
    }

    async fn connect(&self, ep: &Endpoint) -> Result<SendRequest<ReqBody>, SendError> {
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(ep.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(ConnectError::Tcp(Box::new(e))))?;
        let mut c = self.connector.clone();
        std::future::poll_fn(|cx| tower_service::Service::<Uri>::poll_ready(&mut c, cx))
            .await
            .map_err(SendError::Connect)?;
        let io = tower_service::Service::<Uri>::call(&mut c, uri)
            .await
            .map_err(SendError::Connect)?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Send)?;
        tokio::spawn(async move {
            // its errors reach the request on it; this is only the connection ending
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        sender.ready().await.map_err(SendError::Canceled)?;
        Ok(sender)
    }
}

/// One pass over a pool's lists: drops closed connections and idle ones past the timeout or
/// past `max_idle` per endpoint (the most recently used kept), parks long-busy ones, brings
/// back parked ones that are idle now. False once the pool is gone.
fn sweep(list: &Weak<List>, timeout: Duration, max_idle: usize) -> bool {
    let Some(list) = list.upgrade() else {
        return false;
    };
    let now = Instant::now();
    let mut guard = list.lock().unwrap_or_else(PoisonError::into_inner);
    let lists = &mut *guard;
    // parked ones idle again since the last pass: back, as the least recently used
    let mut back = Vec::new();
    let mut i = lists.parked.len();
    while i > 0 {
        i -= 1;
        let Some(e) = lists.parked.get(i) else { break };
        if e.sender.is_closed() {
            lists.parked.swap_remove(i);
        } else if e.sender.is_ready() {
            let mut e = lists.parked.swap_remove(i);
            e.since = now;
            back.push(e);
        }
    }
    if !back.is_empty() {
        back.append(&mut lists.recent);
        lists.recent = back;
    }
    // idle ones kept so far per endpoint, newest first (the end is the newest)
    let mut kept: Vec<(EndpointId, usize)> = Vec::new();
    let mut i = lists.recent.len();
    while i > 0 {
        i -= 1;
        let Some(e) = lists.recent.get(i) else { break };
        let (is, endpoint) = (e.is(now, timeout), e.endpoint);
        match is {
            Is::Closed | Is::Expired => drop(lists.recent.remove(i)),
            Is::LongBusy => {
                let e = lists.recent.remove(i);
                lists.parked.push(e);
            }
            Is::Busy => {}
            Is::Idle => match kept.iter_mut().find(|(id, _)| *id == endpoint) {
                Some((_, n)) if *n >= max_idle => drop(lists.recent.remove(i)),
                Some((_, n)) => *n += 1,
                None => kept.push((endpoint, 1)),
            },
        }
    }
    true
}
