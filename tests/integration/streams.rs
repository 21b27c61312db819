//! Long-lived streams: a route's `idle_timeout` ends a stream (SSE, gRPC, WebSocket tunnel)
//! with no bytes either way for that long — a gRPC stream with `grpc-status: 4` in its
//! trailers, never a bare reset — and its `timeout` bounds the whole exchange; traffic keeps a
//! stream alive however long it lasts; a gRPC stream the upstream breaks ends with
//! `grpc-status: 14`; HTTP/2 PINGs go to quiet clients and accepted sockets have TCP keepalive.
//! The intervals here are short so the tests are fast, except in one:
//! `silent_streams_survive_two_minutes_by_default` checks the default configuration over a
//! 120 s silence (gRPC, WebSocket and SSE at once, so it costs 120 s of wall time once).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use http::uri::PathAndQuery;

use crate::common::servers::{self, WsEcho, SSE_FIRST, SSE_SECOND};
use crate::common::wait::DEADLINE;
use crate::common::*;
use crate::grpc;
use crate::grpc::ping_policy::StrictServer;

/// Generous bound for "the stream was ended": far above the configured limits.
const ENDED_WITHIN: Duration = Duration::from_secs(10);

struct ChanBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// An upstream streaming `n` events, one every `every`, then ending its body.
async fn ticker(n: usize, every: Duration) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let (tx, rx) = mpsc::channel(4);
                    tokio::spawn(async move {
                        for i in 0..n {
                            tokio::time::sleep(every).await;
                            if tx
                                .send(Bytes::from(format!("data: {i}\n\n")))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                    Ok::<_, Infallible>(
                        http::Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(ChanBody(rx))
                            .expect("response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A public route `name` at `/name/` to an upstream at `addr`, with `keys` added.
fn route(name: &str, addr: SocketAddr, keys: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nupstream = \"{name}\"\nauth = \"public\"\n{keys}\n\n[[upstreams]]\nname = \"{name}\"\nendpoints = [\"{addr}\"]\nread_timeout = \"30s\"\n"
    )
}

async fn fixture(extra: String, server_extra: &str) -> Fixture {
    Fixture::with(Opts {
        extra,
        server_extra: server_extra.to_string(),
        ..Opts::default()
    })
    .await
}

/// An HTTP/1.1 GET whose response head has arrived; the body is left to the test.
async fn h1_get(addr: SocketAddr, path: &str) -> http::Response<hyper::body::Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect gateway");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    tokio::time::timeout(ENDED_WITHIN, sender.send_request(req))
        .await
        .expect("response head in time")
        .expect("response head")
}

/// Reads the body until it ends: (bytes, Ok(trailers) or Err(error text)).
async fn drain(
    body: &mut hyper::body::Incoming,
) -> (Vec<u8>, Result<Option<http::HeaderMap>, String>) {
    let mut got = Vec::new();
    let end = tokio::time::timeout(ENDED_WITHIN, async {
        let mut trailers = None;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => match f.into_data() {
                    Ok(d) => got.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(trailers)
    })
    .await
    .expect("the stream ended in time");
    (got, end)
}

/// The access-log line of the request whose path is `path`.
async fn log_line(fx: &Fixture, path: &str) -> Value {
    wait_until("the access-log line", DEADLINE, || async {
        std::fs::read_to_string(&fx.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["path"] == path)
            .ok_or_else(|| "not logged yet".to_string())
    })
    .await
}

#[tokio::test]
async fn a_quiet_sse_stream_is_ended_after_idle_timeout_and_logged_incomplete() {
    let sse = Sse::start().await;
    let fx = fixture(route("sse", sse.addr, "idle_timeout = \"300ms\""), "").await;
    let start = Instant::now();
    let mut body = h1_get(fx.gw.addr, "/sse/s").await.into_body();
    let (got, end) = drain(&mut body).await;
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        SSE_FIRST,
        "the first event arrived"
    );
    assert!(end.is_err(), "a cut stream must not look complete: {end:?}");
    assert!(!sse.finished());
    let line = log_line(&fx, "/sse/s").await;
    assert_eq!(line["incomplete"], true, "{line}");
    assert_eq!(line["reason"], "stream_idle_timeout", "{line}");
    assert_eq!(line["status"], 200, "{line}");
}

#[tokio::test]
async fn a_busy_stream_outlives_its_idle_timeout() {
    // 20 events 50 ms apart: a second of streaming through a 500 ms idle_timeout
    let (addr, task) = ticker(20, Duration::from_millis(50)).await;
    let fx = fixture(route("tick", addr, "idle_timeout = \"500ms\""), "").await;
    let start = Instant::now();
    let mut body = h1_get(fx.gw.addr, "/tick/s").await.into_body();
    let (got, end) = drain(&mut body).await;
    assert!(end.is_ok(), "{end:?}");
    assert!(start.elapsed() >= Duration::from_millis(1000));
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("data: ").count(), 20, "{text}");
    task.abort();
}

#[tokio::test]
async fn the_route_timeout_ends_a_busy_stream() {
    // events every 50 ms for 10 s, and a route timeout of 600 ms
    let (addr, task) = ticker(200, Duration::from_millis(50)).await;
    let fx = fixture(route("tick", addr, "timeout = \"600ms\""), "").await;
    let start = Instant::now();
    let mut body = h1_get(fx.gw.addr, "/tick/s").await.into_body();
    let (got, end) = drain(&mut body).await;
    let took = start.elapsed();
    assert!(end.is_err(), "{end:?}");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(String::from_utf8_lossy(&got).contains("data: 0"));
    let line = log_line(&fx, "/tick/s").await;
    assert_eq!(line["reason"], "stream_timeout", "{line}");
    task.abort();
}

/// A gRPC server-streaming call over h2c whose response head has arrived.
async fn grpc_stream(addr: SocketAddr, path: &str) -> http::Response<hyper::body::Incoming> {
    let stream = TcpStream::connect(addr).await.expect("connect gateway");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("request");
    tokio::time::timeout(ENDED_WITHIN, sender.send_request(req))
        .await
        .expect("response head in time")
        .expect("response head")
}

#[tokio::test]
async fn an_idle_grpc_stream_ends_with_deadline_exceeded_trailers() {
    let sse = Sse::start().await;
    let fx = fixture(route("sse", sse.addr, "idle_timeout = \"300ms\""), "").await;
    let resp = grpc_stream(fx.gw.addr, "/sse/pkg.S/Stream").await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (got, end) = drain(&mut body).await;
    assert_eq!(String::from_utf8_lossy(&got), SSE_FIRST);
    let trailers = end
        .expect("trailers, not a reset")
        .expect("trailers ending the stream");
    assert_eq!(trailers["grpc-status"], "4", "{trailers:?}");
    let msg = trailers["grpc-message"].to_str().expect("ascii");
    assert!(msg.starts_with("stream_idle_timeout: "), "{msg}");
}

#[tokio::test]
async fn a_grpc_stream_over_its_route_timeout_ends_with_deadline_exceeded() {
    let (addr, task) = ticker(200, Duration::from_millis(50)).await;
    let fx = fixture(route("tick", addr, "timeout = \"500ms\""), "").await;
    let mut body = grpc_stream(fx.gw.addr, "/tick/pkg.S/Stream")
        .await
        .into_body();
    let (got, end) = drain(&mut body).await;
    assert!(!got.is_empty());
    let trailers = end.expect("trailers, not a reset").expect("trailers");
    assert_eq!(trailers["grpc-status"], "4", "{trailers:?}");
    assert!(trailers["grpc-message"]
        .to_str()
        .is_ok_and(|m| m.starts_with("stream_timeout: ")));
    task.abort();
}

#[tokio::test]
async fn a_websocket_tunnel_lives_while_used_and_closes_when_idle() {
    let ws = WsEcho::start().await;
    let fx = fixture(route("ws", ws.addr, "idle_timeout = \"500ms\""), "").await;
    let req = format!("ws://{}/ws/echo", fx.gw.addr)
        .into_client_request()
        .expect("ws request");
    let stream = TcpStream::connect(fx.gw.addr).await.expect("connect");
    let (mut client, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("WebSocket through the gateway");
    // a message every 50 ms for a second: twice the idle timeout, never idle
    for i in 0..20 {
        client
            .send(Message::text(format!("m{i}")))
            .await
            .expect("send");
        let echoed = tokio::time::timeout(ENDED_WITHIN, client.next())
            .await
            .expect("echo in time");
        assert!(
            matches!(&echoed, Some(Ok(m)) if *m == Message::text(format!("m{i}"))),
            "message {i}: {echoed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // then silence: the gateway closes the tunnel
    let quiet = Instant::now();
    let next = tokio::time::timeout(ENDED_WITHIN, client.next())
        .await
        .expect("the tunnel closed in time");
    assert!(
        !matches!(next, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{next:?}"
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(400),
        "{:?}",
        quiet.elapsed()
    );
}

/// Reads HTTP/2 frames off `s` until one of type `kind` arrives: its flags.
async fn read_frame_of(s: &mut TcpStream, kind: u8) -> Option<u8> {
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.ok()?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        if head[3] == kind {
            return Some(head[4]);
        }
    }
}

#[tokio::test]
async fn quiet_http2_clients_get_pings_and_dead_ones_are_dropped() {
    let fx = fixture(
        String::new(),
        "http2_keepalive_interval = \"200ms\"\nhttp2_keepalive_timeout = \"300ms\"",
    )
    .await;
    let mut s = TcpStream::connect(fx.gw.addr).await.expect("connect");
    // the client preface and an empty SETTINGS frame; then silence, no PING ACK
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let ping = tokio::time::timeout(ENDED_WITHIN, read_frame_of(&mut s, 0x6))
        .await
        .expect("a PING in time");
    assert_eq!(ping, Some(0), "a PING (not an ACK) from the gateway");
    // unanswered, it costs the connection: the gateway closes it
    let closed = tokio::time::timeout(ENDED_WITHIN, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a client that never answers PINGs is dropped"
    );
}

/// A gRPC `Held` server stream through the gateway at `gw` (`path`) whose upstream sits behind
/// `strict`: reads the first message, stays silent for `silence`, then expects the next message
/// and an OK end, and no GOAWAY from the strict server.
async fn silent_grpc_stream(
    gw: SocketAddr,
    path: &'static str,
    up: &grpc::GrpcUpstream,
    strict: &StrictServer,
    silence: Duration,
) {
    let mut g = grpc::h2c_client(gw).await;
    g.ready().await.expect("gRPC client ready");
    let mut s = g
        .server_streaming(
            tonic::Request::new(grpc::msg("held")),
            PathAndQuery::from_static(path),
            grpc::codec(),
        )
        .await
        .expect("gRPC server stream")
        .into_inner();
    let first = s.message().await.expect("first message");
    assert_eq!(first.map(|m| m.text).as_deref(), Some("held-1"), "{path}");
    tokio::time::sleep(silence).await;
    up.proceed.notify_one();
    let next = tokio::time::timeout(ENDED_WITHIN, s.message())
        .await
        .expect("the next message in time");
    let next = next.map(|m| m.map(|m| m.text));
    assert!(
        matches!(&next, Ok(Some(t)) if t == "held-2"),
        "{path}: {next:?} after the silence (PINGs the upstream saw: {}, GOAWAYs: {})",
        strict.pings(),
        strict.goaways()
    );
    let end = tokio::time::timeout(ENDED_WITHIN, s.message())
        .await
        .expect("the end in time");
    assert!(matches!(end, Ok(None)), "{path} ends OK: {end:?}");
    assert_eq!(strict.goaways(), 0, "{path}");
}

/// With the default configuration, a gRPC server stream, an SSE stream and a WebSocket that
/// stay silent for 120 s (beyond common proxies' 60–100 s idle cuts) still deliver their next
/// message; all at once, so the test costs 120 s of wall time once.
///
/// The gRPC upstreams enforce a default grpc-go / C-core PING policy (5 minutes; GOAWAY
/// `too_many_pings` at the third strike). A second gRPC stream goes to an upstream whose only
/// non-default key is a long `pool_idle_timeout`: hyper stops pinging a connection once the pool
/// has dropped its handle (after `pool_idle_timeout`, 60 s by default, even with a stream open),
/// which would hide a bad PING interval; with the pool keeping it, the default interval itself
/// must respect the policy (a 20 s interval fails here, at about 80 s).
#[tokio::test]
async fn silent_streams_survive_two_minutes_by_default() {
    const SILENCE: Duration = Duration::from_secs(120);
    const DEFAULT_POLICY: Duration = Duration::from_secs(300);
    let sse = Sse::start().await;
    let ws = WsEcho::start().await;
    let grpc_up = grpc::start_upstream().await;
    let strict = StrictServer::start(grpc_up.addr, DEFAULT_POLICY).await;
    let pooled_up = grpc::start_upstream().await;
    let pooled_strict = StrictServer::start(pooled_up.addr, DEFAULT_POLICY).await;
    let extra = format!(
        "{}{}{}{}protocol = \"h2c\"\npool_idle_timeout = \"1h\"\n",
        route("sse", sse.addr, ""),
        route("ws", ws.addr, ""),
        grpc::grpc_route(strict.addr),
        route("pooled", pooled_strict.addr, "strip_prefix = true"),
    )
    .replace("read_timeout = \"30s\"", "");
    let fx = fixture(extra, "").await;

    let grpc_check = silent_grpc_stream(fx.gw.addr, "/test.Echo/Held", &grpc_up, &strict, SILENCE);
    let pooled_check = silent_grpc_stream(
        fx.gw.addr,
        "/pooled/test.Echo/Held",
        &pooled_up,
        &pooled_strict,
        SILENCE,
    );
    let sse_check = async {
        let mut body = h1_get(fx.gw.addr, "/sse/s").await.into_body();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(SSE_FIRST) {
            let f = body.frame().await.expect("a frame").expect("a frame");
            got.extend_from_slice(&f.into_data().unwrap_or_default());
        }
        tokio::time::sleep(SILENCE).await;
        sse.proceed.notify_one();
        let (rest, end) = drain(&mut body).await;
        assert_eq!(String::from_utf8_lossy(&rest), SSE_SECOND);
        assert!(end.is_ok(), "{end:?}");
    };
    let ws_check = async {
        let req = format!("ws://{}/ws/echo", fx.gw.addr)
            .into_client_request()
            .expect("ws request");
        let stream = TcpStream::connect(fx.gw.addr).await.expect("connect");
        let (mut client, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .expect("WebSocket");
        tokio::time::sleep(SILENCE).await;
        client
            .send(Message::text("still there"))
            .await
            .expect("send");
        let echoed = tokio::time::timeout(ENDED_WITHIN, client.next()).await;
        assert!(
            matches!(&echoed, Ok(Some(Ok(m))) if *m == Message::text("still there")),
            "{echoed:?}"
        );
    };
    tokio::join!(grpc_check, pooled_check, sse_check, ws_check);
}

/// The kernel's timer on the gateway's side of the connection `client` opened: `/proc/net/tcp`'s
/// `tr` field (2 is the keepalive timer).
fn server_side_timer(gw: SocketAddr, client: SocketAddr) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{:04X}", gw.port());
    let remote = format!("0100007F:{:04X}", client.port());
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
            .then(|| f.get(5)?.split(':').next()?.parse().ok())?
    })
}

#[tokio::test]
async fn accepted_connections_have_tcp_keepalive() {
    let fx = fixture(String::new(), "").await;
    let s = TcpStream::connect(fx.gw.addr).await.expect("connect");
    let client = s.local_addr().expect("client address");
    // an idle connection: with SO_KEEPALIVE its only pending timer is the keepalive timer
    let timer = wait_until("the gateway's side of the connection", DEADLINE, || async {
        match server_side_timer(fx.gw.addr, client) {
            Some(2) => Ok(2),
            other => Err(format!("timer {other:?}")),
        }
    })
    .await;
    assert_eq!(timer, 2);
    drop(s);
}

#[tokio::test]
async fn a_grpc_stream_the_upstream_breaks_ends_with_unavailable_trailers() {
    // an upstream that starts a chunked gRPC response, sends one chunk and drops the connection
    let (addr, task) = servers::canned(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n5\r\n\0\0\0\0\0\r\n",
        false,
    )
    .await;
    let fx = fixture(route("brk", addr, ""), "").await;
    let mut body = grpc_stream(fx.gw.addr, "/brk/pkg.S/Stream")
        .await
        .into_body();
    let (got, end) = drain(&mut body).await;
    assert_eq!(got, [0u8; 5]);
    let trailers = end.expect("trailers, not a reset").expect("trailers");
    assert_eq!(trailers["grpc-status"], "14", "{trailers:?}");
    assert_eq!(
        trailers["grpc-message"],
        "upstream_unavailable: the upstream broke the stream"
    );
    // an HTTP/1.1 client of the same upstream sees a truncated body, as before
    let mut body = h1_get(fx.gw.addr, "/brk/x").await.into_body();
    let (_, end) = drain(&mut body).await;
    assert!(end.is_err(), "{end:?}");
    task.abort();
}
