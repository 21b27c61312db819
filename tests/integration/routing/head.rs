//! The request head checked before routing: one valid `Host` (none, two, or a malformed one is
//! `400 invalid_host`), the target's authority over `Host` in absolute-form, and a transfer
//! coding we would forward wrongly refused `501 unsupported_transfer_encoding`. Raw requests
//! over a socket: HTTP client libraries do not send such heads.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::metrics::metric;
use crate::common::wait::DEADLINE;
use crate::common::*;

async fn fixture() -> Fixture {
    Fixture::with(Opts {
        extra: r#"
[[routes]]
name = "open"
path_prefix = "/open/"
upstream = "echo"
auth = "public"
"#
        .into(),
        ..Opts::default()
    })
    .await
}

/// Sends `head` (which ends with `Connection: close` and the blank line) and `body`; the
/// status and the body of the answer.
async fn raw(fx: &Fixture, head: &str, body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(fx.gw.addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{head:?}: no answer and no close within {DEADLINE:?}"))
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

fn header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_ambiguous_or_malformed_host_is_refused_before_routing() {
    let fx = fixture().await;
    let before = fx.echo.count();
    let text = fx.metrics().await;
    let refused_before = metric(
        &text,
        "cc_gateway_requests_total",
        &[("route", "_none"), ("status", "400")],
    );
    for head in [
        // two Host lines: the upstream (or a cache) would pick either
        "GET /open/x HTTP/1.1\r\nHost: gw.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        // none on HTTP/1.1
        "GET /open/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        // userinfo, a path, a space
        "GET /open/x HTTP/1.1\r\nHost: gw.example@evil.example\r\nConnection: close\r\n\r\n",
        "GET /open/x HTTP/1.1\r\nHost: evil.example/x\r\nConnection: close\r\n\r\n",
        "GET /open/x HTTP/1.1\r\nHost: gw.example evil\r\nConnection: close\r\n\r\n",
        // and on a protected route, before any token is looked at
        "GET /ai/v2/x HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    ] {
        let (status, body) = raw(&fx, head, b"").await;
        assert_eq!(status, 400, "{head:?}: {body}");
        assert_eq!(body["reason"], "invalid_host", "{head:?}: {body}");
        assert!(body["request_id"].is_string(), "{body}");
    }
    assert_eq!(
        fx.echo.count(),
        before,
        "a refused head reached the upstream"
    );
    crate::common::wait::wait_metric(
        &fx.gw,
        "cc_gateway_requests_total",
        &[("route", "_none"), ("status", "400")],
        refused_before + 6.0,
    )
    .await;

    // one Host, HTTP/1.0 without one, an IPv6 literal with a port: through
    let (status, body) = raw(
        &fx,
        "GET /open/x HTTP/1.1\r\nHost: gw.example:8443\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&body, "host"), ["gw.example:8443"]);
    let (status, _) = raw(&fx, "GET /open/x HTTP/1.0\r\n\r\n", b"").await;
    assert_eq!(status, 200);
    let (status, body) = raw(
        &fx,
        "GET /open/x HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn in_absolute_form_the_target_names_the_host() {
    let fx = fixture().await;
    let (status, body) = raw(
        &fx,
        "GET http://gw.example/open/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/open/x");
    assert_eq!(header(&body, "host"), ["gw.example"], "{body}");
    assert_eq!(header(&body, "x-forwarded-host"), ["gw.example"], "{body}");
}

#[tokio::test]
async fn only_chunked_bodies_are_forwarded_and_never_with_a_length_beside() {
    let fx = fixture().await;
    let before = fx.echo.count();
    // a coding before `chunked`: the upstream would get gzip bytes as a plain body
    let (status, body) = raw(
        &fx,
        "POST /open/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
        b"3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(body["reason"], "unsupported_transfer_encoding", "{body}");
    assert_eq!(
        fx.echo.count(),
        before,
        "the refused body reached the upstream"
    );

    // Content-Length beside chunked (a smuggling classic): the chunks are the body, and the
    // upstream sees no length that could disagree with them
    let (status, body) = raw(
        &fx,
        "POST /open/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        b"3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["body_len"], 3, "{body}");
    assert!(header(&body, "content-length").is_empty(), "{body}");

    // plain chunked goes through
    let (status, body) = raw(
        &fx,
        "POST /open/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        b"3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["body_len"], 3, "{body}");
}
