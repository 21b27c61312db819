//! Adversarial inputs: duplicated or non-UTF-8 token headers, key material in the token's
//! header, empty token values.

use serde_json::{json, Value};

use super::raw_token_request;
use crate::common::*;

#[tokio::test]
async fn duplicate_token_headers_401() {
    let fx = Fixture::start().await;
    let a = fx.token();
    let b = fx.token_with(|c| c["sub"] = json!("someone-else"));
    fx.expect_refused(
        Req::post("/ai/v2/completions", "{}").token(&a).token(&b),
        401,
        "malformed_token",
    )
    .await;
    // Also through a raw socket, the duplicate lines being identical.
    let before = fx.metrics().await;
    let r = raw_request(
        fx.gw.addr,
        &raw_token_request(
            &fx,
            &[
                ("X-Gitlab-Token", a.as_bytes()),
                ("x-gitlab-token", a.as_bytes()),
            ],
        ),
    )
    .await
    .expect("a response to duplicate token headers");
    assert_eq!(r.status, 401, "{}", r.describe());
    assert_eq!(r.reason(), "malformed_token", "{}", r.describe());
    let b0 = metric(
        &before,
        "cc_gateway_auth_failures_total",
        &[("reason", "malformed_token")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "malformed_token")],
        b0 + 1.0,
    )
    .await;
    assert_eq!(fx.echo.count(), 0);
}

#[tokio::test]
async fn duplicate_authorization_headers_401() {
    let fx = Fixture::start().await;
    let a = fx.token();
    fx.expect_refused(
        Req::post("/ai/v2/completions", "{}")
            .header("Authorization", &format!("Bearer {a}"))
            .header("Authorization", &format!("Bearer {}", fx.token())),
        401,
        "malformed_token",
    )
    .await;
}

#[tokio::test]
async fn non_utf8_token_header_401_malformed() {
    let fx = Fixture::start().await;
    let before = fx.metrics().await;
    let (h, p, s) = segments(&fx.token());
    let mut value = format!("{h}.{p}").into_bytes();
    value.extend_from_slice(b"\xff\xfe\x80");
    value.extend_from_slice(format!(".{s}").as_bytes());
    let r = raw_request(
        fx.gw.addr,
        &raw_token_request(&fx, &[("X-Gitlab-Token", &value)]),
    )
    .await
    .expect("a response to a non-UTF-8 token header");
    assert_eq!(r.status, 401, "{}", r.describe());
    assert_eq!(r.reason(), "malformed_token", "{}", r.describe());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|w| w.contains("invalid_token")),
        "{}",
        r.describe()
    );
    let b0 = metric(
        &before,
        "cc_gateway_auth_failures_total",
        &[("reason", "malformed_token")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "malformed_token")],
        b0 + 1.0,
    )
    .await;
    // Non-UTF-8 in Authorization too.
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(b"\xc3\x28abc.def.ghi");
    let r = raw_request(
        fx.gw.addr,
        &raw_token_request(&fx, &[("Authorization", &value)]),
    )
    .await
    .expect("a response to a non-UTF-8 Authorization header");
    assert_eq!(r.status, 401, "{}", r.describe());
    assert_eq!(r.reason(), "malformed_token", "{}", r.describe());
    assert_eq!(fx.echo.count(), 0);
}

#[tokio::test]
async fn key_material_in_the_token_header_is_ignored() {
    let fx = Fixture::start().await;
    // The attacker's own key, published on the attacker's own JWKS server.
    let evil = new_key("RS256");
    let evil_jwks = Jwks::start(vec![evil.public_jwk("evil")]).await;
    let claims = fx.claims();
    let payload = b64_json(&claims);
    let sign_with_header =
        |header: Value| rs256_sign_input(&evil, &format!("{}.{payload}", b64_json(&header)));
    // jku / x5u pointing at the attacker's JWKS, with the attacker's kid.
    let t = sign_with_header(json!({"alg": "RS256", "kid": "evil", "jku": evil_jwks.jwks_uri()}));
    fx.expect_refused(Fixture::ai_req(&t), 401, "unknown_key")
        .await;
    let t = sign_with_header(json!({"alg": "RS256", "kid": "evil", "x5u": evil_jwks.jwks_uri()}));
    fx.expect_refused(Fixture::ai_req(&t), 401, "unknown_key")
        .await;
    assert_eq!(
        evil_jwks.fetches(),
        0,
        "the gateway fetched keys from a URL in the token"
    );
    // An embedded jwk (CVE-2018-0114 style), with the real kid and with none.
    let t = sign_with_header(json!({"alg": "RS256", "kid": KID, "jwk": evil.public_jwk(KID)}));
    fx.expect_refused(Fixture::ai_req(&t), 401, "bad_signature")
        .await;
    let t = sign_with_header(json!({"alg": "RS256", "jwk": evil.public_jwk("evil")}));
    fx.expect_refused(Fixture::ai_req(&t), 401, "bad_signature")
        .await;
}

#[tokio::test]
async fn empty_token_values_401() {
    let fx = Fixture::start().await;
    for req in [
        Req::get("/ai/x").header("Authorization", "Bearer "),
        Req::get("/ai/x").header("Authorization", "Bearer"),
        Req::get("/ai/x").header("X-Gitlab-Token", ""),
    ] {
        // An empty value carries no token (trailing whitespace of a field value is not part of
        // it, RFC 9110 §5.5), so the request has none.
        fx.expect_refused(req, 401, "missing_token").await;
    }
}
