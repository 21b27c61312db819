//! Prometheus metrics (`cc_gateway_*`), registered once per process.
//!
//! The request path uses pre-resolved handles (`RouteMetrics`) so that recording a request is
//! a few atomic adds, not a label hash per call.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

mod handles;
pub use handles::{AuthFailureCounters, BodyCheck, RouteMetrics};

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub auth_failures: IntCounterVec,
    pub jwks_refresh: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub token_cache_hits: IntCounter,
    pub token_cache_misses: IntCounter,
    pub upstream_errors: IntCounterVec,
    /// requests refused `413 request_body_too_large`, by route and `check` (`declared`: the
    /// Content-Length said so; `streamed`: cut when the bytes passed the limit)
    pub request_body_too_large: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub connections: IntGauge,
    /// times a worker stopped accepting: it had its share of `server.max_connections` open
    pub connections_limited: IntCounter,
    pub config_reloads: IntCounterVec,
    pub budget_decisions: IntCounterVec,
    pub budget_store_duration: HistogramVec,
    pub budget_store_errors: IntCounterVec,
    pub budget_keys_evicted: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub tls_certificate_expiry: IntGaugeVec,
    pub proxy_protocol_errors: IntCounterVec,
    /// trace spans not exported, by cause (`queue_full`, `export_failed`)
    pub spans_dropped: IntCounterVec,
    pub spans_exported: IntCounter,
}

/// Latency buckets from 100 µs (a cached-token hop) to a minute (a long completion).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub(crate) fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // names are static and unique: registration cannot fail
    let _ = r.register(Box::new(c.clone()));
    c
}

/// A counter family (not registered yet). The names and labels are ours and static: a bad one
/// is a bug that every test run would hit at startup.
pub(crate) fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new_custom(Some("cc_gateway".into()), None).unwrap_or_default();
        let hist_vec = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                labels,
            )
            .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        let counter = |name: &str, help: &str| {
            IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        Metrics {
            requests: reg(
                &r,
                counter_vec(
                    "requests_total",
                    "Requests answered, by route and status.",
                    &["route", "status"],
                ),
            ),
            request_duration: reg(
                &r,
                hist_vec(
                    "request_duration_seconds",
                    "Time from request received to response body sent.",
                    &["route"],
                ),
            ),
            upstream_duration: reg(
                &r,
                hist_vec(
                    "upstream_duration_seconds",
                    "Time from request sent upstream to response headers received.",
                    &["upstream"],
                ),
            ),
            auth_failures: reg(
                &r,
                counter_vec(
                    "auth_failures_total",
                    "Requests refused by authentication or authorization, by reason.",
                    &["reason"],
                ),
            ),
            jwks_refresh: reg(
                &r,
                counter_vec(
                    "jwks_refresh_total",
                    "JWKS fetches, by issuer and result (ok/error).",
                    &["issuer", "result"],
                ),
            ),
            jwks_keys: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("jwks_keys", "Usable keys per issuer."),
                    &["issuer"],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            token_cache_hits: reg(
                &r,
                counter("token_cache_hits_total", "Verified-token cache hits."),
            ),
            token_cache_misses: reg(
                &r,
                counter(
                    "token_cache_misses_total",
                    "Verified-token cache misses (full verification).",
                ),
            ),
            upstream_errors: reg(
                &r,
                counter_vec(
                    "upstream_errors_total",
                    "Upstream failures, by upstream and kind (connect/timeout/protocol).",
                    &["upstream", "kind"],
                ),
            ),
            request_body_too_large: reg(
                &r,
                counter_vec(
                    "request_body_too_large_total",
                    "Requests refused because their body passed the route's max_request_body, by route and check (declared/streamed).",
                    &["route", "check"],
                ),
            ),
            access_log_dropped: reg(
                &r,
                counter(
                    "access_log_dropped_total",
                    "Access log lines dropped because the writer fell behind.",
                ),
            ),
            connections: reg(
                &r,
                IntGauge::new("connections", "Open client connections.")
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            connections_limited: reg(
                &r,
                counter(
                    "connections_limited_total",
                    "Times a worker stopped accepting because it had its share of server.max_connections open.",
                ),
            ),
            config_reloads: reg(
                &r,
                counter_vec(
                    "config_reloads_total",
                    "Configuration reloads, by result (ok/error).",
                    &["result"],
                ),
            ),
            budget_decisions: reg(
                &r,
                counter_vec(
                    "budget_decisions_total",
                    "Budget decisions, by rule and result (admitted/rejected).",
                    &["rule", "result"],
                ),
            ),
            budget_store_duration: reg(
                &r,
                hist_vec(
                    "budget_store_duration_seconds",
                    "Time the budget store took to decide.",
                    &["store"],
                ),
            ),
            budget_store_errors: reg(
                &r,
                counter_vec(
                    "budget_store_errors_total",
                    "Budget store failures (on_store_error applied).",
                    &["store"],
                ),
            ),
            budget_keys_evicted: reg(
                &r,
                counter_vec(
                    "budget_keys_evicted_total",
                    "Budget keys dropped while still counting because budgets.max_keys was reached (their budget starts afresh).",
                    &["store"],
                ),
            ),
            tls_handshakes: reg(
                &r,
                counter_vec(
                    "tls_handshakes_total",
                    "TLS handshakes on the TLS listeners, by result (ok/error/timeout).",
                    &["result"],
                ),
            ),
            tls_reloads: reg(
                &r,
                counter_vec(
                    "tls_reloads_total",
                    "Re-reads of the TLS certificate, key and client CA files (reload or file change), by result (ok/error).",
                    &["result"],
                ),
            ),
            tls_certificate_expiry: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "tls_certificate_expiry_seconds",
                        "Seconds until the served certificate expires, by certificate file.",
                    ),
                    &["cert"],
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            proxy_protocol_errors: reg(
                &r,
                counter_vec(
                    "proxy_protocol_errors_total",
                    "Connections closed for their PROXY protocol header, by reason (untrusted/malformed/truncated/timeout).",
                    &["reason"],
                ),
            ),
            spans_dropped: reg(
                &r,
                counter_vec(
                    "spans_dropped_total",
                    "Trace spans dropped, by cause (queue_full: the export queue was full; export_failed: the collector refused or did not answer).",
                    &["cause"],
                ),
            ),
            spans_exported: reg(
                &r,
                counter(
                    "spans_exported_total",
                    "Trace spans the OTLP collector accepted.",
                ),
            ),
            registry: r,
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// AI usage on `kind = "ai"` routes (`cc_gateway_ai_*`), registered in the one registry on
/// first use. The `model` label is the model the response named, as few distinct values as
/// providers have models — but they come from upstream bytes, so at most [`MAX_AI_MODELS`]
/// distinct ones become labels and the rest count as `other` (a misbehaving upstream cannot
/// blow up the series count).
pub struct AiMetrics {
    pub tokens: IntCounterVec,
    pub cost: prometheus::CounterVec,
    pub usage_missing: IntCounterVec,
    pub budget_unmetered: IntCounterVec,
    models: std::sync::Mutex<std::collections::HashSet<String>>,
}

pub const MAX_AI_MODELS: usize = 200;

pub static AI: LazyLock<AiMetrics> = LazyLock::new(|| {
    let r = &METRICS.registry;
    let counter_vec =
        |name: &str, help: &str, labels: &[&str]| reg(r, counter_vec(name, help, labels));
    AiMetrics {
        tokens: counter_vec(
            "ai_tokens_total",
            "AI tokens reported by responses, by route, model and kind (input/output/cache_read/cache_write/reasoning; input counts cached tokens too, reasoning is part of output).",
            &["route", "model", "kind"],
        ),
        cost: reg(
            r,
            prometheus::CounterVec::new(
                Opts::new(
                    "ai_cost_usd_total",
                    "Cost of AI usage in USD from [[prices]], by route and model.",
                ),
                &["route", "model"],
            )
            .unwrap_or_else(|e| panic!("metric ai_cost_usd_total: {e}")),
        ),
        usage_missing: counter_vec(
            "ai_usage_missing_total",
            "AI responses whose usage the gateway could not read (unknown shape, compressed, too large).",
            &["route"],
        ),
        budget_unmetered: counter_vec(
            "budget_unmetered_total",
            "Responses a token budget rule could not charge because they reported no usage.",
            &["rule"],
        ),
        models: std::sync::Mutex::new(std::collections::HashSet::new()),
    }
});

impl AiMetrics {
    /// Counts one AI response's usage (None: missing) and cost.
    pub fn record(
        &self,
        route: &str,
        model: Option<&str>,
        usage: Option<&crate::usage::Usage>,
        cost: Option<f64>,
    ) {
        let Some(u) = usage else {
            self.usage_missing.with_label_values(&[route]).inc();
            return;
        };
        let model = self.model_label(model);
        for (kind, n) in [
            ("input", u.input),
            ("output", u.output),
            ("cache_read", u.cache_read),
            ("cache_write", u.cache_write),
            ("reasoning", u.reasoning),
        ] {
            if n > 0 {
                self.tokens
                    .with_label_values(&[route, &model, kind])
                    .inc_by(n);
            }
        }
        if let Some(c) = cost {
            self.cost.with_label_values(&[route, &model]).inc_by(c);
        }
    }

    fn model_label(&self, model: Option<&str>) -> String {
        let Some(m) = model else {
            return "unknown".into();
        };
        // a poisoned lock only means another thread panicked mid-insert: the set is intact
        let mut seen = self.models.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(m) {
            return m.to_string();
        }
        if seen.len() >= MAX_AI_MODELS {
            return "other".into();
        }
        seen.insert(m.to_string());
        m.to_string()
    }
}

/// Upstream pools: where requests went, which endpoints can serve, and why some were taken out.
/// A static of its own (registered in the one registry) so the pool metrics stand apart from
/// the request path's struct.
pub struct PoolMetrics {
    /// by upstream, endpoint and result (`ok`, `5xx`, or the failure kind: `connect`, `tls`,
    /// `timeout`, `protocol`)
    pub upstream_requests: IntCounterVec,
    /// 1 while the endpoint is in rotation (not ejected, not failing its active checks)
    pub endpoint_healthy: IntGaugeVec,
    /// by cause: `consecutive_failures` (passive, live traffic) or `health_check` (active)
    pub upstream_ejections: IntCounterVec,
}

pub static POOL_METRICS: LazyLock<PoolMetrics> = LazyLock::new(|| {
    let r = &METRICS.registry;
    PoolMetrics {
        upstream_requests: reg(
            r,
            counter_vec(
                "upstream_requests_total",
                "Requests sent to upstream endpoints, by upstream, endpoint and result.",
                &["upstream", "endpoint", "result"],
            ),
        ),
        endpoint_healthy: reg(
            r,
            IntGaugeVec::new(
                Opts::new(
                    "endpoint_healthy",
                    "1 while an upstream endpoint is in rotation, 0 while ejected or failing its health checks.",
                ),
                &["upstream", "endpoint"],
            )
            .unwrap_or_else(|e| panic!("{e}")),
        ),
        upstream_ejections: reg(
            r,
            counter_vec(
                "upstream_ejections_total",
                "Endpoints taken out of rotation, by upstream, endpoint and cause.",
                &["upstream", "endpoint", "cause"],
            ),
        ),
    }
});

/// L4 routes (`[[tcp_routes]]`), registered in [`METRICS`]'s registry on first use.
pub struct TcpMetrics {
    /// open connections per route
    pub open: IntGaugeVec,
    /// connections per route and result: `ok` (carried to the target) or why refused
    pub connections: IntCounterVec,
    /// bytes per route and direction: `in` from clients, `out` to clients
    pub bytes: IntCounterVec,
}

pub static TCP_METRICS: LazyLock<TcpMetrics> = LazyLock::new(|| {
    let r = &METRICS.registry;
    TcpMetrics {
        open: reg(
            r,
            IntGaugeVec::new(
                Opts::new("tcp_connections", "Open connections of each L4 route."),
                &["route"],
            )
            .unwrap_or_else(|e| panic!("metric tcp_connections: {e}")),
        ),
        connections: reg(
            r,
            counter_vec(
                "tcp_connections_total",
                "L4 connections by route and result (ok, limit, client_cert, tls, connect_failed, no_route, tunnel_unavailable).",
                &["route", "result"],
            ),
        ),
        bytes: reg(
            r,
            counter_vec(
                "tcp_bytes_total",
                "Bytes carried by L4 routes: direction in (from clients) or out (to clients).",
                &["route", "direction"],
            ),
        ),
    }
});

/// The request log (`[request_log]`, `cc_gateway_request_log_*`), registered in the one
/// registry when a request log starts.
pub struct RequestLogMetrics {
    /// rows lost, by cause: `queue_full` (the writer is behind), `spool_full` (the store was
    /// unreachable longer than the spool holds), `shutdown` (not written within the flush timeout)
    pub dropped: IntCounterVec,
    pub queue_depth: IntGauge,
    /// rows waiting in the spool for the store to come back
    pub spooled: IntGauge,
    pub rows_written: IntCounter,
    pub store_errors: IntCounter,
}

pub static REQUEST_LOG: LazyLock<RequestLogMetrics> = LazyLock::new(|| {
    let r = &METRICS.registry;
    let m = RequestLogMetrics {
        dropped: reg(
            r,
            counter_vec(
                "request_log_dropped_total",
                "Request log rows lost, by cause (queue_full, spool_full, shutdown, rejected).",
                &["cause"],
            ),
        ),
        queue_depth: reg(
            r,
            IntGauge::new(
                "request_log_queue_depth",
                "Request log rows queued for the writer.",
            )
            .unwrap_or_else(|e| panic!("metric request_log_queue_depth: {e}")),
        ),
        spooled: reg(
            r,
            IntGauge::new(
                "request_log_spooled_rows",
                "Request log rows held while the store is unreachable.",
            )
            .unwrap_or_else(|e| panic!("metric request_log_spooled_rows: {e}")),
        ),
        rows_written: reg(
            r,
            IntCounter::new(
                "request_log_rows_written_total",
                "Request log rows written to the store.",
            )
            .unwrap_or_else(|e| panic!("metric request_log_rows_written_total: {e}")),
        ),
        store_errors: reg(
            r,
            IntCounter::new(
                "request_log_store_errors_total",
                "Failed writes to the request log store (the rows are spooled and retried).",
            )
            .unwrap_or_else(|e| panic!("metric request_log_store_errors_total: {e}")),
        ),
    };
    // every cause's series from the start, for alerts
    for c in ["queue_full", "spool_full", "shutdown", "rejected"] {
        m.dropped.with_label_values(&[c]);
    }
    m
});

/// `cc_gateway_canary_decisions_total{route,upstream,cause}`: where each request on a split
/// route went and why (`hash`: its key; `override`: the override header; `no_key`: no key, so
/// the heaviest upstream). Registered in the one registry when a config with a split is loaded;
/// the request path counts through handles resolved then (`routing::canary`).
pub static CANARY_DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    reg(
        &METRICS.registry,
        counter_vec(
            "canary_decisions_total",
            "Requests on routes split across upstreams, by route, chosen upstream and cause (hash/override/no_key).",
            &["route", "upstream", "cause"],
        ),
    )
});

/// Tries repeated by a route's `retries`, by the route's upstream and the cause that allowed
/// it (`connect`, `refused`, `timeout`, or the status, e.g. `503`).
pub static UPSTREAM_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    reg(
        &METRICS.registry,
        counter_vec(
            "upstream_retries_total",
            "Upstream tries repeated by a route's retries, by upstream and cause.",
            &["upstream", "cause"],
        ),
    )
});
