//! The budget store: one type over the three kinds — memory, memory persisted to SQLite, and
//! Redis — with one error type. An enum rather than a trait object: `decide` is on every
//! budgeted request's path and the memory store answers synchronously, so there is no boxed
//! future and no vtable there.
//!
//! Failures are returned, never logged here; `Budgets` logs each one once, through
//! [`log_failure`](super::failure_log::log_failure).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::memory::MemoryStore;
use super::redis::{RedisFailure, RedisStore};
use super::sqlite::{Persist, SqliteError};
use super::{redact, Eval, Outcome, Probe};
use crate::config::{BudgetStore, Budgets as BudgetConfig, Limit};
use crate::metrics::METRICS;

/// A budget store that cannot be set up, or cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// the SQLite file cannot be opened or read, or its counters cannot be written
    #[error(transparent)]
    Sqlite(#[from] SqliteError),
    /// the Redis URL is not one the client accepts
    #[error("budget store {url}: {detail}")]
    RedisUrl { url: String, detail: String },
    /// Redis gave no decision
    #[error("budget store redis: {0}")]
    Redis(#[from] RedisFailure),
    /// a thread panicked holding one of the memory store's locks: its keys cannot be trusted
    #[error(
        "budget store: a counter shard is unusable (a thread panicked while holding its lock)"
    )]
    Poisoned,
}

/// The store of one `[budgets]` setting. Cloning shares it (a reload that keeps the setting
/// keeps everyone's counters).
#[derive(Clone)]
pub(super) enum Store {
    Memory(Arc<MemoryStore>),
    /// decisions in memory; `persist` writes them to the file every `flush_interval`
    Sqlite {
        memory: Arc<MemoryStore>,
        persist: Arc<Persist>,
    },
    Redis(Arc<RedisStore>),
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The `store` label of the budget metrics.
fn label_of(store: &BudgetStore) -> &'static str {
    match store {
        BudgetStore::Memory => "memory",
        BudgetStore::Sqlite(_) => "sqlite",
        BudgetStore::Redis(_) => "redis",
    }
}

impl Store {
    /// Opens the store `cfg` names: an SQLite file is created or loaded, a Redis client made
    /// (it connects per worker, see `warm`).
    pub fn open(cfg: &BudgetConfig) -> Result<Store, StoreError> {
        let evicted = METRICS
            .budget_keys_evicted
            .with_label_values(&[label_of(&cfg.store)]);
        let memory = || Arc::new(MemoryStore::new(cfg.max_keys, evicted.clone()));
        Ok(match &cfg.store {
            BudgetStore::Memory => Store::Memory(memory()),
            BudgetStore::Sqlite(path) => {
                let memory = memory();
                let persist = Persist::start(path, memory.clone(), cfg.flush_interval, now_ns())?;
                Store::Sqlite {
                    memory,
                    persist: Arc::new(persist),
                }
            }
            // (the `redis` series of the eviction counter above stays listed at 0, as it
            // always was: a series does not vanish from /metrics with this refactor)
            BudgetStore::Redis(url) => match RedisStore::new(url, cfg.store_timeout) {
                Ok(r) => Store::Redis(Arc::new(r)),
                Err(e) => {
                    return Err(StoreError::RedisUrl {
                        url: redact::redact_url(url),
                        detail: e.to_string(),
                    })
                }
            },
        })
    }

    /// This store for a reloaded config with the same store setting: the counters stay, the
    /// key bound follows the new `max_keys`.
    pub fn reused(&self, cfg: &BudgetConfig) -> Store {
        if let Store::Memory(m) | Store::Sqlite { memory: m, .. } = self {
            m.set_max_keys(cfg.max_keys);
        }
        self.clone()
    }

    /// The `store` label of the budget metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Sqlite { .. } => "sqlite",
            Store::Redis(_) => "redis",
        }
    }

    /// Decides every probe of one request at once: all admit (and are committed) or none.
    pub async fn decide(&self, probes: &[Probe]) -> Result<Outcome, StoreError> {
        match self {
            Store::Memory(m) | Store::Sqlite { memory: m, .. } => m.decide(probes, now_ns()),
            Store::Redis(r) => Ok(r.decide(probes).await?),
        }
    }

    /// Adds `n` units to each quota key's current window (a token quota's charge).
    pub async fn charge(&self, probes: &[Probe], n: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) | Store::Sqlite { memory: m, .. } => m.charge(probes, n, now_ns()),
            Store::Redis(r) => Ok(r.charge(probes, n).await?),
        }
    }

    /// `charge` done now when the store is in this process; None for a store across the
    /// network (then `charge` must be awaited).
    pub fn charge_now(&self, probes: &[Probe], n: u64) -> Option<Result<(), StoreError>> {
        match self {
            Store::Memory(m) | Store::Sqlite { memory: m, .. } => {
                Some(m.charge(probes, n, now_ns()))
            }
            Store::Redis(_) => None,
        }
    }

    /// A key's state without consuming anything, and the limit it is judged by.
    pub async fn peek(&self, probe: &Probe) -> Result<(Eval, Limit), StoreError> {
        match self {
            Store::Memory(m) | Store::Sqlite { memory: m, .. } => m.peek(probe, now_ns()),
            // Redis keeps no limit with a key: the probe's (the rule's own) is the answer
            Store::Redis(r) => Ok((r.peek(probe).await?, probe.limit)),
        }
    }

    /// Forgets a stored key; whether it existed.
    pub async fn reset(&self, key: &str) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) | Store::Sqlite { memory: m, .. } => m.reset(key),
            Store::Redis(r) => Ok(r.reset(key).await?),
        }
    }

    /// Prepares this worker thread's use of the store (Redis: its connection and batch driver).
    pub fn warm(&self) -> Result<(), StoreError> {
        match self {
            Store::Redis(r) => Ok(r.warm()?),
            Store::Memory(_) | Store::Sqlite { .. } => Ok(()),
        }
    }

    /// Writes what is pending and stops writing (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite { persist, .. } => Ok(persist.shutdown()?),
            Store::Memory(_) | Store::Redis(_) => Ok(()),
        }
    }
}
