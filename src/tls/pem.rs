//! PEM files: certificate chains, private keys and CA bundles, read with `rustls-pki-types`
//! (`rustls-pemfile` is unmaintained). Every error names the file and what is wrong with it,
//! so `check`, startup, reload and rotation all report the same words.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, what: impl Into<String>) -> PemError {
    PemError::Invalid {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Every `CERTIFICATE` block of the file, in order (leaf first for a chain); at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The file's private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => invalid(path, "holds no PRIVATE KEY block"),
        e => invalid(path, format!("not a PEM private key: {e}")),
    })
}

/// A CA bundle as a root store: every certificate of the file must parse as a trust anchor.
pub fn root_store(path: &Path) -> Result<rustls::RootCertStore, PemError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = certificates(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read", missing.display())),
            "{e}"
        );

        let empty = file(dir.path(), "empty.pem", "just text\n");
        assert_eq!(
            certificates(&empty).unwrap_err().to_string(),
            format!("{}: holds no CERTIFICATE block", empty.display())
        );
        assert_eq!(
            private_key(&empty).unwrap_err().to_string(),
            format!("{}: holds no PRIVATE KEY block", empty.display())
        );
    }

    #[test]
    fn a_generated_certificate_and_key_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["edge.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let c = file(dir.path(), "c.pem", &cert.pem());
        let k = file(dir.path(), "k.pem", &key.serialize_pem());
        assert_eq!(certificates(&c).unwrap().len(), 1);
        assert!(matches!(private_key(&k).unwrap(), PrivateKeyDer::Pkcs8(_)));
        assert_eq!(root_store(&c).unwrap().len(), 1);
    }
}
