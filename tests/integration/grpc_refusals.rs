//! gRPC-style refusals: a request whose `content-type` starts with `application/grpc` is refused
//! with a gRPC trailers-only response (HTTP 200, `content-type: application/grpc`,
//! `grpc-status`, percent-encoded `grpc-message` = `<reason>: <message>`), over h2c as gRPC
//! clients speak it. Every other client keeps the JSON refusals.

use std::net::SocketAddr;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::common::budgets::shared_rate;
use crate::common::client::REQUEST_TIMEOUT;
use crate::common::servers::Slow;
use crate::common::wait::DEADLINE;
use crate::common::*;

/// What a gRPC client saw of one call.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    /// the HEADERS frame ended the stream: a trailers-only response
    ended_at_headers: bool,
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header: {self:?}"))
    }
}

/// One unary gRPC call (an empty message) over a fresh h2c connection.
async fn grpc_call(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let stream = TcpStream::connect(addr).await.expect("connect gateway");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(t) = token {
            req = req.header("x-gitlab-token", t);
        }
        // one length-prefixed message of 0 bytes
        let req = req
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .expect("request");
        let resp = sender.send_request(req).await.expect("gRPC response");
        let (parts, body) = resp.into_parts();
        let ended_at_headers = body.is_end_stream();
        let collected = body.collect().await.expect("gRPC body");
        let trailers = collected.trailers().cloned();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            ended_at_headers,
            data: collected.to_bytes(),
            trailers,
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no gRPC answer to {path} within {REQUEST_TIMEOUT:?}"))
}

/// Asserts `a` is a trailers-only refusal with `code` and a message starting `<reason>: `.
fn assert_grpc_refusal(a: &Answer, code: u32, reason: &str) {
    assert_eq!(a.status, 200, "gRPC refusals are HTTP 200: {a:?}");
    assert_eq!(a.header("content-type"), "application/grpc", "{a:?}");
    assert_eq!(a.header("grpc-status"), code.to_string(), "{reason}: {a:?}");
    let msg = a.header("grpc-message");
    assert!(
        msg.starts_with(&format!("{reason}: ")) && msg.len() > reason.len() + 2,
        "grpc-message names the reason and says why: {a:?}"
    );
    assert!(
        msg.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "grpc-message is percent-encoded: {msg:?}"
    );
    assert!(a.ended_at_headers, "not trailers-only: {a:?}");
    assert!(a.data.is_empty() && a.trailers.is_none(), "{a:?}");
    assert!(a.headers.contains_key("x-request-id"), "{a:?}");
}

async fn fixture() -> (Fixture, Slow) {
    let slow = Slow::start().await;
    let extra = format!(
        r#"
[[routes]]
name = "dead"
path_prefix = "/dead/"
upstream = "dead"
auth = "public"

[[routes]]
name = "slow"
path_prefix = "/slow/"
upstream = "slow"
auth = "public"

[[upstreams]]
name = "dead"
endpoints = ["{dead}"]
connect_timeout = "1s"

[[upstreams]]
name = "slow"
endpoints = ["{slow}"]
read_timeout = "300ms"
"#,
        dead = dead_addr(),
        slow = slow.addr,
    );
    let budgets = shared_rate(1).replacen("[budgets]\n", "[budgets]\nstore = \"memory\"\n", 1);
    let budgets = budgets.replace("key = [", "routes = [\"ai\"]\nkey = [");
    let fx = Fixture::with(Opts {
        extra,
        budgets,
        ..Opts::default()
    })
    .await;
    (fx, slow)
}

#[tokio::test]
async fn every_refusal_kind_is_a_grpc_trailers_only_answer() {
    let (fx, _slow) = fixture().await;
    let addr = fx.gw.addr;

    // 401: no token, an expired one — with the Bearer challenge kept
    let a = grpc_call(addr, "/ai/pkg.Service/Call", None).await;
    assert_grpc_refusal(&a, 16, "missing_token");
    assert!(a.header("www-authenticate").starts_with("Bearer"), "{a:?}");
    let expired = fx.token_with(|c| c["exp"] = (now() - 3600).into());
    assert_grpc_refusal(
        &grpc_call(addr, "/ai/pkg.Service/Call", Some(&expired)).await,
        16,
        "expired",
    );
    // 403
    let narrow = fx.token_with(|c| c["scopes"] = serde_json::json!(["other"]));
    let a = grpc_call(addr, "/ai/pkg.Service/Call", Some(&narrow)).await;
    assert_grpc_refusal(&a, 7, "insufficient_scope");
    assert!(a.header("www-authenticate").contains("insufficient_scope"));
    // 404
    assert_grpc_refusal(
        &grpc_call(addr, "/nope/pkg.S/M", None).await,
        12,
        "no_route",
    );
    // 400 (gRPC's HTTP mapping: INTERNAL)
    assert_grpc_refusal(&grpc_call(addr, "/ai/../x", None).await, 13, "invalid_path");
    // 502, 504
    assert_grpc_refusal(
        &grpc_call(addr, "/dead/pkg.S/M", None).await,
        14,
        "upstream_unavailable",
    );
    assert_grpc_refusal(
        &grpc_call(addr, "/slow/pkg.S/M", None).await,
        4,
        "upstream_timeout",
    );
    // 429, with Retry-After and the RateLimit headers kept
    let token = fx.token();
    let first = grpc_call(addr, "/ai/pkg.Service/Call", Some(&token)).await;
    assert_eq!(first.status, 200, "the budget admits one: {first:?}");
    assert!(first.headers.get("grpc-status").is_none(), "{first:?}");
    let a = grpc_call(addr, "/ai/pkg.Service/Call", Some(&token)).await;
    assert_grpc_refusal(&a, 8, "shared");
    assert!(a.header("retry-after").parse::<u64>().is_ok(), "{a:?}");
    assert!(a.headers.contains_key("ratelimit"), "{a:?}");
}

#[tokio::test]
async fn grpc_refusals_are_logged_and_counted_with_their_reason() {
    let (fx, _slow) = fixture().await;
    let before = metric(
        &fx.metrics().await,
        "cc_gateway_auth_failures_total",
        &[("reason", "missing_token")],
    );
    let a = grpc_call(fx.gw.addr, "/ai/pkg.Service/Call", None).await;
    assert_grpc_refusal(&a, 16, "missing_token");
    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "missing_token")],
        before + 1.0,
    )
    .await;
    let id = a.header("x-request-id").to_string();
    // the access log records what went on the wire (200) and why
    let line = wait_until("the refusal's access-log line", DEADLINE, || async {
        std::fs::read_to_string(&fx.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["request_id"] == id.as_str())
            .ok_or_else(|| "not logged yet".to_string())
    })
    .await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["reason"], "missing_token", "{line}");
    assert_eq!(line["protocol"], "HTTP/2", "{line}");
}

#[tokio::test]
async fn other_clients_keep_json_refusals() {
    let (fx, _slow) = fixture().await;
    let r = Req::post("/ai/x", "{}")
        .header("content-type", "application/json")
        .send_h2(fx.gw.addr)
        .await;
    assert_error(&r, 401, "missing_token");
    assert!(r.header("grpc-status").is_none(), "{}", r.describe());
}
