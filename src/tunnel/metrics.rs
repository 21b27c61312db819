//! The tunnels' metrics (`cc_gateway_tunnel_*`), in the one registry.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec, Opts};

use crate::metrics::{counter_vec, reg, METRICS};

/// Tunnels (`[[tunnels]]`), registered in [`METRICS`]'s registry on first use.
pub struct TunnelMetrics {
    /// connected agents per tunnel
    pub agents: IntGaugeVec,
    /// streams opened over a tunnel, by result: `ok`, `unavailable` (no agent connected),
    /// `unknown_service` (no agent exposes it), `connect_failed` (the agent could not reach
    /// it), `error` (the agent's connection failed)
    pub streams: IntCounterVec,
    /// agents' connection attempts, by result: `ok` or the refusal's reason
    pub agent_connections: IntCounterVec,
}

pub static TUNNEL_METRICS: LazyLock<TunnelMetrics> = LazyLock::new(|| {
    let r = &METRICS.registry;
    TunnelMetrics {
        agents: reg(
            r,
            IntGaugeVec::new(
                Opts::new("tunnel_agents", "Agents connected to each tunnel."),
                &["tunnel"],
            )
            .unwrap_or_else(|e| panic!("metric tunnel_agents: {e}")),
        ),
        streams: reg(
            r,
            counter_vec(
                "tunnel_streams_total",
                "Streams opened over tunnels by result (ok, unavailable, unknown_service, connect_failed, error).",
                &["tunnel", "result"],
            ),
        ),
        agent_connections: reg(
            r,
            counter_vec(
                "tunnel_agent_connections_total",
                "Agents' connections to tunnels by result (ok, or the refusal's reason).",
                &["tunnel", "result"],
            ),
        ),
    }
});

/// Every configured tunnel's series from startup (an alert on `tunnel_agents == 0` needs the 0).
pub fn register_series(config: &crate::config::Config) {
    for t in &config.tunnels {
        TUNNEL_METRICS.agents.with_label_values(&[&t.name]);
        TUNNEL_METRICS
            .agent_connections
            .with_label_values(&[&t.name, "ok"]);
        for result in [
            "ok",
            "unavailable",
            "unknown_service",
            "connect_failed",
            "error",
        ] {
            TUNNEL_METRICS.streams.with_label_values(&[&t.name, result]);
        }
    }
}
