//! `[server.tls]`: h1 and h2 over TLS, SNI, resumption, min_version, handshake bounds and
//! metrics, rotation by rewrite / rename / symlink swap, a bad pair kept out, `check`.

use std::path::Path;
use std::time::Duration;

use http::Version;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::*;
use crate::common::servers::echoed_header;

const SNI: &str = "gw.test";

/// The standard fixture serving `leaf` (written as `edge.pem` / `edge.key` in a fresh dir).
async fn serving(ca: &Ca, more: &str, server_more: &str) -> (Fixture, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("temp dir");
    let (c, k) = ca.leaf("edge", &[SNI], &[]).write(certs.path(), "edge");
    let fx = tls_fixture(
        format!("{}\n{server_more}", tls_line(&[(&c, &k, &[])], more)),
        "",
    )
    .await;
    (fx, certs)
}

#[tokio::test]
async fn h1_and_h2_over_tls_serve_like_plaintext_and_resume_sessions() {
    let ca = Ca::new("test CA");
    let (fx, _certs) = serving(&ca, "", "").await;
    let addr = tls_addr(&fx.gw);

    let h1 = client_config(&[ca.der()], None, &[b"http/1.1"], rustls::ALL_VERSIONS);
    let r = send_tls(addr, SNI, h1, Fixture::ai_req(&fx.token())).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(
        echoed_header(&r.json(), "x-cc-subject"),
        vec![SUB.to_string()]
    );

    let both = client(&ca, None);
    let s = connect(addr, SNI, both.clone()).await.expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
    let r = send_over(s, Fixture::ai_req(&fx.token())).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.version, Version::HTTP_2);
    let r = send_tls(addr, SNI, both.clone(), Req::get("/ai/x")).await;
    assert_eq!(r.status, 401, "refusals over h2 too: {}", r.describe());
    assert_eq!(r.reason(), "missing_token");

    // the client kept the ticket of its last connection: the next handshake resumes
    let s = connect(addr, SNI, both).await.expect("handshake");
    assert_eq!(
        s.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "session resumption"
    );
    drop(s);

    // plaintext listeners are unchanged
    let r = fx.send(Req::get("/public/x")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(echoed_header(&r.json(), "x-forwarded-proto"), vec!["http"]);

    // a client that does not trust the certificate fails the handshake
    let other = Ca::new("other CA");
    assert!(connect(addr, SNI, client(&other, None)).await.is_err());
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_handshakes_total",
        &[("result", "ok")],
        4.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_handshakes_total",
        &[("result", "error")],
        1.0,
    )
    .await;
    let m = fx.metrics().await;
    let left = metric(&m, "cc_gateway_tls_certificate_expiry_seconds", &[]);
    assert!(left > 86_400.0 * 300.0, "expiry gauge: {left}\n{m}");
}

#[tokio::test]
async fn sni_selects_the_certificate_and_the_first_is_the_default() {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let default = ca.leaf("default", &[SNI, "unknown.test"], &[]);
    let other = ca.leaf("other", &["other.example"], &[]);
    let wild = ca.leaf("wild", &["a.svc.example"], &[]);
    let (dc, dk) = default.write(dir.path(), "default");
    let (oc, ok) = other.write(dir.path(), "other");
    let (wc, wk) = wild.write(dir.path(), "wild");
    let fx = tls_fixture(
        tls_line(
            &[
                (&dc, &dk, &[]),
                (&oc, &ok, &["other.example"]),
                (&wc, &wk, &["*.svc.example"]),
            ],
            "",
        ),
        "",
    )
    .await;
    let addr = tls_addr(&fx.gw);
    for (sni, want) in [
        ("other.example", &other),
        ("a.svc.example", &wild),
        (SNI, &default),
        ("unknown.test", &default),
    ] {
        let s = connect(addr, sni, client(&ca, None))
            .await
            .unwrap_or_else(|e| panic!("SNI {sni}: {e}"));
        assert_eq!(served(&s), want.der, "SNI {sni}");
        let r = send_over(s, Req::get("/public/x")).await;
        assert_eq!(r.status, 200, "{}", r.describe());
    }
}

#[tokio::test]
async fn min_version_13_refuses_a_tls12_only_client() {
    let ca = Ca::new("test CA");
    let (fx, _certs) = serving(&ca, ", min_version = \"1.3\"", "").await;
    let addr = tls_addr(&fx.gw);
    let tls12 = client_config(
        &[ca.der()],
        None,
        &[b"http/1.1"],
        &[&rustls::version::TLS12],
    );
    assert!(connect(addr, SNI, tls12).await.is_err(), "TLS 1.2 refused");
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_handshakes_total",
        &[("result", "error")],
        1.0,
    )
    .await;
    let tls13 = client_config(
        &[ca.der()],
        None,
        &[b"http/1.1"],
        &[&rustls::version::TLS13],
    );
    let r = send_tls(addr, SNI, tls13, Req::get("/public/x")).await;
    assert_eq!(r.status, 200, "{}", r.describe());

    // the default accepts TLS 1.2
    let (fx12, _c) = serving(&ca, "", "").await;
    let tls12 = client_config(
        &[ca.der()],
        None,
        &[b"http/1.1"],
        &[&rustls::version::TLS12],
    );
    let r = send_tls(tls_addr(&fx12.gw), SNI, tls12, Req::get("/public/x")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
}

#[tokio::test]
async fn a_stalled_handshake_neither_blocks_accepting_nor_lives_past_header_read_timeout() {
    let ca = Ca::new("test CA");
    let (fx, _certs) = serving(&ca, "", "header_read_timeout = \"5s\"").await;
    let addr = tls_addr(&fx.gw);
    // connections that never say hello, on every worker's socket in all likelihood
    let mut stalled = Vec::new();
    for _ in 0..8 {
        stalled.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let r = send_tls(addr, SNI, client(&ca, None), Req::get("/public/x")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    // served while the stalled handshakes were still pending: the accept loop did not wait
    // for them (their timeout has not closed them yet)
    let mut buf = [0u8; 1];
    for s in &stalled {
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("stalled connection already ended: {other:?}"),
        }
    }
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_handshakes_total",
        &[("result", "timeout")],
        8.0,
    )
    .await;
    for mut s in stalled {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed after the timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "closed: {n:?}");
    }
}

/// Waits until a new handshake with SNI gw.test is served `want`.
async fn wait_served(addr: std::net::SocketAddr, ca: &Ca, want: &Leaf, what: &str) {
    wait_until(what, DEADLINE_LONG, || async {
        match connect(addr, SNI, client(ca, None)).await {
            Ok(s) if served(&s) == want.der => Ok(()),
            Ok(_) => Err("still the old certificate".to_string()),
            Err(e) => Err(format!("handshake failed: {e}")),
        }
    })
    .await;
}

const DEADLINE_LONG: Duration = Duration::from_secs(15);

fn write_atomically(path: &Path, body: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).expect("writing temp file");
    std::fs::rename(&tmp, path).expect("renaming into place");
}

#[tokio::test]
async fn certificates_rotate_by_rewrite_rename_and_symlink_swap_while_serving() {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // a Kubernetes secret mount: tls.crt -> ..data/tls.crt, ..data -> ..v1
    std::fs::create_dir(d.join("..v1")).expect("mkdir");
    let first = ca.leaf("first", &[SNI], &[]);
    std::fs::write(d.join("..v1/tls.crt"), &first.cert).expect("write");
    std::fs::write(d.join("..v1/tls.key"), &first.key).expect("write");
    std::os::unix::fs::symlink("..v1", d.join("..data")).expect("symlink");
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), d.join(f)).expect("symlink");
    }
    let (cert, key) = (d.join("tls.crt"), d.join("tls.key"));
    let fx = tls_fixture(tls_line(&[(&cert, &key, &[])], ""), "").await;
    let addr = tls_addr(&fx.gw);
    let s = connect(addr, SNI, client(&ca, None))
        .await
        .expect("handshake");
    assert_eq!(served(&s), first.der);
    // a connection established before the rotations: it keeps working
    let mut kept = {
        let io = TokioIo::new(s);
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2");
        tokio::spawn(conn);
        sender
    };

    // 1. rewrite in place (through the symlinks)
    let second = ca.leaf("second", &[SNI], &[]);
    std::fs::write(&key, &second.key).expect("rewrite key");
    std::fs::write(&cert, &second.cert).expect("rewrite cert");
    wait_served(addr, &ca, &second, "the rewritten certificate").await;

    // 2. rename over the files
    let third = ca.leaf("third", &[SNI], &[]);
    write_atomically(&d.join("..v1/tls.key"), &third.key);
    write_atomically(&d.join("..v1/tls.crt"), &third.cert);
    wait_served(addr, &ca, &third, "the renamed-in certificate").await;

    // 3. the secret mount's swap: a new directory, ..data switched to it in one rename
    let fourth = ca.leaf("fourth", &[SNI], &[]);
    std::fs::create_dir(d.join("..v2")).expect("mkdir");
    std::fs::write(d.join("..v2/tls.crt"), &fourth.cert).expect("write");
    std::fs::write(d.join("..v2/tls.key"), &fourth.key).expect("write");
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).expect("symlink");
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap");
    wait_served(
        addr,
        &ca,
        &fourth,
        "the certificate behind the swapped symlink",
    )
    .await;

    let m = fx.metrics().await;
    assert!(
        metric(&m, "cc_gateway_tls_reloads_total", &[("result", "ok")]) >= 3.0,
        "{m}"
    );
    let req = http::Request::builder()
        .uri("https://gw.test/public/still")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let r = kept
        .send_request(req)
        .await
        .expect("the old connection still serves");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_bad_pair_an_unreadable_or_expired_file_is_kept_out() {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let good = ca.leaf("good", &[SNI], &[]);
    let (cert, key) = good.write(dir.path(), "edge");
    let fx = tls_fixture(tls_line(&[(&cert, &key, &[])], ""), "").await;
    let addr = tls_addr(&fx.gw);

    // a certificate whose key is not the one next to it
    let other = ca.leaf("other", &[SNI], &[]);
    write_atomically(&cert, &other.cert);
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_reloads_total",
        &[("result", "error")],
        1.0,
    )
    .await;
    let s = connect(addr, SNI, client(&ca, None))
        .await
        .expect("handshake");
    assert_eq!(served(&s), good.der, "the old certificate keeps serving");
    drop(s);
    assert!(
        fx.gw.stderr().contains("does not match the certificate"),
        "{}",
        fx.gw.stderr()
    );
    // a reload re-reads the files, refuses them, and keeps the running config
    let r = fx.gw.admin_post("/reload").await;
    assert_ne!(r.status, 200, "{}", r.describe());
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_reloads_total",
        &[("result", "error")],
        2.0,
    )
    .await;

    // an expired pair
    let expired = ca.leaf_with("expired", &[SNI], &[], |p| {
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    let (ec, ek) = expired.write(dir.path(), "expired");
    std::fs::rename(&ek, &key).expect("rename key");
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_reloads_total",
        &[("result", "error")],
        3.0,
    )
    .await;
    std::fs::rename(&ec, &cert).expect("rename cert");
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_reloads_total",
        &[("result", "error")],
        4.0,
    )
    .await;
    assert!(
        fx.gw.stderr().contains("expired at 2002-01-01"),
        "{}",
        fx.gw.stderr()
    );
    // an unreadable (absent) key
    std::fs::remove_file(&key).expect("remove key");
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_reloads_total",
        &[("result", "error")],
        5.0,
    )
    .await;
    let s = connect(addr, SNI, client(&ca, None))
        .await
        .expect("handshake");
    assert_eq!(served(&s), good.der, "still the last good certificate");
    drop(s);

    // a good pair again is taken
    let fresh = ca.leaf("fresh", &[SNI], &[]);
    std::fs::write(&key, &fresh.key).expect("write key");
    write_atomically(&cert, &fresh.cert);
    wait_served(addr, &ca, &fresh, "the fixed pair").await;
}

#[tokio::test]
async fn a_reload_applies_new_certificate_files_and_versions() {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let (c1, k1) = ca.leaf("one", &[SNI], &[]).write(dir.path(), "one");
    let two = ca.leaf("two", &[SNI], &[]);
    let (c2, k2) = two.write(dir.path(), "two");
    let fx = tls_fixture(tls_line(&[(&c1, &k1, &[])], ""), "").await;
    let addr = tls_addr(&fx.gw);
    let text = std::fs::read_to_string(&fx.config_path).expect("config");
    let new_line = tls_line(&[(&c2, &k2, &[])], ", min_version = \"1.3\"");
    let text = text.replace(&tls_line(&[(&c1, &k1, &[])], ""), &new_line);
    std::fs::write(&fx.config_path, text).expect("config");
    let r = fx.gw.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let s = connect(addr, SNI, client(&ca, None))
        .await
        .expect("handshake");
    assert_eq!(served(&s), two.der, "the new file");
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    drop(s);
    let tls12 = client_config(
        &[ca.der()],
        None,
        &[b"http/1.1"],
        &[&rustls::version::TLS12],
    );
    assert!(
        connect(addr, SNI, tls12).await.is_err(),
        "min_version applied"
    );
    let m = fx.metrics().await;
    let series = |c: &Path| {
        let label = format!("cert=\"{}\"", c.display());
        m.lines().any(|l| {
            l.starts_with("cc_gateway_tls_certificate_expiry_seconds{") && l.contains(&label)
        })
    };
    assert!(series(&c2), "the new file's expiry: {m}");
    assert!(!series(&c1), "the old file's series is gone: {m}");
}

#[tokio::test]
async fn check_describes_certificates_and_refuses_a_key_that_does_not_match() {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let leaf = ca.leaf("edge", &[SNI], &["spiffe://example.org/gw"]);
    let (cert, key) = leaf.write(dir.path(), "edge");
    let base = cli_config(dir.path());
    let text = base.replacen(
        "[server]\n",
        &format!("[server]\n{}\n", tls_line(&[(&cert, &key, &[])], "")),
        1,
    );
    let path = dir.path().join("tls.toml");
    std::fs::write(&path, &text).expect("config");
    let out = run_check(&path, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(stdout.contains("subject CN=edge"), "{stdout}");
    assert!(
        stdout.contains("SANs [DNS:gw.test, URI:spiffe://example.org/gw]"),
        "{stdout}"
    );
    assert!(stdout.contains("expires "), "{stdout}");

    let other = ca.leaf("other", &[SNI], &[]);
    std::fs::write(&key, &other.key).expect("write key");
    let out = run_check(&path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(
        stderr.contains("server.tls.certificates[0].key: ")
            && stderr.contains("does not match the certificate"),
        "{}",
        describe_output(&out)
    );
}

/// A config `check` passes (no network needed): the standard one with a file key source.
fn cli_config(dir: &Path) -> String {
    crate::common::cli::good_config(dir)
}
