//! TCP over WebSocket: an HTTP route with `connect = …` turns an authorised WebSocket into a
//! byte stream to its target, and `cc-gateway connect` exposes it as a local port. Real
//! gateway, real WebSocket clients (tungstenite and our own binary), real TLS and PostgreSQL.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::plain::{bulk_target, digest_all, send_pattern};
use super::*;
use crate::common::postgres::Postgres;
use crate::common::wait::DEADLINE;
use crate::common::{dead_addr, metric, wait_metric, Fixture, Opts, Req, AUD};

/// A `connect` route on `path` to `target`, needing the fixture's audience.
fn connect_route(name: &str, path: &str, target: &str, extra: &str) -> String {
    format!(
        "\n[[routes]]\nname = {}\npath_prefix = {}\nconnect = {}\naudience = {}\n{extra}\n",
        q(name),
        q(path),
        q(target),
        q(AUD)
    )
}

async fn fixture(extra: String) -> Fixture {
    Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await
}

/// Opens a WebSocket to `path` on the gateway's plaintext listener, with `token` if any.
async fn ws(
    f: &Fixture,
    path: &str,
    token: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, WsError> {
    let mut req = format!("ws://{}{path}", f.gw.addr)
        .into_client_request()
        .expect("request");
    if let Some(t) = token {
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    let tcp = TcpStream::connect(f.gw.addr).await.expect("connect");
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(s, _)| s)
}

/// The refusal of a handshake: status and JSON reason.
fn refusal(e: WsError) -> (u16, String) {
    match e {
        WsError::Http(resp) => {
            let body: serde_json::Value = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            (
                resp.status().as_u16(),
                body["reason"].as_str().unwrap_or("").to_string(),
            )
        }
        other => panic!("not an HTTP refusal: {other}"),
    }
}

/// The next message within the deadline.
async fn next(s: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Option<Message> {
    tokio::time::timeout(DEADLINE, s.next())
        .await
        .expect("a message within the deadline")
        .map(|m| m.expect("a message"))
}

#[tokio::test]
async fn a_connect_route_carries_bytes_after_auth_and_refuses_with_reasons() {
    let echo = echo_target().await;
    let extra = format!(
        "{}{}",
        connect_route("echo", "/connect/echo", &echo.to_string(), ""),
        connect_route("down", "/connect/down", &dead_addr().to_string(), "")
    );
    let f = fixture(extra).await;

    // no token, a token for another audience: the ordinary refusals, and no stream
    assert_eq!(
        refusal(ws(&f, "/connect/echo", None).await.expect_err("refused")),
        (401, "missing_token".into())
    );
    let wrong = f.token_with(|c| c["aud"] = "someone-else".into());
    assert_eq!(
        refusal(
            ws(&f, "/connect/echo", Some(&wrong))
                .await
                .expect_err("refused")
        ),
        (401, "audience_mismatch".into())
    );

    // an authorised WebSocket: bytes both ways, and half-close by an empty message
    let mut s = ws(&f, "/connect/echo", Some(&f.token()))
        .await
        .expect("switched");
    s.send(Message::binary(b"hello".to_vec()))
        .await
        .expect("send");
    assert_eq!(next(&mut s).await, Some(Message::binary(b"hello".to_vec())));
    s.send(Message::binary(Vec::new())).await.expect("FIN");
    // the echo target sees EOF and closes: its FIN comes back as an empty message
    assert_eq!(next(&mut s).await, Some(Message::binary(Vec::new())));
    match next(&mut s).await {
        None | Some(Message::Close(_)) => {}
        other => panic!("expected the close, got {other:?}"),
    }

    // not a WebSocket: 426 with the reason; an unreachable target: 502 before any switch
    let r = f.send(Req::get("/connect/echo").token(&f.token())).await;
    assert_eq!(r.status, 426, "{}", r.describe());
    assert_eq!(r.reason(), "websocket_required");
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(
        refusal(
            ws(&f, "/connect/down", Some(&f.token()))
                .await
                .expect_err("refused")
        ),
        (502, "upstream_unavailable".into())
    );

    // counted and logged like an L4 route's connection
    wait_metric(
        &f.gw,
        "cc_gateway_tcp_connections_total",
        &[("route", "down"), ("result", "connect_failed")],
        1.0,
    )
    .await;
    let m = f.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cc_gateway_tcp_connections_total",
            &[("route", "echo"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "cc_gateway_tcp_connections", &[("route", "echo")]),
        0.0
    );
    let dir = f.access_log.parent().expect("dir").to_path_buf();
    let lines = tcp_log_lines_in(&dir, 2).await;
    let ok = lines
        .iter()
        .find(|l| l["route"] == "echo")
        .expect("echo logged");
    assert_eq!(ok["bytes_in"], 5);
    assert_eq!(ok["bytes_out"], 5);
    assert_eq!(ok["target"], echo.to_string());
    assert!(ok["reason"].is_null(), "{ok}");
    let down = lines
        .iter()
        .find(|l| l["route"] == "down")
        .expect("down logged");
    assert_eq!(down["result"], "connect_failed");
    // the HTTP line of the upgrade says 101
    let text = std::fs::read_to_string(&f.access_log).expect("access log");
    assert!(
        text.lines()
            .any(|l| l.contains("\"path\":\"/connect/echo\"") && l.contains("\"status\":101")),
        "{text}"
    );
}

#[tokio::test]
async fn a_text_message_or_an_oversized_one_ends_the_stream() {
    let echo = echo_target().await;
    let f = fixture(connect_route(
        "echo",
        "/connect/echo",
        &echo.to_string(),
        "",
    ))
    .await;
    let mut s = ws(&f, "/connect/echo", Some(&f.token()))
        .await
        .expect("switched");
    s.send(Message::text("not bytes")).await.expect("send");
    match next(&mut s).await {
        None | Some(Message::Close(_)) => {}
        other => panic!("a text message must end the stream, got {other:?}"),
    }
    // a 2 MiB message is over the 1 MiB bound: refused, not buffered
    let mut s = ws(&f, "/connect/echo", Some(&f.token()))
        .await
        .expect("switched");
    let _ = s.send(Message::binary(vec![1u8; 2 << 20])).await;
    loop {
        match tokio::time::timeout(DEADLINE, s.next())
            .await
            .expect("ends within the deadline")
        {
            Some(Ok(Message::Binary(b))) => panic!("{} bytes echoed", b.len()),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    let dir = f.access_log.parent().expect("dir").to_path_buf();
    let lines = tcp_log_lines_in(&dir, 2).await;
    assert!(lines.iter().all(|l| l["reason"] == "error"), "{lines:?}");
}

/// A running `cc-gateway connect`, killed on drop.
struct Connector {
    _proc: Helper,
    addr: SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Connector {
    async fn start(args: &[&str]) -> Connector {
        let mut all = vec!["connect"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--listen", "127.0.0.1:0"]);
        let (proc, line) = Helper::start(&all).await;
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Connector {
            stderr: proc.stderr.clone(),
            _proc: proc,
            addr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[tokio::test]
async fn the_connect_client_carries_20_mb_each_way_and_bounds_a_slow_reader() {
    const N: usize = 20 * 1024 * 1024;
    let (bulk, mut rx) = bulk_target(N).await;
    let (firehose, mut stalled) = firehose().await;
    let extra = format!(
        "{}{}",
        connect_route("bulk", "/connect/bulk", &bulk.to_string(), ""),
        connect_route("fire", "/connect/fire", &firehose.to_string(), "")
    );
    let f = fixture(extra).await;
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, f.token()).expect("token");
    let url = format!("ws://{}/connect/bulk", f.gw.addr);
    let c = Connector::start(&[
        "--url",
        &url,
        "--token-file",
        &token_file.display().to_string(),
    ])
    .await;

    let s = TcpStream::connect(c.addr).await.expect("local port");
    let (mut r, mut w) = s.into_split();
    let (sent, got) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(send_pattern(&mut w, N, 0), digest_all(&mut r))
    })
    .await
    .expect("40 MB within 2 minutes");
    let (target_got, target_sent) = rx.recv().await.expect("target done");
    assert_eq!(target_got, (N, sent), "client → target");
    assert_eq!(got, (N, target_sent), "target → client");

    // the slow reader: the gateway's memory stays flat while the target is held back
    let url = format!("ws://{}/connect/fire", f.gw.addr);
    let c2 = Connector::start(&[
        "--url",
        &url,
        "--token-file",
        &token_file.display().to_string(),
    ])
    .await;
    let mut idle = TcpStream::connect(c2.addr).await.expect("local port");
    assert_bounded_while_unread(f.gw.pid(), &mut idle, &mut stalled).await;
    drop(idle);
    drop(c2);
    drop(c);
}

#[tokio::test]
async fn psql_reaches_postgres_through_cc_gateway_connect_over_tls_with_a_rotated_token() {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("postgres started");
    let certs = tempfile::tempdir().expect("dir");
    let ca = crate::tls::Ca::new("connect test CA");
    let (cert, key) = ca.leaf("gw", &["localhost"], &[]).write(certs.path(), "gw");
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, ca.issuer_pem()).expect("ca");
    let f = Fixture::with(Opts {
        server_extra: crate::tls::tls_line(&[(&cert, &key, &[])], ""),
        extra: connect_route("pg", "/connect/pg", &pg.addr().to_string(), ""),
        ..Opts::default()
    })
    .await;
    let tls = crate::tls::tls_addr(&f.gw);
    let token_file = certs.path().join("token");
    // an expired token first: the client reports the refusal and closes the local connection
    std::fs::write(
        &token_file,
        f.token_with(|c| c["exp"] = (crate::common::now() - 3600).into()),
    )
    .expect("token");
    let url = format!("wss://localhost:{}/connect/pg", tls.port());
    let c = Connector::start(&[
        "--url",
        &url,
        "--token-file",
        &token_file.display().to_string(),
        "--ca",
        &ca_file.display().to_string(),
    ])
    .await;
    let mut refused = TcpStream::connect(c.addr).await.expect("local port");
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, refused.read_to_end(&mut buf))
        .await
        .expect("closed within the deadline")
        .expect("read");
    assert!(buf.is_empty());
    crate::common::wait_until("the refusal in the client's log", DEADLINE, || async {
        let err = c.stderr();
        if err.contains("401") && err.contains("expired") {
            Ok(())
        } else {
            Err(err)
        }
    })
    .await;

    // the token file rotated: the next connection uses the new token
    std::fs::write(&token_file, f.token()).expect("token");
    let pg = std::sync::Arc::new(pg);
    let p = pg.clone();
    let via = c.addr;
    let out = tokio::task::spawn_blocking(move || {
        p.psql(
            via,
            &[],
            "CREATE TABLE t (id int PRIMARY KEY, name text);\n\
             COPY t FROM STDIN;\n1\tone\n2\ttwo\n3\tthree\n\\.\n\
             PREPARE by_id(int) AS SELECT name FROM t WHERE id = $1;\n\
             EXECUTE by_id(2);\n\
             COPY (SELECT id, name FROM t ORDER BY id) TO STDOUT;\n",
        )
    })
    .await
    .expect("psql ran");
    assert_eq!(out, "two\n1\tone\n2\ttwo\n3\tthree\n");
    wait_gauge(&f.gw, "cc_gateway_tcp_connections", &[("route", "pg")], 0.0).await;
    assert!(
        metric(
            &f.metrics().await,
            "cc_gateway_tcp_connections_total",
            &[("route", "pg"), ("result", "ok")]
        ) >= 1.0
    );
}
