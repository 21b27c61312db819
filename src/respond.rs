//! Responses we generate ourselves: every refusal is JSON
//! `{"error", "reason", "message", "request_id"}` with a stable `reason`; 401/403 carry an
//! RFC 6750 `WWW-Authenticate` challenge. A gRPC request (`content-type: application/grpc…`)
//! gets the same refusal as a gRPC trailers-only response instead (`grpc_refusal`): gRPC
//! clients read `grpc-status`, not HTTP statuses or JSON bodies.

use std::borrow::Cow;

use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::auth::{AuthError, Reason};
use crate::budget::Rejected;
use crate::engine::upstream::UpstreamError;
use crate::engine::Body;
use crate::grpc::{self, code as grpc_code, GRPC_MESSAGE, GRPC_STATUS};
use crate::routing::RouteError;

/// IETF RateLimit headers (structured fields), on 429s and, when configured, admitted answers.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A refusal, whatever step produced it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    /// the machine-readable reason (public interface)
    pub reason: Cow<'static, str>,
    pub message: String,
    pub bearer_error: Option<&'static str>,
    pub retry_after: Option<u64>,
    pub allow: Option<String>,
    /// more response headers (RateLimit-Policy / RateLimit on a 429)
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    pub fn new(
        status: StatusCode,
        reason: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            message: message.into(),
            bearer_error: None,
            retry_after: None,
            allow: None,
            headers: Vec::new(),
        }
    }
}

impl Refusal {
    /// A request still open when the shutdown timeout ended the drain: cut by us, not
    /// abandoned by its client (which would be 499 `client_closed`).
    pub fn shutting_down() -> Self {
        let mut r = Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the gateway is shutting down; retry",
        );
        r.retry_after = Some(1);
        r
    }

    /// The request's body is longer than its route's `max_request_body`: declared so (refused
    /// before the upstream) or found so while it streamed (cut there).
    pub fn body_too_large(limit: u64) -> Self {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_body_too_large",
            format!("the request body is longer than this route accepts ({limit} bytes)"),
        )
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        let mut r = Refusal::new(e.reason.status(), e.reason.code(), e.detail);
        r.bearer_error = e.reason.bearer_error();
        if e.reason == Reason::KeysUnavailable {
            r.retry_after = Some(5);
        }
        r
    }
}

impl From<crate::forward::HeadError> for Refusal {
    fn from(e: crate::forward::HeadError) -> Self {
        use crate::forward::HeadError;
        match e {
            HeadError::TransferCoding => Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_encoding",
                e.to_string(),
            ),
            HeadError::MissingHost
            | HeadError::DuplicateHost
            | HeadError::InvalidHost
            | HeadError::HostMismatch => {
                Refusal::new(StatusCode::BAD_REQUEST, "invalid_host", e.to_string())
            }
        }
    }
}

impl From<RouteError> for Refusal {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NoRoute => Refusal::new(
                StatusCode::NOT_FOUND,
                "no_route",
                "no route matches this path",
            ),
            RouteError::InvalidPath => Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "path has dot segments",
            ),
            // no route takes this method: still `no_route` (the public contract), with an
            // `Allow` hint naming the methods that would have matched
            RouteError::MethodNotAllowed(allow) => {
                let mut r = Refusal::new(
                    StatusCode::NOT_FOUND,
                    "no_route",
                    format!("no route for this method (allowed: {allow})"),
                );
                r.allow = Some(allow);
                r
            }
        }
    }
}

impl From<Rejected> for Refusal {
    fn from(r: Rejected) -> Self {
        match r {
            // the reason is the rule's name: clients and dashboards tell budgets apart by it
            Rejected::OverBudget {
                rule,
                retry_after,
                headers: (policy, state),
            } => {
                let mut r = Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    rule,
                    "over budget: retry later",
                );
                r.retry_after = Some(retry_after);
                r.headers = vec![(RATELIMIT_POLICY, policy), (RATELIMIT, state)];
                r
            }
            Rejected::StoreUnavailable => Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "budget_store_unavailable",
                "the budget store cannot answer",
            ),
        }
    }
}

impl From<&UpstreamError> for Refusal {
    fn from(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout { .. } => Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            // details (addresses) stay in our logs; the client learns only what failed
            UpstreamError::Connect { .. } => Refusal::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream cannot be reached",
            ),
            UpstreamError::Tls { .. } => Refusal::new(
                StatusCode::BAD_GATEWAY,
                "upstream_tls_error",
                "TLS to the upstream could not be established",
            ),
            UpstreamError::Unavailable { .. } => Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                "no endpoint of the upstream can serve",
            ),
            UpstreamError::TunnelUnavailable { .. } => {
                let mut r = Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tunnel_unavailable",
                    "no agent of the upstream's tunnel is connected",
                );
                r.retry_after = Some(1);
                r
            }
            UpstreamError::BodyTooLarge { limit } => Refusal::body_too_large(*limit),
            UpstreamError::Protocol { .. } | UpstreamError::Uri(_) => Refusal::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the upstream failed to answer",
            ),
        }
    }
}

/// Short error category for the JSON `error` field.
fn category(r: &Refusal) -> &'static str {
    if let Some(b) = r.bearer_error {
        return b;
    }
    match r.status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::TOO_MANY_REQUESTS => "budget_exceeded",
        StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        StatusCode::BAD_GATEWAY => "bad_gateway",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        StatusCode::GATEWAY_TIMEOUT => "gateway_timeout",
        _ => "error",
    }
}

/// Builds the JSON refusal.
pub fn refusal(r: &Refusal, request_id: &HeaderValue) -> Response<Body> {
    let body = serde_json::json!({
        "error": category(r),
        "reason": &r.reason,
        "message": r.message,
        "request_id": request_id.to_str().unwrap_or(""),
    });
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Body::full(bytes));
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    refusal_headers(r, h);
    resp
}

/// Is this a gRPC request (`application/grpc`, `application/grpc+proto`, …)? Its refusals are
/// answered gRPC-style.
pub fn is_grpc(h: &http::HeaderMap) -> bool {
    h.get(CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .get(..16)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc"))
    })
}

/// The gRPC status of a refusal. gRPC's HTTP-to-gRPC mapping (doc/http-grpc-status-mapping.md)
/// for 400, 401, 403, 404, 502, 503 and other statuses; 429 and 504 say more precisely what
/// happened than that table's UNAVAILABLE: over budget (RESOURCE_EXHAUSTED, which clients do
/// not retry blindly) and out of time (DEADLINE_EXCEEDED). 413 is RESOURCE_EXHAUSTED too, as
/// gRPC servers answer a message over their size limit.
pub fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => grpc_code::INTERNAL,
        401 => grpc_code::UNAUTHENTICATED,
        403 => grpc_code::PERMISSION_DENIED,
        404 => grpc_code::UNIMPLEMENTED,
        413 | 429 => grpc_code::RESOURCE_EXHAUSTED,
        501 => grpc_code::UNIMPLEMENTED,
        502 | 503 => grpc_code::UNAVAILABLE,
        504 => grpc_code::DEADLINE_EXCEEDED,
        _ => grpc_code::UNKNOWN,
    }
}

/// The refusal as a gRPC trailers-only response: HTTP 200, `content-type: application/grpc`,
/// `grpc-status` and `grpc-message: <reason>: <message>` in the one HEADERS frame, no body.
/// `WWW-Authenticate`, `Retry-After`, `RateLimit-*` stay (as metadata the client can read).
pub fn grpc_refusal(r: &Refusal) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS, HeaderValue::from(grpc_status(r.status)));
    h.insert(
        GRPC_MESSAGE,
        grpc::message(&format!("{}: {}", r.reason, r.message)),
    );
    refusal_headers(r, h);
    resp
}

/// The headers a refusal carries whatever its shape (JSON or gRPC).
fn refusal_headers(r: &Refusal, h: &mut http::HeaderMap) {
    if let Some(err) = r.bearer_error {
        let v = format!(
            "Bearer realm=\"cc-gateway\", error=\"{err}\", error_description=\"{}\"",
            quote_safe(&r.message)
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(WWW_AUTHENTICATE, v);
        }
    }
    if let Some(s) = r.retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(s));
    }
    for (n, v) in &r.headers {
        h.insert(n.clone(), v.clone());
    }
    if let Some(a) = &r.allow {
        if let Ok(v) = HeaderValue::from_str(a) {
            h.insert(http::header::ALLOW, v);
        }
    }
}

/// RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E (no `"` or `\`).
fn quote_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || !(' '..='~').contains(&c) {
                '\''
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::Value;

    use super::*;

    async fn answer(r: Rejected) -> (Response<()>, Value) {
        let resp = refusal(&r.into(), &HeaderValue::from_static("req-1"));
        let (head, body) = resp.into_parts();
        let bytes = body.collect().await.expect("a full body").to_bytes();
        let json = serde_json::from_slice(&bytes).expect("a JSON body");
        (Response::from_parts(head, ()), json)
    }

    #[tokio::test]
    async fn over_budget_is_a_429_named_after_the_rule_with_its_headers() {
        let (resp, body) = answer(Rejected::OverBudget {
            rule: "user-daily".into(),
            retry_after: 7,
            headers: (
                HeaderValue::from_static("\"user-daily\";q=5;w=86400"),
                HeaderValue::from_static("\"user-daily\";r=0;t=7"),
            ),
        })
        .await;
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = resp.headers();
        assert_eq!(h[RETRY_AFTER], "7");
        assert_eq!(h[RATELIMIT_POLICY], "\"user-daily\";q=5;w=86400");
        assert_eq!(h[RATELIMIT], "\"user-daily\";r=0;t=7");
        assert_eq!(body["error"], "budget_exceeded");
        assert_eq!(body["reason"], "user-daily");
        assert_eq!(body["message"], "over budget: retry later");
        assert_eq!(body["request_id"], "req-1");
    }

    #[tokio::test]
    async fn a_store_that_cannot_answer_is_a_503_without_budget_headers() {
        let (resp, body) = answer(Rejected::StoreUnavailable).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().get(RETRY_AFTER).is_none());
        assert!(resp.headers().get(RATELIMIT).is_none());
        assert_eq!(body["error"], "service_unavailable");
        assert_eq!(body["reason"], "budget_store_unavailable");
    }

    #[tokio::test]
    async fn grpc_refusal_is_trailers_only_with_the_http_headers_kept() {
        let r: Refusal = Rejected::OverBudget {
            rule: "user-daily".into(),
            retry_after: 7,
            headers: (
                HeaderValue::from_static("\"user-daily\";q=5;w=86400"),
                HeaderValue::from_static("\"user-daily\";r=0;t=7"),
            ),
        }
        .into();
        let resp = grpc_refusal(&r);
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h[CONTENT_TYPE], "application/grpc");
        assert_eq!(h[GRPC_STATUS], "8");
        assert_eq!(h[GRPC_MESSAGE], "user-daily: over budget: retry later");
        assert_eq!(h[RETRY_AFTER], "7");
        assert_eq!(h[RATELIMIT], "\"user-daily\";r=0;t=7");
        use http_body::Body as _;
        assert!(resp.body().is_end_stream(), "no body: trailers-only");
    }

    #[test]
    fn grpc_status_mapping() {
        for (http, grpc) in [
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (429, 8),
            (502, 14),
            (503, 14),
            (504, 4),
            (500, 2),
        ] {
            assert_eq!(
                grpc_status(StatusCode::from_u16(http).unwrap()),
                grpc,
                "{http}"
            );
        }
    }

    #[test]
    fn grpc_content_types() {
        let mut h = http::HeaderMap::new();
        assert!(!is_grpc(&h));
        for (ct, yes) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC+json", true),
            ("application/json", false),
            ("application/grp", false),
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), yes, "{ct}");
        }
    }
}
