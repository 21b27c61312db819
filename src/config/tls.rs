//! `[server.tls]`: the TLS listeners, their certificates (the first is the default, the others
//! are chosen by SNI), the lowest protocol version, and client certificates.
//!
//! Only the shape is checked here; the files themselves are read by `check`
//! (`references.rs`), at startup and at every reload or rotation (`crate::tls::server`).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::raw::{RawCertificate, RawClientCertRule, RawServerTls};
use super::{Route, Server, VResult, Validator};

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

/// A route's `client_cert = { uris, dns }`: the certificate must carry one of these URI SANs
/// or DNS SANs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientCertRule {
    pub uris: Vec<UriPattern>,
    /// lower-case DNS names, matched exactly
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriPattern {
    Exact(String),
    /// written `spiffe://td/ns/ops/*`: held as `spiffe://td/ns/ops/`; matches one or more
    /// further path segments, none empty, `.` or `..`
    Under(String),
}

impl UriPattern {
    pub fn matches(&self, uri: &str) -> bool {
        match self {
            UriPattern::Exact(u) => u == uri,
            UriPattern::Under(prefix) => uri.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .split('/')
                        .all(|s| !s.is_empty() && s != "." && s != "..")
                    && !rest.contains(['?', '#'])
            }),
        }
    }
}

impl ClientCertRule {
    /// The first of the certificate's URI SANs a `uris` pattern admits; else whether a DNS
    /// SAN is listed (`Some(None)`); `None` when nothing matches.
    pub fn admit<'c>(&self, uris: &'c [String], dns: &[String]) -> Option<Option<&'c str>> {
        if let Some(u) = uris.iter().find(|u| self.uris.iter().any(|p| p.matches(u))) {
            return Some(Some(u.as_str()));
        }
        dns.iter()
            .any(|d| self.dns.iter().any(|n| n.eq_ignore_ascii_case(d)))
            .then_some(None)
    }
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
        let server_names = self.server_names(
            &format!("server.tls.certificates[{i}].server_names"),
            c.server_names.unwrap_or_default(),
        )?;
        Ok(CertificateFiles {
            cert: self.path(&c.cert),
            key: self.path(&c.key),
            server_names,
        })
    }
}

impl Validator {
    pub(super) fn client_cert_rule(
        &self,
        route: &str,
        r: RawClientCertRule,
    ) -> VResult<ClientCertRule> {
        let at = |k: &str, j: usize| format!("{route}.client_cert.{k}[{j}]");
        let uris = r
            .uris
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, u)| {
                let bad = |why: &str| self.err(at("uris", j), format!("{u:?}: {why}"));
                let (scheme, rest) = u.split_once("://").ok_or_else(|| {
                    bad("not a URI (e.g. \"spiffe://example.org/ns/ci/sa/runner\")")
                })?;
                if scheme.is_empty() || rest.is_empty() || u.contains(char::is_whitespace) {
                    return Err(bad(
                        "not a URI (e.g. \"spiffe://example.org/ns/ci/sa/runner\")",
                    ));
                }
                match u.strip_suffix("/*") {
                    Some(prefix) if !prefix.contains('*') => {
                        Ok(UriPattern::Under(format!("{prefix}/")))
                    }
                    _ if u.contains('*') => {
                        Err(bad("'*' is only allowed as a final \"/*\" segment"))
                    }
                    _ => Ok(UriPattern::Exact(u)),
                }
            })
            .collect::<VResult<Vec<_>>>()?;
        let dns = r
            .dns
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, n)| {
                let n = n.to_ascii_lowercase();
                if is_server_name(&n) && !n.starts_with("*.") {
                    Ok(n)
                } else {
                    Err(self.err(at("dns", j), format!("{n:?} is not a DNS name")))
                }
            })
            .collect::<VResult<Vec<_>>>()?;
        if uris.is_empty() && dns.is_empty() {
            return Err(self.err(
                format!("{route}.client_cert"),
                "needs at least one entry in uris or dns",
            ));
        }
        Ok(ClientCertRule { uris, dns })
    }

    /// A `client_cert` rule no request could ever pass is a mistake, not a policy.
    pub(super) fn client_cert_rules_need_client_auth(
        &self,
        routes: &[Route],
        server: &Server,
    ) -> VResult<()> {
        let on = server
            .tls
            .as_ref()
            .is_some_and(|t| t.client_auth != ClientAuth::Off);
        match routes.iter().position(|r| r.client_cert.is_some()) {
            Some(i) if !on => Err(self.err(
                format!("routes[{i}].client_cert"),
                "needs [server.tls] with client_auth = \"optional\" or \"require\"",
            )),
            _ => Ok(()),
        }
    }
}

impl Validator {
    /// SNI names (lowercased): DNS names, optionally with one leading `*.` label. `at` is the
    /// list's key path.
    pub(super) fn server_names(&self, at: &str, names: Vec<String>) -> VResult<Vec<String>> {
        names
            .into_iter()
            .enumerate()
            .map(|(j, n)| {
                let n = n.to_ascii_lowercase();
                if is_server_name(&n) {
                    Ok(n)
                } else {
                    Err(self.err(
                        format!("{at}[{j}]"),
                        format!(
                            "{n:?} is not a DNS name (e.g. \"api.example.org\", \"*.example.org\")"
                        ),
                    ))
                }
            })
            .collect()
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

    const MTLS: &str = "listen = [\"127.0.0.1:1\"]\ncertificates = [{ cert = \"a\", key = \"b\" }]\nclient_auth = \"optional\"\nclient_ca = \"ca.pem\"";

    fn with_rule(tls: &str, rule: &str) -> String {
        with_tls(tls).replace(
            "scopes = [\"code_suggestions\"]",
            &format!("scopes = [\"code_suggestions\"]\nclient_cert = {rule}"),
        )
    }

    #[test]
    fn client_cert_rules() {
        let c = parse(&with_rule(
            MTLS,
            "{ uris = [\"spiffe://example.org/ns/ci/sa/runner\", \"spiffe://example.org/ns/ops/*\"], dns = [\"LB.internal\"] }",
        ))
        .expect("valid");
        let rule = c.routes[0].client_cert.clone().expect("rule");
        assert_eq!(
            rule.uris,
            vec![
                UriPattern::Exact("spiffe://example.org/ns/ci/sa/runner".into()),
                UriPattern::Under("spiffe://example.org/ns/ops/".into())
            ]
        );
        assert_eq!(rule.dns, vec!["lb.internal".to_string()]);

        let cases = [
            (MTLS, "{ uris = [] }", "routes[0].client_cert"),
            (
                MTLS,
                "{ uris = [\"not a uri\"] }",
                "routes[0].client_cert.uris[0]",
            ),
            (
                MTLS,
                "{ uris = [\"spiffe://x/*/y\"] }",
                "routes[0].client_cert.uris[0]",
            ),
            (
                MTLS,
                "{ dns = [\"*.wild\"] }",
                "routes[0].client_cert.dns[0]",
            ),
            (
                MTLS,
                "{ dns = [\"a\"], ip = [] }",
                "routes[0].client_cert.ip",
            ),
            (MIN, "{ dns = [\"a\"] }", "routes[0].client_cert"),
        ];
        for (tls, rule, path) in cases {
            let e = parse(&with_rule(tls, rule)).unwrap_err();
            assert_eq!(e.path, path, "{rule}: {e}");
        }
        let e = parse(&GOOD.replace(
            "scopes = [\"code_suggestions\"]",
            "scopes = [\"code_suggestions\"]\nclient_cert = { dns = [\"a\"] }",
        ))
        .unwrap_err();
        assert!(e.problem.contains("client_auth"), "{e}");
    }

    #[test]
    fn spiffe_patterns_match_exactly_or_one_or_more_segments() {
        let exact = UriPattern::Exact("spiffe://example.org/ns/ci/sa/runner".into());
        assert!(exact.matches("spiffe://example.org/ns/ci/sa/runner"));
        assert!(!exact.matches("spiffe://example.org/ns/ci/sa/runner/x"));
        assert!(!exact.matches("spiffe://example.org/ns/ci/sa/runne"));
        let under = UriPattern::Under("spiffe://example.org/ns/ops/".into());
        assert!(under.matches("spiffe://example.org/ns/ops/sa"));
        assert!(under.matches("spiffe://example.org/ns/ops/sa/deployer"));
        for no in [
            "spiffe://example.org/ns/ops",
            "spiffe://example.org/ns/ops/",
            "spiffe://example.org/ns/opsx/sa",
            "spiffe://example.org/ns/ops//sa",
            "spiffe://example.org/ns/ops/sa/",
            "spiffe://example.org/ns/ops/../ci",
            "spiffe://example.org/ns/ops/sa?x",
            "spiffe://evil.org/ns/ops/sa",
        ] {
            assert!(!under.matches(no), "{no}");
        }
        let rule = ClientCertRule {
            uris: vec![under],
            dns: vec!["lb.internal".into()],
        };
        let uris = vec![
            "spiffe://x/y".to_string(),
            "spiffe://example.org/ns/ops/a".to_string(),
        ];
        assert_eq!(
            rule.admit(&uris, &[]),
            Some(Some("spiffe://example.org/ns/ops/a"))
        );
        assert_eq!(rule.admit(&[], &["LB.internal".to_string()]), Some(None));
        assert_eq!(rule.admit(&uris[..1], &["other".to_string()]), None);
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
