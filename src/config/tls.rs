//! `[server.tls]`: the TLS listeners, their certificates (the first is the default, the others
//! are chosen by SNI), the lowest protocol version, and client certificates.
//!
//! Only the shape is checked here; the files themselves are read by `check`
//! (`references.rs`), at startup and at every reload or rotation (`crate::tls::server`).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::raw::{RawCertificate, RawServerTls};
use super::{VResult, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    pub listen: Vec<SocketAddr>,
    /// at least one; the first serves clients whose SNI names no other (or who send none)
    pub certificates: Vec<CertificateFiles>,
    pub min_version: TlsVersion,
    pub client_auth: ClientAuth,
    /// set exactly when `client_auth` is not `Off`
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// lower-case DNS names; `*.example.org` matches one label
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Off,
    /// verified when presented; routes decide whether one is needed
    Optional,
    /// a handshake without a certificate chaining to `client_ca` fails
    Require,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V12 => "1.2",
            TlsVersion::V13 => "1.3",
        }
    }
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Off => "off",
            ClientAuth::Optional => "optional",
            ClientAuth::Require => "require",
        }
    }
}

impl Validator {
    pub(super) fn server_tls(&self, r: RawServerTls) -> VResult<ServerTls> {
        let listen = match r.listen {
            None => return Err(self.err("server.tls.listen", "is required")),
            Some(v) if v.is_empty() => {
                return Err(self.err("server.tls.listen", "needs at least one address"))
            }
            Some(v) => v
                .iter()
                .enumerate()
                .map(|(i, s)| self.addr(&format!("server.tls.listen[{i}]"), s))
                .collect::<VResult<Vec<_>>>()?,
        };
        let certificates = match r.certificates {
            None => return Err(self.err("server.tls.certificates", "is required")),
            Some(v) if v.is_empty() => {
                return Err(self.err("server.tls.certificates", "needs at least one entry"))
            }
            Some(v) => v
                .into_iter()
                .enumerate()
                .map(|(i, c)| self.certificate_files(i, c))
                .collect::<VResult<Vec<_>>>()?,
        };
        let min_version = match r.min_version.as_deref() {
            None | Some("1.2") => TlsVersion::V12,
            Some("1.3") => TlsVersion::V13,
            Some(v) => {
                return Err(self.err(
                    "server.tls.min_version",
                    format!("{v:?}: expected \"1.2\" or \"1.3\""),
                ))
            }
        };
        let client_auth = match r.client_auth.as_deref() {
            None | Some("off") => ClientAuth::Off,
            Some("optional") => ClientAuth::Optional,
            Some("require") => ClientAuth::Require,
            Some(v) => {
                return Err(self.err(
                    "server.tls.client_auth",
                    format!("{v:?}: expected \"off\", \"optional\" or \"require\""),
                ))
            }
        };
        let client_ca =
            match (client_auth, r.client_ca) {
                (ClientAuth::Off, None) => None,
                // a CA that verifies nothing would read as mTLS being on
                (ClientAuth::Off, Some(_)) => return Err(self.err(
                    "server.tls.client_ca",
                    "has no effect with client_auth = \"off\" (set \"optional\" or \"require\")",
                )),
                (_, None) => {
                    return Err(self.err(
                        "server.tls.client_ca",
                        format!("is required with client_auth = {:?}", client_auth.as_str()),
                    ))
                }
                (_, Some(p)) => Some(self.path(&p)),
            };
        Ok(ServerTls {
            listen,
            certificates,
            min_version,
            client_auth,
            client_ca,
        })
    }

    fn certificate_files(&self, i: usize, c: RawCertificate) -> VResult<CertificateFiles> {
        let at = |k: &str| format!("server.tls.certificates[{i}].{k}");
        if c.cert.is_empty() {
            return Err(self.err(at("cert"), "must name a PEM file"));
        }
        if c.key.is_empty() {
            return Err(self.err(at("key"), "must name a PEM file"));
        }
        let server_names = c
            .server_names
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, n)| {
                let n = n.to_ascii_lowercase();
                if is_server_name(&n) {
                    Ok(n)
                } else {
                    Err(self.err(
                        format!("server.tls.certificates[{i}].server_names[{j}]"),
                        format!(
                            "{n:?} is not a DNS name (e.g. \"api.example.org\", \"*.example.org\")"
                        ),
                    ))
                }
            })
            .collect::<VResult<Vec<_>>>()?;
        Ok(CertificateFiles {
            cert: self.path(&c.cert),
            key: self.path(&c.key),
            server_names,
        })
    }
}

/// A DNS name as SNI carries it, optionally with one leading `*.` label.
fn is_server_name(n: &str) -> bool {
    let rest = n.strip_prefix("*.").unwrap_or(n);
    !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};
    use super::*;

    fn with_tls(table: &str) -> String {
        GOOD.replace(
            "threads = 2",
            &format!("threads = 2\n[server.tls]\n{table}"),
        )
    }

    const MIN: &str = "listen = [\"127.0.0.1:8443\"]\ncertificates = [{ cert = \"tls/edge.pem\", key = \"tls/edge.key\" }]";

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(&with_tls(MIN)).expect("valid");
        let t = c.server.tls.expect("tls section");
        assert_eq!(t.listen, vec![SocketAddr::from(([127, 0, 0, 1], 8443))]);
        assert_eq!(t.min_version, TlsVersion::V12);
        assert_eq!(t.client_auth, ClientAuth::Off);
        assert_eq!(t.client_ca, None);
        assert_eq!(t.certificates[0].cert, PathBuf::from("tls/edge.pem"));
        assert!(t.certificates[0].server_names.is_empty());
        assert_eq!(parse(GOOD).expect("valid").server.tls, None);
    }

    #[test]
    fn full_section() {
        let c = parse(&with_tls(
            "listen = [\"0.0.0.0:8443\"]\ncertificates = [\n { cert = \"a.pem\", key = \"a.key\" },\n { cert = \"b.pem\", key = \"b.key\", server_names = [\"Other.Example\", \"*.svc.example\"] },\n]\nmin_version = \"1.3\"\nclient_auth = \"require\"\nclient_ca = \"ca.pem\"",
        ))
        .expect("valid");
        let t = c.server.tls.expect("tls section");
        assert_eq!(t.min_version, TlsVersion::V13);
        assert_eq!(t.client_auth, ClientAuth::Require);
        assert_eq!(t.client_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(
            t.certificates[1].server_names,
            vec!["other.example".to_string(), "*.svc.example".to_string()]
        );
    }

    #[test]
    fn plaintext_listen_may_be_empty_only_with_tls() {
        let no_plain = |s: &str| s.replace("listen = [\"127.0.0.1:8080\"]", "listen = []");
        let c = parse(&no_plain(&with_tls(MIN))).expect("TLS only");
        assert!(c.server.listen.is_empty());
        let e = parse(&no_plain(GOOD)).unwrap_err();
        assert_eq!(e.path, "server.listen", "{e}");
    }

    #[test]
    fn bad_values_name_their_path() {
        let cases = [
            ("listen = [\"127.0.0.1:1\"]\ncertificates = []", "server.tls.certificates"),
            ("listen = [\"127.0.0.1:1\"]", "server.tls.certificates"),
            ("listen = []\ncertificates = [{ cert = \"a\", key = \"b\" }]", "server.tls.listen"),
            ("listen = [\"x\"]\ncertificates = [{ cert = \"a\", key = \"b\" }]", "server.tls.listen[0]"),
            (
                "listen = [\"127.0.0.1:1\"]\ncertificates = [{ cert = \"a\", key = \"b\", server_names = [\"bad name\"] }]",
                "server.tls.certificates[0].server_names[0]",
            ),
            (
                "listen = [\"127.0.0.1:1\"]\ncertificates = [{ cert = \"a\", key = \"\" }]",
                "server.tls.certificates[0].key",
            ),
            (
                "listen = [\"127.0.0.1:1\"]\ncertificates = [{ cert = \"a\", key = \"b\" }]\nmin_version = \"1.1\"",
                "server.tls.min_version",
            ),
            (
                "listen = [\"127.0.0.1:1\"]\ncertificates = [{ cert = \"a\", key = \"b\" }]\nclient_auth = \"yes\"",
                "server.tls.client_auth",
            ),
            (
                "listen = [\"127.0.0.1:1\"]\ncertificates = [{ cert = \"a\", key = \"b\" }]\nclient_auth = \"require\"",
                "server.tls.client_ca",
            ),
            (
                "listen = [\"127.0.0.1:1\"]\ncertificates = [{ cert = \"a\", key = \"b\" }]\nclient_ca = \"ca.pem\"",
                "server.tls.client_ca",
            ),
            (
                "listen = [\"127.0.0.1:1\"]\ncertificates = [{ cert = \"a\", key = \"b\", sni = [] }]",
                "server.tls.certificates[0].sni",
            ),
        ];
        for (table, path) in cases {
            let e = parse(&with_tls(table)).unwrap_err();
            assert_eq!(e.path, path, "{table}: {e}");
        }
    }

    #[test]
    fn server_names() {
        for ok in ["a.example", "*.example.org", "localhost", "x-1.y"] {
            assert!(is_server_name(ok), "{ok}");
        }
        for bad in [
            "",
            "*.",
            "a..b",
            "-a.b",
            "a b",
            "*.*.a",
            "a.*.b",
            "é.example",
        ] {
            assert!(!is_server_name(bad), "{bad}");
        }
    }
}
