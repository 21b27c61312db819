//! Why an upstream exchange failed, and hyper's errors made readable.

use std::time::Duration;

/// Why an upstream exchange failed; maps to `upstream_unavailable` / `upstream_timeout` /
/// `upstream_tls_error`.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    /// unknown CA, name mismatch, expired certificate, a client certificate demanded that we do
    /// not have, unreadable TLS files: never retried without TLS or verification
    #[error("TLS with {endpoint} failed: {detail}")]
    Tls { endpoint: String, detail: String },
    #[error("{endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("{endpoint}: {detail}")]
    Protocol { endpoint: String, detail: String },
    #[error("bad upstream request URI: {0}")]
    Uri(String),
    /// every endpoint is ejected or failing its checks, no fallback could serve, and the
    /// panic-mode try (the least recently failed endpoint) failed too: 503, the upstream as a
    /// whole is down (a single endpoint's failure is a 502)
    #[error("no endpoint of upstream {upstream} can serve (panic mode: {detail})")]
    Unavailable { upstream: String, detail: String },
}

impl UpstreamError {
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Protocol { .. } | UpstreamError::Uri(_) => "protocol",
            UpstreamError::Unavailable { .. } => "unavailable",
        }
    }
}

/// An error with its sources, `a: b: c` (hyper's errors say little without their causes).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
