//! Upstream TLS and mTLS (`[[upstreams]] tls = { … }`), `protocol` and HTTP/2 keepalive: real
//! rustls upstreams on loopback with certificates made in the test. Every verification failure
//! is a 502 `upstream_tls_error` counted as `upstream_errors_total{kind="tls"}`, never a
//! fallback.

mod pki;
mod server;

use std::path::Path;

use crate::common::fixture::q;
use crate::common::wait::DEADLINE;
use crate::common::*;
use pki::{write, Ca};
use server::{Opts as UpOpts, TlsUpstream};

const NAME: &str = "upstream.test";

/// A gateway whose route `/tls/` goes to upstream `tls` at `addr` with `keys`.
async fn gateway(addr: std::net::SocketAddr, keys: &str) -> Fixture {
    let extra = format!(
        r#"
[[routes]]
name = "tls"
path_prefix = "/tls/"
upstream = "tls"
auth = "public"

[[upstreams]]
name = "tls"
endpoints = ["{addr}"]
{keys}
"#
    );
    Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await
}

fn s(p: &Path) -> String {
    q(p.to_str().expect("utf-8 path"))
}

async fn expect_tls_error(fx: &Fixture, cause: &str) {
    let r = fx.send(Req::get("/tls/x")).await;
    assert_error(&r, 502, "upstream_tls_error");
    wait_metric(
        &fx.gw,
        "cc_gateway_upstream_errors_total",
        &[("upstream", "tls"), ("kind", "tls")],
        1.0,
    )
    .await;
    wait_until("the cause in the log", DEADLINE, || async {
        let log = fx.gw.stderr();
        if log.contains("upstream request failed") && log.contains(cause) {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
}

#[tokio::test]
async fn verified_tls_with_private_ca_sni_and_each_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let leaf = ca.server(&[NAME]);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let cases: [(&str, &[&[u8]], &str); 3] = [
        ("http1", &[b"http/1.1"], "HTTP/1.1"),
        ("auto", &[b"h2", b"http/1.1"], "HTTP/2.0"),
        ("h2", &[b"h2"], "HTTP/2.0"),
    ];
    for (protocol, alpn, version) in cases {
        let up = TlsUpstream::start(UpOpts {
            leaf: &leaf,
            client_ca: None,
            alpn,
        })
        .await;
        let keys = format!(
            "protocol = \"{protocol}\"\ntls = {{ sni = \"{NAME}\", ca = {} }}",
            s(&ca_file)
        );
        let fx = gateway(up.addr, &keys).await;
        for _ in 0..3 {
            let r = fx.send(Req::get("/tls/x")).await;
            assert_eq!(r.status, 200, "{protocol}: {}", r.describe());
            assert_eq!(
                r.text(),
                format!("{version} client_cert=false"),
                "{protocol}"
            );
        }
    }
}

#[tokio::test]
async fn auto_falls_back_to_http1_when_the_server_offers_only_that() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let leaf = ca.server(&[NAME]);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let up = TlsUpstream::start(UpOpts {
        leaf: &leaf,
        client_ca: None,
        alpn: &[b"http/1.1"],
    })
    .await;
    let keys = format!(
        "protocol = \"auto\"\ntls = {{ sni = \"{NAME}\", ca = {} }}",
        s(&ca_file)
    );
    let fx = gateway(up.addr, &keys).await;
    let r = fx.send(Req::get("/tls/x")).await;
    assert_eq!(r.text(), "HTTP/1.1 client_cert=false", "{}", r.describe());
}

#[tokio::test]
async fn h2_refuses_a_server_that_does_not_speak_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let leaf = ca.server(&[NAME]);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let up = TlsUpstream::start(UpOpts {
        leaf: &leaf,
        client_ca: None,
        alpn: &[b"http/1.1"],
    })
    .await;
    let keys = format!(
        "protocol = \"h2\"\ntls = {{ sni = \"{NAME}\", ca = {} }}",
        s(&ca_file)
    );
    let fx = gateway(up.addr, &keys).await;
    expect_tls_error(&fx, "NoApplicationProtocol").await;
}

#[tokio::test]
async fn h2c_upstream_gets_http2_by_prior_knowledge() {
    let up = server::start_h2c().await;
    let fx = gateway(up.addr, "protocol = \"h2c\"").await;
    let r = fx.send(Req::get("/tls/x")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.text(), "HTTP/2.0");
}

#[tokio::test]
async fn unknown_ca_is_upstream_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let other = Ca::new("someone else");
    let leaf = ca.server(&[NAME]);
    let other_file = write(dir.path(), "other.pem", &other.pem);
    let up = TlsUpstream::serving(&leaf).await;
    let keys = format!("tls = {{ sni = \"{NAME}\", ca = {} }}", s(&other_file));
    let fx = gateway(up.addr, &keys).await;
    expect_tls_error(&fx, "UnknownIssuer").await;
}

#[tokio::test]
async fn system_roots_do_not_trust_a_private_ca() {
    let ca = Ca::new("backend CA");
    let leaf = ca.server(&["127.0.0.1"]);
    let up = TlsUpstream::serving(&leaf).await;
    // `tls = {}`: system roots, the endpoint's host (an IP here) as the name
    let fx = gateway(up.addr, "tls = {}").await;
    expect_tls_error(&fx, "TLS").await;
    // and never a plaintext retry: the upstream saw no request (it would answer 200)
}

#[tokio::test]
async fn name_mismatch_is_upstream_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let leaf = ca.server(&[NAME]);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let up = TlsUpstream::serving(&leaf).await;
    let keys = format!("tls = {{ sni = \"other.test\", ca = {} }}", s(&ca_file));
    let fx = gateway(up.addr, &keys).await;
    expect_tls_error(&fx, "not valid for name").await;
}

#[tokio::test]
async fn endpoint_host_is_the_default_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let leaf = ca.server(&["127.0.0.1"]);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let up = TlsUpstream::serving(&leaf).await;
    let fx = gateway(up.addr, &format!("tls = {{ ca = {} }}", s(&ca_file))).await;
    let r = fx.send(Req::get("/tls/x")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
}

#[tokio::test]
async fn expired_certificate_is_upstream_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let leaf = ca.expired_server(&[NAME]);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let up = TlsUpstream::serving(&leaf).await;
    let keys = format!("tls = {{ sni = \"{NAME}\", ca = {} }}", s(&ca_file));
    let fx = gateway(up.addr, &keys).await;
    expect_tls_error(&fx, "certificate expired").await;
}

#[tokio::test]
async fn mtls_required_without_client_cert_is_upstream_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let clients = Ca::new("clients CA");
    let leaf = ca.server(&[NAME]);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let up = TlsUpstream::start(UpOpts {
        leaf: &leaf,
        client_ca: Some(&clients.pem),
        alpn: &[],
    })
    .await;
    let keys = format!("tls = {{ sni = \"{NAME}\", ca = {} }}", s(&ca_file));
    let fx = gateway(up.addr, &keys).await;
    expect_tls_error(&fx, "CertificateRequired").await;
}

#[tokio::test]
async fn mtls_with_client_cert_and_rotation_of_the_client_cert() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let clients = Ca::new("clients CA");
    let leaf = ca.server(&[NAME]);
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    // the first client certificate is from a CA the upstream does not accept
    let wrong = Ca::new("wrong clients CA").client("gw");
    let cert = write(dir.path(), "gw.pem", &wrong.cert_pem);
    let key = write(dir.path(), "gw.key", &wrong.key_pem);
    let up = TlsUpstream::start(UpOpts {
        leaf: &leaf,
        client_ca: Some(&clients.pem),
        alpn: &[b"h2"],
    })
    .await;
    let keys = format!(
        "protocol = \"h2\"\ntls = {{ sni = \"{NAME}\", ca = {}, client_cert = {}, client_key = {} }}",
        s(&ca_file),
        s(&cert),
        s(&key)
    );
    let fx = gateway(up.addr, &keys).await;
    let r = fx.send(Req::get("/tls/x")).await;
    assert_error(&r, 502, "upstream_tls_error");

    // rotate to a certificate the upstream trusts (key first, then cert, by rename: a
    // half-rotated pair is kept out until both match); new connections use it
    let good = clients.client("gw");
    let tmp_key = write(dir.path(), "gw.key.new", &good.key_pem);
    let tmp_cert = write(dir.path(), "gw.pem.new", &good.cert_pem);
    std::fs::rename(&tmp_key, &key).unwrap();
    std::fs::rename(&tmp_cert, &cert).unwrap();
    let r = wait_until(
        "the rotated client certificate in use",
        DEADLINE,
        || async {
            let r = fx.send(Req::get("/tls/x")).await;
            if r.status == 200 {
                Ok(r)
            } else {
                Err(r.describe())
            }
        },
    )
    .await;
    assert_eq!(r.text(), "HTTP/2.0 client_cert=true");
}

/// `check` builds each TLS upstream's client config as the first connection will: a missing
/// CA file or a client key that does not belong to its certificate is refused, naming the key
/// path and the file.
#[test]
fn check_refuses_unusable_upstream_tls_files() {
    use crate::common::fixture::{standard_config, write_config};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("clients CA");
    let a = ca.client("a");
    let b = ca.client("b");
    let cert = write(dir.path(), "gw.pem", &a.cert_pem);
    let wrong_key = write(dir.path(), "other.key", &b.key_pem);
    let right_key = write(dir.path(), "gw.key", &a.key_pem);
    let missing = dir.path().join("missing-ca.pem");
    let config = |tls: String| {
        let extra =
            format!("[[upstreams]]\nname = \"tls\"\nendpoints = [\"127.0.0.1:1\"]\ntls = {tls}\n");
        standard_config(
            dir.path(),
            "https://gitlab.example",
            "jwks_uri = \"https://gitlab.example/oauth/discovery/keys\"",
            "127.0.0.1:5052".parse().unwrap(),
            &Opts {
                extra,
                ..Opts::default()
            },
        )
    };
    let cases = [
        (
            format!("{{ ca = {} }}", s(&missing)),
            "missing-ca.pem: cannot read",
        ),
        (
            format!(
                "{{ client_cert = {}, client_key = {} }}",
                s(&cert),
                s(&wrong_key)
            ),
            "other.key",
        ),
    ];
    for (tls, problem) in cases {
        let path = write_config(dir.path(), &config(tls));
        let o = run_check(&path, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
        assert!(
            err.contains("upstreams[1].tls: ") && err.contains(problem),
            "{}",
            describe_output(&o)
        );
    }
    let ok = format!(
        "{{ client_cert = {}, client_key = {} }}",
        s(&cert),
        s(&right_key)
    );
    let o = run_check(&write_config(dir.path(), &config(ok)), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
}

/// The `ca` file rotated as a Kubernetes secret mount does it (a symlink swapped to a new
/// directory): new connections trust the new CA without a reload.
#[tokio::test]
async fn ca_rotation_by_symlink_swap() {
    let dir = tempfile::tempdir().unwrap();
    let old = Ca::new("old CA");
    let new = Ca::new("new CA");
    std::fs::create_dir(dir.path().join("v1")).unwrap();
    std::fs::create_dir(dir.path().join("v2")).unwrap();
    write(&dir.path().join("v1"), "ca.pem", &old.pem);
    write(&dir.path().join("v2"), "ca.pem", &new.pem);
    let data = dir.path().join("..data");
    std::os::unix::fs::symlink("v1", &data).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::os::unix::fs::symlink("..data/ca.pem", &ca_file).unwrap();

    // the upstream's certificate is already from the new CA
    let leaf = new.server(&[NAME]);
    let up = TlsUpstream::serving(&leaf).await;
    let keys = format!("tls = {{ sni = \"{NAME}\", ca = {} }}", s(&ca_file));
    let fx = gateway(up.addr, &keys).await;
    let r = fx.send(Req::get("/tls/x")).await;
    assert_error(&r, 502, "upstream_tls_error");

    let tmp = dir.path().join("..data_tmp");
    std::os::unix::fs::symlink("v2", &tmp).unwrap();
    std::fs::rename(&tmp, &data).unwrap();
    wait_until("the new CA trusted", DEADLINE, || async {
        let r = fx.send(Req::get("/tls/x")).await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.describe())
        }
    })
    .await;
}

/// `http2_keepalive_*`: an HTTP/2 upstream that goes silent (here: accepts and never answers,
/// not even a PING) is given up when its PING is not answered in time — long before the
/// request's `read_timeout` — and the request gets `502`, not a hang.
#[tokio::test]
async fn unanswered_http2_ping_ends_the_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // accept and hold connections open without reading or writing a byte
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    let keys = "protocol = \"h2c\"\nread_timeout = \"60s\"\nhttp2_keepalive_interval = \"300ms\"\nhttp2_keepalive_timeout = \"300ms\"";
    let fx = gateway(addr, keys).await;
    let started = std::time::Instant::now();
    let r = fx.send(Req::get("/tls/x")).await;
    assert_error(&r, 502, "upstream_unavailable");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    holder.abort();
}
