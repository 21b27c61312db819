//! Plain L4 routes: bytes, half-close, 100 MB each way, back pressure, limits, PROXY v2, idle
//! timeout, unreachable targets, `check`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::common::fixture::q;
use crate::common::wait::DEADLINE;
use crate::common::{dead_addr, metric, run_check, wait_metric};

fn route(name: &str, target: SocketAddr, extra: &str) -> String {
    format!(
        "[[tcp_routes]]\nname = {}\nlisten = [\"127.0.0.1:0\"]\ntarget = {}\n{extra}\n",
        q(name),
        q(&target.to_string())
    )
}

/// Reads to EOF within the test deadline.
async fn read_to_end(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .expect("EOF within the deadline")
        .expect("reading");
    buf
}

#[tokio::test]
async fn bytes_and_half_close_cross_both_ways() {
    // the target answers only once the client's half is closed, then closes its own half
    // first and still reads what the client sends after that
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let t = target(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("target reads");
            s.write_all(format!("got {}", got.len()).as_bytes())
                .await
                .expect("target writes");
            let _ = tx.send(got);
        }
    })
    .await;
    let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let t3 = target(move |mut s| {
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
    let routes = format!("{}{}", route("a", t, ""), route("b", t3, ""));
    let (gw, dir) = gateway("", &routes).await;

    // client → target EOF: the target sees it and can still answer
    let mut c = TcpStream::connect(tcp_addr(&gw, "a"))
        .await
        .expect("connect");
    c.write_all(b"hello").await.expect("write");
    c.shutdown().await.expect("client half-close");
    assert_eq!(read_to_end(&mut c).await, b"got 5");
    assert_eq!(rx.recv().await.expect("target got"), b"hello");

    // target → client EOF: the client sees it and can still send
    let mut c = TcpStream::connect(tcp_addr(&gw, "b"))
        .await
        .expect("connect");
    let mut first = [0u8; 3];
    c.read_exact(&mut first).await.expect("read");
    assert_eq!(&first, b"bye");
    assert_eq!(c.read(&mut [0u8; 1]).await.expect("EOF"), 0);
    c.write_all(b"still here").await.expect("write after EOF");
    c.shutdown().await.expect("close");
    assert_eq!(rx2.recv().await.expect("target got"), b"still here");

    let lines = tcp_log_lines(&dir, 2).await;
    let a = lines
        .iter()
        .find(|l| l["route"] == "a")
        .expect("route a logged");
    assert_eq!(a["bytes_in"], 5);
    assert_eq!(a["bytes_out"], 5);
    assert_eq!(a["result"], "ok");
    assert_eq!(a["target"], t.to_string());
    assert!(a["client"]
        .as_str()
        .expect("client")
        .starts_with("127.0.0.1:"));
    assert!(a["duration_ms"].is_number());
    assert!(a.get("reason").is_none() || a["reason"].is_null(), "{a}");
    wait_metric(
        &gw,
        "cc_gateway_tcp_connections_total",
        &[("route", "b"), ("result", "ok")],
        1.0,
    )
    .await;
    wait_metric(
        &gw,
        "cc_gateway_tcp_bytes_total",
        &[("route", "b"), ("direction", "in")],
        10.0,
    )
    .await;
    wait_metric(
        &gw,
        "cc_gateway_tcp_bytes_total",
        &[("route", "b"), ("direction", "out")],
        3.0,
    )
    .await;
    wait_gauge(&gw, "cc_gateway_tcp_connections", &[("route", "b")], 0.0).await;
}

pub(super) const HUNDRED_MB: usize = 100 * 1024 * 1024;

/// Deterministic, incompressible-looking bytes: block `i` is SHA-256 chained.
fn block(i: u64) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &i.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Writes `n` bytes of pattern seeded by `seed` and closes the write half; returns their digest.
pub(super) async fn send_pattern(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    n: usize,
    seed: u64,
) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut sent = 0usize;
    let mut i = seed;
    while sent < n {
        buf.clear();
        while buf.len() < 64 * 1024 && sent + buf.len() < n {
            buf.extend_from_slice(&block(i));
            i += 1;
        }
        buf.truncate(n - sent);
        ctx.update(&buf);
        w.write_all(&buf).await.expect("writing the pattern");
        sent += buf.len();
    }
    w.shutdown().await.expect("half-close after the pattern");
    ctx.finish().as_ref().to_vec()
}

/// Reads to EOF; returns (bytes, digest).
pub(super) async fn digest_all(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> (usize, Vec<u8>) {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        let k = r.read(&mut buf).await.expect("reading");
        if k == 0 {
            return (n, ctx.finish().as_ref().to_vec());
        }
        ctx.update(&buf[..k]);
        n += k;
    }
}

/// A target that sends `n` bytes of pattern while it reads to EOF; reports
/// ((bytes, digest) received, digest sent).
pub(super) async fn bulk_target(
    n: usize,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<((usize, Vec<u8>), Vec<u8>)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = target(move |s| {
        let tx = tx.clone();
        async move {
            let (mut r, mut w) = s.into_split();
            let (got, sent) = tokio::join!(digest_all(&mut r), send_pattern(&mut w, n, 1 << 40));
            let _ = tx.send((got, sent));
        }
    })
    .await;
    (addr, rx)
}

#[tokio::test]
async fn a_hundred_megabytes_each_way_arrive_identical() {
    let (t, mut rx) = bulk_target(HUNDRED_MB).await;
    let (gw, dir) = gateway("", &route("bulk", t, "")).await;
    let c = TcpStream::connect(tcp_addr(&gw, "bulk"))
        .await
        .expect("connect");
    let (mut r, mut w) = c.into_split();
    let run = async { tokio::join!(send_pattern(&mut w, HUNDRED_MB, 0), digest_all(&mut r)) };
    let (sent, got) = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("200 MB within 2 minutes");
    let (target_got, target_sent) = rx.recv().await.expect("target done");
    assert_eq!(target_got, (HUNDRED_MB, sent), "client → target");
    assert_eq!(got, (HUNDRED_MB, target_sent), "target → client");
    let line = &tcp_log_lines(&dir, 1).await[0];
    assert_eq!(line["bytes_in"], HUNDRED_MB as u64);
    assert_eq!(line["bytes_out"], HUNDRED_MB as u64);
    let m = gw.metrics().await;
    for d in ["in", "out"] {
        assert_eq!(
            metric(
                &m,
                "cc_gateway_tcp_bytes_total",
                &[("route", "bulk"), ("direction", d)]
            ),
            HUNDRED_MB as f64
        );
    }
}

pub(super) fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_slow_reader_stalls_the_target_instead_of_growing_the_gateway() {
    const TOTAL: usize = 256 * 1024 * 1024;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let (resume_tx, resume_rx) = tokio::sync::watch::channel(false);
    let t = target(move |mut s| {
        let tx = tx.clone();
        let mut resume = resume_rx.clone();
        async move {
            let chunk = vec![7u8; 64 * 1024];
            let mut written = 0usize;
            let mut reported = false;
            while written < TOTAL {
                let n = chunk.len().min(TOTAL - written);
                // a write that cannot start for a second means the path is full; `write`, not
                // `write_all`, so a timeout never loses count of a partial write
                match tokio::time::timeout(Duration::from_secs(1), s.write(&chunk[..n])).await {
                    Ok(r) => written += r.expect("target write"),
                    Err(_) if !reported => {
                        reported = true;
                        let _ = tx.send(written);
                        let _ = resume.wait_for(|r| *r).await;
                    }
                    Err(_) => {}
                }
            }
            let _ = s.shutdown().await;
            let _ = tx.send(written);
        }
    })
    .await;
    let (gw, _dir) = gateway("", &route("slow", t, "")).await;
    let before = vm_rss_kib(gw.pid());
    let mut c = TcpStream::connect(tcp_addr(&gw, "slow"))
        .await
        .expect("connect");
    let stalled_at = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the target stalls")
        .expect("report");
    // socket buffers on both hops plus the gateway's 64 KiB: far below what was offered
    assert!(
        stalled_at < 64 * 1024 * 1024,
        "the target wrote {stalled_at} bytes to a client that reads nothing"
    );
    let grown = vm_rss_kib(gw.pid()).saturating_sub(before);
    assert!(grown < 32 * 1024, "the gateway grew by {grown} KiB");
    // and nothing was lost: once the client reads, everything arrives
    resume_tx.send(true).expect("resume");
    let (n, _) = tokio::time::timeout(Duration::from_secs(120), digest_all(&mut c))
        .await
        .expect("the rest within 2 minutes");
    assert_eq!(n, TOTAL);
}

#[tokio::test]
async fn max_connections_refuses_and_counts() {
    let t = echo_target().await;
    let (gw, dir) = gateway("", &route("lim", t, "max_connections = 2")).await;
    let addr = tcp_addr(&gw, "lim");
    let mut open = Vec::new();
    for i in 0..2u8 {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(&[i]).await.expect("write");
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .await
            .expect("echoed: the connection is carried");
        open.push(c);
    }
    wait_gauge(&gw, "cc_gateway_tcp_connections", &[("route", "lim")], 2.0).await;
    let mut third = TcpStream::connect(addr).await.expect("connect");
    let _ = third.write_all(b"x").await;
    let mut buf = Vec::new();
    let r = tokio::time::timeout(DEADLINE, third.read_to_end(&mut buf))
        .await
        .expect("closed within the deadline");
    assert!(
        buf.is_empty(),
        "a refused connection carried {buf:?} ({r:?})"
    );
    wait_metric(
        &gw,
        "cc_gateway_tcp_connections_total",
        &[("route", "lim"), ("result", "limit")],
        1.0,
    )
    .await;
    let lines = tcp_log_lines(&dir, 1).await;
    assert_eq!(lines[0]["reason"], "limit");
    assert_eq!(lines[0]["result"], "limit");
    // a slot given back is a slot again
    drop(open.pop());
    wait_gauge(&gw, "cc_gateway_tcp_connections", &[("route", "lim")], 1.0).await;
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"y").await.expect("write");
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.expect("carried again");
    assert_eq!(&b, b"y");
}

#[tokio::test]
async fn proxy_protocol_v2_tells_the_target_who_the_client_is() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let t = target(move |mut s| {
        let tx = tx.clone();
        async move {
            // v2: 12-byte signature, version/command, family, 2-byte length, addresses
            let mut head = [0u8; 16];
            s.read_exact(&mut head).await.expect("header");
            let len = u16::from_be_bytes([head[14], head[15]]) as usize;
            let mut rest = vec![0u8; len];
            s.read_exact(&mut rest).await.expect("addresses");
            let mut whole = head.to_vec();
            whole.extend_from_slice(&rest);
            let mut payload = [0u8; 5];
            s.read_exact(&mut payload).await.expect("payload");
            let _ = tx.send((whole, payload));
        }
    })
    .await;
    let (gw, _dir) = gateway("", &route("pp", t, "proxy_protocol = true")).await;
    let addr = tcp_addr(&gw, "pp");
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"hello").await.expect("write");
    let (header, payload) = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("target got it")
        .expect("sent");
    assert_eq!(&payload, b"hello");
    let h = ppp::v2::Header::try_from(&header[..]).expect("a PROXY v2 header");
    assert_eq!(h.command, ppp::v2::Command::Proxy);
    match h.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            assert_eq!(
                SocketAddr::from((a.source_address, a.source_port)),
                c.local_addr().expect("client addr")
            );
            assert_eq!(
                SocketAddr::from((a.destination_address, a.destination_port)),
                addr
            );
        }
        other => panic!("unexpected addresses {other:?}"),
    }
}

#[tokio::test]
async fn idle_connections_and_unreachable_targets_are_closed_and_logged() {
    let t = echo_target().await;
    let routes = format!(
        "{}{}",
        route("idle", t, "idle_timeout = \"300ms\""),
        route("dead", dead_addr(), "connect_timeout = \"2s\"")
    );
    let (gw, dir) = gateway("", &routes).await;
    let mut c = TcpStream::connect(tcp_addr(&gw, "idle"))
        .await
        .expect("connect");
    c.write_all(b"x").await.expect("write");
    let start = Instant::now();
    assert_eq!(read_to_end(&mut c).await, b"x");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed after {:?}",
        start.elapsed()
    );
    let mut d = TcpStream::connect(tcp_addr(&gw, "dead"))
        .await
        .expect("connect");
    assert!(read_to_end(&mut d).await.is_empty());
    wait_metric(
        &gw,
        "cc_gateway_tcp_connections_total",
        &[("route", "dead"), ("result", "connect_failed")],
        1.0,
    )
    .await;
    let lines = tcp_log_lines(&dir, 2).await;
    let idle = lines
        .iter()
        .find(|l| l["route"] == "idle")
        .expect("idle logged");
    assert_eq!(idle["reason"], "idle_timeout");
    assert_eq!(idle["result"], "ok");
    let dead = lines
        .iter()
        .find(|l| l["route"] == "dead")
        .expect("dead logged");
    assert_eq!(dead["reason"], "connect_failed");
}

#[tokio::test]
async fn check_refuses_a_tunnel_target_without_its_tunnel() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(
        &dir,
        "",
        "[[tcp_routes]]\nname = \"pg\"\nlisten = [\"127.0.0.1:0\"]\ntarget = \"tunnel:onprem/pg\"\n",
    );
    let out = run_check(&path, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tcp_routes[0].target")
            && err.contains("no [[tunnels]] entry is named \"onprem\""),
        "{err}"
    );
}
