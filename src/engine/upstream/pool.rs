//! An upstream's pool as the whole process sees it: its endpoints (each configured address, a
//! hostname expanded to every address it resolves to), their shared health, the fallback
//! upstreams, the gateway's region. One per upstream per gateway generation, built in
//! `Gateway::build`; the workers' clients (`client.rs`) choose among its endpoints, and its
//! supervisor task (`supervise.rs`, on the control plane) checks and re-resolves them.
//!
//! At a reload, an upstream whose settings did not change keeps its pool as is (same
//! endpoints, same supervisor, and the workers keep their connection pools); a changed one gets
//! a new pool, but every address it still has keeps its `EndpointState` — its health,
//! ejection and back-off carry over. The old pool is retired: its supervisor stops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::Authority;

use super::health::{now_ms, EndpointId, EndpointState};
use crate::config::{Config, Upstream};

/// One address of the pool.
pub struct Endpoint {
    pub state: Arc<EndpointState>,
    /// what the request URI carries (an `ip:port`, or the configured `host:port` until the
    /// name was resolved)
    pub authority: Authority,
    /// the configured hostname this address was resolved from (the TLS server name)
    pub host: Option<String>,
    /// index of the configured endpoint it comes from
    pub configured: usize,
    pub weight: u32,
    pub region: Option<String>,
    /// in the gateway's region (an endpoint without a region is)
    pub local: bool,
}

/// The pool's endpoints at one moment; replaced whole when a name resolves differently.
pub struct EndpointSet {
    /// changes with every new set: workers rebuild their balancing state when it does
    pub generation: u64,
    pub endpoints: Vec<Endpoint>,
}

pub struct Pool {
    pub config: Upstream,
    /// the gateway's region (`server.region`)
    pub region: Option<String>,
    /// indexes into this gateway's `config.upstreams`, in the order they are tried
    pub fallback: Vec<usize>,
    pub set: ArcSwap<EndpointSet>,
    started: AtomicBool,
    retired: AtomicBool,
}

fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Pool {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The supervisor claims the pool once: a pool reused by a reload keeps its one task.
    pub fn claim_supervision(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    pub fn endpoint(&self, id: EndpointId) -> Option<Arc<EndpointState>> {
        self.set
            .load()
            .endpoints
            .iter()
            .find(|e| e.state.id == id)
            .map(|e| e.state.clone())
    }

    /// Installs the addresses `resolved[i]` for each configured endpoint `i` (None: keep what
    /// it has), keeping the state of every address already there.
    pub fn install(&self, resolved: &[Option<Vec<SocketAddr>>]) {
        let cur = self.set.load();
        let mut endpoints = Vec::new();
        for (i, c) in self.config.endpoints.iter().enumerate() {
            match resolved.get(i).and_then(Option::as_ref) {
                Some(addrs) if !addrs.is_empty() => {
                    let host = c.addr.rsplit_once(':').map(|(h, _)| h.to_string());
                    for a in addrs {
                        let key = a.to_string();
                        if endpoints.iter().any(|e: &Endpoint| e.state.addr() == key) {
                            continue;
                        }
                        let Ok(authority) = key.parse::<Authority>() else {
                            continue;
                        };
                        let state = state_for(&cur.endpoints, self.name(), &key);
                        endpoints.push(self.endpoint_of(i, state, authority, host.clone()));
                    }
                }
                // a failed or empty lookup keeps the addresses we had: a DNS hiccup must not
                // empty the pool
                _ => {
                    for e in cur.endpoints.iter().filter(|e| e.configured == i) {
                        let state = e.state.clone();
                        endpoints.push(self.endpoint_of(
                            i,
                            state,
                            e.authority.clone(),
                            e.host.clone(),
                        ));
                    }
                }
            }
        }
        let same = endpoints.len() == cur.endpoints.len()
            && endpoints
                .iter()
                .zip(cur.endpoints.iter())
                .all(|(a, b)| Arc::ptr_eq(&a.state, &b.state));
        if !same {
            self.set.store(Arc::new(EndpointSet {
                generation: next_generation(),
                endpoints,
            }));
        }
    }

    fn endpoint_of(
        &self,
        i: usize,
        state: Arc<EndpointState>,
        authority: Authority,
        host: Option<String>,
    ) -> Endpoint {
        let c = &self.config.endpoints[i];
        Endpoint {
            state,
            authority,
            host,
            configured: i,
            weight: c.weight,
            local: c.region.is_none() || c.region == self.region,
            region: c.region.clone().or_else(|| self.region.clone()),
        }
    }

    /// Configured endpoints given as names, not addresses: the supervisor resolves them.
    pub fn hostnames(&self) -> Vec<(usize, String)> {
        self.config
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.addr.parse::<SocketAddr>().is_err())
            // behind a tunnel: the agent reaches it, nothing to resolve
            .filter(|(_, e)| {
                let host = e.addr.rsplit_once(':').map_or(e.addr.as_str(), |(h, _)| h);
                crate::config::tunnel_of_host(host).is_none()
            })
            .map(|(i, e)| (i, e.addr.clone()))
            .collect()
    }
}

/// The state of `addr` in `previous` (its health carries over), or a fresh one.
fn state_for(previous: &[Endpoint], upstream: &str, addr: &str) -> Arc<EndpointState> {
    previous
        .iter()
        .find(|e| e.state.addr() == addr)
        .map(|e| e.state.clone())
        .unwrap_or_else(|| EndpointState::new(upstream, addr))
}

/// The pools for `config`, indexed like `config.upstreams`, carrying over from `previous`
/// (the running gateway's) what did not change. Pools of the previous generation that are
/// not reused are retired.
pub fn build(config: &Config, previous: &[Arc<Pool>]) -> Vec<Arc<Pool>> {
    let region = config.server.region.clone();
    let pools: Vec<Arc<Pool>> = config
        .upstreams
        .iter()
        .map(|u| {
            let fallback: Vec<usize> = u
                .fallback
                .iter()
                .filter_map(|f| config.upstreams.iter().position(|o| &o.name == f))
                .collect();
            let old = previous.iter().find(|p| p.name() == u.name);
            if let Some(p) =
                old.filter(|p| p.config == *u && p.region == region && p.fallback == fallback)
            {
                return p.clone();
            }
            let old_set = old.map(|p| p.set.load_full());
            let old_endpoints = old_set.as_ref().map_or(&[][..], |s| &s.endpoints[..]);
            // the configured address an old endpoint came from
            let origin = |e: &Endpoint| {
                old.and_then(|p| p.config.endpoints.get(e.configured))
                    .map(|c| c.addr.as_str())
            };
            let pool = Pool {
                config: u.clone(),
                region: region.clone(),
                fallback,
                set: ArcSwap::from_pointee(EndpointSet {
                    generation: next_generation(),
                    endpoints: Vec::new(),
                }),
                started: AtomicBool::new(false),
                retired: AtomicBool::new(false),
            };
            // addresses as configured; names keep the addresses they resolved to before (or
            // stand for themselves until the supervisor resolves them)
            let mut endpoints = Vec::new();
            for (i, c) in u.endpoints.iter().enumerate() {
                let carried: Vec<&Endpoint> = old_endpoints
                    .iter()
                    .filter(|e| e.host.is_some() && origin(e) == Some(c.addr.as_str()))
                    .collect();
                if c.addr.parse::<SocketAddr>().is_err() && !carried.is_empty() {
                    for e in carried {
                        endpoints.push(pool.endpoint_of(
                            i,
                            e.state.clone(),
                            e.authority.clone(),
                            e.host.clone(),
                        ));
                    }
                    continue;
                }
                // validated by the config as an authority
                let Ok(authority) = c.addr.parse::<Authority>() else {
                    continue;
                };
                let state = state_for(old_endpoints, &u.name, &c.addr);
                endpoints.push(pool.endpoint_of(i, state, authority, None));
            }
            pool.set.store(Arc::new(EndpointSet {
                generation: next_generation(),
                endpoints,
            }));
            Arc::new(pool)
        })
        .collect();
    for p in previous {
        if !pools.iter().any(|n| Arc::ptr_eq(n, p)) {
            p.retired.store(true, Ordering::Release);
        }
    }
    pools
}

/// `GET /upstreams`: every endpoint of every pool, with its state.
pub fn describe(pools: &[Arc<Pool>]) -> serde_json::Value {
    let now = now_ms();
    let upstreams: Vec<serde_json::Value> = pools
        .iter()
        .map(|p| {
            let set = p.set.load();
            let endpoints: Vec<serde_json::Value> = set
                .endpoints
                .iter()
                .map(|e| {
                    let s = &e.state;
                    let (left, len) = s.ejection(now);
                    let state = if s.ejected(now) {
                        "ejected"
                    } else if s.check_down() {
                        "unhealthy"
                    } else {
                        "healthy"
                    };
                    serde_json::json!({
                        "endpoint": s.addr(),
                        "host": e.host,
                        "state": state,
                        "region": e.region,
                        "local": e.local,
                        "weight": e.weight,
                        "ewma_latency_ms": s.ewma().as_secs_f64() * 1000.0,
                        "ejection_remaining_ms": left,
                        "ejection_ms": len,
                        "active_check": if p.config.health_check.is_none() {
                            "off"
                        } else if s.check_down() {
                            "failing"
                        } else {
                            "passing"
                        },
                        "last_error": s.last_error().map(|e| e.to_string()),
                    })
                })
                .collect();
            serde_json::json!({
                "name": p.name(),
                "balance": match p.config.balance {
                    crate::config::Balance::RoundRobin => "round_robin",
                    crate::config::Balance::PeakEwma => "peak_ewma",
                },
                "fallback": p.config.fallback,
                "endpoints": endpoints,
            })
        })
        .collect();
    serde_json::json!({ "region": pools.first().and_then(|p| p.region.clone()), "upstreams": upstreams })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::health::Outcome;
    use super::*;
    use crate::config::Outlier;

    fn config(upstreams: &str) -> Config {
        let text = format!(
            "[server]\nregion = \"eu\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"public\"\n{upstreams}"
        );
        Config::parse(&text, Path::new("/t.toml")).expect("valid")
    }

    const A: &str = "[[upstreams]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\", { addr = \"127.0.0.2:1\", region = \"us\" }]\nfallback = [\"b\"]\n";
    const B: &str = "[[upstreams]]\nname = \"b\"\nendpoints = [\"127.0.0.3:1\"]\n";

    #[test]
    fn unchanged_pools_are_kept_and_changed_ones_keep_their_endpoints_health() {
        let first = build(&config(&format!("{A}{B}")), &[]);
        assert_eq!(first[0].fallback, vec![1]);
        let set = first[0].set.load_full();
        assert!(set.endpoints[0].local && !set.endpoints[1].local);
        assert_eq!(set.endpoints[1].region.as_deref(), Some("us"));
        let o = Outlier {
            consecutive_failures: 1,
            ejection: Duration::from_secs(60),
            max_ejection: Duration::from_secs(60),
        };
        set.endpoints[0]
            .state
            .record(Outcome::Connect, None, None, &o);
        // b unchanged and a reordered before it: b's pool is the same, a's fallback index follows
        let second = build(&config(&format!("{B}{A}")), &first);
        assert!(Arc::ptr_eq(&second[0], &first[1]));
        assert!(!first[1].retired());
        assert_eq!(second[1].fallback, vec![0]);
        // a's pool is new (its fallback index changed), its endpoints' health is not
        assert!(first[0].retired());
        let kept = &second[1].set.load().endpoints[0].state;
        assert!(Arc::ptr_eq(kept, &set.endpoints[0].state));
        assert!(!kept.usable(now_ms()));
        // a weight changed: a new pool, the same states
        let third = build(
            &config(&format!(
                "{}{B}",
                A.replace("127.0.0.1:1\"", "127.0.0.1:1\", weight = 4 }")
                    .replace("[\"127.0.0.1:1\"", "[{ addr = \"127.0.0.1:1\"")
            )),
            &second,
        );
        let e = &third[0].set.load().endpoints[0];
        assert_eq!(e.weight, 4);
        assert!(Arc::ptr_eq(&e.state, &set.endpoints[0].state));
    }

    #[test]
    fn names_keep_their_addresses_when_a_lookup_fails() {
        let pools = build(
            &config(
                "[[upstreams]]\nname = \"a\"\nendpoints = [\"localhost:1\", \"127.0.0.9:1\"]\n",
            ),
            &[],
        );
        let p = &pools[0];
        assert_eq!(p.hostnames(), vec![(0, "localhost:1".to_string())]);
        let addrs = vec![
            "127.0.0.1:1".parse().expect("addr"),
            "[::1]:1".parse().expect("addr"),
        ];
        p.install(&[Some(addrs), None]);
        let set = p.set.load_full();
        let got: Vec<&str> = set.endpoints.iter().map(|e| e.state.addr()).collect();
        assert_eq!(got, ["127.0.0.1:1", "[::1]:1", "127.0.0.9:1"]);
        assert_eq!(set.endpoints[1].host.as_deref(), Some("localhost"));
        // a failed lookup (None) and the same answer change nothing
        p.install(&[None, None]);
        assert_eq!(p.set.load().generation, set.generation);
        p.install(&[
            Some(vec![
                "127.0.0.1:1".parse().expect("addr"),
                "[::1]:1".parse().expect("addr"),
            ]),
            None,
        ]);
        assert_eq!(p.set.load().generation, set.generation);
        p.install(&[Some(vec!["127.0.0.1:1".parse().expect("addr")]), None]);
        let set2 = p.set.load_full();
        assert_ne!(set2.generation, set.generation);
        assert_eq!(set2.endpoints.len(), 2);
        assert!(Arc::ptr_eq(
            &set2.endpoints[0].state,
            &set.endpoints[0].state
        ));
        // a reload that changes the upstream keeps what the name resolved to, with its health
        let changed = config(
            "[[upstreams]]\nname = \"a\"\nendpoints = [{ addr = \"localhost:1\", weight = 3 }]\n",
        );
        let next = build(&changed, &pools);
        let e = &next[0].set.load().endpoints[0];
        assert_eq!((e.state.addr(), e.weight), ("127.0.0.1:1", 3));
        assert!(Arc::ptr_eq(&e.state, &set.endpoints[0].state));
    }
}
