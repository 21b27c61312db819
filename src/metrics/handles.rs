//! Pre-resolved handles: what the request path records into, label lookups done once at
//! config load (a route's counters, the auth failure reasons).

use prometheus::{Histogram, IntCounter};

use super::METRICS;
// the reason codes only (not `crate::auth`, which records into these metrics)
use crate::auth::reason::Reason;

/// Handles for one route, resolved once. Counters for the usual statuses are resolved up
/// front; a rare status falls back to a label lookup.
pub struct RouteMetrics {
    route: String,
    duration: Histogram,
    by_status: Vec<(u16, IntCounter)>,
    /// `request_body_too_large_total` by [`BodyCheck`], on routes with a `max_request_body`
    body_too_large: Option<[IntCounter; 2]>,
}

/// Where a body was found longer than its route's `max_request_body` (the `check` label).
#[derive(Clone, Copy)]
pub enum BodyCheck {
    /// its declared length said so: refused before the upstream
    Declared = 0,
    /// it streamed past the limit: cut on its way up
    Streamed = 1,
}

const COMMON_STATUSES: &[u16] = &[
    101, 200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413,
    415, 422, 429, 431, 499, 500, 502, 503, 504,
];

impl RouteMetrics {
    pub fn new(route: &str) -> Self {
        RouteMetrics {
            route: route.to_string(),
            duration: METRICS.request_duration.with_label_values(&[route]),
            by_status: COMMON_STATUSES
                .iter()
                .map(|s| {
                    (
                        *s,
                        METRICS
                            .requests
                            .with_label_values(&[route, s.to_string().as_str()]),
                    )
                })
                .collect(),
            body_too_large: None,
        }
    }

    /// With the route's `request_body_too_large_total` series resolved: they exist at 0 from
    /// config load, so an alert on their rate sees the route before its first refusal.
    pub fn with_body_limit(mut self) -> Self {
        self.body_too_large = Some(["declared", "streamed"].map(|check| {
            METRICS
                .request_body_too_large
                .with_label_values(&[self.route.as_str(), check])
        }));
        self
    }

    pub fn body_too_large(&self, check: BodyCheck) {
        if let Some(c) = &self.body_too_large {
            c[check as usize].inc();
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        self.duration.observe(seconds);
        match self.by_status.binary_search_by_key(&status, |(s, _)| *s) {
            Ok(i) => self.by_status[i].1.inc(),
            Err(_) => METRICS
                .requests
                .with_label_values(&[&self.route, status.to_string().as_str()])
                .inc(),
        }
    }
}

/// Pre-resolved auth failure counters, indexed like `Reason::ALL`.
pub struct AuthFailureCounters(Vec<IntCounter>);

impl AuthFailureCounters {
    pub fn new() -> Self {
        AuthFailureCounters(
            Reason::ALL
                .iter()
                .map(|r| METRICS.auth_failures.with_label_values(&[r.code()]))
                .collect(),
        )
    }

    pub fn inc(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.0[i].inc();
        }
    }
}

impl Default for AuthFailureCounters {
    fn default() -> Self {
        Self::new()
    }
}
