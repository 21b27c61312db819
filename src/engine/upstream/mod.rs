//! Upstreams: where a request goes and how it gets there.
//!
//! - `pool.rs`: an upstream's endpoints as the whole process sees them (weights, regions,
//!   hostnames expanded to addresses), built per gateway, carried over by reloads.
//! - `health.rs`: each endpoint's shared health (passive ejection with back-off, active check
//!   state), read lock-free on the request path; the request/ejection metrics.
//! - `balance.rs`: a worker's choice among the usable endpoints (regional placement, smooth
//!   weighted round robin or peak EWMA), excluding endpoints already tried.
//! - `client.rs`: a worker's client per upstream (HTTP/1.1 on its own keep-alive list in
//!   `h1.rs`, HTTP/2 on hyper-util's client; TLS in `connect.rs`), one attempt to one endpoint.
//! - `retry.rs`: a route's tries — which failures are retried, the body kept for a replay,
//!   per-try timeout and backoff.
//! - `supervise.rs`: once per process, per pool: active checks, DNS, gauges.
//!
//! [`send`] ties them together: this upstream's endpoints, else its fallbacks in order, else
//! panic mode (the least recently failed endpoint), else 503 `upstream_unavailable`.

mod balance;
mod body;
mod client;
mod connect;
mod error;
mod h1;
mod health;
mod pool;
mod retry;
mod supervise;

use std::sync::Arc;

use http::uri::{Authority, PathAndQuery};
use http::{Request, Response};
use hyper::body::Incoming;

pub use balance::Choice;
pub use body::{BodyError, ReqBody};
pub use client::UpstreamClient;
pub use error::{error_chain, Failed, Failure, UpstreamError};
pub use health::EndpointId;
pub use pool::{build as build_pools, describe as describe_pools, Pool};
pub use retry::{send_with_retries, Tries};
pub use supervise::start as supervise;

/// The endpoints one request has tried (a few at most; kept inline, no allocation).
pub type Tried = smallvec::SmallVec<[EndpointId; 4]>;

/// Sends `req` for upstream `upstream` (an index into the worker's `clients`, which are
/// indexed like `config.upstreams`) to one endpoint, preferably one not in `tried`, and adds
/// it to `tried` and sets `endpoint` to its authority — so a retry passes the same list and
/// gets another endpoint where one exists (and the same one where none does: an upstream of
/// one endpoint still gets its retry). Returns the response and the endpoint's authority.
/// `per_try` (a route's `per_try_timeout`) bounds the try when shorter than `read_timeout`.
///
/// Choice: a usable endpoint of this upstream (its region first), else of each `fallback`
/// upstream in order (their own fallbacks after them), else panic mode — the least recently
/// failed endpoint of this upstream, ejected or not: better a likely failure than a sure one.
/// When that fails too, the whole upstream is down: 503 `upstream_unavailable` (a TLS failure
/// or a timeout keeps its own answer: they say more).
pub async fn send(
    clients: &[Arc<UpstreamClient>],
    upstream: usize,
    req: Request<ReqBody>,
    path: PathAndQuery,
    tried: &mut Tried,
    endpoint: &mut Option<Authority>,
    per_try: Option<std::time::Duration>,
) -> Result<(Response<Incoming>, Authority), Failed> {
    let Some(primary) = clients.get(upstream) else {
        return Err(Failed::other(UpstreamError::Uri(format!(
            "no upstream #{upstream}"
        ))));
    };
    let fresh = choose(clients, upstream, tried);
    let usable = fresh.or_else(|| {
        (!tried.is_empty())
            .then(|| choose(clients, upstream, &[]))
            .flatten()
    });
    if let Some((k, c)) = usable {
        let client = &clients[k];
        tried.push(c.endpoint().state.id);
        *endpoint = Some(c.endpoint().authority.clone());
        let resp = client.attempt(&c, req, path, per_try).await?;
        return Ok((resp, c.endpoint().authority.clone()));
    }
    let name = primary.pool.name().to_string();
    let Some(c) = primary
        .panic_pick(tried)
        .or_else(|| primary.panic_pick(&[]))
    else {
        return Err(Failed::other(UpstreamError::Unavailable {
            upstream: name,
            detail: "the upstream has no endpoint".into(),
        }));
    };
    tracing::warn!(upstream = %name, endpoint = %c.endpoint().authority, "no endpoint in rotation and no fallback can serve: panic mode");
    tried.push(c.endpoint().state.id);
    *endpoint = Some(c.endpoint().authority.clone());
    match primary.attempt(&c, req, path, per_try).await {
        Ok(resp) => Ok((resp, c.endpoint().authority.clone())),
        Err(
            f @ Failed {
                error: UpstreamError::Tls { .. } | UpstreamError::Timeout { .. },
                ..
            },
        ) => Err(f),
        Err(Failed { error, failure }) => Err(Failed {
            error: UpstreamError::Unavailable {
                upstream: name,
                detail: error.to_string(),
            },
            failure,
        }),
    }
}

/// `upstream` itself when it has a usable endpoint not yet tried (nearly always: no
/// allocation), else the first of its fallbacks that has one.
fn choose(
    clients: &[Arc<UpstreamClient>],
    upstream: usize,
    tried: &[EndpointId],
) -> Option<(usize, Choice)> {
    let client = clients.get(upstream)?;
    if let Some(c) = client.pick(tried) {
        return Some((upstream, c));
    }
    let mut visited = vec![upstream];
    client
        .pool
        .fallback
        .iter()
        .find_map(|&f| choose_fallback(clients, f, tried, &mut visited))
}

/// Depth first over `upstream` and its fallbacks (the config refuses cycles; `visited` makes
/// sure anyway): the first that has a usable endpoint not yet tried.
fn choose_fallback(
    clients: &[Arc<UpstreamClient>],
    upstream: usize,
    tried: &[EndpointId],
    visited: &mut Vec<usize>,
) -> Option<(usize, Choice)> {
    if visited.contains(&upstream) {
        return None;
    }
    visited.push(upstream);
    let client = clients.get(upstream)?;
    if let Some(c) = client.pick(tried) {
        return Some((upstream, c));
    }
    client
        .pool
        .fallback
        .iter()
        .find_map(|&f| choose_fallback(clients, f, tried, visited))
}
