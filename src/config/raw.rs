//! The configuration file as written: serde structs mirroring the TOML, nothing validated yet.
//! Unknown keys are refused (`deny_unknown_fields`) so a typo never silently does nothing.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    pub budgets: Option<RawBudgets>,
    #[serde(default)]
    pub prices: Vec<RawPrice>,
    pub request_log: Option<RawRequestLog>,
    #[serde(default)]
    pub tcp_routes: Vec<RawTcpRoute>,
    pub telemetry: Option<RawTelemetry>,
    #[serde(default)]
    pub tunnels: Vec<RawTunnel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTunnel {
    pub name: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub subjects: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Vec<String>>,
    pub admin_listen: Option<String>,
    pub threads: Option<i64>,
    pub max_header_bytes: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub admin_token: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub http2_keepalive_interval: Option<String>,
    pub http2_keepalive_timeout: Option<String>,
    pub tls: Option<RawServerTls>,
    pub proxy_protocol: Option<bool>,
    pub drain_delay: Option<String>,
    pub upgrade_socket: Option<String>,
    pub region: Option<String>,
    pub max_request_body: Option<RawSize>,
    pub max_connections: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub listen: Option<Vec<String>>,
    pub certificates: Option<Vec<RawCertificate>>,
    pub min_version: Option<String>,
    pub client_auth: Option<String>,
    pub client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    pub server_names: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub token_headers: Option<Vec<String>>,
    pub identity_header_prefix: Option<String>,
    pub identity_headers: Option<Vec<String>>,
    pub token_cache_size: Option<i64>,
    pub max_token_bytes: Option<i64>,
    pub forward_token: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access: Option<String>,
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub name: String,
    pub issuer: String,
    pub discovery: Option<bool>,
    pub jwks_uri: Option<String>,
    pub jwks_file: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub refresh_interval: Option<String>,
    pub leeway: Option<String>,
    #[serde(default)]
    pub bind_headers: BTreeMap<String, String>,
    pub fetch_timeout: Option<String>,
    pub unknown_kid_refetch: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub path_prefix: String,
    pub strip_prefix: Option<bool>,
    /// an upstream's name, or a split `[{ name, weight }, …]` (validated by hand in
    /// `routes.rs`, so that a problem is named down to `upstream[1].weight`)
    pub upstream: Option<toml::Value>,
    pub canary: Option<RawCanary>,
    pub audience: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub auth: Option<String>,
    pub methods: Option<Vec<String>>,
    pub issuers: Option<Vec<String>>,
    pub cost: Option<i64>,
    pub upgrades: Option<Vec<String>>,
    pub idle_timeout: Option<String>,
    pub retries: Option<RawRetries>,
    pub timeout: Option<String>,
    pub client_cert: Option<RawClientCertRule>,
    pub kind: Option<String>,
    /// TCP over WebSocket: the target an authorised upgrade's bytes go to
    pub connect: Option<String>,
    pub max_request_body: Option<RawSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub key: Option<RawKeyParts>,
    pub override_header: Option<String>,
}

/// `key = "claim:sub"` or `key = ["claim:sub", "header:x"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawKeyParts {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub model: String,
    pub input: f64,
    pub output: f64,
    pub cache_read: Option<f64>,
    pub cache_write: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCertRule {
    pub uris: Option<Vec<String>>,
    pub dns: Option<Vec<String>>,
}

/// A route's `retries` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub attempts: Option<i64>,
    pub backoff: Option<String>,
    pub on: Option<Vec<String>>,
    pub per_try_timeout: Option<String>,
    pub body_limit: Option<RawSize>,
}

/// A size: bytes as a number, or text with a unit (`"64KiB"`, `"1MiB"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    pub endpoints: Vec<RawEndpoint>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle: Option<i64>,
    pub protocol: Option<String>,
    pub tls: Option<RawUpstreamTls>,
    pub http2_keepalive_interval: Option<String>,
    pub http2_keepalive_timeout: Option<String>,
    pub balance: Option<String>,
    pub fallback: Option<Vec<String>>,
    pub outlier: Option<RawOutlier>,
    pub health_check: Option<RawHealthCheck>,
    pub resolve_interval: Option<String>,
    /// request headers added toward this upstream; values may be `env:`/`file:` secrets
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `"host:port"` or `{ addr = "host:port", weight = 2, region = "us-east1" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawEndpoint {
    Addr(String),
    Table(RawEndpointTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointTable {
    pub addr: String,
    pub weight: Option<i64>,
    pub region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<i64>,
    pub ejection: Option<String>,
    pub max_ejection: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
    pub expect_status: Option<Vec<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    pub store: Option<String>,
    pub on_store_error: Option<String>,
    pub store_timeout: Option<String>,
    pub flush_interval: Option<String>,
    pub response_headers: Option<bool>,
    pub max_keys: Option<i64>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub routes: Option<Vec<String>>,
    pub key: Vec<String>,
    pub rate: Option<String>,
    pub quota: Option<String>,
    pub burst: Option<i64>,
    pub cost: Option<i64>,
    pub tiers: Option<RawTiers>,
    #[serde(default)]
    pub overrides: BTreeMap<String, String>,
    pub unit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTiers {
    pub claim: String,
    /// `[low, high, "N/period"]`; `high` may be "inf"
    pub ranges: Vec<Vec<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequestLog {
    pub store: Option<String>,
    pub retention: Option<String>,
    pub max_size: Option<String>,
    pub fields: Option<BTreeMap<String, String>>,
    pub queue_size: Option<i64>,
    pub batch_size: Option<i64>,
    pub flush_interval: Option<String>,
    pub spool_size: Option<i64>,
    pub flush_timeout: Option<String>,
    pub node: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTcpRoute {
    pub name: Option<String>,
    pub listen: Option<Vec<String>>,
    pub target: Option<String>,
    pub tls: Option<bool>,
    pub server_names: Option<Vec<String>>,
    pub client_cert: Option<RawClientCertRule>,
    pub idle_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub proxy_protocol: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub sample_ratio: Option<f64>,
    pub keep_errors: Option<bool>,
    pub slow_threshold: Option<String>,
    pub service_name: Option<String>,
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
}
