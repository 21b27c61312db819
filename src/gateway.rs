//! The gateway's state, and the one place it is built (startup and reload alike).
//!
//! - [`Gateway`]: what every worker shares, immutable once built (key sets inside swap
//!   atomically). [`Gateway::build`] makes it from a config, carrying over from the running one
//!   what did not change.
//! - [`WorkerSnapshot`]: what one worker serves a request with — the gateway plus that worker's
//!   own upstream pools. A request keeps the snapshot it started with.
//! - [`WorkerHandler`]: one per worker thread, holding its current snapshot; a reload installs a
//!   new one. Its engine `Handler` impl (the request entry point) is in `pipeline`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::Histogram;

use crate::accesslog::AccessLogger;
use crate::auth::Verifier;
use crate::budget::{Budgets, StoreError};
use crate::config::{AccessLog, Config};
use crate::engine::upstream::{self, Pool, UpstreamClient};
use crate::forward::IdentityNames;
use crate::metrics::{AuthFailureCounters, RouteMetrics, METRICS};
use crate::routing::Router;
use crate::telemetry::Tracer;

pub struct Gateway {
    pub config: Arc<Config>,
    pub router: Router,
    pub verifier: Arc<Verifier>,
    pub identity: IdentityNames,
    /// indexed like `config.routes` (a `RouteRef`'s `index`)
    pub route_metrics: Vec<RouteMetrics>,
    /// requests that matched no route
    pub unrouted_metrics: RouteMetrics,
    /// indexed like `config.upstreams`
    pub upstream_durations: Vec<Histogram>,
    pub auth_failures: AuthFailureCounters,
    pub access_log: AccessLogger,
    /// request budgets (None when none are configured)
    pub budgets: Option<Budgets>,
    /// the upstreams' endpoints and their health, one per process (not per worker), indexed
    /// like `config.upstreams`
    pub pools: Vec<Arc<Pool>>,
    /// `[request_log]` (None when off)
    pub request_log: Option<crate::requestlog::RequestLog>,
    /// trace export (`[telemetry]`); kept at a reload that leaves the section unchanged
    pub tracer: Tracer,
}

/// Why a gateway could not be built from a (valid) config: at startup the process exits with
/// it, at a reload the running gateway stays.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("access log {path}: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Budgets(#[from] StoreError),
    #[error("request log: cannot start its writer thread: {0}")]
    RequestLog(std::io::Error),
}

impl Gateway {
    /// Builds the gateway for `config`. At a reload, `previous` is the running gateway and
    /// what did not change carries over: issuers' keys and the token cache (see
    /// `Verifier::new_from`), budget counters, and the access log unless it is a file (a file
    /// is always reopened: `kill -HUP` after logrotate moved it starts a fresh one).
    pub fn build(config: Arc<Config>, previous: Option<&Gateway>) -> Result<Self, BuildError> {
        let kept_log = previous
            .filter(|p| {
                p.config.log.access == config.log.access
                    && !matches!(config.log.access, AccessLog::File(_))
            })
            .map(|p| p.access_log.clone());
        let access_log = match kept_log {
            Some(l) => l,
            None => {
                AccessLogger::start(&config.log.access).map_err(|source| BuildError::AccessLog {
                    path: format!("{:?}", config.log.access),
                    source,
                })?
            }
        };
        let verifier = Arc::new(Verifier::new_from(&config, previous.map(|p| &*p.verifier)));
        let budgets = config
            .budgets
            .as_ref()
            .map(|b| {
                Budgets::new_from(
                    b,
                    config.routes.len(),
                    previous.and_then(|p| p.budgets.as_ref()),
                )
            })
            .transpose()?;
        // kept while `[request_log]` is unchanged: one writer, its queue and spool go on
        let request_log = match (&config.request_log, previous) {
            (None, _) => None,
            (Some(c), Some(p)) if p.config.request_log.as_ref() == Some(c) => p.request_log.clone(),
            (Some(c), _) => {
                Some(crate::requestlog::RequestLog::start(c).map_err(BuildError::RequestLog)?)
            }
        };
        // last, once nothing can fail: building the pools retires the previous ones (their
        // supervisors stop); unchanged endpoints keep their health
        let pools = upstream::build_pools(&config, previous.map_or(&[][..], |p| &p.pools[..]));
        // at a reload (on the control plane); at startup the control plane starts them
        upstream::supervise(&pools);
        let tracer = match previous.filter(|p| p.config.telemetry == config.telemetry) {
            Some(p) => p.tracer.clone(),
            None => Tracer::start(config.telemetry.as_ref()),
        };
        Ok(Gateway {
            pools,
            tracer,
            budgets,
            request_log,
            router: Router::new(&config.routes),
            identity: IdentityNames::new(
                &config.auth.identity_header_prefix,
                &config.auth.identity_headers,
            ),
            route_metrics: config
                .routes
                .iter()
                .map(|r| match r.max_request_body {
                    Some(_) => RouteMetrics::new(&r.name).with_body_limit(),
                    None => RouteMetrics::new(&r.name),
                })
                .collect(),
            unrouted_metrics: RouteMetrics::new("_none"),
            upstream_durations: config
                .upstreams
                .iter()
                .map(|u| METRICS.upstream_duration.with_label_values(&[&u.name]))
                .collect(),
            auth_failures: AuthFailureCounters::new(),
            verifier,
            access_log,
            config,
        })
    }
}

/// What one worker serves a request with: the gateway and this worker's own upstream pools
/// (indexed like `config.upstreams`). Replaced whole at a config reload.
pub struct WorkerSnapshot {
    pub gw: Arc<Gateway>,
    pub upstreams: Vec<Arc<UpstreamClient>>,
}

impl WorkerSnapshot {
    /// A worker's client (and its connections) is kept while the gateway keeps its pool
    /// (the upstream's config did not change, see `upstream::build_pools`).
    pub fn new(gw: Arc<Gateway>, previous: Option<&WorkerSnapshot>) -> Self {
        let upstreams = gw
            .pools
            .iter()
            .map(|pool| {
                previous
                    .and_then(|p| p.upstreams.iter().find(|c| Arc::ptr_eq(&c.pool, pool)))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(UpstreamClient::new(pool.clone())))
            })
            .collect();
        WorkerSnapshot { gw, upstreams }
    }
}

/// One per worker thread: the engine calls it for each request (see `pipeline`), and a reload
/// installs a new snapshot in it. Its upstream pools are only used on that thread.
pub struct WorkerHandler {
    /// per worker (not one shared by all) so that loading it per request touches only this
    /// thread's cache lines
    snapshot: ArcSwap<WorkerSnapshot>,
}

impl WorkerHandler {
    pub fn new(gw: Arc<Gateway>) -> Self {
        WorkerHandler {
            snapshot: ArcSwap::from_pointee(WorkerSnapshot::new(gw, None)),
        }
    }

    /// The current snapshot; a request holds it until it is logged.
    pub fn snapshot(&self) -> Arc<WorkerSnapshot> {
        self.snapshot.load_full()
    }

    /// Installs a new gateway (config reload), keeping unchanged upstream pools.
    pub fn install(&self, gw: Arc<Gateway>) {
        let old = self.snapshot.load_full();
        self.snapshot
            .store(Arc::new(WorkerSnapshot::new(gw, Some(&old))));
    }
}
