//! gRPC from clients on TLS h2: a tonic client whose connections are TLS (ALPN `h2`) to the
//! gateway's `[server.tls]` listener, the h2c tonic upstream behind it; the four call kinds
//! with metadata and trailers, and a gateway refusal answered gRPC-style over TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::*;
use crate::tls::{client as tls_client, connect, tls_addr, tls_fixture, tls_line, Ca};

const SNI: &str = "gw.test";

/// tonic's connector: every connection is a TLS handshake with the gateway's TLS listener
/// that must settle on ALPN `h2` (gRPC needs HTTP/2; a fallback to h1 would fail later and
/// less clearly).
#[derive(Clone)]
struct TlsH2 {
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<Uri> for TlsH2 {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = BoxFut<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, cfg) = (self.addr, self.cfg.clone());
        Box::pin(async move {
            let s = connect(addr, SNI, cfg).await?;
            if s.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(std::io::Error::other("the gateway did not choose ALPN h2"));
            }
            Ok(TokioIo::new(s))
        })
    }
}

/// A tonic client over TLS h2 to the gateway's TLS listener, trusting `ca`.
async fn tls_grpc_client(fx: &Fixture, ca: &Ca) -> Client {
    let connector = TlsH2 {
        addr: tls_addr(&fx.gw),
        cfg: tls_client(ca, None),
    };
    // the URI only names the authority (`:authority`); the connector decides where to go
    let ch = tonic::transport::Endpoint::from_static("http://gw.test")
        .connect_with_connector(connector)
        .await
        .expect("TLS h2 to the gateway");
    tonic::client::Grpc::new(ch)
}

/// The standard fixture with a TLS listener serving a certificate for `gw.test` signed by
/// `ca`, and the gRPC route to `up`.
async fn tls_gateway(ca: &Ca, up: SocketAddr) -> (Fixture, tempfile::TempDir) {
    let certs = tempfile::tempdir().expect("temp dir");
    let (c, k) = ca.leaf("edge", &[SNI], &[]).write(certs.path(), "edge");
    let fx = tls_fixture(tls_line(&[(&c, &k, &[])], ""), &grpc_route(up)).await;
    (fx, certs)
}

#[tokio::test]
async fn tls_h2_clients_make_all_four_call_kinds_with_metadata_and_trailers() {
    let up = start_upstream().await;
    let ca = Ca::new("test CA");
    let (fx, _certs) = tls_gateway(&ca, up.addr).await;
    let mut g = tls_grpc_client(&fx, &ca).await;
    check_unary(&mut g).await;
    check_server_streaming(&mut g).await;
    check_client_streaming(&mut g).await;
    check_bidi_beside_unary_calls(&mut g).await;
    // every call was a stream of the one TLS connection, hence of one upstream connection
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    wait_metric(
        &fx.gw,
        "cc_gateway_tls_handshakes_total",
        &[("result", "ok")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn over_tls_a_call_without_a_token_is_refused_unauthenticated() {
    let up = start_upstream().await;
    let ca = Ca::new("test CA");
    let (fx, _certs) = tls_gateway(&ca, up.addr).await;
    let mut g = tls_grpc_client(&fx, &ca).await;
    g.ready().await.unwrap();
    // `/ai/` is the standard fixture's token route
    let e = g
        .unary(
            Request::new(msg("hi")),
            PathAndQuery::from_static("/ai/test.Echo/Unary"),
            codec(),
        )
        .await
        .expect_err("a refusal");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().starts_with("missing_token: "), "{e:?}");
    wait_metric(
        &fx.gw,
        "cc_gateway_auth_failures_total",
        &[("reason", "missing_token")],
        1.0,
    )
    .await;
    // the refusal came from the gateway: nothing reached the upstream
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
}
