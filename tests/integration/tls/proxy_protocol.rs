//! `server.proxy_protocol`: v1 and v2 headers before HTTP and before TLS, the client address
//! they carry used everywhere, and the connections refused (untrusted source, malformed,
//! truncated, slow).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::common::servers::echoed_header;
use crate::common::wait::DEADLINE;

const SNI: &str = "gw.test";

async fn pp_fixture(ca: &Ca, trusted: &str) -> (Fixture, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (c, k) = ca.leaf("edge", &[SNI], &[]).write(dir.path(), "edge");
    let server = format!(
        "{}\nproxy_protocol = true\ntrusted_proxies = [{}]\nheader_read_timeout = \"2s\"",
        tls_line(&[(&c, &k, &[])], ""),
        q(trusted)
    );
    (tls_fixture(server, "").await, dir)
}

fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.push(0x20 | command);
    b.push(family);
    b.extend_from_slice(&(body.len() as u16).to_be_bytes());
    b.extend_from_slice(body);
    b
}

const GET: &[u8] = b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";

/// True when the gateway closes the connection without answering.
async fn closed_without_answer(mut s: TcpStream) -> bool {
    let mut buf = Vec::new();
    matches!(
        tokio::time::timeout(REQUEST_TIMEOUT, s.read_to_end(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn v1_and_v2_headers_name_the_client_on_plaintext_and_tls_listeners() {
    let ca = Ca::new("test CA");
    let (fx, _dir) = pp_fixture(&ca, "127.0.0.1").await;

    // v1 on the plaintext listener
    let mut req = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n".to_vec();
    req.extend_from_slice(GET);
    let r = raw_request(fx.gw.addr, &req).await.expect("an answer");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        echoed_header(&r.json(), "x-forwarded-for"),
        vec!["203.0.113.7"]
    );

    // v2 with a TLV, split across writes, then TLS
    let mut body = vec![198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb];
    body.extend_from_slice(&[0x04, 0x00, 0x02, 0xaa, 0xbb]);
    let header = v2(1, 0x11, &body);
    let mut tcp = TcpStream::connect(tls_addr(&fx.gw)).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.write_all(&header[..7]).await.expect("write");
    tcp.flush().await.expect("flush");
    tokio::task::yield_now().await;
    tcp.write_all(&header[7..]).await.expect("write");
    let name = ServerName::try_from(SNI.to_string()).expect("name");
    let s = tokio_rustls::TlsConnector::from(client(&ca, None))
        .connect(name, tcp)
        .await
        .expect("TLS after the PROXY header");
    let r = send_over(s, Req::get("/public/y")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json();
    assert_eq!(echoed_header(&v, "x-forwarded-for"), vec!["198.51.100.9"]);
    assert_eq!(echoed_header(&v, "x-forwarded-proto"), vec!["https"]);

    // v2 LOCAL (a load balancer's health check): the TCP peer stays the client
    let mut req = v2(0, 0x00, &[]);
    req.extend_from_slice(GET);
    let r = raw_request(fx.gw.addr, &req).await.expect("an answer");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        echoed_header(&r.json(), "x-forwarded-for"),
        vec!["127.0.0.1"]
    );

    // the access log's client is the header's too
    wait_until(
        "client_ip from the PROXY header in the access log",
        DEADLINE,
        || async {
            let log = std::fs::read_to_string(&fx.access_log).unwrap_or_default();
            if log.contains("203.0.113.7") && log.contains("198.51.100.9") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;

    // no header, a malformed one, a truncated one, a slow one: closed, counted
    assert!(raw_request(fx.gw.addr, GET).await.is_none(), "no header");
    let mut bad = b"PROXY TCP4 garbage\r\n".to_vec();
    bad.extend_from_slice(GET);
    assert!(raw_request(fx.gw.addr, &bad).await.is_none(), "malformed");
    wait_metric(
        &fx.gw,
        "cc_gateway_proxy_protocol_errors_total",
        &[("reason", "malformed")],
        2.0,
    )
    .await;
    let mut cut = TcpStream::connect(fx.gw.addr).await.expect("connect");
    cut.write_all(b"PROXY TCP4 1.2.").await.expect("write");
    cut.shutdown().await.expect("shutdown");
    assert!(closed_without_answer(cut).await);
    wait_metric(
        &fx.gw,
        "cc_gateway_proxy_protocol_errors_total",
        &[("reason", "truncated")],
        1.0,
    )
    .await;
    let mut slow = TcpStream::connect(tls_addr(&fx.gw)).await.expect("connect");
    slow.write_all(b"PROXY TCP4 1.2.").await.expect("write");
    assert!(
        closed_without_answer(slow).await,
        "closed at header_read_timeout"
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_proxy_protocol_errors_total",
        &[("reason", "timeout")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_header_from_an_untrusted_source_is_refused() {
    let ca = Ca::new("test CA");
    let (fx, _dir) = pp_fixture(&ca, "192.0.2.1").await;
    let mut req = b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n".to_vec();
    req.extend_from_slice(GET);
    assert!(raw_request(fx.gw.addr, &req).await.is_none());
    let s = TcpStream::connect(tls_addr(&fx.gw)).await.expect("connect");
    assert!(
        closed_without_answer(s).await,
        "closed before any byte is read"
    );
    wait_metric(
        &fx.gw,
        "cc_gateway_proxy_protocol_errors_total",
        &[("reason", "untrusted")],
        2.0,
    )
    .await;
    assert!(
        !fx.access_log.exists()
            || !std::fs::read_to_string(&fx.access_log)
                .unwrap_or_default()
                .contains("203.0.113.7")
    );
}
