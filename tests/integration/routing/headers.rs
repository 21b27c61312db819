//! What the upstream is told: identity headers (never the client's), `X-Forwarded-*`, and
//! `X-Request-Id` (kept, generated, echoed).

use crate::common::servers::echoed_header;
use crate::common::*;

/// Header values joined as one comma-separated value.
fn joined(values: &[String]) -> String {
    values.join(", ")
}

#[tokio::test]
async fn identity_headers_cannot_be_spoofed() {
    let fx = Fixture::start().await;
    let t = fx.token();
    let spoof = |r: Req| {
        r.header("X-Cc-Subject", "admin")
            .header("x-cc-issuer", "https://evil.example")
            .header("X-CC-SCOPES", "admin,everything")
            .header("X-Cc-Realm", "dedicated")
            .header("X-Cc-Custom", "injected")
    };
    let v = fx.expect_ok(spoof(Fixture::ai_req(&t))).await;
    assert_eq!(echoed_header(&v, "x-cc-subject"), vec![SUB], "{v}");
    assert_eq!(
        echoed_header(&v, "x-cc-issuer"),
        vec![fx.iss.clone()],
        "{v}"
    );
    assert_eq!(
        echoed_header(&v, "x-cc-scopes"),
        vec!["code_suggestions,duo_chat"],
        "{v}"
    );
    assert_eq!(echoed_header(&v, "x-cc-realm"), vec![REALM], "{v}");
    assert!(
        echoed_header(&v, "x-cc-custom").is_empty(),
        "X-Cc-Custom passed through: {v}"
    );
    // On a public route there is no identity at all.
    let v = fx.expect_ok(spoof(Req::get("/public/x"))).await;
    let leaked: Vec<&String> = v["headers"]
        .as_object()
        .expect("headers object")
        .keys()
        .filter(|k| k.starts_with("x-cc-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "client X-Cc-* headers reached the upstream: {leaked:?}"
    );
    // A token without gitlab_realm: no realm header, and the client's one is still removed.
    let t = fx.token_with(|c| {
        c.as_object_mut().expect("claims").remove("gitlab_realm");
    });
    let v = fx
        .expect_ok(Fixture::ai_req(&t).header("X-Cc-Realm", "dedicated"))
        .await;
    assert!(echoed_header(&v, "x-cc-realm").is_empty(), "{v}");
}

#[tokio::test]
async fn identity_headers_chooses_what_the_upstream_gets_and_spoofs_stay_out() {
    let fx = Fixture::with(Opts {
        auth_extra: "identity_headers = [\"subject\", \"realm\"]".into(),
        ..Opts::default()
    })
    .await;
    let v = fx
        .expect_ok(
            Fixture::ai_req(&fx.token())
                .header("X-Cc-Issuer", "https://evil.example")
                .header("X-Cc-Scopes", "admin"),
        )
        .await;
    assert_eq!(echoed_header(&v, "x-cc-subject"), vec![SUB], "{v}");
    assert_eq!(echoed_header(&v, "x-cc-realm"), vec![REALM], "{v}");
    // left out, and the client's own are still removed
    assert!(echoed_header(&v, "x-cc-issuer").is_empty(), "{v}");
    assert!(echoed_header(&v, "x-cc-scopes").is_empty(), "{v}");
}

#[tokio::test]
async fn forwarded_headers() {
    let fx = Fixture::start().await;
    let t = fx.token();
    let v = fx
        .expect_ok(Fixture::ai_req(&t).header("Host", "gateway.example:8443"))
        .await;
    let xff = joined(&echoed_header(&v, "x-forwarded-for"));
    assert_eq!(
        xff.rsplit(',').next().map(str::trim),
        Some("127.0.0.1"),
        "X-Forwarded-For: {v}"
    );
    assert_eq!(echoed_header(&v, "x-forwarded-proto"), vec!["http"], "{v}");
    assert_eq!(
        echoed_header(&v, "x-forwarded-host"),
        vec!["gateway.example:8443"],
        "{v}"
    );
    // A client-sent X-Forwarded-For is never the last hop.
    let v = fx
        .expect_ok(Fixture::ai_req(&t).header("X-Forwarded-For", "203.0.113.7"))
        .await;
    let xff = joined(&echoed_header(&v, "x-forwarded-for"));
    assert_eq!(
        xff.rsplit(',').next().map(str::trim),
        Some("127.0.0.1"),
        "X-Forwarded-For: {xff}"
    );
}

#[tokio::test]
async fn client_forwarded_headers_are_replaced_not_trusted() {
    let fx = Fixture::start().await;
    let v = fx
        .expect_ok(
            Fixture::ai_req(&fx.token())
                .header("X-Forwarded-Proto", "https")
                .header("X-Forwarded-Host", "evil.example"),
        )
        .await;
    assert_eq!(echoed_header(&v, "x-forwarded-proto"), vec!["http"], "{v}");
    assert_eq!(
        echoed_header(&v, "x-forwarded-host"),
        vec![fx.gw.addr.to_string()],
        "{v}"
    );
}

/// A generated request id: non-empty, at most 128 visible ASCII characters.
fn is_sane_generated_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

#[tokio::test]
async fn request_id_kept_generated_and_echoed() {
    let fx = Fixture::start().await;
    let t = fx.token();
    // Kept.
    let r = fx
        .send(Fixture::ai_req(&t).header("X-Request-Id", "abc-123"))
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.header("x-request-id").as_deref(), Some("abc-123"));
    assert_eq!(echoed_header(&r.json(), "x-request-id"), vec!["abc-123"]);
    // Generated, the same one upstream and on the response, different per request.
    let r1 = fx.send(Fixture::ai_req(&t)).await;
    let r2 = fx.send(Fixture::ai_req(&t)).await;
    let id1 = r1.header("x-request-id").expect("generated X-Request-Id");
    let id2 = r2.header("x-request-id").expect("generated X-Request-Id");
    assert!(is_sane_generated_id(&id1), "{id1:?}");
    assert_ne!(id1, id2, "generated ids must differ");
    assert_eq!(echoed_header(&r1.json(), "x-request-id"), vec![id1.clone()]);
    // Insane ids are replaced, not echoed.
    for bad in [
        "has spaces in it".to_string(),
        "quote\"and<angle>".to_string(),
        "x".repeat(1000),
    ] {
        let r = fx
            .send(Fixture::ai_req(&t).header("X-Request-Id", &bad))
            .await;
        assert_eq!(r.status, 200, "{}", r.describe());
        let id = r.header("x-request-id").expect("X-Request-Id");
        assert_ne!(id, bad, "insane request id echoed");
        assert!(is_sane_generated_id(&id), "{id:?}");
        assert_eq!(echoed_header(&r.json(), "x-request-id"), vec![id]);
    }
    // Error responses carry it too, and in the body.
    let r = fx
        .send(Fixture::ai_req("bad").header("X-Request-Id", "req-401"))
        .await;
    assert_error(&r, 401, "malformed_token");
    assert_eq!(r.header("x-request-id").as_deref(), Some("req-401"));
    let r = fx
        .send(Req::get("/nope").header("X-Request-Id", "req-404"))
        .await;
    assert_error(&r, 404, "no_route");
    assert_eq!(r.json()["request_id"], "req-404");
}
