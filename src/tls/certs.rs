//! A served certificate: its chain and key read from their PEM files and checked the same way
//! by `check`, startup, reload and rotation — the key must match the leaf, the leaf must not
//! have expired — plus what operators are shown of it (subject, SANs, expiry).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use super::pem::{self, PemError};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{}: the key does not match the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: unusable key: {what}", key.display())]
    Key { key: PathBuf, what: String },
    #[error("{}: not an X.509 certificate: {what}", path.display())]
    Parse { path: PathBuf, what: String },
    #[error("{}: expired at {not_after}", path.display())]
    Expired { path: PathBuf, not_after: String },
}

/// What `check` prints and the expiry metric reports of a leaf certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    pub subject: String,
    /// `DNS:name`, `URI:uri`, `IP:addr`, as OpenSSL prints them
    pub sans: Vec<String>,
    /// Unix seconds
    pub not_after: i64,
}

impl CertInfo {
    pub fn of(path: &Path, der: &CertificateDer<'_>) -> Result<CertInfo, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                    GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                    GeneralName::IPAddress(b) => {
                        if let Some(ip) = ip_from(b) {
                            sans.push(format!("IP:{ip}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(CertInfo {
            subject: cert.subject().to_string(),
            sans,
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// RFC 3339, UTC, for messages.
    pub fn not_after_text(&self) -> String {
        u64::try_from(self.not_after)
            .ok()
            .map(|s| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
                )
                .to_string()
            })
            .unwrap_or_else(|| self.not_after.to_string())
    }
}

fn ip_from(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A certificate ready to serve, with its leaf's description.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

/// Reads `cert` (chain, leaf first) and `key`, refusing a key that does not match the leaf
/// and a leaf that has expired: serving either would only fail every handshake.
pub fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, CertError> {
    let chain = pem::certificates(cert)?;
    let info = CertInfo::of(cert, &chain[0])?;
    let private = pem::private_key(key)?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => CertError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        e => CertError::Key {
            key: key.to_path_buf(),
            what: e.to_string(),
        },
    })?;
    if info.not_after <= unix_now() {
        return Err(CertError::Expired {
            path: cert.to_path_buf(),
            not_after: info.not_after_text(),
        });
    }
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::aws_lc_rs::default_provider()
    }

    fn write_pair(dir: &Path, name: &str, params: rcgen::CertificateParams) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_good_pair_loads_with_its_description() {
        let dir = tempfile::tempdir().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["edge.test".into(), "127.0.0.1".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/ns/a".try_into().unwrap(),
        ));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "edge");
        let (c, k) = write_pair(dir.path(), "edge", params);
        let loaded = load(&c, &k, &provider()).expect("loads");
        assert_eq!(loaded.info.subject, "CN=edge");
        assert_eq!(
            loaded.info.sans,
            vec![
                "DNS:edge.test".to_string(),
                "IP:127.0.0.1".to_string(),
                "URI:spiffe://example.org/ns/a".to_string()
            ]
        );
        assert!(loaded.info.not_after > unix_now());
    }

    #[test]
    fn a_mismatched_key_and_an_expired_certificate_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let params = || rcgen::CertificateParams::new(vec!["edge.test".into()]).unwrap();
        let (c1, _) = write_pair(dir.path(), "one", params());
        let (_, k2) = write_pair(dir.path(), "two", params());
        let e = load(&c1, &k2, &provider()).err().expect("mismatch refused");
        assert!(matches!(e, CertError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("does not match"), "{e}");

        let mut old = params();
        old.not_before = rcgen::date_time_ymd(2000, 1, 1);
        old.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let (c, k) = write_pair(dir.path(), "old", old);
        let e = load(&c, &k, &provider()).err().expect("expired refused");
        assert!(
            e.to_string().ends_with("expired at 2001-01-01T00:00:00Z"),
            "{e}"
        );
    }
}
