//! `max_request_body`: a body declared longer than its route accepts is refused before the
//! budget and the upstream (and never read: no `100 Continue`), one that streams past the limit
//! is cut on its way up; both `413 request_body_too_large`, counted by route and check, and
//! never held against the upstream's endpoints.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::access_log::read_log_lines;
use crate::common::metrics::{has_series, metric};
use crate::common::wait::{wait_until, DEADLINE};
use crate::common::*;

const TOO_LARGE: &str = "cc_gateway_request_body_too_large_total";

/// The server default is 1 KiB (route `ai` inherits it); `small` takes 16 bytes, `big` any.
async fn fixture() -> Fixture {
    Fixture::with(Opts {
        server_extra: "max_request_body = \"1KiB\"".into(),
        extra: r#"
[[routes]]
name = "small"
path_prefix = "/small/"
upstream = "echo"
auth = "public"
max_request_body = 16

[[routes]]
name = "big"
path_prefix = "/big/"
upstream = "echo"
auth = "public"
max_request_body = "unlimited"
"#
        .into(),
        ..Opts::default()
    })
    .await
}

fn count(text: &str, route: &str, check: &str) -> f64 {
    metric(text, TOO_LARGE, &[("route", route), ("check", check)])
}

/// `POST path` with a chunked body of `chunks` (no declared length), over a raw connection.
fn chunked(path: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_upstream() {
    let fx = fixture().await;
    let t = fx.token();
    let upstream_before = fx.echo.count();

    // a route with a limit shows its zero series before the first refusal; one without shows none
    let zero = fx.metrics().await;
    assert!(
        has_series(
            &zero,
            TOO_LARGE,
            &[("route", "small"), ("check", "streamed")]
        ),
        "{zero}"
    );
    assert!(!has_series(&zero, TOO_LARGE, &[("route", "big")]), "{zero}");

    // one byte over the inherited server default
    let r = Req::post("/ai/v2/completions", vec![b'a'; 1025])
        .token(&t)
        .send(fx.gw.addr)
        .await;
    assert_error(&r, 413, "request_body_too_large");
    assert_eq!(r.json()["error"], "payload_too_large", "{}", r.describe());
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("1024 bytes")),
        "the message names the limit: {}",
        r.describe()
    );
    // the route's own limit
    let r = Req::post("/small/x", vec![b'a'; 17]).send(fx.gw.addr).await;
    assert_error(&r, 413, "request_body_too_large");
    // over HTTP/2 (the client declares content-length)
    let r = Req::post("/ai/v2/completions", vec![b'a'; 2048])
        .token(&t)
        .send_h2(fx.gw.addr)
        .await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_error(&r, 413, "request_body_too_large");
    assert_eq!(
        fx.echo.count(),
        upstream_before,
        "a refused body reached the upstream"
    );

    let text = fx.metrics().await;
    assert_eq!(count(&text, "ai", "declared"), 2.0, "{text}");
    assert_eq!(count(&text, "small", "declared"), 1.0, "{text}");
    // (counted when the answer is done, a moment after the client has it)
    wait_metric(
        &fx.gw,
        "cc_gateway_requests_total",
        &[("route", "ai"), ("status", "413")],
        2.0,
    )
    .await;

    // exactly at the limit, and any size where the route says unlimited
    let v = fx
        .expect_ok(Req::post("/ai/v2/completions", vec![b'a'; 1024]).token(&t))
        .await;
    assert_eq!(v["body_len"], 1024);
    let v = fx.expect_ok(Req::post("/small/x", vec![b'a'; 16])).await;
    assert_eq!(v["body_len"], 16);
    let v = fx
        .expect_ok(Req::post("/big/x", vec![b'a'; 256 * 1024]))
        .await;
    assert_eq!(v["body_len"], 256 * 1024);

    // the refusal is logged with its reason
    let lines = wait_until("the 413s in the access log", DEADLINE, || async {
        let lines: Vec<Value> = read_log_lines(&fx.access_log)
            .into_iter()
            .filter(|l| l["status"] == 413)
            .collect();
        match lines.len() {
            3 => Ok(lines),
            n => Err(format!("{n} lines with status 413")),
        }
    })
    .await;
    for l in &lines {
        assert_eq!(l["reason"], "request_body_too_large", "{l}");
    }
}

#[tokio::test]
async fn authentication_comes_before_the_body_limit_and_grpc_gets_resource_exhausted() {
    let fx = fixture().await;
    // no token: the client learns what it must fix first, and nothing about the route's limit
    let r = Req::post("/ai/v2/completions", vec![b'a'; 4096])
        .send(fx.gw.addr)
        .await;
    assert_error(&r, 401, "missing_token");

    // a gRPC client reads grpc-status: RESOURCE_EXHAUSTED (8), as for a message over a
    // server's size limit
    let r = Req::post("/ai/agent.Service/Call", vec![0u8; 4096])
        .token(&fx.token())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .send_h2(fx.gw.addr)
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        r.header("grpc-status").as_deref(),
        Some("8"),
        "{}",
        r.describe()
    );
    assert!(
        r.header("grpc-message")
            .is_some_and(|m| m.contains("request_body_too_large")),
        "{}",
        r.describe()
    );
}

#[tokio::test]
async fn expect_100_continue_over_the_limit_is_answered_413_without_reading_the_body() {
    let fx = fixture().await;
    let mut s = TcpStream::connect(fx.gw.addr).await.expect("connect");
    // the head only: a client waiting for 100 Continue sends no byte of its body
    s.write_all(
        b"POST /small/upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write head");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return String::from_utf8_lossy(&buf[..end]).into_owned();
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => panic!(
                    "closed without an answer: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("an answer to the head alone");
    assert!(
        head.starts_with("HTTP/1.1 413 "),
        "the first answer is the refusal, not 100 Continue: {head}"
    );
    assert_eq!(fx.echo.count(), 0);
}

#[tokio::test]
async fn a_stream_past_the_limit_is_cut_and_not_held_against_the_upstream() {
    let fx = fixture().await;
    let before = fx.metrics().await;

    // 3 × 8 bytes, no declared length: the third chunk passes the 16-byte limit
    let r = raw_request(
        fx.gw.addr,
        &chunked("/small/stream", &[&b"aaaaaaaa"[..]; 3]),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.raw));
    let body: Value = serde_json::from_slice(&r.body).expect("JSON refusal");
    assert_eq!(body["reason"], "request_body_too_large", "{body}");

    // within the limit, the same stream goes through whole
    let r = raw_request(
        fx.gw.addr,
        &chunked("/small/stream", &[&b"aaaaaaaa"[..]; 2]),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
    let v: Value = serde_json::from_slice(&r.body).expect("echo JSON");
    assert_eq!(v["body_len"], 16);
    // and on the unlimited route, a stream of any length
    let r = raw_request(
        fx.gw.addr,
        &chunked("/big/stream", &[&[b'b'; 4096][..]; 64]),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.raw));
    let v: Value = serde_json::from_slice(&r.body).expect("echo JSON");
    assert_eq!(v["body_len"], 64 * 4096);

    let after = fx.metrics().await;
    assert_eq!(
        count(&after, "small", "streamed") - count(&before, "small", "streamed"),
        1.0,
        "{after}"
    );
    assert_eq!(count(&after, "small", "declared"), 0.0, "{after}");
    // the client's excess is not an upstream failure
    let errors = |t: &str| metric(t, "cc_gateway_upstream_errors_total", &[]);
    assert_eq!(errors(&after), errors(&before), "{after}");
}
