//! The gateway's state: what every worker shares (`Gateway`, immutable once built; key sets
//! inside swap atomically) and what each worker owns (`Worker`: its upstream pools).

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use prometheus::Histogram;

use crate::accesslog::AccessLogger;
use crate::auth::Verifier;
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
}

impl Gateway {
    pub fn new(config: Arc<Config>, verifier: Arc<Verifier>, access_log: AccessLogger) -> Self {
        Gateway {
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
        }
    }
}

/// One per worker thread; its upstream pools never leave that thread.
pub struct Worker {
    pub gw: Arc<Gateway>,
    pub upstreams: Vec<UpstreamClient>,
}

impl Worker {
    pub fn new(gw: Arc<Gateway>) -> Self {
        let upstreams = gw
            .config
            .upstreams
            .iter()
            .map(UpstreamClient::new)
            .collect();
        Worker { gw, upstreams }
    }
}

impl Handler for Worker {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl std::future::Future<Output = Response<Body>> + Send + 'static {
        crate::pipeline::handle(self, req, conn)
    }
}
