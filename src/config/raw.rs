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
    pub telemetry: Option<RawTelemetry>,
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
    pub upstream: Option<String>,
    pub audience: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub auth: Option<String>,
    pub methods: Option<Vec<String>>,
    pub issuers: Option<Vec<String>>,
    pub cost: Option<i64>,
    pub upgrades: Option<Vec<String>>,
    pub idle_timeout: Option<String>,
    pub timeout: Option<String>,
    pub client_cert: Option<RawClientCertRule>,
    pub kind: Option<String>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    pub endpoints: Vec<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle: Option<i64>,
    pub protocol: Option<String>,
    pub tls: Option<RawUpstreamTls>,
    pub http2_keepalive_interval: Option<String>,
    pub http2_keepalive_timeout: Option<String>,
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
