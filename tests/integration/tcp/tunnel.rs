//! Outbound tunnels: real `cc-gateway tunnel` agents dial out to a real gateway and carry
//! streams to services only they can reach — PostgreSQL through an L4 route and through
//! `cc-gateway connect`, bulk bytes, half-close, a thousand streams at once, agents killed and
//! restarted, two agents failing over, refused agent tokens and a rotated one.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::plain::{bulk_target, digest_all, send_pattern, HUNDRED_MB};
use super::*;
use crate::common::postgres::Postgres;
use crate::common::wait::DEADLINE;
use crate::common::{metric, wait_metric, Fixture, Opts};

const TUNNEL: &str = "\n[[tunnels]]\nname = \"onprem\"\nissuer = \"test\"\naudience = \"cc-gateway-tunnel\"\nsubjects = [\"agent-1\", \"agent-2\"]\n";

fn tcp_route(name: &str, service: &str) -> String {
    format!(
        "\n[[tcp_routes]]\nname = {}\nlisten = [\"127.0.0.1:0\"]\ntarget = {}\n",
        q(name),
        q(&format!("tunnel:onprem/{service}"))
    )
}

/// The standard fixture (issuer "test") with the `onprem` tunnel and `extra`.
async fn fixture(extra: &str) -> Fixture {
    Fixture::with(Opts {
        extra: format!("{TUNNEL}{extra}"),
        ..Opts::default()
    })
    .await
}

/// An agent token for `sub`, written to a file in `dir`.
fn agent_token(f: &Fixture, dir: &std::path::Path, sub: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{sub}.token"));
    let token = f.token_with(|c| {
        c["aud"] = "cc-gateway-tunnel".into();
        c["sub"] = sub.into();
    });
    std::fs::write(&path, token).expect("token file");
    path
}

/// A running agent of `onprem`, once it says `connected`.
async fn agent(f: &Fixture, token: &std::path::Path, expose: &[(&str, SocketAddr)]) -> Helper {
    let url = format!("ws://{}", f.gw.addr);
    let token = token.display().to_string();
    let exposed: Vec<String> = expose.iter().map(|(n, a)| format!("{n}={a}")).collect();
    let mut args = vec![
        "tunnel",
        "--gateway",
        &url,
        "--tunnel",
        "onprem",
        "--token-file",
        &token,
    ];
    for e in &exposed {
        args.push("--expose");
        args.push(e);
    }
    let (h, first) = Helper::start(&args).await;
    assert_eq!(first, "connected", "{}", h.stderr());
    h
}

/// The fixture with an L4 route per service (named like it) and one agent exposing them all.
async fn routed_agent(services: &[(&str, SocketAddr)]) -> (Fixture, Helper, tempfile::TempDir) {
    let routes: String = services.iter().map(|(n, _)| tcp_route(n, n)).collect();
    let f = fixture(&routes).await;
    let dir = tempfile::tempdir().expect("dir");
    let a = agent(&f, &agent_token(&f, dir.path(), "agent-1"), services).await;
    agents(&f, 1.0).await;
    (f, a, dir)
}

async fn agents(f: &Fixture, n: f64) {
    wait_gauge(
        &f.gw,
        "cc_gateway_tunnel_agents",
        &[("tunnel", "onprem")],
        n,
    )
    .await;
}

/// A target that answers every connection with `tag` and then echoes.
async fn tagged_echo(tag: &'static [u8]) -> SocketAddr {
    target(move |mut s| async move {
        if s.write_all(tag).await.is_err() {
            return;
        }
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// Sends `msg` on a new connection to `addr`, half-closes, returns everything read back.
async fn round_trip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(msg).await.expect("write");
    c.shutdown().await.expect("half-close");
    let mut back = Vec::new();
    tokio::time::timeout(DEADLINE, c.read_to_end(&mut back))
        .await
        .expect("EOF within the deadline")
        .expect("read");
    back
}

#[tokio::test]
async fn psql_reaches_postgres_through_an_agent_and_recovers_when_it_comes_back() {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("postgres started");
    let extra = format!(
        "{}\n[[routes]]\nname = \"pg-ws\"\npath_prefix = \"/connect/pg\"\nconnect = \"tunnel:onprem/pg\"\naudience = {}\n",
        tcp_route("pg", "pg"),
        q(crate::common::AUD)
    );
    let f = fixture(&extra).await;
    let dir = tempfile::tempdir().expect("dir");
    let token = agent_token(&f, dir.path(), "agent-1");
    let mut a = agent(&f, &token, &[("pg", pg.addr())]).await;
    agents(&f, 1.0).await;
    let via = tcp_addr(&f.gw, "pg");
    let pg = std::sync::Arc::new(pg);
    let script = "CREATE TABLE t (id int PRIMARY KEY, name text);\n\
                  COPY t FROM STDIN;\n1\tone\n2\ttwo\n3\tthree\n\\.\n\
                  PREPARE by_id(int) AS SELECT name FROM t WHERE id = $1;\n\
                  EXECUTE by_id(2);\n\
                  COPY (SELECT id, name FROM t ORDER BY id) TO STDOUT;\n";
    let p = pg.clone();
    let out = tokio::task::spawn_blocking(move || p.psql(via, &[], script))
        .await
        .expect("psql ran");
    assert_eq!(out, "two\n1\tone\n2\ttwo\n3\tthree\n");

    // the same database through `cc-gateway connect` and a connect route behind the tunnel
    let token_file = dir.path().join("client.token");
    std::fs::write(&token_file, f.token()).expect("token");
    let url = format!("ws://{}/connect/pg", f.gw.addr);
    let (connector, line) = Helper::start(&[
        "connect",
        "--url",
        &url,
        "--token-file",
        &token_file.display().to_string(),
        "--listen",
        "127.0.0.1:0",
    ])
    .await;
    let local: SocketAddr = line
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .expect("listening line");
    let p = pg.clone();
    let out = tokio::task::spawn_blocking(move || {
        p.psql(local, &[], "SELECT name FROM t ORDER BY id DESC LIMIT 1;\n")
    })
    .await
    .expect("psql ran");
    assert_eq!(out, "three\n");

    // the agent dies: L4 connections are closed and logged, the WebSocket route answers 503
    a.kill();
    agents(&f, 0.0).await;
    let mut c = TcpStream::connect(via).await.expect("connect");
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, c.read_to_end(&mut buf))
        .await
        .expect("closed within the deadline")
        .expect("read");
    assert!(buf.is_empty());
    wait_metric(
        &f.gw,
        "cc_gateway_tcp_connections_total",
        &[("route", "pg"), ("result", "tunnel_unavailable")],
        1.0,
    )
    .await;
    let r = crate::common::raw_request(
        f.gw.addr,
        &format!(
            "GET /connect/pg HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            f.token()
        )
        .into_bytes(),
    )
    .await
    .expect("an answer");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.raw));
    assert_eq!(r.json()["reason"], "tunnel_unavailable");
    assert!(
        metric(
            &f.metrics().await,
            "cc_gateway_tunnel_streams_total",
            &[("tunnel", "onprem"), ("result", "unavailable")]
        ) >= 2.0
    );

    // it comes back: streams flow again
    let _a = agent(&f, &token, &[("pg", pg.addr())]).await;
    agents(&f, 1.0).await;
    let p = pg.clone();
    let out = tokio::task::spawn_blocking(move || p.psql(via, &[], "SELECT count(*) FROM t;\n"))
        .await
        .expect("psql ran");
    assert_eq!(out, "3\n");
    drop(connector);
}

#[tokio::test]
async fn two_agents_share_the_streams_and_one_takes_over_when_the_other_dies() {
    let (a_echo, b_echo) = (tagged_echo(b"A").await, tagged_echo(b"B").await);
    let f = fixture(&tcp_route("echo", "echo")).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut a = agent(
        &f,
        &agent_token(&f, dir.path(), "agent-1"),
        &[("echo", a_echo)],
    )
    .await;
    let _b = agent(
        &f,
        &agent_token(&f, dir.path(), "agent-2"),
        &[("echo", b_echo)],
    )
    .await;
    agents(&f, 2.0).await;
    let via = tcp_addr(&f.gw, "echo");

    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let back = round_trip(via, b"ping").await;
        assert_eq!(&back[1..], b"ping");
        seen.insert(back[0]);
    }
    assert_eq!(seen.len(), 2, "streams spread over both agents");

    // a stream open on B goes on while A dies; new streams all go to B
    let mut on_b = loop {
        let mut c = TcpStream::connect(via).await.expect("connect");
        let mut tag = [0u8; 1];
        c.read_exact(&mut tag).await.expect("tag");
        if &tag == b"B" {
            break c;
        }
    };
    a.kill();
    agents(&f, 1.0).await;
    for _ in 0..4 {
        assert_eq!(round_trip(via, b"after").await, b"Bafter");
    }
    on_b.write_all(b"still").await.expect("write");
    let mut still = [0u8; 5];
    on_b.read_exact(&mut still).await.expect("read");
    assert_eq!(&still, b"still");
}

#[tokio::test]
async fn refused_agent_tokens_are_counted_and_a_rotated_token_gets_in() {
    let echo = echo_target().await;
    let f = fixture(&tcp_route("echo", "echo")).await;
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("agent.token");
    // a subject the tunnel does not list
    std::fs::write(
        &token,
        f.token_with(|c| {
            c["aud"] = "cc-gateway-tunnel".into();
            c["sub"] = "intruder".into();
        }),
    )
    .expect("token");
    let url = format!("ws://{}", f.gw.addr);
    let token_arg = token.display().to_string();
    let expose = format!("echo={echo}");
    let mut child = crate::common::gateway::command()
        .args([
            "tunnel",
            "--gateway",
            &url,
            "--tunnel",
            "onprem",
            "--token-file",
            &token_arg,
            "--expose",
            &expose,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    wait_metric(
        &f.gw,
        "cc_gateway_tunnel_agent_connections_total",
        &[("tunnel", "onprem"), ("result", "insufficient_scope")],
        1.0,
    )
    .await;
    // another audience, then an expired token: the ordinary reasons
    std::fs::write(
        &token,
        f.token_with(|c| {
            c["sub"] = "agent-1".into();
        }),
    )
    .expect("token");
    wait_metric(
        &f.gw,
        "cc_gateway_tunnel_agent_connections_total",
        &[("tunnel", "onprem"), ("result", "audience_mismatch")],
        1.0,
    )
    .await;
    std::fs::write(
        &token,
        f.token_with(|c| {
            c["aud"] = "cc-gateway-tunnel".into();
            c["sub"] = "agent-1".into();
            c["exp"] = (crate::common::now() - 3600).into();
        }),
    )
    .expect("token");
    wait_metric(
        &f.gw,
        "cc_gateway_tunnel_agent_connections_total",
        &[("tunnel", "onprem"), ("result", "expired")],
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            &f.metrics().await,
            "cc_gateway_tunnel_agents",
            &[("tunnel", "onprem")]
        ),
        0.0,
        "no refused agent is connected"
    );
    // the file rotates to a good token: the retrying agent gets in and carries streams
    agent_token(&f, dir.path(), "agent-1");
    std::fs::rename(dir.path().join("agent-1.token"), &token).expect("rotate");
    agents(&f, 1.0).await;
    assert_eq!(
        round_trip(tcp_addr(&f.gw, "echo"), b"in").await,
        b"in".to_vec()
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_hundred_megabytes_each_way_and_half_close_cross_the_tunnel() {
    let (bulk, mut rx) = bulk_target(HUNDRED_MB).await;
    // closes its half first, then still reads what the client sends
    let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let bye = target(move |mut s| {
        let tx2 = tx2.clone();
        async move {
            s.write_all(b"bye").await.expect("write");
            s.shutdown().await.expect("half-close");
            let mut after = Vec::new();
            s.read_to_end(&mut after).await.expect("read");
            let _ = tx2.send(after);
        }
    })
    .await;
    let (f, _a, _dir) = routed_agent(&[("bulk", bulk), ("bye", bye)]).await;

    let c = TcpStream::connect(tcp_addr(&f.gw, "bulk"))
        .await
        .expect("connect");
    let (mut r, mut w) = c.into_split();
    let (sent, got) = tokio::time::timeout(Duration::from_secs(240), async {
        tokio::join!(send_pattern(&mut w, HUNDRED_MB, 0), digest_all(&mut r))
    })
    .await
    .expect("200 MB within 4 minutes");
    let (target_got, target_sent) = rx.recv().await.expect("target done");
    assert_eq!(target_got, (HUNDRED_MB, sent), "client → target");
    assert_eq!(got, (HUNDRED_MB, target_sent), "target → client");

    // the target's FIN reaches the client, which can still send
    let mut c = TcpStream::connect(tcp_addr(&f.gw, "bye"))
        .await
        .expect("connect");
    let mut first = [0u8; 3];
    c.read_exact(&mut first).await.expect("read");
    assert_eq!(&first, b"bye");
    assert_eq!(c.read(&mut [0u8; 1]).await.expect("EOF"), 0);
    c.write_all(b"still here").await.expect("write after EOF");
    c.shutdown().await.expect("close");
    assert_eq!(rx2.recv().await.expect("target got"), b"still here");
}

#[tokio::test]
async fn a_thousand_concurrent_streams_over_one_agent_and_a_slow_reader_stays_bounded() {
    let echo = echo_target().await;
    let (firehose, mut stalled) = firehose().await;
    let (f, _a, _dir) = routed_agent(&[("echo", echo), ("fire", firehose)]).await;
    let via = tcp_addr(&f.gw, "echo");

    // all open at once before any finishes: each sends, then waits for the others
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000u32)
        .map(|i| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let mut c = TcpStream::connect(via).await.expect("connect");
                let msg = format!("stream {i} ").repeat(20);
                c.write_all(msg.as_bytes()).await.expect("write");
                let mut back = vec![0u8; msg.len()];
                c.read_exact(&mut back).await.expect("echo");
                barrier.wait().await;
                c.shutdown().await.expect("half-close");
                let mut rest = Vec::new();
                c.read_to_end(&mut rest).await.expect("EOF");
                assert!(rest.is_empty());
                back == msg.as_bytes()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("every stream within 2 minutes")
            .expect("task")
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 1000);
    assert!(
        metric(
            &f.metrics().await,
            "cc_gateway_tunnel_streams_total",
            &[("tunnel", "onprem"), ("result", "ok")]
        ) >= 1000.0
    );

    // a client that reads nothing: the target is held back, the gateway does not grow
    let mut idle = TcpStream::connect(tcp_addr(&f.gw, "fire"))
        .await
        .expect("connect");
    assert_bounded_while_unread(f.gw.pid(), &mut idle, &mut stalled).await;
}

#[tokio::test]
async fn an_http_route_reaches_an_upstream_behind_the_tunnel() {
    let extra = format!(
        "\n[[upstreams]]\nname = \"behind\"\nendpoints = [\"tunnel:onprem/ai\"]\n\n[[routes]]\nname = \"behind\"\npath_prefix = \"/behind/\"\nstrip_prefix = true\nupstream = \"behind\"\naudience = {}\n",
        q(crate::common::AUD)
    );
    let f = fixture(&extra).await;
    // no agent yet: 503 with the reason, and the request never reached an upstream
    let r = f
        .send(crate::common::Req::get("/behind/v1/models").token(&f.token()))
        .await;
    crate::common::assert_error(&r, 503, "tunnel_unavailable");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));

    let dir = tempfile::tempdir().expect("dir");
    let mut a = agent(
        &f,
        &agent_token(&f, dir.path(), "agent-1"),
        &[("ai", f.echo.addr)],
    )
    .await;
    agents(&f, 1.0).await;
    // through the agent, with the identity headers and the path as any upstream gets them;
    // several in a row share the agent's connection
    for i in 0..5 {
        let v = f
            .expect_ok(
                crate::common::Req::get(&format!("/behind/v1/models?i={i}")).token(&f.token()),
            )
            .await;
        assert_eq!(v["path"], "/v1/models", "{v}");
        assert_eq!(v["query"], format!("i={i}"), "{v}");
        assert_eq!(v["headers"]["x-cc-subject"][0], crate::common::SUB, "{v}");
    }
    let line = std::fs::read_to_string(&f.access_log).expect("access log");
    assert!(
        line.contains("\"endpoint\":\"ai.onprem.tunnel.invalid:1\""),
        "{line}"
    );

    a.kill();
    agents(&f, 0.0).await;
    let r = f
        .send(crate::common::Req::get("/behind/v1/models").token(&f.token()))
        .await;
    crate::common::assert_error(&r, 503, "tunnel_unavailable");
    assert!(
        metric(
            &f.metrics().await,
            "cc_gateway_upstream_errors_total",
            &[("upstream", "behind"), ("kind", "tunnel")]
        ) >= 2.0
    );
}

#[tokio::test]
async fn a_binary_upgrade_moves_the_agent_to_the_new_process() {
    let echo = echo_target().await;
    let mut f = Fixture::with(Opts {
        server_extra: "upgrade_socket = \"upgrade.sock\"".into(),
        extra: format!("{TUNNEL}{}", tcp_route("echo", "echo")),
        ..Opts::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let a = agent(
        &f,
        &agent_token(&f, dir.path(), "agent-1"),
        &[("echo", echo)],
    )
    .await;
    agents(&f, 1.0).await;
    let via = tcp_addr(&f.gw, "echo");
    assert_eq!(round_trip(via, b"before").await, b"before".to_vec());

    let args = vec![
        std::ffi::OsString::from("run"),
        "--config".into(),
        f.config_path.as_os_str().to_owned(),
        "--upgrade".into(),
    ];
    // a stream open across the upgrade
    let mut old_stream = TcpStream::connect(via).await.expect("connect");
    old_stream.write_all(b"1").await.expect("write");
    let mut one = [0u8; 1];
    old_stream.read_exact(&mut one).await.expect("echo");
    let new = crate::common::Gateway::spawn_with(args, &f.config_path).await;
    // the draining process asked the agent to dial again: it is the new process's now (its
    // own log says so; the shared admin socket may still answer from the old process)
    crate::common::wait_until("the agent on the new process", DEADLINE, || async {
        let err = new.stderr();
        if err.contains("tunnel agent connected") {
            Ok(())
        } else {
            Err(err)
        }
    })
    .await;
    assert_eq!(tcp_addr(&new, "echo"), via, "the same L4 socket");
    assert_eq!(round_trip(via, b"after").await, b"after".to_vec());
    // the old process still carries its stream (over the agent's old connection) and waits
    // for it before it exits
    assert!(
        f.gw.is_running(),
        "the old process waits for its open L4 stream"
    );
    old_stream.write_all(b"2").await.expect("write");
    old_stream
        .read_exact(&mut one)
        .await
        .expect("echo on the old stream");
    assert_eq!(&one, b"2");
    drop(old_stream);
    crate::common::process::wait_exit(&mut f.gw, Duration::from_secs(20)).await;
    assert!(
        a.stderr().contains("the gateway asked to reconnect"),
        "{}",
        a.stderr()
    );
}
