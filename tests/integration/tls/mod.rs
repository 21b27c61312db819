//! TLS on the gateway's listeners, through the real binary: certificates are generated in each
//! test (rcgen), the clients are hyper over tokio-rustls, h1 and h2 by ALPN.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::client::REQUEST_TIMEOUT;
use crate::common::fixture::q;
use crate::common::*;

mod client_cert;
mod proxy_protocol;
mod server;

/// A test CA that signs server and client certificates.
pub struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("CA key");
        Ca {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA cert"),
        }
    }

    /// The CA certificate, PEM (a `client_ca` file).
    pub fn issuer_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf for `dns` names (and IPs) plus `uris` as URI SANs, CN = `cn`.
    pub fn leaf(&self, cn: &str, dns: &[&str], uris: &[&str]) -> Leaf {
        self.leaf_with(cn, dns, uris, |_| {})
    }

    pub fn leaf_with(
        &self,
        cn: &str,
        dns: &[&str],
        uris: &[&str],
        edit: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().expect("URI SAN")));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        edit(&mut params);
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing leaf");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

impl Leaf {
    /// Writes `name.pem` and `name.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert).expect("writing cert");
        std::fs::write(&k, &self.key).expect("writing key");
        (c, k)
    }
}

/// A TOML basic string of a path.
pub fn tp(p: &Path) -> String {
    q(&p.display().to_string())
}

/// The `tls = {...}` line for `[server]` (`more` adds keys to the inline table).
pub fn tls_line(certs: &[(&Path, &Path, &[&str])], more: &str) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(c, k, names)| {
            let names: Vec<String> = names.iter().map(|n| q(n)).collect();
            format!(
                "{{ cert = {}, key = {}, server_names = [{}] }}",
                tp(c),
                tp(k),
                names.join(", ")
            )
        })
        .collect();
    format!(
        "tls = {{ listen = [\"127.0.0.1:0\"], certificates = [{}]{more} }}",
        list.join(", ")
    )
}

/// The standard fixture with `[server] tls = ...`.
pub async fn tls_fixture(tls: String, extra: &str) -> Fixture {
    Fixture::with(Opts {
        server_extra: tls,
        extra: extra.to_string(),
        ..Opts::default()
    })
    .await
}

/// The TLS listener, from the ready line's `tls=` field.
pub fn tls_addr(gw: &Gateway) -> SocketAddr {
    let err = gw.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("cc-gateway ready "))
        .unwrap_or_else(|| panic!("no ready line in {err}"));
    let field = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("tls="))
        .unwrap_or_else(|| panic!("no tls= in {line}"));
    field
        .split(',')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad tls= in {line}"))
}

/// A client config trusting `roots`, offering `alpn`, with an optional client certificate.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    client: Option<&Leaf>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(store);
    let mut c = match client {
        None => b.with_no_client_auth(),
        Some(l) => b
            .with_client_auth_cert(
                vec![l.der.clone()],
                PrivateKeyDer::from_pem_slice(l.key.as_bytes()).expect("client key"),
            )
            .expect("client cert"),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

use rustls::pki_types::pem::PemObject;

/// The usual client: trusts `ca`, offers h2 and http/1.1, TLS 1.2 and 1.3.
pub fn client(ca: &Ca, cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    client_config(
        &[ca.der()],
        cert,
        &[b"h2", b"http/1.1"],
        rustls::ALL_VERSIONS,
    )
}

/// Connects and completes the TLS handshake with SNI `sni`.
pub async fn connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake"))?
}

/// The leaf certificate the server presented.
pub fn served(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server certificate")
        .clone()
        .into_owned()
}

/// One request over an established TLS connection, in the protocol ALPN chose.
pub async fn send_over(s: TlsStream<TcpStream>, req: Req) -> Resp {
    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
    let what = format!("{} {} over TLS (h2: {h2})", req.method, req.path);
    let mut b = http::Request::builder()
        .method(req.method.clone())
        .uri(format!("https://gw.test{}", req.path));
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    if !h2 {
        b = b.header("host", "gw.test");
    }
    let request = b
        .body(Full::new(Bytes::from(req.body.clone())))
        .expect("request");
    let io = TokioIo::new(s);
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, async {
        if h2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: h2 handshake: {e}"));
            tokio::spawn(conn);
            sender.send_request(request).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .unwrap_or_else(|e| panic!("{what}: h1 handshake: {e}"));
            tokio::spawn(conn);
            sender.send_request(request).await
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: no response"))
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{what}: body: {e}"))
        .to_bytes();
    Resp {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// Connects with `cfg` and SNI `sni`, sends `req`.
pub async fn send_tls(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
    req: Req,
) -> Resp {
    let s = connect(addr, sni, cfg)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with {addr} (SNI {sni}): {e}"));
    send_over(s, req).await
}
