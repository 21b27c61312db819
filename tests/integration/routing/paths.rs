//! Which route a request takes: the longest prefix, `strip_prefix`, method filters, public
//! routes, the 404, and dot segments that must not walk from one prefix into another.

use crate::common::routing::expect_request_counted;
use crate::common::servers::echoed_header;
use crate::common::*;

#[tokio::test]
async fn longest_prefix_wins_regardless_of_order() {
    let b = Echo::start("b").await;
    let root = Echo::start("root").await;
    // "/ai/v2/" is declared after "/ai/" and a catch-all "/" after both.
    let extra = format!(
        r#"
[[routes]]
name = "ai-v2"
path_prefix = "/ai/v2/"
strip_prefix = true
upstream = "b"
audience = "{AUD}"
scopes = ["code_suggestions"]

[[routes]]
name = "root"
path_prefix = "/"
upstream = "root"
auth = "public"

[[upstreams]]
name = "b"
endpoints = ["{b}"]

[[upstreams]]
name = "root"
endpoints = ["{root}"]
"#,
        b = b.addr,
        root = root.addr
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let t = fx.token();
    let before = fx.metrics().await;

    let r = fx.send(Fixture::ai_req(&t)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        r.json()["server"],
        "b",
        "/ai/v2/completions must go to the longest prefix: {}",
        r.describe()
    );
    assert_eq!(r.json()["path"], "/completions");
    expect_request_counted(&fx, &before, &[("route", "ai-v2"), ("status", "200")]).await;

    let r = fx.send(Req::get("/ai/v1/models").token(&t)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["server"], "echo", "{}", r.describe());
    assert_eq!(r.json()["path"], "/v1/models");

    let r = fx.send(Req::get("/anything/else").token(&t)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["server"], "root", "{}", r.describe());
    assert_eq!(r.json()["path"], "/anything/else");
    // "/public/" is longer than "/" and wins.
    let r = fx.send(Req::get("/public/x")).await;
    assert_eq!(r.json()["server"], "echo", "{}", r.describe());
}

#[tokio::test]
async fn strip_prefix_true_and_false() {
    let fx = Fixture::start().await;
    let t = fx.token();
    let v = fx
        .expect_ok(Req::get("/ai/v2/code/completions?a=1&b=2").token(&t))
        .await;
    assert_eq!(v["path"], "/v2/code/completions");
    assert_eq!(v["query"], "a=1&b=2");
    let v = fx.expect_ok(Req::get("/ai/").token(&t)).await;
    assert_eq!(v["path"], "/", "stripping the whole prefix leaves /: {v}");
    // The public route keeps its prefix.
    let v = fx.expect_ok(Req::get("/public/status?verbose=1")).await;
    assert_eq!(v["path"], "/public/status");
    assert_eq!(v["query"], "verbose=1");
}

#[tokio::test]
async fn methods_filter() {
    let extra = r#"
[[routes]]
name = "post-only"
path_prefix = "/post-only/"
upstream = "echo"
auth = "public"
methods = ["POST"]
"#
    .to_string();
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let v = fx.expect_ok(Req::post("/post-only/x", "hello")).await;
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body_len"], 5);
    let upstream_before = fx.echo.count();
    let before = fx.metrics().await;
    let r = fx.send(Req::get("/post-only/x")).await;
    assert_error(&r, 404, "no_route");
    assert_eq!(
        r.header("allow").as_deref(),
        Some("POST"),
        "Allow hints at the methods that route"
    );
    let r = fx.send(Req::new(http::Method::PUT, "/post-only/x")).await;
    assert_error(&r, 404, "no_route");
    assert_eq!(
        fx.echo.count(),
        upstream_before,
        "a filtered method reached the upstream"
    );
    let b = metric(&before, "cc_gateway_requests_total", &[("status", "404")]);
    wait_metric(
        &fx.gw,
        "cc_gateway_requests_total",
        &[("status", "404")],
        b + 2.0,
    )
    .await;
}

#[tokio::test]
async fn no_route_404_json() {
    let fx = Fixture::start().await;
    let t = fx.token();
    let before = fx.metrics().await;
    for path in ["/nothing/here", "/ai", "/aix/v2", "/AI/v2/completions"] {
        let r = fx.send(Req::get(path).token(&t)).await;
        assert_error(&r, 404, "no_route");
        assert!(!r.text().contains(&t), "404 body echoes the token");
    }
    let b = metric(&before, "cc_gateway_requests_total", &[("status", "404")]);
    wait_metric(
        &fx.gw,
        "cc_gateway_requests_total",
        &[("status", "404")],
        b + 4.0,
    )
    .await;
    assert_eq!(fx.echo.count(), 0);
    let after = fx.metrics().await;
    assert_eq!(
        metric(&after, "cc_gateway_auth_failures_total", &[]),
        metric(&before, "cc_gateway_auth_failures_total", &[]),
        "no_route is not an auth failure"
    );
}

#[tokio::test]
async fn public_route_needs_no_token() {
    let fx = Fixture::start().await;
    let before = fx.metrics().await;
    let v = fx.expect_ok(Req::get("/public/ping")).await;
    assert!(
        echoed_header(&v, "x-cc-subject").is_empty(),
        "identity headers on a public request: {v}"
    );
    expect_request_counted(&fx, &before, &[("route", "public"), ("status", "200")]).await;
    // A garbage token on a public route is not verified.
    fx.expect_ok(Req::get("/public/ping").token("garbage"))
        .await;
}

#[tokio::test]
async fn dot_segments_cannot_walk_from_a_public_prefix_into_a_protected_one() {
    let fx = Fixture::start().await;
    for path in [
        "/public/../ai/v2/completions",
        "/public/%2e%2e/ai/v2/completions",
        "/public/%2E%2E/ai/v2/completions",
        "/public/./../ai/v2/completions",
    ] {
        let r = fx.send(Req::get(path)).await;
        // Refused by the router before auth (dot segments are never normalised).
        assert_eq!(
            (r.status, r.reason().as_str()),
            (400, "invalid_path"),
            "{path}: {}",
            r.describe()
        );
        assert!(
            r.header("x-request-id").is_some(),
            "{path}: {}",
            r.describe()
        );
        let _ = r.json();
    }
    assert_eq!(
        fx.echo.count(),
        0,
        "a dot-segment path reached the upstream"
    );
}
