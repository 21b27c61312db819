//! Routing and proxying: prefixes, methods, public routes, forwarded and identity headers,
//! request ids, streaming (SSE), WebSocket, h2c, upstream failures, the access log.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::common::servers::{echoed_header, Slow, WsEcho, SSE_FIRST, SSE_SECOND};
use crate::common::wait::DEADLINE;
use crate::common::*;

/// Waits for `requests_total{labels}` to grow by one over the value in `before`.
async fn expect_request_counted(fx: &Fixture, before: &str, labels: &[(&str, &str)]) {
    let b = metric(before, "cc_gateway_requests_total", labels);
    wait_metric(&fx.gw, "cc_gateway_requests_total", labels, b + 1.0).await;
}

/// Header values joined as one comma-separated value.
fn joined(values: &[String]) -> String {
    values.join(", ")
}

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

#[tokio::test]
async fn sse_first_event_arrives_before_upstream_finishes() {
    let sse = Sse::start().await;
    let extra = format!(
        r#"
[[routes]]
name = "sse"
path_prefix = "/sse/"
upstream = "sse"
audience = "{AUD}"
scopes = ["duo_chat"]

[[upstreams]]
name = "sse"
endpoints = ["{}"]
read_timeout = "30s"
"#,
        sse.addr
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let token = fx.token();
    let stream = TcpStream::connect(fx.gw.addr)
        .await
        .expect("connect gateway");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method("GET")
        .uri("/sse/stream")
        .header("host", fx.gw.addr.to_string())
        .header("accept", "text/event-stream")
        .header("x-gitlab-token", &token)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .expect("SSE response head within 20 s (is the gateway buffering the body?)")
        .expect("SSE response");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
        "{:?}",
        resp.headers()
    );
    let mut body = resp.into_body();
    let mut got = Vec::<u8>::new();
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        while !String::from_utf8_lossy(&got).contains(SSE_FIRST) {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        got.extend_from_slice(&d);
                    }
                }
                other => panic!(
                    "SSE body ended before the first event: {other:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                ),
            }
        }
    })
    .await;
    assert!(
        first.is_ok(),
        "first SSE event did not arrive while the upstream was still open; got {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        !sse.finished(),
        "the upstream finished before the test let it"
    );
    assert!(!String::from_utf8_lossy(&got).contains("second"));
    sse.proceed.notify_one();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(f) = body.frame().await {
            let f = f.expect("SSE body frame");
            if let Ok(d) = f.into_data() {
                got.extend_from_slice(&d);
            }
        }
    })
    .await
    .expect("SSE stream ends after the second event");
    let text = String::from_utf8_lossy(&got).into_owned();
    assert_eq!(
        text,
        format!("{SSE_FIRST}{SSE_SECOND}"),
        "events changed in transit"
    );
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let ws = WsEcho::start().await;
    let extra = format!(
        r#"
[[routes]]
name = "ws"
path_prefix = "/ws/"
strip_prefix = true
upstream = "ws"
audience = "{AUD}"
scopes = ["duo_chat"]

[[upstreams]]
name = "ws"
endpoints = ["{}"]
"#,
        ws.addr
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let token = fx.token();
    let url = format!("ws://{}/ws/echo", fx.gw.addr);

    // Without a token the upgrade is refused.
    let req = url.as_str().into_client_request().expect("ws request");
    let stream = TcpStream::connect(fx.gw.addr).await.expect("connect");
    match tokio_tungstenite::client_async(req, stream).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401, "{resp:?}")
        }
        Err(e) => panic!("unexpected WebSocket error without token: {e}"),
        Ok(_) => panic!("WebSocket upgrade without a token was accepted"),
    }

    let mut req = url.as_str().into_client_request().expect("ws request");
    req.headers_mut()
        .insert("x-gitlab-token", token.parse().expect("header value"));
    let stream = TcpStream::connect(fx.gw.addr).await.expect("connect");
    let (mut client, resp) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("WebSocket handshake within 20 s")
    .expect("WebSocket handshake through the gateway");
    assert_eq!(resp.status(), 101);
    for msg in [
        Message::text("hello through the gateway"),
        Message::binary(vec![0u8, 1, 2, 254, 255]),
        Message::text("x".repeat(100_000)),
    ] {
        client.send(msg.clone()).await.expect("ws send");
        let echoed = tokio::time::timeout(Duration::from_secs(20), client.next())
            .await
            .expect("echo within 20 s")
            .expect("stream open")
            .expect("ws frame");
        assert_eq!(echoed, msg);
    }
    client.close(None).await.expect("ws close");
    let (path, headers) = ws
        .last_request
        .lock()
        .expect("ws lock")
        .clone()
        .expect("the upstream saw the upgrade");
    assert_eq!(path, "/echo");
    assert_eq!(headers.get("x-cc-subject").map(String::as_str), Some(SUB));
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let fx = Fixture::start().await;
    let t = fx.token();
    let r = Req::post("/ai/v2/completions", "{\"a\":1}")
        .token(&t)
        .send_h2(fx.gw.addr)
        .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json();
    assert_eq!(v["server"], "echo");
    assert_eq!(v["path"], "/v2/completions");
    assert_eq!(v["body_len"], 7);
    assert_eq!(echoed_header(&v, "x-cc-subject"), vec![SUB]);
    assert!(r.header("x-request-id").is_some());
    // Errors over h2 too.
    let r = Req::get("/ai/v2/completions").send_h2(fx.gw.addr).await;
    assert_error(&r, 401, "missing_token");
}

#[tokio::test]
async fn upstream_unavailable_502() {
    let dead = dead_addr();
    let extra = format!(
        r#"
[[routes]]
name = "dead"
path_prefix = "/dead/"
upstream = "dead"
auth = "public"

[[upstreams]]
name = "dead"
endpoints = ["{dead}"]
connect_timeout = "2s"
"#
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let before = fx.metrics().await;
    let r = fx.send(Req::get("/dead/x")).await;
    assert_error(&r, 502, "upstream_unavailable");
    expect_request_counted(&fx, &before, &[("route", "dead"), ("status", "502")]).await;
}

#[tokio::test]
async fn upstream_timeout_504() {
    let slow = Slow::start().await;
    let extra = format!(
        r#"
[[routes]]
name = "slow"
path_prefix = "/slow/"
upstream = "slow"
auth = "public"

[[upstreams]]
name = "slow"
endpoints = ["{}"]
connect_timeout = "2s"
read_timeout = "300ms"
"#,
        slow.addr
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let before = fx.metrics().await;
    let r = fx.send(Req::get("/slow/x")).await;
    assert_error(&r, 504, "upstream_timeout");
    assert!(
        slow.accepted() >= 1,
        "the gateway never connected to the slow upstream"
    );
    expect_request_counted(&fx, &before, &[("route", "slow"), ("status", "504")]).await;
}

/// The access log's lines as JSON (none when the file does not exist yet).
fn read_log_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The byte-count field of an access-log line whose name mentions `dir` ("in" or "out").
fn bytes_field<'a>(line: &'a Value, dir: &str) -> Option<&'a Value> {
    line.as_object()?
        .iter()
        .find(|(k, _)| k.contains("bytes") && k.contains(dir))
        .map(|(_, v)| v)
}

#[tokio::test]
async fn access_log_json_lines_and_no_token_anywhere() {
    let fx = Fixture::with(Opts {
        log_level: "debug".into(),
        ..Opts::default()
    })
    .await;
    let good = fx.token();
    let via_auth = fx.token();
    let expired = fx.token_with(|c| c["exp"] = json!(now() - 3600));
    let body = r#"{"prompt_version":1,"current_file":{}}"#;

    let ok = fx
        .send(
            Req::post("/ai/v2/completions", body)
                .token(&good)
                .header("X-Request-Id", "log-ok-1"),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.describe());
    let ok2 = fx
        .send(
            Req::get("/ai/v1/x")
                .header("Authorization", &format!("Bearer {via_auth}"))
                .header("X-Request-Id", "log-ok-2"),
        )
        .await;
    assert_eq!(ok2.status, 200, "{}", ok2.describe());
    let bad = fx
        .send(Fixture::ai_req(&expired).header("X-Request-Id", "log-401"))
        .await;
    assert_error(&bad, 401, "expired");

    let lines = wait_until("3 access log lines", DEADLINE, || async {
        let lines = read_log_lines(&fx.access_log);
        if lines.len() >= 3 {
            Ok(lines)
        } else {
            Err(format!(
                "{} lines in {}",
                lines.len(),
                fx.access_log.display()
            ))
        }
    })
    .await;
    let find = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access log line for request {id}: {lines:#?}"))
            .clone()
    };
    let l = find("log-ok-1");
    for field in [
        "request_id",
        "method",
        "path",
        "route",
        "status",
        "duration_ms",
        "upstream",
        "upstream_status",
        "sub",
        "iss",
        "realm",
        "reason",
    ] {
        assert!(
            l.get(field).is_some(),
            "access log line lacks {field:?}: {l}"
        );
    }
    assert!(
        ["time", "timestamp", "ts"]
            .iter()
            .any(|k| l.get(*k).is_some()),
        "access log line has no time: {l}"
    );
    assert_eq!(l["method"], "POST", "{l}");
    assert_eq!(l["path"], "/ai/v2/completions", "{l}");
    assert_eq!(l["route"], "ai", "{l}");
    assert_eq!(l["status"], 200, "{l}");
    assert!(l["duration_ms"].is_number(), "{l}");
    assert_eq!(l["upstream"], "echo", "{l}");
    assert_eq!(l["upstream_status"], 200, "{l}");
    assert_eq!(l["sub"], SUB, "{l}");
    assert_eq!(l["iss"], fx.iss.as_str(), "{l}");
    assert_eq!(l["realm"], REALM, "{l}");
    assert!(l["reason"].is_null(), "reason on a success: {l}");
    let bytes_in = bytes_field(&l, "in").unwrap_or_else(|| panic!("no bytes-in field: {l}"));
    let bytes_out = bytes_field(&l, "out").unwrap_or_else(|| panic!("no bytes-out field: {l}"));
    assert!(
        bytes_in.as_u64().is_some_and(|n| n >= body.len() as u64),
        "bytes in {bytes_in} < body {}: {l}",
        body.len()
    );
    assert!(
        bytes_out
            .as_u64()
            .is_some_and(|n| n >= ok.body.len() as u64),
        "bytes out {bytes_out}: {l}"
    );

    let l = find("log-401");
    assert_eq!(l["status"], 401, "{l}");
    assert_eq!(l["reason"], "expired", "{l}");
    assert_eq!(l["route"], "ai", "{l}");
    assert!(
        l["upstream_status"].is_null(),
        "no upstream was called: {l}"
    );

    let l = find("log-ok-2");
    assert_eq!(l["method"], "GET", "{l}");
    assert_eq!(l["status"], 200, "{l}");

    let log_text = std::fs::read_to_string(&fx.access_log).expect("access log");
    let stderr = fx.gw.stderr();
    let stdout = fx.gw.stdout();
    for (what, t) in [
        ("X-Gitlab-Token", &good),
        ("Authorization", &via_auth),
        ("expired", &expired),
    ] {
        let sig = segments(t).2;
        for (place, text) in [
            ("access log", &log_text),
            ("stderr", &stderr),
            ("stdout", &stdout),
        ] {
            assert!(
                !text.contains(t.as_str()),
                "{what} token found in the {place}"
            );
            assert!(
                !text.contains(&sig),
                "{what} token signature found in the {place}"
            );
        }
    }
    assert!(
        !log_text.contains("Bearer "),
        "Authorization value in the access log"
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

/// Reads one response with a Content-Length body off `s`: (status line, lower-case headers,
/// body). Panics when the connection ends first.
async fn read_response(s: &mut TcpStream, what: &str) -> (String, Vec<(String, String)>, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap_or("").to_string();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()))
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or_else(|| panic!("{what}: no content-length in {head}"));
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return (status, headers, body);
            }
        }
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{what}: no response within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            n > 0,
            "{what}: the gateway closed the connection after {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn an_http10_backend_is_answered_in_the_clients_protocol_with_keep_alive() {
    use tokio::io::AsyncWriteExt;
    let old = crate::common::servers::Http10::start().await;
    let extra = format!(
        "\n[[routes]]\nname = \"old\"\npath_prefix = \"/old/\"\nupstream = \"old\"\nauth = \"public\"\n\n[[upstreams]]\nname = \"old\"\nendpoints = [\"{}\"]\n",
        old.addr
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;

    // HTTP/1.1 client: HTTP/1.1 answers, and the connection stays open for the next request
    let mut c = TcpStream::connect(fx.gw.addr).await.expect("connect");
    for path in ["/old/first", "/old/second"] {
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let (status, headers, body) = read_response(&mut c, path).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}: {headers:?}");
        assert!(
            !headers
                .iter()
                .any(|(k, v)| k == "connection" && v == "close"),
            "{path}: the gateway closes the connection: {headers:?}"
        );
        assert_eq!(body, path);
    }
    assert_eq!(old.served(), 2, "both requests reached the backend");

    // HTTP/2 client: answered in HTTP/2
    let r = Req::get("/old/h2").send_h2(fx.gw.addr).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.text(), "/old/h2");
}
