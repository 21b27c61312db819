//! One task per pool on the control-plane runtime — once per process, not per worker: active
//! health checks (over the upstream's own protocol and TLS), re-resolution of hostname
//! endpoints, and the `endpoint_healthy` gauges (an ejection ends by time, which nothing else
//! notices). It holds the pool weakly and stops when the pool is retired by a reload or gone.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri};
use hyper_util::client::legacy::Client;
use tokio::time::Instant;

use super::body::ReqBody;
use super::client::{build, host_of};
use super::connect::Connector;
use super::error::error_chain;
use super::health::{now_ms, EndpointState};
use super::pool::Pool;
use crate::config::{HealthCheck, UpstreamProtocol};

/// How often gauges follow ejections that ended by time.
const GAUGE_REFRESH: Duration = Duration::from_secs(1);

/// Starts the supervisor of every pool that has none yet. Without a runtime (the gateway is
/// built before the control plane starts) it does nothing: startup calls it again from there.
pub fn start(pools: &[Arc<Pool>]) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    for p in pools {
        if p.claim_supervision() {
            tokio::spawn(run(Arc::downgrade(p)));
        }
    }
}

async fn run(pool: Weak<Pool>) {
    let (client, scheme, hosts) = {
        let Some(p) = pool.upgrade() else { return };
        let b = build(&p.config, host_of(pool.clone()), true);
        (b.client, b.scheme, p.hostnames())
    };
    let mut next_check = Instant::now();
    let mut next_resolve = Instant::now();
    loop {
        let Some(p) = pool.upgrade() else { return };
        if p.retired() {
            return;
        }
        let now = Instant::now();
        if !hosts.is_empty() && now >= next_resolve {
            resolve(&p, &hosts).await;
            next_resolve = Instant::now() + p.config.resolve_interval;
        }
        let hc = p.config.health_check.clone();
        if let Some(hc) = &hc {
            if now >= next_check {
                // paced from the round's start: a slow round does not stretch the interval
                next_check = now + hc.interval;
                check_all(&p, hc, &client, &scheme).await;
            }
        }
        let t = now_ms();
        for e in &p.set.load().endpoints {
            e.state.refresh_gauge(t);
        }
        let mut wake = Instant::now() + GAUGE_REFRESH;
        if hc.is_some() {
            wake = wake.min(next_check);
        }
        if !hosts.is_empty() {
            wake = wake.min(next_resolve);
        }
        drop(p);
        tokio::time::sleep_until(wake).await;
    }
}

/// Looks every hostname up again; each address becomes an endpoint.
async fn resolve(p: &Pool, hosts: &[(usize, String)]) {
    let mut resolved: Vec<Option<Vec<SocketAddr>>> = vec![None; p.config.endpoints.len()];
    for (i, h) in hosts {
        match tokio::net::lookup_host(h.as_str()).await {
            Ok(addrs) => {
                let mut v: Vec<SocketAddr> = addrs.collect();
                v.sort();
                v.dedup();
                if let Some(slot) = resolved.get_mut(*i) {
                    *slot = Some(v);
                }
            }
            Err(e) => {
                tracing::warn!(upstream = %p.name(), endpoint = %h, error = %e, "upstream endpoint did not resolve; keeping its previous addresses")
            }
        }
    }
    p.install(&resolved);
}

/// One round: every endpoint checked at once, each bounded by the check's timeout.
async fn check_all(
    p: &Pool,
    hc: &HealthCheck,
    client: &Client<Connector, ReqBody>,
    scheme: &Scheme,
) {
    let Ok(path) = PathAndQuery::try_from(hc.path.as_str()) else {
        return;
    };
    let mut set = tokio::task::JoinSet::new();
    for e in &p.set.load().endpoints {
        let (client, scheme, path) = (client.clone(), scheme.clone(), path.clone());
        let (state, authority, hc) = (e.state.clone(), e.authority.clone(), hc.clone());
        // HTTP/1.1 to an address resolved from a name: the check names the host, as a
        // name-based virtual host behind it expects (over HTTP/2 the authority is the address)
        let host = e
            .host
            .as_ref()
            .filter(|_| p.config.protocol == UpstreamProtocol::Http1)
            .map(|h| format!("{h}:{}", authority.port_u16().unwrap_or_default()));
        set.spawn(async move {
            let r = check(&client, scheme, authority, host, path, &hc).await;
            apply(&state, r, &hc);
        });
    }
    while set.join_next().await.is_some() {}
}

fn apply(state: &EndpointState, r: Result<(), String>, hc: &HealthCheck) {
    match r {
        Ok(()) => state.check_result(true, None, hc),
        Err(e) => state.check_result(false, Some(format!("health check: {e}")), hc),
    };
}

async fn check(
    client: &Client<Connector, ReqBody>,
    scheme: Scheme,
    authority: Authority,
    host: Option<String>,
    path: PathAndQuery,
    hc: &HealthCheck,
) -> Result<(), String> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path);
    let uri = Uri::from_parts(parts).map_err(|e| e.to_string())?;
    let mut req = Request::get(uri).header(http::header::USER_AGENT, "cc-gateway-health-check");
    if let Some(h) = host {
        req = req.header(http::header::HOST, h);
    }
    let req = req.body(ReqBody::Empty).map_err(|e| e.to_string())?;
    match tokio::time::timeout(hc.timeout, client.request(req)).await {
        Ok(Ok(resp)) if hc.expect_status.contains(&resp.status().as_u16()) => Ok(()),
        Ok(Ok(resp)) => Err(format!("answered {}", resp.status())),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!("no answer within {:?}", hc.timeout)),
    }
}
