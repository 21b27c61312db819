//! Signature algorithms: each accepted family, and refusals by the issuer's list and key type.

use serde_json::json;

use crate::common::servers::echoed_header;
use crate::common::*;

/// A token signed with `alg` passes when the issuer allows `alg`; one by another key does not.
async fn accepted_with_alg(alg: &str) {
    let fx = Fixture::with(Opts {
        key_alg: alg.into(),
        algorithms: vec![alg.into()],
        ..Opts::default()
    })
    .await;
    let t = fx.token();
    assert_eq!(decode_segment(&segments(&t).0)["alg"], alg);
    let v = fx.expect_ok(Fixture::ai_req(&t)).await;
    assert_eq!(echoed_header(&v, "x-cc-subject"), vec![SUB]);
    // And a token of that alg signed by another key of the same type is refused.
    let other = new_key(alg);
    let bad = sign(&other, alg, Some(KID), &fx.claims());
    fx.expect_refused(Fixture::ai_req(&bad), 401, "bad_signature")
        .await;
}

#[tokio::test]
async fn es256_token_accepted_when_allowed() {
    accepted_with_alg("ES256").await;
}

#[tokio::test]
async fn es384_token_accepted_when_allowed() {
    accepted_with_alg("ES384").await;
}

#[tokio::test]
async fn eddsa_token_accepted_when_allowed() {
    accepted_with_alg("EdDSA").await;
}

#[tokio::test]
async fn rs256_token_refused_when_issuer_allows_only_es256() {
    let fx = Fixture::with(Opts {
        key_alg: "ES256".into(),
        algorithms: vec!["ES256".into()],
        ..Opts::default()
    })
    .await;
    // Publish an RSA key too, so the refusal is about the issuer's algorithm list, not a missing key.
    let rsa = shared_rsa_key();
    fx.jwks
        .set_keys(vec![fx.key.public_jwk(KID), rsa.public_jwk("rsa-key")]);
    let r = fx.gw.admin_post("/issuers/test/refresh").await;
    assert_eq!(r.status, 200, "refresh: {}", r.describe());
    let t = sign(&rsa, "RS256", Some("rsa-key"), &fx.claims());
    fx.expect_refused(Fixture::ai_req(&t), 401, "unsupported_algorithm")
        .await;
    let t = sign(&rsa, "RS256", None, &fx.claims());
    fx.expect_refused(Fixture::ai_req(&t), 401, "unsupported_algorithm")
        .await;
    // The ES256 key keeps working.
    fx.expect_ok(Fixture::ai_req(&fx.token())).await;
}

#[tokio::test]
async fn alg_not_matching_the_key_type_refused() {
    let ec = new_key("ES256");
    let rsa = shared_rsa_key();
    let jwks = Jwks::start(vec![rsa.public_jwk("rsa-key"), ec.public_jwk("ec-key")]).await;
    // A second issuer allowing both families, served by its own JWKS.
    let extra = format!(
        r#"
[[issuers]]
name = "mixed"
issuer = "{iss}"
jwks_uri = "{uri}"
algorithms = ["RS256", "ES256"]
refresh_interval = "1h"
leeway = "30s"
"#,
        iss = jwks.base_url(),
        uri = jwks.jwks_uri()
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let mut c = fx.claims();
    c["iss"] = json!(jwks.base_url());
    // Each key works with its own algorithm.
    fx.expect_ok(Fixture::ai_req(&sign(&rsa, "RS256", Some("rsa-key"), &c)))
        .await;
    fx.expect_ok(Fixture::ai_req(&sign(&ec, "ES256", Some("ec-key"), &c)))
        .await;
    // ES256 naming the RSA key's kid (signed with the EC key) is refused: the kid exists, but
    // that key cannot verify ES256.
    let t = sign(&ec, "ES256", Some("rsa-key"), &c);
    fx.expect_refused(Fixture::ai_req(&t), 401, "unsupported_algorithm")
        .await;
    // RS256 naming the EC key's kid is refused for the same reason.
    let t = sign(&rsa, "RS256", Some("ec-key"), &c);
    fx.expect_refused(Fixture::ai_req(&t), 401, "unsupported_algorithm")
        .await;
    // Without kid, the keys of the matching type are tried.
    fx.expect_ok(Fixture::ai_req(&sign(&ec, "ES256", None, &c)))
        .await;
    fx.expect_ok(Fixture::ai_req(&sign(&rsa, "RS256", None, &c)))
        .await;
}
