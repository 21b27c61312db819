//! Client (upstream) TLS: the rustls `ClientConfig` an upstream's connections use, built from its
//! `tls = { ca, client_cert, client_key }` and rebuilt when those files change on disk.
//!
//! Verification is always on: the trust anchors are the `ca` bundle, or the system roots; there
//! is deliberately no way to skip it. Rotation is checked when a connection is made (at most once
//! a second, a `stat` of each file), never per request: pooled connections keep the
//! certificate they were made with, new ones get the new files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use rustls::{ClientConfig, RootCertStore};

use super::pem::{self, PemError};

/// How often at most the files are looked at again.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("the system trust store holds no usable CA certificate{0}")]
    NoSystemRoots(String),
    #[error("{}: {source}", path.display())]
    ClientCert {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What a client config is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// CA bundle; None = the system roots
    pub ca: Option<PathBuf>,
    /// certificate chain and key presented to an upstream that asks for one
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// ALPN protocols offered, in preference order
    pub alpn: Vec<Vec<u8>>,
}

/// The system trust store, read once per process (parsing it costs milliseconds; it does not
/// rotate like an operator's private CA does).
fn system_roots() -> Result<Arc<RootCertStore>, ClientTlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(why);
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(ClientTlsError::NoSystemRoots)
}

/// Builds the config from the files as they are now.
pub fn build(files: &ClientTlsFiles) -> Result<Arc<ClientConfig>, ClientTlsError> {
    let roots = match &files.ca {
        Some(ca) => Arc::new(pem::root_store(ca)?),
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match &files.client_cert {
        Some((cert, key)) => {
            let chain = pem::certificates(cert)?;
            let key_der = pem::private_key(key)?;
            // rustls checks that the key is usable and belongs to the certificate
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|source| ClientTlsError::ClientCert {
                    path: key.clone(),
                    source,
                })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = files.alpn.clone();
    Ok(Arc::new(config))
}

/// What identifies a file's content for rotation: a rewrite changes mtime or size, a rename or
/// a symlink swap (Kubernetes secret mounts) changes the inode the path leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(p: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

struct State {
    config: Option<Arc<ClientConfig>>,
    stamps: Vec<Option<Stamp>>,
    checked: Option<Instant>,
}

/// A client config that follows its files: `current` hands out the config for a new
/// connection, rebuilding it first when a file changed. A change that does not build (a half
/// written file, a key that does not match) keeps the previous config and is logged.
pub struct RotatingClientConfig {
    files: ClientTlsFiles,
    /// for the log lines
    label: String,
    state: Mutex<State>,
}

impl RotatingClientConfig {
    pub fn new(label: impl Into<String>, files: ClientTlsFiles) -> Self {
        RotatingClientConfig {
            files,
            label: label.into(),
            state: Mutex::new(State {
                config: None,
                stamps: Vec::new(),
                checked: None,
            }),
        }
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        let f = &self.files;
        f.ca.iter().map(|p| p.as_path()).chain(
            f.client_cert
                .iter()
                .flat_map(|(c, k)| [c.as_path(), k.as_path()]),
        )
    }

    /// The config for a new connection. Called once per connection, not per request; the lock
    /// is held for a clock read, and once a second at most for a `stat` per file.
    pub fn current(&self) -> Result<Arc<ClientConfig>, ClientTlsError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let (Some(c), Some(t)) = (&st.config, st.checked) {
            if now.duration_since(t) < RECHECK {
                return Ok(c.clone());
            }
        }
        st.checked = Some(now);
        let stamps: Vec<_> = self.paths().map(stamp).collect();
        if let Some(c) = &st.config {
            if stamps == st.stamps {
                return Ok(c.clone());
            }
        }
        match build(&self.files) {
            Ok(c) => {
                if st.config.is_some() {
                    tracing::info!(upstream = %self.label, "upstream TLS files changed: new connections use them");
                }
                st.config = Some(c.clone());
                st.stamps = stamps;
                Ok(c)
            }
            Err(e) => match &st.config {
                Some(old) => {
                    // retried at the next check; the stamps stay old so the change is seen again
                    tracing::warn!(upstream = %self.label, error = %e, "upstream TLS files changed but cannot be used; keeping the previous ones");
                    Ok(old.clone())
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_file(dir: &Path, name: &str) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, cert.pem()).unwrap();
        p
    }

    #[test]
    fn a_changed_ca_file_is_picked_up_and_a_broken_one_is_kept_out() {
        crate::tls::install_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path(), "ca.pem");
        let r = RotatingClientConfig::new(
            "t",
            ClientTlsFiles {
                ca: Some(ca.clone()),
                client_cert: None,
                alpn: vec![b"h2".to_vec()],
            },
        );
        let first = r.current().unwrap();
        assert_eq!(first.alpn_protocols, vec![b"h2".to_vec()]);
        // within the recheck interval: the same config, no stat
        assert!(Arc::ptr_eq(&first, &r.current().unwrap()));

        // a rename over the file (new inode): a new config once the interval has passed
        let other = ca_file(dir.path(), "new.pem");
        std::fs::rename(&other, &ca).unwrap();
        r.state.lock().unwrap().checked = None;
        let second = r.current().unwrap();
        assert!(!Arc::ptr_eq(&first, &second));

        // a broken file keeps the last good config
        std::fs::write(&ca, "not a certificate").unwrap();
        r.state.lock().unwrap().checked = None;
        assert!(Arc::ptr_eq(&second, &r.current().unwrap()));
    }

    #[test]
    fn a_missing_file_fails_the_first_build_naming_it() {
        crate::tls::install_provider();
        let r = RotatingClientConfig::new(
            "t",
            ClientTlsFiles {
                ca: Some(PathBuf::from("/nonexistent/ca.pem")),
                client_cert: None,
                alpn: Vec::new(),
            },
        );
        let e = r.current().unwrap_err().to_string();
        assert!(e.starts_with("/nonexistent/ca.pem: cannot read"), "{e}");
    }
}
