//! The gateway's state: what every worker shares (`Gateway`, immutable once built; key sets
//! inside swap atomically) and what each worker owns (`Worker`: its upstream pools).

use std::sync::Arc;

use arc_swap::ArcSwap;

use http::{Request, Response};
use hyper::body::Incoming;
use prometheus::Histogram;

use crate::accesslog::AccessLogger;
use crate::auth::Verifier;
use crate::budget::Budgets;
use crate::config::Config;
use crate::engine::upstream::UpstreamClient;
use crate::engine::{Body, ConnInfo, Handler};
use crate::forward::IdentityNames;
use crate::metrics::{AuthFailureCounters, RouteMetrics, METRICS};
use crate::routing::Router;

pub struct Gateway {
    pub config: Arc<Config>,
    pub router: Router,
    pub verifier: Arc<Verifier>,
    pub identity: IdentityNames,
    pub route_metrics: Vec<RouteMetrics>,
    /// requests that matched no route
    pub unrouted_metrics: RouteMetrics,
    pub upstream_durations: Vec<Histogram>,
    pub auth_failures: AuthFailureCounters,
    pub access_log: AccessLogger,
    /// request budgets (None when none are configured)
    pub budgets: Option<Budgets>,
}

impl Gateway {
    pub fn new(
        config: Arc<Config>,
        verifier: Arc<Verifier>,
        access_log: AccessLogger,
    ) -> Result<Self, crate::budget::StoreError> {
        Self::new_from(config, verifier, access_log, None)
    }

    /// For a reload: budget counters carry over from `previous`.
    pub fn new_from(
        config: Arc<Config>,
        verifier: Arc<Verifier>,
        access_log: AccessLogger,
        previous: Option<&Gateway>,
    ) -> Result<Self, crate::budget::StoreError> {
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
        Ok(Gateway {
            budgets,
            router: Router::new(&config.routes),
            identity: IdentityNames::new(&config.auth.identity_header_prefix),
            route_metrics: config
                .routes
                .iter()
                .map(|r| RouteMetrics::new(&r.name))
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

/// What one worker serves with: the gateway and its own upstream pools. Swapped whole at a
/// config reload; a request keeps the snapshot it started with.
pub struct WorkerState {
    pub gw: Arc<Gateway>,
    pub upstreams: Vec<Arc<UpstreamClient>>,
}

impl WorkerState {
    /// Pools are kept for upstreams whose config did not change (`previous`).
    pub fn new(gw: Arc<Gateway>, previous: Option<&WorkerState>) -> Self {
        let upstreams = gw
            .config
            .upstreams
            .iter()
            .map(|u| {
                previous
                    .and_then(|p| {
                        p.gw.config
                            .upstreams
                            .iter()
                            .position(|o| o == u)
                            .map(|i| p.upstreams[i].clone())
                    })
                    .unwrap_or_else(|| Arc::new(UpstreamClient::new(u)))
            })
            .collect();
        WorkerState { gw, upstreams }
    }
}

/// One per worker thread; its upstream pools never leave that thread.
pub struct Worker {
    state: ArcSwap<WorkerState>,
}

impl Worker {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Worker {
            state: ArcSwap::from_pointee(WorkerState::new(gw, None)),
        }
    }

    pub fn state(&self) -> Arc<WorkerState> {
        self.state.load_full()
    }

    /// Installs a new gateway (config reload), keeping unchanged upstream pools.
    pub fn install(&self, gw: Arc<Gateway>) {
        let old = self.state.load_full();
        self.state.store(Arc::new(WorkerState::new(gw, Some(&old))));
    }
}

impl Handler for Worker {
    fn started(&self) {
        // a shared budget store gets this worker's connection now, not on its first request
        if let Some(b) = &self.state.load().gw.budgets {
            b.warm();
        }
    }

    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + 'static {
        crate::pipeline::handle(self.state.load_full(), req, conn)
    }
}
