//! Traffic that must not be buffered: an SSE stream's first event, a WebSocket upgrade.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::common::servers::{WsEcho, SSE_FIRST, SSE_SECOND};
use crate::common::wait::DEADLINE;
use crate::common::*;

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
        .header("x-request-id", "sse-ttfb")
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
    // the stream stays open this long after its first event: the gap the access log's
    // ttfb_ms must show against duration_ms (a lower bound this test enforces, not a timing)
    const HELD_MS: f64 = 300.0;
    tokio::time::sleep(Duration::from_millis(HELD_MS as u64)).await;
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
    let line = wait_until("the stream's access log line", DEADLINE, || async {
        super::access_log::read_log_lines(&fx.access_log)
            .into_iter()
            .find(|l| l["request_id"] == "sse-ttfb")
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let (ttfb, duration) = (line["ttfb_ms"].as_f64(), line["duration_ms"].as_f64());
    assert!(
        ttfb.zip(duration)
            .is_some_and(|(t, d)| t > 0.0 && t + HELD_MS <= d),
        "ttfb_ms is the first event's, not the end's: {line}"
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
