//! SIGTERM that a load balancer can follow: `/readyz` turns 503 first while the listeners
//! still serve for `server.drain_delay`, then they close and open connections drain —
//! under load, every request is answered or provably never sent, and streams complete. A
//! request still open at `shutdown_timeout` is answered and logged 503 `shutting_down`.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::load::Load;
use super::{route, signal, wait_exit, wait_readyz, ws_route, SseClient, WsClient};
use crate::common::servers::{Slow, WsEcho};
use crate::common::wait::DEADLINE;
use crate::common::*;

#[tokio::test]
async fn sigterm_under_load_answers_every_request_or_never_sends_it() {
    let sse = Sse::start().await;
    let ws = WsEcho::start().await;
    let mut fx = Fixture::with(Opts {
        server_extra: "drain_delay = \"3s\"\nshutdown_timeout = \"30s\"".into(),
        extra: format!("{}{}", route("sse", sse.addr), ws_route(ws.addr)),
        ..Opts::default()
    })
    .await;
    let addr = fx.gw.addr;
    let load = Load::start_with(addr, 8, 4, 24, "/public/load");
    load.progress(50).await;
    let stream = SseClient::open(addr, "/sse/s").await;
    let mut socket = WsClient::open(addr).await;

    let term = Instant::now();
    signal(fx.gw.pid(), "TERM");
    wait_readyz(&fx.gw, 503).await;
    let ready = fx.gw.admin_get("/readyz").await.json();
    assert_eq!(ready["draining"], true, "{ready}");
    // the load balancer has not noticed yet: new connections are still served
    let r = Req::get("/public/after-readyz").send(addr).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        term.elapsed() < Duration::from_secs(3),
        "the check ran after the drain delay ({:?}): it proves nothing",
        term.elapsed()
    );
    load.progress(20).await;

    // then the listeners close
    wait_until("the listeners to refuse connections", DEADLINE, || async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(term.elapsed() >= Duration::from_secs(3));
    // streams opened before go on to their end
    socket.echo("still open while draining").await;
    sse.proceed.notify_one();
    stream.finish().await;
    drop(socket);

    wait_exit(&mut fx.gw, Duration::from_secs(20)).await;
    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{} failures at shutdown: {:#?}",
        tally.failures.len(),
        tally.failures
    );
    assert!(tally.answered > 70, "{tally:?}");
    assert!(
        !fx.gw.stderr().contains("cc-gateway: "),
        "not a clean exit:\n{}",
        fx.gw.stderr()
    );
}

#[tokio::test]
async fn a_request_cut_by_shutdown_timeout_is_answered_and_logged_503_shutting_down() {
    let slow = Slow::start().await;
    let sse = Sse::start().await;
    let mut fx = Fixture::with(Opts {
        server_extra: "drain_delay = \"0s\"\nshutdown_timeout = \"500ms\"".into(),
        extra: format!("{}{}", route("slow", slow.addr), route("sse", sse.addr)),
        ..Opts::default()
    })
    .await;
    let addr = fx.gw.addr;
    // a stream that outlives the timeout keeps its worker in the cut-off's grace period (1 s)
    // after the 503: time for the access-log thread to write the line before the process
    // exits (lines queued at the very exit can be lost: the writer thread is not joined)
    let _stream = SseClient::open(addr, "/sse/s").await;
    let pending = tokio::spawn(async move { Req::get("/slow/never").send(addr).await });
    wait_until("the request to reach the upstream", DEADLINE, || async {
        if slow.accepted() > 0 {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    signal(fx.gw.pid(), "TERM");
    let r = pending.await.expect("request task");
    assert_error(&r, 503, "shutting_down");
    let line: Value = wait_until("the access-log line", DEADLINE, || async {
        std::fs::read_to_string(&fx.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["path"] == "/slow/never")
            .ok_or_else(|| "not logged yet".to_string())
    })
    .await;
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["reason"], "shutting_down", "{line}");
    assert_eq!(
        line["request_id"],
        r.header("x-request-id").unwrap_or_default(),
        "the answer and the log name the same request"
    );
    wait_exit(&mut fx.gw, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn drain_delay_is_a_validated_duration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "[server]\ndrain_delay = \"a while\"\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\nauth = \"public\"\n\n[[upstreams]]\nname = \"u\"\nendpoints = [\"127.0.0.1:1\"]\n",
    )
    .expect("config");
    let o = run_check(&path, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("server.drain_delay"),
        "{}",
        describe_output(&o)
    );
}

#[tokio::test]
async fn an_http2_connection_gets_goaway_and_its_open_stream_completes() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let sse = Sse::start().await;
    let mut fx = Fixture::with(Opts {
        server_extra: "drain_delay = \"0s\"\nshutdown_timeout = \"30s\"".into(),
        extra: route("sse", sse.addr),
        ..Opts::default()
    })
    .await;
    let addr = fx.gw.addr;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request")
    };
    let resp = sender.send_request(get("/sse/h2")).await.expect("stream");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("the first event in time")
        .expect("a frame")
        .expect("a frame");
    assert!(first.is_data());

    signal(fx.gw.pid(), "TERM");
    // GOAWAY: the connection takes no new stream (hyper fails the request without sending)...
    wait_until("the connection to refuse new streams", DEADLINE, || {
        let fut = sender.send_request(get("/public/after-goaway"));
        async move {
            match fut.await {
                Err(e) => Ok(e),
                Ok(r) => Err(format!("still answered: {}", r.status())),
            }
        }
    })
    .await;
    // ...while the open one runs to its end
    sse.proceed.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("the stream's end in time")
        .expect("the stream completes")
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&rest).contains("second"),
        "{rest:?}"
    );
    wait_exit(&mut fx.gw, Duration::from_secs(20)).await;
    let _ = conn.await;
}
