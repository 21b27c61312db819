//! The admin listener (health, readiness, metrics, forced refresh) and listener basics.

use crate::common::fixture::{standard_config, write_config};
use crate::common::metrics::has_series;
use crate::common::*;

#[tokio::test]
async fn healthz_readyz_and_metrics_families() {
    let fx = Fixture::start().await;
    let r = fx.gw.admin_get("/healthz").await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = fx.gw.admin_get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.describe());

    let v = fx.expect_ok(Fixture::ai_req(&fx.token())).await;
    assert_eq!(v["path"], "/v2/completions");
    let r = fx.send(Fixture::ai_req("x.y.z")).await;
    assert_eq!(r.status, 401);

    let text = fx.metrics().await;
    wait_metric(
        &fx.gw,
        "cc_gateway_request_duration_seconds_count",
        &[("route", "ai")],
        2.0,
    )
    .await;
    let text2 = fx.metrics().await;
    assert!(
        has_series(
            &text2,
            "cc_gateway_request_duration_seconds_bucket",
            &[("route", "ai"), ("le", "+Inf")]
        ),
        "request_duration_seconds is not a histogram with a route label:\n{text2}"
    );
    assert!(
        metric(
            &text2,
            "cc_gateway_upstream_duration_seconds_count",
            &[("upstream", "echo")]
        ) >= 1.0,
        "upstream_duration_seconds{{upstream=\"echo\"}} not recorded:\n{text2}"
    );
    assert_eq!(
        metric(&text, "cc_gateway_jwks_keys", &[("issuer", "test")]),
        1.0,
        "jwks_keys{{issuer=\"test\"}}:\n{text}"
    );
    assert!(
        metric(
            &text,
            "cc_gateway_jwks_refresh_total",
            &[("issuer", "test"), ("result", "ok")]
        ) >= 1.0,
        "jwks_refresh_total ok not counted:\n{text}"
    );
    assert_eq!(
        metric(
            &text2,
            "cc_gateway_requests_total",
            &[("route", "ai"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text2,
            "cc_gateway_requests_total",
            &[("route", "ai"), ("status", "401")]
        ),
        1.0
    );
    assert!(
        text2.contains("# TYPE cc_gateway_requests_total counter"),
        "no TYPE line:\n{text2}"
    );
}

#[tokio::test]
async fn forced_refresh_refetches_and_unknown_issuer_is_404() {
    let fx = Fixture::start().await;
    let fetches = fx.jwks.fetches();
    let before = fx.metrics().await;
    let r = fx.gw.admin_post("/issuers/test/refresh").await;
    assert_eq!(r.status, 200, "{}", r.describe());
    // The refresh answered after the fetch completed: the counter is already up.
    assert_eq!(
        fx.jwks.fetches(),
        fetches + 1,
        "POST refresh did not fetch the JWKS exactly once"
    );
    let ok0 = metric(
        &before,
        "cc_gateway_jwks_refresh_total",
        &[("issuer", "test"), ("result", "ok")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_jwks_refresh_total",
        &[("issuer", "test"), ("result", "ok")],
        ok0 + 1.0,
    )
    .await;

    let r = fx.gw.admin_post("/issuers/nope/refresh").await;
    assert_eq!(r.status, 404, "{}", r.describe());
    assert_eq!(fx.jwks.fetches(), fetches + 1);
    let r = fx.gw.admin_get("/no-such-admin-path").await;
    assert_eq!(r.status, 404, "{}", r.describe());
}

#[tokio::test]
async fn several_listen_addresses_all_serve() {
    let jwks = Jwks::start(vec![shared_rsa_key().public_jwk(fixture_kid())]).await;
    let echo = Echo::start("echo").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let text = standard_config(
        dir.path(),
        &jwks.base_url(),
        &format!("jwks_uri = \"{}\"", jwks.jwks_uri()),
        echo.addr,
        &Opts::default(),
    )
    .replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"127.0.0.1:0\"]",
    );
    let config = write_config(dir.path(), &text);
    let gw = Gateway::start(&config).await;
    assert_eq!(gw.listen.len(), 2, "ready line should list both listeners");
    assert_ne!(gw.listen[0], gw.listen[1]);
    for addr in &gw.listen {
        let r = Req::get("/public/x").send(*addr).await;
        assert_eq!(r.status, 200, "listener {addr}: {}", r.describe());
        assert_eq!(r.json()["server"], "echo");
    }
    assert_eq!(echo.count(), 2);
}

/// The `kid` the standard fixture signs with.
fn fixture_kid() -> &'static str {
    crate::common::fixture::KID
}
