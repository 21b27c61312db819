//! Why an upstream exchange failed, and hyper's errors made readable.

use std::time::Duration;

use super::h1::SendError;

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
    /// the endpoint is behind a tunnel none of whose agents is connected
    #[error("{endpoint}: {detail}")]
    TunnelUnavailable { endpoint: String, detail: String },
    /// the client's body went past the route's `max_request_body` while it streamed: the
    /// client's fault, not the upstream's (413, never retried, not held against the endpoint)
    #[error("the request body is longer than the route's max_request_body ({limit} bytes)")]
    BodyTooLarge { limit: u64 },
}

impl UpstreamError {
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Protocol { .. } | UpstreamError::Uri(_) => "protocol",
            UpstreamError::Unavailable { .. } => "unavailable",
            UpstreamError::TunnelUnavailable { .. } => "tunnel",
            UpstreamError::BodyTooLarge { .. } => "request_body",
        }
    }
}

/// The causes of `e`, nearest first (`e` itself not included).
pub fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(e.source(), |c| c.source())
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

/// What a failed try proves about the request, which decides whether it may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// no connection could be made: nothing was sent
    Connect,
    /// the request provably never reached the application: the client handed it back unsent
    /// (the pooled connection closed before a byte of it was written), HTTP/2 REFUSED_STREAM,
    /// or a stream above a graceful GOAWAY's last-stream-id
    Unsent,
    /// the connection broke after (part of) the request went out and before the answer's head:
    /// the upstream may have read it (a stale keep-alive connection looks like this)
    Broken,
    /// the answer's head did not come in time
    Timeout,
    /// anything else (TLS, a malformed answer, …): never retried
    Other,
}

/// A failed try: the error to answer with, and what it proves.
#[derive(Debug)]
pub struct Failed {
    pub error: UpstreamError,
    pub failure: Failure,
}

impl Failed {
    pub fn other(error: UpstreamError) -> Failed {
        Failed {
            error,
            failure: Failure::Other,
        }
    }
}

/// What a client error proves about the request (`is_connect` is checked by the caller).
pub fn classify(e: &SendError) -> Failure {
    if e.is_connect() {
        return Failure::Connect;
    }
    if e.is_canceled() {
        return Failure::Unsent;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(h2e) = c.downcast_ref::<h2::Error>() {
            return h2_failure(h2e);
        }
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return Failure::Broken;
            }
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) {
                return Failure::Broken;
            }
        }
        cur = c.source();
    }
    Failure::Other
}

/// REFUSED_STREAM says the server did no processing of the stream (RFC 9113 §8.7); a remote
/// GOAWAY error on a stream means the stream was above its last-stream-id or opened after it —
/// with NO_ERROR only: after an error GOAWAY, the streams below it get the same error.
fn h2_failure(e: &h2::Error) -> Failure {
    if e.reason() == Some(h2::Reason::REFUSED_STREAM) && e.is_remote() && e.is_reset() {
        return Failure::Unsent;
    }
    if e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR) {
        return Failure::Unsent;
    }
    if e.is_io() {
        return Failure::Broken;
    }
    Failure::Other
}
