//! A TLS upstream on loopback: rustls with a test certificate, optionally demanding a client
//! certificate, ALPN as given; hyper serves HTTP/1.1 and HTTP/2 and answers
//! `<version> client_cert=<bool>` so a test sees what the gateway negotiated.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::pki::Leaf;

pub struct TlsUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub struct Opts<'a> {
    pub leaf: &'a Leaf,
    /// PEM of the CA client certificates must chain to; None: no client certificate asked
    pub client_ca: Option<&'a str>,
    pub alpn: &'a [&'a [u8]],
}

impl TlsUpstream {
    /// A TLS upstream serving `leaf`: no client certificates asked for, no ALPN.
    pub async fn serving(leaf: &Leaf) -> TlsUpstream {
        TlsUpstream::start(Opts {
            leaf,
            client_ca: None,
            alpn: &[],
        })
        .await
    }

    pub async fn start(o: Opts<'_>) -> TlsUpstream {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(o.leaf.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("cert PEM");
        let key = PrivateKeyDer::from_pem_slice(o.leaf.key_pem.as_bytes()).expect("key PEM");
        let b = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let b = match o.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(c.expect("CA PEM")).expect("CA");
                }
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .expect("client verifier");
                b.with_client_cert_verifier(v)
            }
            None => b.with_no_client_auth(),
        };
        let mut cfg = b.with_single_cert(chain, key).expect("server cert");
        cfg.alpn_protocols = o.alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // a failed handshake is what the negative tests provoke
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let body = format!("{:?} client_cert={client_cert}", req.version());
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(body),
                            )))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsUpstream { addr, task }
    }
}

/// A cleartext HTTP/2-only (prior knowledge) upstream answering its request's version.
pub async fn start_h2c() -> TlsUpstreamH2c {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        format!("{:?}", req.version()),
                    ))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    TlsUpstreamH2c { addr, task }
}

pub struct TlsUpstreamH2c {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstreamH2c {
    fn drop(&mut self) {
        self.task.abort();
    }
}
