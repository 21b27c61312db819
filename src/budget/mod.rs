//! Request budgets: rate limits (GCRA) and quotas (fixed UTC windows) per key — an instance,
//! a user, a route, a client — decided after authentication, before the upstream.
//!
//! A decision has two steps: `plan` (synchronous: the keys and limits of the route's rules for
//! this request, see `plan.rs` and `keys.rs`), then `decide` (the store, which may be across
//! the network, see `store.rs`). A refusal is a [`Rejected`], which `respond` turns into the
//! 429 or 503 answer; the admin API reads [`Usage`] and the configured rules.

mod failure_log;
pub(crate) mod keys;
pub mod memory;
mod plan;
pub mod redact;
pub mod redis;
pub mod sqlite;
mod store;

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use http::HeaderValue;
use prometheus::{Histogram, IntCounter};

use crate::config::{
    BudgetRule, BudgetUnit, Budgets as BudgetConfig, Limit, LimitKind, OnStoreError,
};
use crate::metrics::{AI, METRICS};
pub use plan::Plan;
use store::Store;
pub use store::StoreError;

/// What the store decides for one rule and key.
#[derive(Clone, Debug)]
pub struct Probe {
    pub key: String,
    pub rate: bool,
    pub limit: Limit,
    pub burst: u64,
    pub cost: u64,
    /// a token quota (`unit = "tokens"`): the decision admits while the window's tokens are
    /// under the limit and charges nothing; the response's tokens are charged after it
    /// ([`Budgets::charge`])
    pub tokens: bool,
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

pub struct Outcome {
    pub admitted: bool,
    pub evals: Vec<Eval>,
}

/// The token rules (`unit = "tokens"`) of one admitted request: what its response's tokens are
/// charged to.
#[derive(Clone, Debug)]
pub struct Metered {
    /// rule indices
    rules: Vec<usize>,
    probes: Vec<Probe>,
}

/// A charge still to be made against a store across the network (run it on the worker's
/// runtime: Redis batches per worker).
pub type PendingCharge = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The RateLimit-Policy and RateLimit header values of an answer.
pub type RateLimitHeaders = (HeaderValue, HeaderValue);

/// Why budgets refuse a request (`respond` builds the 429 or 503 from it).
#[derive(Debug)]
pub enum Rejected {
    /// over budget: the first refusing rule, Retry-After seconds, the RateLimit headers
    OverBudget {
        rule: String,
        retry_after: u64,
        headers: RateLimitHeaders,
    },
    /// the store could not answer and `on_store_error = "deny"`
    StoreUnavailable,
}

/// One key's usage under one rule, for the admin API.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub kind: LimitKind,
    /// the limit the key is judged by (the memory stores keep the one last applied to it:
    /// tiers and overrides depend on the token, which the admin API does not have)
    pub limit: Limit,
    /// what the key may hold at once: the burst (rate) or the count (quota)
    pub capacity: u64,
    pub remaining: u64,
    /// until the window ends (quota) or the bucket is full again (rate), rounded up
    pub reset_seconds: u64,
}

impl Usage {
    pub fn used(&self) -> u64 {
        self.capacity.saturating_sub(self.remaining)
    }
}

/// Why an admin query about a key has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no budget rule of that name")]
    UnknownRule,
    /// already logged by the budgets
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct RuleMetrics {
    admitted: IntCounter,
    rejected: IntCounter,
    /// token rules only: listed at 0 from the start, so dashboards and alerts find the series
    unmetered: Option<IntCounter>,
}

pub struct Budgets {
    pub cfg: BudgetConfig,
    /// survives config reloads that keep the store setting (see `new_from`)
    store: Store,
    /// rule indices per route index
    by_route: Vec<Vec<usize>>,
    /// per route: its RateLimit-Policy when every rule applies its own limit (the common
    /// case, formatted once here rather than per response)
    policy_by_route: Vec<HeaderValue>,
    metrics: Vec<RuleMetrics>,
    store_duration: Histogram,
    store_errors: IntCounter,
}

fn secs_ceil(ns: i64) -> u64 {
    (ns.max(0) as u64).div_ceil(1_000_000_000)
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

/// A header value from text the gateway formatted itself (rule names are `[A-Za-z0-9._-]`,
/// numbers): taken without a copy and valid by construction, so nothing is checked or refused.
fn header_from_own_text(s: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(s)).unwrap_or(HeaderValue::from_static(""))
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
                header_from_own_text(policy)
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
                unmetered: (r.unit == BudgetUnit::Tokens)
                    .then(|| AI.budget_unmetered.with_label_values(&[&r.name])),
            })
            .collect();
        // counters carry over a reload while the store setting stays the same
        let store = match previous
            .filter(|p| p.cfg.store == cfg.store && p.cfg.store_timeout == cfg.store_timeout)
        {
            Some(p) => p.store.reused(cfg),
            None => Store::open(cfg)?,
        };
        let label = store.label();
        Ok(Budgets {
            cfg: cfg.clone(),
            store,
            by_route,
            policy_by_route,
            metrics,
            store_duration: METRICS.budget_store_duration.with_label_values(&[label]),
            store_errors: METRICS.budget_store_errors.with_label_values(&[label]),
        })
    }

    /// Prepares this worker thread's use of the store (Redis: connects now, not on the first
    /// request). Call on the worker's runtime.
    pub fn warm(&self) {
        if let Err(e) = self.store.warm() {
            failure_log::log_failure(self.store.label(), "warm", &e);
        }
    }

    /// Writes pending counters now (shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.store.flush() {
            failure_log::log_failure(self.store.label(), "flush", &e);
        }
    }

    /// Step two of a decision: the store decides every rule of the plan at once. Admitted, the
    /// answer carries the RateLimit headers (when `response_headers` is on).
    pub async fn decide(&self, plan: Plan) -> Result<Option<RateLimitHeaders>, Rejected> {
        let Plan { route, probes } = plan;
        let rules = &self.by_route[route];
        let started = Instant::now();
        let outcome = self.store.decide(&probes).await;
        self.store_duration.observe(started.elapsed().as_secs_f64());
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.store_errors.inc();
                failure_log::log_failure(self.store.label(), "decide", &e);
                return match self.cfg.on_store_error {
                    OnStoreError::Allow => Ok(None),
                    OnStoreError::Deny => Err(Rejected::StoreUnavailable),
                };
            }
        };
        let headers = || self.headers(route, &probes, &outcome.evals);
        if outcome.admitted {
            for &i in rules {
                self.metrics[i].admitted.inc();
            }
            return Ok(self.cfg.response_headers.then(headers));
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
        Err(Rejected::OverBudget {
            rule: self.cfg.rules[first].name.clone(),
            retry_after: secs_ceil(wait).max(1),
            headers: headers(),
        })
    }

    /// The token rules of `plan` (None when it has none: no charge after the response). Call
    /// before `decide`, which consumes the plan.
    pub fn metered(&self, plan: &Plan) -> Option<Metered> {
        let (rules, probes): (Vec<usize>, Vec<Probe>) = self.by_route[plan.route]
            .iter()
            .zip(&plan.probes)
            .filter(|(_, p)| p.tokens)
            .map(|(&i, p)| (i, p.clone()))
            .unzip();
        (!probes.is_empty()).then_some(Metered { rules, probes })
    }

    /// Charges a response's tokens (input + output) to its token rules, whatever their limit:
    /// the request that crosses it has been served, the next ones are refused. `None` — the
    /// response reported no usage — charges nothing and is counted
    /// (`budget_unmetered_total`). A store in this process is charged now; Redis's charge is
    /// returned to be run (its failure is logged and counted like a decision's).
    pub fn charge(&self, m: &Metered, tokens: Option<u64>) -> Option<PendingCharge> {
        let Some(n) = tokens else {
            for &i in &m.rules {
                if let Some(c) = &self.metrics[i].unmetered {
                    c.inc();
                }
            }
            return None;
        };
        if n == 0 {
            return None;
        }
        let failed = |errors: &IntCounter, label: &'static str, e: &StoreError| {
            errors.inc();
            failure_log::log_failure(label, "charge", e);
        };
        if let Some(r) = self.store.charge_now(&m.probes, n) {
            if let Err(e) = r {
                failed(&self.store_errors, self.store.label(), &e);
            }
            return None;
        }
        let (store, errors, probes) = (
            self.store.clone(),
            self.store_errors.clone(),
            m.probes.clone(),
        );
        Some(Box::pin(async move {
            if let Err(e) = store.charge(&probes, n).await {
                failed(&errors, store.label(), &e);
            }
        }))
    }

    /// IETF RateLimit-Policy / RateLimit (structured fields): one item per rule.
    fn headers(&self, route: usize, probes: &[Probe], evals: &[Eval]) -> RateLimitHeaders {
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
            header_from_own_text(policy)
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
        (policy, header_from_own_text(state))
    }

    fn rule(&self, name: &str) -> Result<&BudgetRule, QueryError> {
        self.cfg
            .rules
            .iter()
            .find(|r| r.name == name)
            .ok_or(QueryError::UnknownRule)
    }

    /// Admin API: usage of `key` under `rule` without consuming anything.
    pub async fn usage(&self, rule: &str, key: &str) -> Result<Usage, QueryError> {
        let r = self.rule(rule)?;
        let limit = plan::limit_for::<crate::auth::Verified>(r, key, None);
        let p = plan::probe(r, keys::stored_key(r, key), limit, 0);
        let (e, limit) = self.store.peek(&p).await.inspect_err(|e| {
            failure_log::log_failure(self.store.label(), "peek", e);
        })?;
        Ok(Usage {
            kind: r.kind,
            limit,
            capacity: if p.rate { r.burst } else { limit.count },
            remaining: e.remaining,
            reset_seconds: secs_ceil(e.reset_ns),
        })
    }

    /// Admin API: forget `key`'s usage under `rule`; whether the key was held.
    pub async fn reset(&self, rule: &str, key: &str) -> Result<bool, QueryError> {
        let r = self.rule(rule)?;
        let existed = self
            .store
            .reset(&keys::stored_key(r, key))
            .await
            .inspect_err(|e| failure_log::log_failure(self.store.label(), "reset", e))?;
        Ok(existed)
    }

    /// The configured rules, in order (admin API).
    pub fn rules(&self) -> &[BudgetRule] {
        &self.cfg.rules
    }

    /// The store as it may be shown: a Redis password is `***`.
    pub fn store_shown(&self) -> String {
        self.cfg.store.to_string()
    }
}
