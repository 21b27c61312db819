//! Request budgets: rate limits (GCRA) and quotas (fixed UTC windows) per key — an instance,
//! a user, a route, a client — decided after authentication, before the upstream.

pub mod memory;
pub mod redact;
pub mod redis;
pub mod sqlite;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use prometheus::{Histogram, IntCounter};

use crate::auth::Verified;
use crate::config::{
    BudgetRule, BudgetStore, Budgets as BudgetConfig, KeyPart, Limit, LimitKind, OnStoreError,
};
use crate::metrics::METRICS;
use memory::MemoryStore;

/// What the store decides for one rule and key.
#[derive(Clone, Debug)]
pub struct Probe {
    pub key: String,
    pub rate: bool,
    pub limit: Limit,
    pub burst: u64,
    pub cost: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Eval {
    pub admitted: bool,
    pub remaining: u64,
    /// until the window ends (quota) or the bucket is full again (rate)
    pub reset_ns: i64,
    /// when rejected: until this request would be admitted
    pub retry_after_ns: i64,
}

/// A budget store that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlite(#[from] sqlite::SqliteError),
    #[error("budget store {url}: {detail}")]
    Redis { url: String, detail: String },
}

/// The keys and limits of one request's rules, ready for the store.
pub struct Plan {
    route: usize,
    probes: Vec<Probe>,
}

pub struct Outcome {
    pub admitted: bool,
    pub evals: Vec<Eval>,
}

/// The pipeline's answer.
pub enum Decision {
    /// admitted; RateLimit headers for the response (when configured)
    Admit(Option<(HeaderValue, HeaderValue)>),
    /// over budget: the rule that refused, Retry-After seconds, RateLimit headers
    Reject {
        rule: String,
        retry_after: u64,
        headers: (HeaderValue, HeaderValue),
    },
    /// the store could not answer and `on_store_error = "deny"`
    StoreUnavailable,
}

struct RuleMetrics {
    admitted: IntCounter,
    rejected: IntCounter,
}

pub struct Budgets {
    pub cfg: BudgetConfig,
    /// survives config reloads (see `new_from`)
    store: Arc<MemoryStore>,
    /// the SQLite flusher, for `store = "sqlite://…"`
    persist: Option<Arc<sqlite::Persist>>,
    /// the shared store, for `store = "redis://…"` (then `store` is unused)
    redis: Option<Arc<redis::RedisStore>>,
    /// rule indices per route index
    by_route: Vec<Vec<usize>>,
    /// per route: its RateLimit-Policy when every rule applies its own limit (the common
    /// case, formatted once here rather than per response)
    policy_by_route: Vec<HeaderValue>,
    metrics: Vec<RuleMetrics>,
    store_duration: Histogram,
    store_errors: IntCounter,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn secs_ceil(ns: i64) -> u64 {
    (ns.max(0) as u64).div_ceil(1_000_000_000)
}

const MISSING: &str = "_missing_";

/// How a store names `key` of `rule` (the pipeline builds the same in one buffer, see `plan`).
fn stored_key(rule: &BudgetRule, key: &str) -> String {
    format!("{}|{key}", rule.name)
}

fn store_label(store: &BudgetStore) -> &'static str {
    match store {
        BudgetStore::Memory => "memory",
        BudgetStore::Sqlite(_) => "sqlite",
        BudgetStore::Redis(_) => "redis",
    }
}

/// One RateLimit-Policy item, appended.
fn policy_item(policy: &mut String, name: &str, limit: Limit) {
    let mut n = itoa::Buffer::new();
    if !policy.is_empty() {
        policy.push_str(", ");
    }
    policy.push('"');
    policy.push_str(name);
    policy.push_str("\";q=");
    policy.push_str(n.format(limit.count));
    policy.push_str(";w=");
    policy.push_str(n.format(limit.period.as_secs()));
}

/// A header value from text the gateway wrote (rule names are `[A-Za-z0-9._-]`, numbers):
/// no copy, always valid.
fn header_value(s: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).unwrap_or(HeaderValue::from_static(""))
}

/// One key part as stored: `%` and `|` escaped (parts are joined with `|`), long values hashed.
fn escape_part(v: &[u8], out: &mut String) {
    let s = String::from_utf8_lossy(v);
    if s.len() <= 128 && !s.contains(['%', '|']) {
        out.push_str(&s); // the common case: nothing to escape, no allocation
        return;
    }
    let escaped = s.replace('%', "%25").replace('|', "%7C");
    if escaped.len() > 128 {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v);
        out.push_str("sha256:");
        for b in d.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
    } else {
        out.push_str(&escaped);
    }
}

impl Budgets {
    /// Builds the budgets for a config; keeps `previous`'s counters (a reload must not reset
    /// everyone's budget).
    pub fn new_from(
        cfg: &BudgetConfig,
        routes: usize,
        previous: Option<&Budgets>,
    ) -> Result<Self, StoreError> {
        let by_route: Vec<Vec<usize>> = (0..routes)
            .map(|r| {
                cfg.rules
                    .iter()
                    .enumerate()
                    .filter(|(_, rule)| rule.routes.as_ref().is_none_or(|rs| rs.contains(&r)))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        let policy_by_route = by_route
            .iter()
            .map(|rules| {
                let mut policy = String::new();
                for &i in rules {
                    let rule = &cfg.rules[i];
                    if let Some(l) = rule.limit {
                        policy_item(&mut policy, &rule.name, l);
                    }
                }
                header_value(policy)
            })
            .collect();
        let metrics = cfg
            .rules
            .iter()
            .map(|r| RuleMetrics {
                admitted: METRICS
                    .budget_decisions
                    .with_label_values(&[&r.name, "admitted"]),
                rejected: METRICS
                    .budget_decisions
                    .with_label_values(&[&r.name, "rejected"]),
            })
            .collect();
        // counters carry over a reload while the store setting stays the same
        let (store, persist, redis) = match previous
            .filter(|p| p.cfg.store == cfg.store && p.cfg.store_timeout == cfg.store_timeout)
        {
            Some(p) => {
                p.store.set_max_keys(cfg.max_keys);
                (p.store.clone(), p.persist.clone(), p.redis.clone())
            }
            None => {
                let store = Arc::new(MemoryStore::new(
                    cfg.max_keys,
                    METRICS
                        .budget_keys_evicted
                        .with_label_values(&[store_label(&cfg.store)]),
                ));
                let (persist, redis) = match &cfg.store {
                    BudgetStore::Memory => (None, None),
                    BudgetStore::Sqlite(path) => (
                        Some(Arc::new(sqlite::Persist::start(
                            path,
                            store.clone(),
                            cfg.flush_interval,
                            now_ns(),
                        )?)),
                        None,
                    ),
                    BudgetStore::Redis(url) => {
                        let r = redis::RedisStore::new(url, cfg.store_timeout).map_err(|e| {
                            StoreError::Redis {
                                url: crate::config::redact_url(url),
                                detail: e.to_string(),
                            }
                        })?;
                        (None, Some(Arc::new(r)))
                    }
                };
                (store, persist, redis)
            }
        };
        let label = store_label(&cfg.store);
        Ok(Budgets {
            cfg: cfg.clone(),
            store,
            persist,
            redis,
            by_route,
            policy_by_route,
            metrics,
            store_duration: METRICS.budget_store_duration.with_label_values(&[label]),
            store_errors: METRICS.budget_store_errors.with_label_values(&[label]),
        })
    }

    /// Starts this worker thread's connection to a shared store (call on the worker's runtime).
    pub fn warm(&self) {
        if let Some(r) = &self.redis {
            r.warm();
        }
    }

    /// Writes pending counters now (shutdown).
    pub fn flush(&self) {
        if let Some(p) = &self.persist {
            p.shutdown();
        }
    }

    /// Appends the key of `rule` for this request to `key`.
    fn key_into(
        rule: &BudgetRule,
        route_name: &str,
        id: Option<&Verified>,
        headers: &HeaderMap,
        ip: IpAddr,
        key: &mut String,
    ) {
        for (i, part) in rule.key.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            match part {
                KeyPart::Claim(c) => match id.and_then(|v| v.claim_str(c)) {
                    Some(v) => escape_part(v.as_bytes(), key),
                    None => key.push_str(MISSING),
                },
                KeyPart::Header(h) => match headers.get(h) {
                    Some(v) => escape_part(v.as_bytes(), key),
                    None => key.push_str(MISSING),
                },
                KeyPart::Route => escape_part(route_name.as_bytes(), key),
                KeyPart::ClientIp => {
                    use std::fmt::Write;
                    let _ = write!(key, "{ip}");
                }
            }
        }
    }

    /// The limit for a key: an override, else the tier of the token's claim, else the rule's
    /// own limit, else its first tier.
    fn limit_for(rule: &BudgetRule, key: &str, id: Option<&Verified>) -> Limit {
        if let Some(l) = rule.overrides.get(key) {
            return *l;
        }
        if let Some(t) = &rule.tiers {
            let value = id
                .and_then(|v| v.claims.get(&t.claim))
                .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()));
            if let Some(x) = value {
                if let Some(tier) = t.ranges.iter().find(|r| r.low <= x && x <= r.high) {
                    return tier.limit;
                }
            }
        }
        rule.limit
            .or_else(|| rule.tiers.as_ref().map(|t| t.ranges[0].limit))
            .unwrap_or(Limit {
                count: 1,
                period: std::time::Duration::from_secs(1),
            })
    }

    /// A probe of `rule` for its stored key (`<rule>|<key>`).
    fn probe(rule: &BudgetRule, key: String, limit: Limit, cost: u64) -> Probe {
        Probe {
            key,
            rate: rule.kind == LimitKind::Rate,
            limit,
            burst: rule.burst,
            cost,
        }
    }

    /// Step one of a decision, synchronous: the keys and limits of the route's rules for this
    /// request (nothing borrowed from the request is needed after this).
    pub fn plan(
        &self,
        route: usize,
        route_name: &str,
        route_cost: Option<u64>,
        id: Option<&Verified>,
        headers: &HeaderMap,
        ip: IpAddr,
    ) -> Option<Plan> {
        let rules = self.by_route.get(route).filter(|r| !r.is_empty())?;
        let probes = rules
            .iter()
            .map(|&i| {
                let rule = &self.cfg.rules[i];
                // stored as "<rule>|<key>": one allocation, the rule's name first
                let mut key = String::with_capacity(rule.name.len() + 65);
                key.push_str(&rule.name);
                key.push('|');
                Self::key_into(rule, route_name, id, headers, ip, &mut key);
                let limit = Self::limit_for(rule, &key[rule.name.len() + 1..], id);
                Self::probe(rule, key, limit, route_cost.unwrap_or(rule.cost))
            })
            .collect();
        Some(Plan { route, probes })
    }

    /// Step two: the store decides every rule at once.
    pub async fn decide(&self, plan: Plan) -> Decision {
        let Plan { route, probes } = plan;
        let rules = &self.by_route[route];
        let started = Instant::now();
        let outcome = match &self.redis {
            Some(r) => r.decide(&probes).await,
            None => self.store.decide(&probes, now_ns()),
        };
        self.store_duration.observe(started.elapsed().as_secs_f64());
        let Some(outcome) = outcome else {
            self.store_errors.inc();
            return match self.cfg.on_store_error {
                OnStoreError::Allow => Decision::Admit(None),
                OnStoreError::Deny => Decision::StoreUnavailable,
            };
        };
        let headers = || self.headers(route, &probes, &outcome.evals);
        if outcome.admitted {
            for &i in rules {
                self.metrics[i].admitted.inc();
            }
            return Decision::Admit(self.cfg.response_headers.then(headers));
        }
        // the first refusing rule names the refusal; Retry-After waits for every refusing rule
        let refused: Vec<(usize, &Eval)> = rules
            .iter()
            .copied()
            .zip(&outcome.evals)
            .filter(|(_, e)| !e.admitted)
            .collect();
        let first = refused.first().map(|r| r.0).unwrap_or(rules[0]);
        let wait = refused
            .iter()
            .map(|(_, e)| e.retry_after_ns)
            .max()
            .unwrap_or(0);
        self.metrics[first].rejected.inc();
        Decision::Reject {
            rule: self.cfg.rules[first].name.clone(),
            retry_after: secs_ceil(wait).max(1),
            headers: headers(),
        }
    }

    /// IETF RateLimit-Policy / RateLimit (structured fields): one item per rule.
    fn headers(
        &self,
        route: usize,
        probes: &[Probe],
        evals: &[Eval],
    ) -> (HeaderValue, HeaderValue) {
        let rules = &self.by_route[route];
        let own_limits = rules
            .iter()
            .zip(probes)
            .all(|(&i, p)| self.cfg.rules[i].limit == Some(p.limit));
        let policy = if own_limits {
            self.policy_by_route[route].clone()
        } else {
            let mut policy = String::new();
            for (&i, p) in rules.iter().zip(probes) {
                policy_item(&mut policy, &self.cfg.rules[i].name, p.limit);
            }
            header_value(policy)
        };
        let mut state = String::with_capacity(rules.len() * 48);
        let mut n = itoa::Buffer::new();
        for (&i, e) in rules.iter().zip(evals) {
            if !state.is_empty() {
                state.push_str(", ");
            }
            state.push('"');
            state.push_str(&self.cfg.rules[i].name);
            state.push_str("\";r=");
            state.push_str(n.format(e.remaining));
            state.push_str(";t=");
            state.push_str(n.format(secs_ceil(e.reset_ns)));
        }
        (policy, header_value(state))
    }

    /// Admin API: usage of `key` under `rule` without consuming anything.
    pub async fn usage(&self, rule: &str, key: &str) -> Option<serde_json::Value> {
        let r = self.cfg.rules.iter().find(|r| r.name == rule)?;
        let limit = Self::limit_for(r, key, None);
        let p = Self::probe(r, stored_key(r, key), limit, 0);
        let (e, limit) = match &self.redis {
            Some(r) => (r.peek(&p).await?, p.limit),
            None => self.store.peek(&p, now_ns())?,
        };
        let capacity = if p.rate { r.burst } else { limit.count };
        Some(serde_json::json!({
            "rule": rule, "key": key,
            "kind": if p.rate { "rate" } else { "quota" },
            "limit": limit.to_string(),
            "capacity": capacity,
            "used": capacity.saturating_sub(e.remaining),
            "remaining": e.remaining,
            "reset_seconds": secs_ceil(e.reset_ns),
        }))
    }

    /// Admin API: forget `key`'s usage under `rule`. None when the rule does not exist.
    pub async fn reset(&self, rule: &str, key: &str) -> Option<bool> {
        let r = self.cfg.rules.iter().find(|r| r.name == rule)?;
        let stored = stored_key(r, key);
        Some(match &self.redis {
            // an unreachable store resets nothing: say so rather than pretend
            Some(redis) => redis.reset(&stored).await.unwrap_or(false),
            None => self.store.reset(&stored),
        })
    }

    pub fn describe(&self) -> serde_json::Value {
        let rules: Vec<_> = self
            .cfg
            .rules
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "kind": if r.kind == LimitKind::Rate { "rate" } else { "quota" },
                    "limit": r.limit.map(|l| l.to_string()),
                    "burst": (r.kind == LimitKind::Rate).then_some(r.burst),
                    "cost": r.cost,
                    "key": r.key.iter().map(|k| match k {
                        KeyPart::Claim(c) => format!("claim:{c}"),
                        KeyPart::Header(h) => format!("header:{h}"),
                        KeyPart::Route => "route".into(),
                        KeyPart::ClientIp => "client_ip".into(),
                    }).collect::<Vec<_>>(),
                    "tiers": r.tiers.as_ref().map(|t| t.claim.clone()),
                    "overrides": r.overrides.len(),
                })
            })
            .collect();
        let store = match &self.cfg.store {
            BudgetStore::Memory => "memory".to_string(),
            BudgetStore::Sqlite(p) => format!("sqlite://{}", p.display()),
            BudgetStore::Redis(u) => crate::config::redact_url(u),
        };
        serde_json::json!({ "store": store, "rules": rules })
    }
}
