//! TLS L4 routes: `[server.tls]`'s certificates terminate TLS, SNI picks between two routes on
//! one listen address, and `client_cert` rules admit or refuse (counted, logged).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::common::wait::DEADLINE;
use crate::common::wait_metric;
use crate::tls::{client_config, tls_line, tp, Ca, Leaf};

const RUNNER: &str = "spiffe://example.org/ns/ci/sa/runner";

/// A target that writes `tag` and closes.
async fn tagged(tag: &'static str) -> SocketAddr {
    target(move |mut s| async move {
        let _ = s.write_all(tag.as_bytes()).await;
        let _ = s.shutdown().await;
    })
    .await
}

/// Connects with TLS (SNI `name`, no ALPN) and reads to EOF: `None` when the handshake or the
/// read fails.
async fn tls_read(addr: SocketAddr, name: &str, cfg: Arc<rustls::ClientConfig>) -> Option<String> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let sni = ServerName::try_from(name.to_string()).expect("server name");
    let mut s = tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(cfg).connect(sni, tcp),
    )
    .await
    .expect("handshake within the deadline")
    .ok()?;
    let mut buf = Vec::new();
    match tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .expect("EOF within the deadline")
    {
        Ok(_) => Some(String::from_utf8_lossy(&buf).into_owned()),
        // a refused TLS 1.3 client certificate shows up as an alert on the first read
        Err(_) if buf.is_empty() => None,
        Err(e) => panic!("read {buf:?} then {e}"),
    }
}

fn client_leaf(ca: &Ca, uris: &[&str]) -> Leaf {
    ca.leaf_with("client", &[], uris, |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    })
}

#[tokio::test]
async fn sni_picks_between_tls_routes_on_one_address_and_client_cert_rules_apply() {
    let ca = Ca::new("test CA");
    let clients = Ca::new("clients CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, k) = ca
        .leaf("edge", &["a.test", "b.test", "c.test", "m.test"], &[])
        .write(dir.path(), "edge");
    let ca_file = dir.path().join("clients-ca.pem");
    std::fs::write(&ca_file, clients.issuer_pem()).expect("writing client CA");
    let tls = tls_line(
        &[(&c, &k, &[])],
        &format!(", client_auth = \"optional\", client_ca = {}", tp(&ca_file)),
    );
    let (a, b, m) = (tagged("A").await, tagged("B").await, tagged("M").await);
    // one address for three routes: pick a free port first (port 0 would give each its own)
    let shared = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let routes = format!(
        "[[tcp_routes]]\nname = \"a\"\nlisten = [\"{shared}\"]\ntarget = \"{a}\"\ntls = true\nserver_names = [\"a.test\"]\n\n\
         [[tcp_routes]]\nname = \"b\"\nlisten = [\"{shared}\"]\ntarget = \"{b}\"\ntls = true\nserver_names = [\"b.test\"]\n\n\
         [[tcp_routes]]\nname = \"m\"\nlisten = [\"{shared}\"]\ntarget = \"{m}\"\ntls = true\nserver_names = [\"m.test\"]\nclient_cert = {{ uris = [{RUNNER:?}] }}\n"
    );
    let path = write(&dir, &tls, &routes);
    let gw = Gateway::spawn(&path).await;
    assert_eq!(tcp_addr(&gw, "a"), shared);
    assert_eq!(tcp_addr(&gw, "b"), shared);

    let plain = client_config(&[ca.der()], None, &[], rustls::ALL_VERSIONS);
    assert_eq!(
        tls_read(shared, "a.test", plain.clone()).await.as_deref(),
        Some("A")
    );
    assert_eq!(
        tls_read(shared, "b.test", plain.clone()).await.as_deref(),
        Some("B")
    );
    // a name no route lists, and no default route: closed, counted on no route
    assert_eq!(
        tls_read(shared, "c.test", plain.clone()).await.as_deref(),
        Some("")
    );
    wait_metric(
        &gw,
        "cc_gateway_tcp_connections_total",
        &[("route", ""), ("result", "no_route")],
        1.0,
    )
    .await;

    // client_cert: the runner's certificate passes; another identity or none does not
    let runner = client_leaf(&clients, &[RUNNER]);
    let other = client_leaf(&clients, &["spiffe://example.org/ns/other"]);
    let with = |l: &Leaf| client_config(&[ca.der()], Some(l), &[], rustls::ALL_VERSIONS);
    assert_eq!(
        tls_read(shared, "m.test", with(&runner)).await.as_deref(),
        Some("M")
    );
    assert_ne!(
        tls_read(shared, "m.test", with(&other)).await.as_deref(),
        Some("M")
    );
    assert_ne!(
        tls_read(shared, "m.test", plain.clone()).await.as_deref(),
        Some("M")
    );
    wait_metric(
        &gw,
        "cc_gateway_tcp_connections_total",
        &[("route", "m"), ("result", "client_cert")],
        2.0,
    )
    .await;
    wait_metric(
        &gw,
        "cc_gateway_tcp_connections_total",
        &[("route", "m"), ("result", "ok")],
        1.0,
    )
    .await;

    // a client that is not speaking TLS at all
    let mut raw = TcpStream::connect(shared).await.expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, raw.read_to_end(&mut buf))
        .await
        .expect("closed");
    wait_metric(
        &gw,
        "cc_gateway_tcp_connections_total",
        &[("route", ""), ("result", "tls")],
        1.0,
    )
    .await;
}
