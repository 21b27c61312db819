//! The happy path and every reason code a token can be refused with.

use serde_json::json;

use super::{header_json, raw_token_request};
use crate::common::servers::echoed_header;
use crate::common::*;

#[tokio::test]
async fn valid_token_reaches_upstream_with_identity_headers() {
    let fx = Fixture::start().await;
    let token = fx.token();
    let before = fx.metrics().await;
    let body = r#"{"prompt_version":1,"current_file":{"file_name":"a.rs"}}"#;
    let r = fx
        .send(Req::post("/ai/v2/completions?x=1", body).token(&token))
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json();
    assert_eq!(v["server"], "echo");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/v2/completions", "strip_prefix: {v}");
    assert_eq!(v["query"], "x=1", "query kept: {v}");
    assert_eq!(v["body_len"], body.len(), "request body forwarded: {v}");
    assert_eq!(echoed_header(&v, "x-cc-subject"), vec![SUB]);
    assert_eq!(echoed_header(&v, "x-cc-issuer"), vec![fx.iss.clone()]);
    assert_eq!(
        echoed_header(&v, "x-cc-scopes"),
        vec!["code_suggestions,duo_chat"]
    );
    assert_eq!(echoed_header(&v, "x-cc-realm"), vec![REALM]);
    assert_eq!(
        echoed_header(&v, "x-gitlab-token"),
        vec![token.clone()],
        "token must be forwarded unchanged"
    );
    assert!(r.header("x-request-id").is_some_and(|s| !s.is_empty()));
    let before_ok = metric(
        &before,
        "cc_gateway_requests_total",
        &[("route", "ai"), ("status", "200")],
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_requests_total",
        &[("route", "ai"), ("status", "200")],
        before_ok + 1.0,
    )
    .await;
    let after = fx.metrics().await;
    assert_eq!(
        metric(&after, "cc_gateway_auth_failures_total", &[]),
        metric(&before, "cc_gateway_auth_failures_total", &[]),
        "a valid request counted as an auth failure"
    );
}

#[tokio::test]
async fn authorization_bearer_accepted_any_scheme_case() {
    let fx = Fixture::start().await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let token = fx.token();
        let v = fx
            .expect_ok(
                Req::post("/ai/v2/completions", "{}")
                    .header("Authorization", &format!("{scheme} {token}")),
            )
            .await;
        assert_eq!(
            echoed_header(&v, "x-cc-subject"),
            vec![SUB],
            "scheme {scheme}"
        );
        assert_eq!(
            echoed_header(&v, "authorization"),
            vec![format!("{scheme} {token}")],
            "Authorization forwarded unchanged"
        );
    }
}

#[tokio::test]
async fn first_configured_token_header_wins() {
    let fx = Fixture::start().await;
    // X-Gitlab-Token is listed first: a valid one wins over a garbage Authorization...
    fx.expect_ok(Fixture::ai_req(&fx.token()).header("Authorization", "Bearer not-a-token"))
        .await;
    // ...and a garbage one is what gets verified even when Authorization holds a valid token.
    fx.expect_refused(
        Fixture::ai_req("not-a-token").header("Authorization", &format!("Bearer {}", fx.token())),
        401,
        "malformed_token",
    )
    .await;
}

#[tokio::test]
async fn missing_token_401() {
    let fx = Fixture::start().await;
    fx.expect_refused(Req::post("/ai/v2/completions", "{}"), 401, "missing_token")
        .await;
}

#[tokio::test]
async fn authorization_without_bearer_scheme_is_not_a_token() {
    let fx = Fixture::start().await;
    let token = fx.token();
    // A JWT in Authorization without "Bearer " is not accepted: another scheme's credentials are
    // not ours and are skipped, so the request carries no token.
    fx.expect_refused(
        Req::post("/ai/v2/completions", "{}").header("Authorization", &token),
        401,
        "missing_token",
    )
    .await;
}

#[tokio::test]
async fn malformed_tokens_401() {
    let fx = Fixture::start().await;
    let good = fx.token();
    let (h, p, s) = segments(&good);
    // Sanity: the raw signer makes tokens the gateway accepts.
    fx.expect_ok(Fixture::ai_req(&rs256_sign_input(
        &fx.key,
        &format!("{h}.{p}"),
    )))
    .await;
    let cases: Vec<(&str, String)> = vec![
        ("not a jwt at all", "not-a-jwt".into()),
        ("two segments", format!("{h}.{p}")),
        ("empty segments", "..".into()),
        ("bad base64 in header", format!("!!!.{p}.{s}")),
        ("bad base64 in payload", format!("{h}.%%%.{s}")),
        (
            "header is not JSON",
            format!("{}.{p}.{s}", b64(b"{not json")),
        ),
        // Correctly signed, so the signature cannot be what refuses them.
        (
            "signed payload with bad base64",
            rs256_sign_input(&fx.key, &format!("{h}.%%%")),
        ),
        (
            "signed payload that is not JSON",
            rs256_sign_input(&fx.key, &format!("{h}.{}", b64(b"\x00\x01garbage"))),
        ),
        (
            "signed payload that is a JSON array",
            rs256_sign_input(&fx.key, &format!("{h}.{}", b64(b"[1,2,3]"))),
        ),
        (
            "signed payload with padding characters",
            rs256_sign_input(&fx.key, &format!("{h}.{p}==")),
        ),
    ];
    for (what, token) in cases {
        let r = fx
            .expect_refused(Fixture::ai_req(&token), 401, "malformed_token")
            .await;
        assert!(!r.text().contains(&token), "{what}: body echoes the token");
    }
}

#[tokio::test]
async fn jwe_shaped_five_segment_token_401_malformed() {
    let fx = Fixture::start().await;
    let jwe = format!(
        "{}.{}.{}.{}.{}",
        b64_json(&json!({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": KID})),
        b64(&[7u8; 256]),
        b64(&[1u8; 12]),
        b64(b"ciphertext"),
        b64(&[2u8; 16])
    );
    fx.expect_refused(Fixture::ai_req(&jwe), 401, "malformed_token")
        .await;
}

#[tokio::test]
async fn token_over_8k_401_too_large() {
    let fx = Fixture::start().await;
    // Correctly signed, only too big: the size limit is what refuses it.
    let token = fx.token_with(|c| c["padding"] = json!("x".repeat(9 * 1024)));
    assert!(token.len() > 8 * 1024);
    fx.expect_refused(Fixture::ai_req(&token), 401, "token_too_large")
        .await;
}

#[tokio::test]
async fn header_of_64k_refused_and_gateway_keeps_serving() {
    let fx = Fixture::start().await;
    let before = fx.metrics().await;
    let token = format!(
        "{}.{}.{}",
        b64_json(&header_json("RS256", Some(KID))),
        "A".repeat(64 * 1024),
        b64(&[0u8; 256])
    );
    let r = raw_request(
        fx.gw.addr,
        &raw_token_request(&fx, &[("X-Gitlab-Token", token.as_bytes())]),
    )
    .await;
    match r {
        Some(r) if r.status == 401 => {
            assert_eq!(r.reason(), "token_too_large", "{}", r.describe());
            let b = metric(
                &before,
                "cc_gateway_auth_failures_total",
                &[("reason", "token_too_large")],
            );
            wait_metric(
                &fx.gw,
                "cc_gateway_auth_failures_total",
                &[("reason", "token_too_large")],
                b + 1.0,
            )
            .await;
        }
        // Refused by the HTTP layer for its header size limit: acceptable.
        Some(r) if r.status == 431 => {}
        Some(r) => panic!(
            "64 KiB token header: expected 401 token_too_large or 431, got {}",
            r.describe()
        ),
        // Closing on an over-limit head is acceptable too (the kernel may reset the connection
        // before a 431 is read); what matters is below: nothing reached the upstream and the
        // gateway keeps serving.
        None => {}
    }
    assert_eq!(fx.echo.count(), 0, "oversized request reached the upstream");
    // Still alive and serving.
    fx.expect_ok(Fixture::ai_req(&fx.token())).await;
}

#[tokio::test]
async fn alg_none_401_unsupported_algorithm() {
    let fx = Fixture::start().await;
    for alg in ["none", "None", "NONE"] {
        let t = forge(&header_json(alg, Some(KID)), &fx.claims(), b"");
        fx.expect_refused(Fixture::ai_req(&t), 401, "unsupported_algorithm")
            .await;
    }
    // Without kid, and with a signature copied from a valid token.
    let (_, _, sig) = segments(&fx.token());
    let t = format!(
        "{}.{}.{sig}",
        b64_json(&header_json("none", None)),
        b64_json(&fx.claims())
    );
    fx.expect_refused(Fixture::ai_req(&t), 401, "unsupported_algorithm")
        .await;
}

#[tokio::test]
async fn hmac_signed_with_rsa_public_key_401_unsupported_algorithm() {
    let fx = Fixture::start().await;
    let public_pem = rsa_public_pem(&fx.key);
    for alg in ["HS256", "HS384", "HS512"] {
        let t = hmac_token(
            alg,
            &header_json(alg, Some(KID)),
            &fx.claims(),
            public_pem.as_bytes(),
        );
        fx.expect_refused(Fixture::ai_req(&t), 401, "unsupported_algorithm")
            .await;
    }
    let t = hmac_token(
        "HS256",
        &header_json("HS256", None),
        &fx.claims(),
        public_pem.as_bytes(),
    );
    fx.expect_refused(Fixture::ai_req(&t), 401, "unsupported_algorithm")
        .await;
}

#[tokio::test]
async fn tampered_payload_401_bad_signature() {
    let fx = Fixture::start().await;
    let good = fx.token();
    let (h, p, s) = segments(&good);
    let mut claims = decode_segment(&p);
    claims["sub"] = json!("admin");
    claims["scopes"] = json!(["code_suggestions", "duo_chat", "admin"]);
    let tampered = format!("{h}.{}.{s}", b64_json(&claims));
    fx.expect_refused(Fixture::ai_req(&tampered), 401, "bad_signature")
        .await;
    // A header change (extra field) breaks the signature too.
    let mut header = decode_segment(&h);
    header["x"] = json!(1);
    let tampered = format!("{}.{p}.{s}", b64_json(&header));
    fx.expect_refused(Fixture::ai_req(&tampered), 401, "bad_signature")
        .await;
    // The original still works: failures were not cached as anything.
    fx.expect_ok(Fixture::ai_req(&good)).await;
}

#[tokio::test]
async fn truncated_signature_401_bad_signature() {
    let fx = Fixture::start().await;
    let (h, p, s) = segments(&fx.token());
    let sig = unb64(&s);
    for cut in [1usize, 16, sig.len() - 1] {
        let t = format!("{h}.{p}.{}", b64(&sig[..sig.len() - cut]));
        fx.expect_refused(Fixture::ai_req(&t), 401, "bad_signature")
            .await;
    }
    // Empty signature segment on an RS256 token: an empty segment is valid base64url (zero bytes),
    // so the token parses and the zero-byte signature fails verification.
    fx.expect_refused(Fixture::ai_req(&format!("{h}.{p}.")), 401, "bad_signature")
        .await;
}

#[tokio::test]
async fn signed_by_another_key_with_the_right_kid_401_bad_signature() {
    let fx = Fixture::start().await;
    let other = new_key("RS256");
    let t = sign(&other, "RS256", Some(KID), &fx.claims());
    fx.expect_refused(Fixture::ai_req(&t), 401, "bad_signature")
        .await;
}

#[tokio::test]
async fn unknown_kid_401_unknown_key() {
    let fx = Fixture::start().await;
    let t = sign(&fx.key, "RS256", Some("no-such-kid"), &fx.claims());
    fx.expect_refused(Fixture::ai_req(&t), 401, "unknown_key")
        .await;
}

#[tokio::test]
async fn kid_of_another_issuer_401_unknown_key() {
    let other_key = new_key("RS256");
    let other_jwks = Jwks::start(vec![other_key.public_jwk("other-key")]).await;
    let extra = format!(
        r#"
[[issuers]]
name = "other"
issuer = "{iss}"
jwks_uri = "{uri}"
algorithms = ["RS256"]
refresh_interval = "1h"
leeway = "30s"
"#,
        iss = other_jwks.base_url(),
        uri = other_jwks.jwks_uri()
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    // The other issuer's own tokens are fine on the route (so its key is loaded and usable)...
    let mut c = fx.claims();
    c["iss"] = json!(other_jwks.base_url());
    let ok = sign(&other_key, "RS256", Some("other-key"), &c);
    fx.expect_ok(Fixture::ai_req(&ok)).await;
    // ...but a token claiming issuer "test" cannot use the other issuer's kid and key.
    let t = sign(&other_key, "RS256", Some("other-key"), &fx.claims());
    fx.expect_refused(Fixture::ai_req(&t), 401, "unknown_key")
        .await;
    // Nor can issuer "test"'s key sign for the other issuer.
    let t = sign(&fx.key, "RS256", Some(KID), &c);
    fx.expect_refused(Fixture::ai_req(&t), 401, "unknown_key")
        .await;
}

#[tokio::test]
async fn expired_beyond_leeway_401_expired_but_within_leeway_ok() {
    let fx = Fixture::start().await;
    // leeway = 30s: exp 31 s ago is expired by 1 s beyond the leeway.
    let t = fx.token_with(|c| {
        c["iat"] = json!(now() - 3600);
        c["nbf"] = json!(now() - 3600);
        c["exp"] = json!(now() - 31);
    });
    fx.expect_refused(Fixture::ai_req(&t), 401, "expired").await;
    // exp 10 s ago is within the leeway.
    let t = fx.token_with(|c| c["exp"] = json!(now() - 10));
    fx.expect_ok(Fixture::ai_req(&t)).await;
}

#[tokio::test]
async fn nbf_or_iat_in_the_future_401_not_yet_valid() {
    let fx = Fixture::start().await;
    let t = fx.token_with(|c| c["nbf"] = json!(now() + 120));
    fx.expect_refused(Fixture::ai_req(&t), 401, "not_yet_valid")
        .await;
    let t = fx.token_with(|c| {
        c.as_object_mut().expect("claims object").remove("nbf");
        c["iat"] = json!(now() + 600);
    });
    fx.expect_refused(Fixture::ai_req(&t), 401, "not_yet_valid")
        .await;
    // nbf 10 s ahead is within the 30 s leeway.
    let t = fx.token_with(|c| c["nbf"] = json!(now() + 10));
    fx.expect_ok(Fixture::ai_req(&t)).await;
}

#[tokio::test]
async fn exp_missing_or_not_a_number_401_malformed_token() {
    let fx = Fixture::start().await;
    // `exp` is required and must be a NumericDate: its absence or a non-number is a malformed
    // token, not an expired one (the signature is valid, so the claims are what is checked).
    let t = fx.token_with(|c| {
        c.as_object_mut().expect("claims object").remove("exp");
    });
    fx.expect_refused(Fixture::ai_req(&t), 401, "malformed_token")
        .await;
    let far = (now() + 3600).to_string();
    let t = fx.token_with(|c| c["exp"] = json!(far));
    fx.expect_refused(Fixture::ai_req(&t), 401, "malformed_token")
        .await;
    let t = fx.token_with(|c| c["exp"] = json!(null));
    fx.expect_refused(Fixture::ai_req(&t), 401, "malformed_token")
        .await;
}

#[tokio::test]
async fn unknown_issuer_401() {
    let fx = Fixture::start().await;
    for iss in ["https://evil.example", "", &format!("{}/", fx.iss)] {
        let t = fx.token_with(|c| c["iss"] = json!(iss));
        fx.expect_refused(Fixture::ai_req(&t), 401, "unknown_issuer")
            .await;
    }
    let t = fx.token_with(|c| {
        c.as_object_mut().expect("claims object").remove("iss");
    });
    // No `iss` at all is a malformed token (the claim is required), not an untrusted issuer.
    fx.expect_refused(Fixture::ai_req(&t), 401, "malformed_token")
        .await;
}

#[tokio::test]
async fn audience_mismatch_401_and_aud_array_accepted() {
    let fx = Fixture::start().await;
    let t = fx.token_with(|c| c["aud"] = json!("some-other-service"));
    fx.expect_refused(Fixture::ai_req(&t), 401, "audience_mismatch")
        .await;
    let t = fx.token_with(|c| c["aud"] = json!(["a", "b"]));
    fx.expect_refused(Fixture::ai_req(&t), 401, "audience_mismatch")
        .await;
    let t = fx.token_with(|c| {
        c.as_object_mut().expect("claims object").remove("aud");
    });
    fx.expect_refused(Fixture::ai_req(&t), 401, "audience_mismatch")
        .await;
    let t = fx.token_with(|c| c["aud"] = json!(["other", AUD]));
    fx.expect_ok(Fixture::ai_req(&t)).await;
}

#[tokio::test]
async fn insufficient_scope_403() {
    let fx = Fixture::start().await;
    let t = fx.token_with(|c| c["scopes"] = json!(["admin", "read_api"]));
    fx.expect_refused(Fixture::ai_req(&t), 403, "insufficient_scope")
        .await;
    let t = fx.token_with(|c| c["scopes"] = json!([]));
    fx.expect_refused(Fixture::ai_req(&t), 403, "insufficient_scope")
        .await;
    let t = fx.token_with(|c| {
        c.as_object_mut().expect("claims object").remove("scopes");
    });
    fx.expect_refused(Fixture::ai_req(&t), 403, "insufficient_scope")
        .await;
    // One of the route's scopes is enough.
    let t = fx.token_with(|c| c["scopes"] = json!(["duo_chat"]));
    let v = fx.expect_ok(Fixture::ai_req(&t)).await;
    assert_eq!(echoed_header(&v, "x-cc-scopes"), vec!["duo_chat"]);
}

#[tokio::test]
async fn bind_headers_mismatch_401_and_match_ok() {
    let fx = Fixture::start().await;
    let t = fx.token();
    fx.expect_refused(
        Fixture::ai_req(&t).header("X-Gitlab-Instance-Id", "another-instance"),
        401,
        "header_mismatch",
    )
    .await;
    fx.expect_refused(
        Fixture::ai_req(&t)
            .header("X-Gitlab-Instance-Id", SUB)
            .header("X-Gitlab-Realm", "self-managed"),
        401,
        "header_mismatch",
    )
    .await;
    // Equal headers pass; absent headers are not required.
    let v = fx
        .expect_ok(
            Fixture::ai_req(&t)
                .header("X-Gitlab-Instance-Id", SUB)
                .header("X-Gitlab-Realm", REALM),
        )
        .await;
    assert_eq!(echoed_header(&v, "x-gitlab-instance-id"), vec![SUB]);
    fx.expect_ok(Fixture::ai_req(&t)).await;
    // A header bound to a claim the token lacks cannot be satisfied.
    let t = fx.token_with(|c| {
        c.as_object_mut()
            .expect("claims object")
            .remove("gitlab_realm");
    });
    fx.expect_refused(
        Fixture::ai_req(&t).header("X-Gitlab-Realm", REALM),
        401,
        "header_mismatch",
    )
    .await;
}
