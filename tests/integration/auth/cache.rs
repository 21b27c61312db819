//! The verified-token cache: hits, size zero, per-route checks of cached tokens, no cached failures.

use serde_json::json;

use crate::common::*;

const CACHE_HITS: &str = "cc_gateway_token_cache_hits_total";
const CACHE_MISSES: &str = "cc_gateway_token_cache_misses_total";

#[tokio::test]
async fn repeated_token_hits_the_cache() {
    let fx = Fixture::start().await;
    let token = fx.token();
    let before = fx.metrics().await;
    let hits0 = metric(&before, CACHE_HITS, &[]);
    let misses0 = metric(&before, CACHE_MISSES, &[]);
    // One connection: the requests reach the same worker, whatever the cache's sharding.
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    for i in 0..3 {
        let r = conn.send(Fixture::ai_req(&token)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.describe());
    }
    wait_metric(&fx.gw, CACHE_HITS, &[], hits0 + 2.0).await;
    let after = fx.metrics().await;
    assert_eq!(
        metric(&after, CACHE_MISSES, &[]),
        misses0 + 1.0,
        "first sight of a token is one miss"
    );
}

#[tokio::test]
async fn cache_size_zero_never_hits() {
    let fx = Fixture::with(Opts {
        token_cache_size: 0,
        ..Opts::default()
    })
    .await;
    let token = fx.token();
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    for i in 0..3 {
        let r = conn.send(Fixture::ai_req(&token)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.describe());
    }
    let before_ok = 0.0;
    wait_metric(
        &fx.gw,
        "cc_gateway_requests_total",
        &[("route", "ai"), ("status", "200")],
        before_ok + 3.0,
    )
    .await;
    let text = fx.metrics().await;
    assert_eq!(
        metric(&text, CACHE_HITS, &[]),
        0.0,
        "cache is off but hit:\n{text}"
    );
}

#[tokio::test]
async fn cached_token_still_checked_against_each_routes_audience_and_scopes() {
    let extra = r#"
[[routes]]
name = "other"
path_prefix = "/other/"
upstream = "echo"
audience = "other-service"

[[routes]]
name = "admin"
path_prefix = "/admin/"
upstream = "echo"
audience = "gitlab-ai-gateway"
scopes = ["admin"]
"#
    .to_string();
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let token = fx.token();
    let hits0 = metric(&fx.metrics().await, CACHE_HITS, &[]);
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    let r = conn.send(Fixture::ai_req(&token)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = conn.send(Fixture::ai_req(&token)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    wait_metric(&fx.gw, CACHE_HITS, &[], hits0 + 1.0).await;

    let before = fx.metrics().await;
    let r = conn.send(Req::get("/other/x").token(&token)).await;
    assert_error(&r, 401, "audience_mismatch");
    let b = metric(
        &before,
        "cc_gateway_auth_failures_total",
        &[("reason", "audience_mismatch")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "audience_mismatch")],
        b + 1.0,
    )
    .await;

    let r = conn.send(Req::get("/admin/x").token(&token)).await;
    assert_error(&r, 403, "insufficient_scope");
    let b = metric(
        &before,
        "cc_gateway_auth_failures_total",
        &[("reason", "insufficient_scope")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "insufficient_scope")],
        b + 1.0,
    )
    .await;

    // Header binding is per request, not cached with the token.
    let r = conn
        .send(Fixture::ai_req(&token).header("X-Gitlab-Instance-Id", "not-the-sub"))
        .await;
    assert_error(&r, 401, "header_mismatch");
}

#[tokio::test]
async fn failures_are_not_cached_as_successes() {
    let fx = Fixture::start().await;
    let (h, p, s) = segments(&fx.token());
    let mut claims = decode_segment(&p);
    claims["sub"] = json!("admin");
    let tampered = format!("{h}.{}.{s}", b64_json(&claims));
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    for i in 0..3 {
        let r = conn.send(Fixture::ai_req(&tampered)).await;
        assert_eq!(r.status, 401, "attempt {i}: {}", r.describe());
        assert_eq!(r.reason(), "bad_signature", "attempt {i}: {}", r.describe());
    }
    assert_eq!(fx.echo.count(), 0);
}
