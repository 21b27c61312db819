//! The TLS listeners' side: one rustls `ServerConfig` for all workers, built from
//! `[server.tls]` and its files, swapped whole (`ArcSwap`) when a reload or a file change
//! brings new certificates, keys or client CA — new handshakes take the new one, established
//! connections keep theirs. A build that fails (unreadable file, mismatched pair, expired
//! certificate) is refused and the running config keeps serving.
//!
//! The handshake itself ([`TlsServer::accept`]) runs in the connection's own task, bounded by
//! `header_read_timeout`, so a slow client never holds up the accept loop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use super::certs::{self, CertError};
use super::peer::ClientCert;
use crate::config::{ClientAuth, ServerTls, TlsVersion};
use crate::metrics::METRICS;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.certificates[{index}]: {source}")]
    Certificate {
        index: usize,
        #[source]
        source: CertError,
    },
    #[error("server.tls.client_ca: {0}")]
    ClientCa(#[source] super::pem::PemError),
    #[error("server.tls: {0}")]
    Rustls(String),
}

/// The listeners' TLS state, shared by every worker and the control plane.
pub struct TlsServer {
    config: ArcSwap<ServerConfig>,
    /// what the running config was built from: the watcher polls these files
    state: Mutex<State>,
}

struct State {
    settings: ServerTls,
    /// (cert path as labelled, not_after) of the served certificates, for the expiry gauge
    expiry: Vec<(String, i64)>,
}

/// A config built and checked, not yet serving.
pub struct Prepared {
    config: Arc<ServerConfig>,
    settings: ServerTls,
    expiry: Vec<(String, i64)>,
}

impl TlsServer {
    /// Builds the first config; failing here fails startup.
    pub fn new(settings: &ServerTls) -> Result<Arc<TlsServer>, TlsError> {
        let p = prepare(settings, None)?;
        for r in ["ok", "error", "timeout"] {
            METRICS.tls_handshakes.with_label_values(&[r]);
        }
        for r in ["ok", "error"] {
            METRICS.tls_reloads.with_label_values(&[r]);
        }
        let server = TlsServer {
            config: ArcSwap::new(p.config.clone()),
            state: Mutex::new(State {
                settings: p.settings.clone(),
                expiry: Vec::new(),
            }),
        };
        server.install(p);
        Ok(Arc::new(server))
    }

    /// The settings the running config was built from.
    pub fn settings(&self) -> ServerTls {
        self.lock().settings.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // the state is replaced whole under the lock: a panic elsewhere cannot leave it torn
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds a config from `settings` and the files as they are now, keeping the session
    /// resumption state of the running one where that is safe.
    pub fn prepare(&self, settings: &ServerTls) -> Result<Prepared, TlsError> {
        let current = self.config.load_full();
        let keep = (self.lock().settings.client_auth == ClientAuth::Off
            && settings.client_auth == ClientAuth::Off)
            .then_some(&*current);
        prepare(settings, keep)
    }

    /// Serves `p` to new handshakes.
    pub fn install(&self, p: Prepared) {
        self.config.store(p.config);
        let mut st = self.lock();
        for (gone, _) in st
            .expiry
            .iter()
            .filter(|(c, _)| !p.expiry.iter().any(|(n, _)| n == c))
        {
            let _ = METRICS.tls_certificate_expiry.remove_label_values(&[gone]);
        }
        st.settings = p.settings;
        st.expiry = p.expiry;
        drop(st);
        self.update_expiry();
    }

    /// Re-reads the files of `settings` and serves them, or keeps the running config; either
    /// way counted in `tls_reloads_total` and logged.
    pub fn reload(&self, settings: &ServerTls, why: &str) -> Result<(), TlsError> {
        match self.prepare(settings) {
            Ok(p) => {
                self.install(p);
                METRICS.tls_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(trigger = why, "TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                Self::refused(&e, why);
                Err(e)
            }
        }
    }

    /// Counts and logs a refused TLS build.
    pub fn refused(e: &TlsError, why: &str) {
        METRICS.tls_reloads.with_label_values(&["error"]).inc();
        tracing::error!(error = %e, trigger = why, "TLS reload refused; the running certificates stay");
    }

    /// Sets `tls_certificate_expiry_seconds` to the seconds left now.
    pub fn update_expiry(&self) {
        let now = certs::unix_now();
        for (cert, not_after) in &self.lock().expiry {
            METRICS
                .tls_certificate_expiry
                .with_label_values(&[cert])
                .set(not_after - now);
        }
    }

    /// The TLS handshake on an accepted connection, bounded by `timeout`; counted in
    /// `tls_handshakes_total{result}`. Returns the stream and the verified client certificate's
    /// identities (`None` when the client presented none).
    pub async fn accept<IO>(
        &self,
        io: IO,
        timeout: Option<Duration>,
    ) -> Option<(TlsStream<IO>, Option<Arc<ClientCert>>)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
        let handshake = acceptor.accept(io);
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, handshake).await {
                Ok(r) => r,
                Err(_) => {
                    METRICS.tls_handshakes.with_label_values(&["timeout"]).inc();
                    return None;
                }
            },
            None => handshake.await,
        };
        match result {
            Ok(stream) => {
                METRICS.tls_handshakes.with_label_values(&["ok"]).inc();
                let peer = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(ClientCert::from_leaf)
                    .map(Arc::new);
                Some((stream, peer))
            }
            Err(e) => {
                METRICS.tls_handshakes.with_label_values(&["error"]).inc();
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
        }
    }
}

fn prepare(settings: &ServerTls, keep: Option<&ServerConfig>) -> Result<Prepared, TlsError> {
    let provider = super::provider();
    let rustls_err = |e: rustls::Error| TlsError::Rustls(e.to_string());
    let mut by_name = Vec::new();
    let mut default = None;
    let mut expiry = Vec::new();
    for (index, c) in settings.certificates.iter().enumerate() {
        let loaded = certs::load(&c.cert, &c.key, &provider)
            .map_err(|source| TlsError::Certificate { index, source })?;
        expiry.push((c.cert.display().to_string(), loaded.info.not_after));
        for n in &c.server_names {
            by_name.push((n.clone(), loaded.key.clone()));
        }
        default.get_or_insert(loaded.key);
    }
    let Some(default) = default else {
        return Err(TlsError::Rustls("no certificate".into()));
    };
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(rustls_err)?;
    let verifier = match (settings.client_auth, &settings.client_ca) {
        (ClientAuth::Off, _) | (_, None) => WebPkiClientVerifier::no_client_auth(),
        (mode, Some(ca)) => {
            let roots = Arc::new(super::pem::root_store(ca).map_err(TlsError::ClientCa)?);
            let b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let b = if mode == ClientAuth::Optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build().map_err(|e| TlsError::Rustls(e.to_string()))?
        }
    };
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SniResolver { default, by_name }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    match keep {
        // the same ticket keys and cache: clients resume across a certificate rotation
        Some(old) => {
            config.session_storage = old.session_storage.clone();
            config.ticketer = old.ticketer.clone();
        }
        // with client certificates a new CA must not be bypassed by resuming a session
        // authenticated under the old one, so each build starts afresh
        None => {
            config.session_storage = ServerSessionMemoryCache::new(4096);
            config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(rustls_err)?;
        }
    }
    Ok(Prepared {
        config: Arc::new(config),
        settings: settings.clone(),
        expiry,
    })
}

/// The certificate for a handshake: the one whose `server_names` holds the SNI name (exact,
/// or `*.domain` for one label), else the first.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: Vec<(String, Arc<CertifiedKey>)>,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(sni) = sni.map(|s| s.to_ascii_lowercase()) else {
            return self.default.clone();
        };
        let parent = sni.split_once('.').map(|(_, p)| p);
        let found = self.by_name.iter().find(|(n, _)| *n == sni).or_else(|| {
            self.by_name
                .iter()
                .find(|(n, _)| n.strip_prefix("*.").is_some_and(|d| parent == Some(d)))
        });
        found
            .map(|(_, k)| k.clone())
            .unwrap_or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        let k = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec![name.into()])
            .unwrap()
            .self_signed(&k)
            .unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(k.serialize_der().into());
        Arc::new(
            CertifiedKey::from_der(
                vec![c.der().clone()],
                der,
                &rustls::crypto::aws_lc_rs::default_provider(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_default() {
        let (d, a, w) = (key("d"), key("a"), key("w"));
        let r = SniResolver {
            default: d.clone(),
            by_name: vec![
                ("a.example".into(), a.clone()),
                ("*.svc.example".into(), w.clone()),
            ],
        };
        assert!(Arc::ptr_eq(&r.pick(Some("A.Example")), &a));
        assert!(Arc::ptr_eq(&r.pick(Some("x.svc.example")), &w));
        assert!(
            Arc::ptr_eq(&r.pick(Some("x.y.svc.example")), &d),
            "one label only"
        );
        assert!(Arc::ptr_eq(&r.pick(Some("svc.example")), &d));
        assert!(Arc::ptr_eq(&r.pick(None), &d));
    }
}
