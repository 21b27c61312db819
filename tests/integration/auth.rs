//! Token verification through the real gateway: the happy path, every reason code, the
//! adversarial set, algorithms, and the verified-token cache.

use serde_json::{json, Value};

use crate::common::servers::echoed_header;
use crate::common::*;

const CACHE_HITS: &str = "cc_gateway_token_cache_hits_total";
const CACHE_MISSES: &str = "cc_gateway_token_cache_misses_total";

fn header_json(alg: &str, kid: Option<&str>) -> Value {
    match kid {
        Some(k) => json!({"alg": alg, "typ": "JWT", "kid": k}),
        None => json!({"alg": alg, "typ": "JWT"}),
    }
}

/// A raw HTTP/1.1 request to `/ai/v2/completions` whose token header value is `token` verbatim.
fn raw_token_request(fx: &Fixture, header_lines: &[(&str, &[u8])]) -> Vec<u8> {
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

// ---------------------------------------------------------------------------------------------
// Happy path

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

// ---------------------------------------------------------------------------------------------
// Reason codes

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
    fx.expect_refused(
        Fixture::ai_req(&format!("{h}.{p}.")),
        401,
        "bad_signature",
    )
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

// ---------------------------------------------------------------------------------------------
// Adversarial transport-level inputs

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

// ---------------------------------------------------------------------------------------------
// Algorithms

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

// ---------------------------------------------------------------------------------------------
// Verified-token cache

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
