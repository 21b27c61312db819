//! Keys: rotation, JWKS down at start, unknown-kid flood, failed refresh, discovery, jwks_file.

use crate::common::fixture::q;
use crate::common::wait::DEADLINE;
use crate::common::*;

#[tokio::test]
async fn rotation_new_kid_fetched_removed_key_refused_even_if_cached() {
    let fx = Fixture::start().await;
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    let old = fx.token();
    // Twice on one connection: the second answer comes from the token cache.
    for _ in 0..2 {
        let r = conn.send(Fixture::ai_req(&old)).await;
        assert_eq!(r.status, 200, "{}", r.describe());
    }

    // The issuer publishes a second key; a token with the new kid triggers one refetch.
    let new_key = new_key("RS256");
    fx.jwks.set_keys(vec![
        fx.key.public_jwk(KID),
        new_key.public_jwk("test-key-2"),
    ]);
    let fetches = fx.jwks.fetches();
    let new_tok = sign(&new_key, "RS256", Some("test-key-2"), &fx.claims());
    let v = fx.expect_ok(Fixture::ai_req(&new_tok)).await;
    assert_eq!(v["path"], "/v2/completions");
    assert_eq!(
        fx.jwks.fetches(),
        fetches + 1,
        "the unknown kid should cause exactly one refetch"
    );
    wait_metric(&fx.gw, "cc_gateway_jwks_keys", &[("issuer", "test")], 2.0).await;

    // The old key is withdrawn and the operator forces a refresh.
    fx.jwks.set_keys(vec![new_key.public_jwk("test-key-2")]);
    let r = fx.gw.admin_post("/issuers/test/refresh").await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let keys = metric(
        &fx.metrics().await,
        "cc_gateway_jwks_keys",
        &[("issuer", "test")],
    );
    assert_eq!(keys, 1.0, "jwks_keys after removing a key");

    // The cached old token is refused now, on the same connection (same worker).
    let before = fx.metrics().await;
    let r = conn.send(Fixture::ai_req(&old)).await;
    assert_error(&r, 401, "unknown_key");
    let b = metric(
        &before,
        "cc_gateway_auth_failures_total",
        &[("reason", "unknown_key")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "unknown_key")],
        b + 1.0,
    )
    .await;
    // And on a fresh connection, and a freshly signed old-key token.
    fx.expect_refused(Fixture::ai_req(&old), 401, "unknown_key")
        .await;
    fx.expect_refused(Fixture::ai_req(&fx.token()), 401, "unknown_key")
        .await;
    // The new key keeps working, cached or not.
    let r = conn.send(Fixture::ai_req(&new_tok)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    fx.expect_ok(Fixture::ai_req(&sign(
        &new_key,
        "RS256",
        Some("test-key-2"),
        &fx.claims(),
    )))
    .await;
}

/// The issuer's JWKS is down when the gateway starts; once `make_up` serves it, the gateway gets ready.
async fn down_at_start_then_recover(
    make_up: impl AsyncFnOnce(std::net::SocketAddr, &Fixture) -> Jwks,
) {
    // The issuer's JWKS address, where nothing answers yet.
    // The issuer string stays the fixture's; only its jwks_uri points at the dead address.
    let addr = dead_addr();
    let fx = Fixture::with(Opts {
        wait_ready: false,
        key_source: Some(format!("jwks_uri = {}", q(&format!("http://{addr}/jwks")))),
        ..Opts::default()
    })
    .await;
    let token = fx.token();

    let r = fx.gw.admin_get("/readyz").await;
    assert_eq!(
        r.status,
        503,
        "/readyz before any key loaded: {}",
        r.describe()
    );
    let r = fx.gw.admin_get("/healthz").await;
    assert_eq!(
        r.status,
        200,
        "/healthz is liveness, not readiness: {}",
        r.describe()
    );

    let before = fx.metrics().await;
    let r = fx.send(Fixture::ai_req(&token)).await;
    assert_error(&r, 503, "keys_unavailable");
    let retry_after = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("503 without Retry-After: {}", r.describe()));
    assert!(
        retry_after.trim().parse::<u64>().is_ok(),
        "Retry-After {retry_after:?} is not delay-seconds"
    );
    assert!(
        r.header("www-authenticate")
            .is_none_or(|w| !w.contains("invalid_token")),
        "keys_unavailable blames the token: {}",
        r.describe()
    );
    let b = metric(
        &before,
        "cc_gateway_auth_failures_total",
        &[("reason", "keys_unavailable")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "keys_unavailable")],
        b + 1.0,
    )
    .await;
    let b = metric(
        &before,
        "cc_gateway_requests_total",
        &[("route", "ai"), ("status", "503")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_requests_total",
        &[("route", "ai"), ("status", "503")],
        b + 1.0,
    )
    .await;
    assert_eq!(fx.echo.count(), 0);
    // A public route does not need keys.
    let r = fx.send(Req::get("/public/x")).await;
    assert_eq!(r.status, 200, "{}", r.describe());

    let _jwks = make_up(addr, &fx).await;

    let r = fx.gw.admin_get("/readyz").await;
    assert_eq!(r.status, 200, "/readyz after recovery: {}", r.describe());
    let v = fx.expect_ok(Fixture::ai_req(&token)).await;
    assert_eq!(v["headers"]["x-cc-issuer"][0], fx.iss.as_str());
    let text = fx.metrics().await;
    assert_eq!(
        metric(&text, "cc_gateway_jwks_keys", &[("issuer", "test")]),
        1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "cc_gateway_jwks_refresh_total",
            &[("issuer", "test"), ("result", "error")]
        ) >= 1.0,
        "{text}"
    );
}

#[tokio::test]
async fn jwks_down_at_start_503_then_forced_refresh_recovers() {
    down_at_start_then_recover(async |addr, fx: &Fixture| {
        let jwks = Jwks::start_on(addr, vec![fx.key.public_jwk(KID)]).await;
        let r = fx.gw.admin_post("/issuers/test/refresh").await;
        assert_eq!(
            r.status,
            200,
            "refresh once the JWKS is up: {}",
            r.describe()
        );
        assert!(jwks.fetches() >= 1);
        jwks
    })
    .await;
}

#[tokio::test]
async fn jwks_500_at_start_503_then_recovers() {
    down_at_start_then_recover(async |addr, fx: &Fixture| {
        let jwks = Jwks::start_on_with_status(addr, vec![fx.key.public_jwk(KID)], 500).await;
        let r = fx.gw.admin_post("/issuers/test/refresh").await;
        assert_eq!(
            r.status,
            502,
            "refresh while the JWKS answers 500: {}",
            r.describe()
        );
        assert_eq!(fx.gw.admin_get("/readyz").await.status, 503);
        let r = fx.send(Fixture::ai_req(&fx.token())).await;
        assert_error(&r, 503, "keys_unavailable");
        jwks.set_status(200);
        let r = fx.gw.admin_post("/issuers/test/refresh").await;
        assert_eq!(
            r.status,
            200,
            "refresh once the JWKS is fixed: {}",
            r.describe()
        );
        jwks
    })
    .await;
}

#[tokio::test]
async fn unknown_kid_flood_causes_at_most_one_fetch() {
    let fx = Fixture::start().await;
    let fetches = fx.jwks.fetches();
    let before = fx.metrics().await;
    let claims = fx.claims();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let kid = random_id();
        let t = sign(&fx.key, "RS256", Some(&kid), &claims);
        let addr = fx.gw.addr;
        set.spawn(async move { Fixture::ai_req(&t).send(addr).await });
    }
    let mut n = 0;
    while let Some(r) = set.join_next().await {
        let r = r.expect("flood request task");
        assert_eq!(r.status, 401, "{}", r.describe());
        assert_eq!(r.reason(), "unknown_key", "{}", r.describe());
        n += 1;
    }
    assert_eq!(n, 200);
    let b = metric(
        &before,
        "cc_gateway_auth_failures_total",
        &[("reason", "unknown_key")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "unknown_key")],
        b + 200.0,
    )
    .await;
    let extra = fx.jwks.fetches() - fetches;
    assert!(
        extra <= 1,
        "200 unknown kids caused {extra} JWKS fetches (at most 1 allowed)"
    );
    // A second wave within 30 s causes none.
    for _ in 0..20 {
        let t = sign(&fx.key, "RS256", Some(&random_id()), &claims);
        let r = fx.send(Fixture::ai_req(&t)).await;
        assert_eq!(r.reason(), "unknown_key");
    }
    assert_eq!(
        fx.jwks.fetches() - fetches,
        extra,
        "a second wave of unknown kids refetched within 30 s"
    );
    assert_eq!(fx.echo.count(), 0);
    // Valid tokens are unaffected.
    fx.expect_ok(Fixture::ai_req(&fx.token())).await;
}

#[tokio::test]
async fn failed_refresh_keeps_last_good_keys() {
    let fx = Fixture::start().await;
    let before = fx.metrics().await;
    fx.jwks.set_status(500);
    let r = fx.gw.admin_post("/issuers/test/refresh").await;
    assert_eq!(
        r.status,
        502,
        "refresh against a failing JWKS: {}",
        r.describe()
    );
    let e0 = metric(
        &before,
        "cc_gateway_jwks_refresh_total",
        &[("issuer", "test"), ("result", "error")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_jwks_refresh_total",
        &[("issuer", "test"), ("result", "error")],
        e0 + 1.0,
    )
    .await;
    // A token never seen before (not cached) still verifies with the kept key.
    fx.expect_ok(Fixture::ai_req(&fx.token())).await;
    let text = fx.metrics().await;
    assert_eq!(
        metric(&text, "cc_gateway_jwks_keys", &[("issuer", "test")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        fx.gw.admin_get("/readyz").await.status,
        200,
        "readiness lost on a failed refresh"
    );
    // Same with the JWKS server gone altogether.
    fx.jwks.stop();
    let r = fx.gw.admin_post("/issuers/test/refresh").await;
    assert_eq!(
        r.status,
        502,
        "refresh against a stopped JWKS: {}",
        r.describe()
    );
    fx.expect_ok(Fixture::ai_req(&fx.token())).await;
}

#[tokio::test]
async fn discovery_finds_the_jwks() {
    let fx = Fixture::with(Opts {
        key_source: Some("discovery = true".into()),
        ..Opts::default()
    })
    .await;
    assert!(
        fx.jwks.discovery_fetches() >= 1,
        "the discovery document was never fetched"
    );
    assert!(
        fx.jwks.fetches() >= 1,
        "jwks_uri from discovery was never fetched"
    );
    let v = fx.expect_ok(Fixture::ai_req(&fx.token())).await;
    assert_eq!(v["headers"]["x-cc-subject"][0], SUB);
    // Forced refresh works through discovery too.
    let f = fx.jwks.fetches();
    let r = fx.gw.admin_post("/issuers/test/refresh").await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(fx.jwks.fetches(), f + 1);
}

/// Replaces the JWKS file at `path` with `keys`, atomically.
fn write_jwks_file(path: &std::path::Path, keys: Vec<serde_json::Value>) {
    // Write beside, then rename: readers never see a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, jwks_doc(&keys).to_string()).expect("writing JWKS temp file");
    std::fs::rename(&tmp, path).expect("renaming JWKS file into place");
}

#[tokio::test]
async fn jwks_file_change_is_picked_up() {
    let keys_dir = tempfile::tempdir().expect("temp dir");
    let file = keys_dir.path().join("jwks.json");
    let k1 = shared_rsa_key();
    write_jwks_file(&file, vec![k1.public_jwk(KID)]);
    let fx = Fixture::with(Opts {
        key_source: Some(format!("jwks_file = {}", q(&file.display().to_string()))),
        ..Opts::default()
    })
    .await;
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    let old = fx.token();
    let r = conn.send(Fixture::ai_req(&old)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(fx.jwks.fetches(), 0, "jwks_file issuer fetched over HTTP");

    let k2 = new_key("RS256");
    write_jwks_file(&file, vec![k2.public_jwk("file-key-2")]);
    let claims = fx.claims();
    let gw = &fx.gw;
    let (k2r, claims_r) = (&k2, &claims);
    wait_until(
        "a token signed with the key newly written to jwks_file is accepted",
        DEADLINE,
        move || async move {
            let t = sign(k2r, "RS256", Some("file-key-2"), claims_r);
            let r = gw.send(Fixture::ai_req(&t)).await;
            if r.status == 200 {
                Ok(())
            } else {
                Err(r.describe())
            }
        },
    )
    .await;
    // The key removed from the file is gone, for the cached token too (same connection).
    let r = conn.send(Fixture::ai_req(&old)).await;
    assert_error(&r, 401, "unknown_key");
    fx.expect_refused(Fixture::ai_req(&fx.token()), 401, "unknown_key")
        .await;
}

#[tokio::test]
async fn jwks_down_at_start_background_retry_recovers_without_any_call() {
    let addr = dead_addr();
    let fx = Fixture::with(Opts {
        wait_ready: false,
        key_source: Some(format!("jwks_uri = {}", q(&format!("http://{addr}/jwks")))),
        ..Opts::default()
    })
    .await;
    let r = fx.send(Fixture::ai_req(&fx.token())).await;
    assert_error(&r, 503, "keys_unavailable");
    let _jwks = Jwks::start_on(addr, vec![fx.key.public_jwk(KID)]).await;
    // No admin call: the gateway's own retry (with backoff) must find the keys. The bound is
    // generous because the retry backs off; it still fails fast if the gateway never retries.
    let gw = &fx.gw;
    wait_until(
        "/readyz == 200 through the background retry",
        std::time::Duration::from_secs(20),
        || async move {
            let r = gw.admin_get("/readyz").await;
            if r.status == 200 {
                Ok(())
            } else {
                Err(r.describe())
            }
        },
    )
    .await;
    fx.expect_ok(Fixture::ai_req(&fx.token())).await;
}
