//! Token verification through the real gateway: the happy path, every reason code, the
//! adversarial set, algorithms, and the verified-token cache.

use serde_json::{json, Value};

use crate::common::*;

mod adversarial;
mod algorithms;
mod cache;
mod reasons;

/// A JWS header with `alg`, `typ: JWT` and `kid` when given.
pub fn header_json(alg: &str, kid: Option<&str>) -> Value {
    match kid {
        Some(k) => json!({"alg": alg, "typ": "JWT", "kid": k}),
        None => json!({"alg": alg, "typ": "JWT"}),
    }
}

/// A raw HTTP/1.1 request to `/ai/v2/completions` whose token header value is `token` verbatim.
pub fn raw_token_request(fx: &Fixture, header_lines: &[(&str, &[u8])]) -> Vec<u8> {
    let mut req = format!(
        "POST /ai/v2/completions HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n",
        fx.gw.addr
    )
    .into_bytes();
    for (name, value) in header_lines {
        req.extend_from_slice(name.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}
