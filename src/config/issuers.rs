//! `[[issuers]]`: who signs the tokens, where their keys come from, which algorithms and
//! header bindings apply.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Uri};

use super::raw::RawIssuer;
use super::{VResult, Validator};
use crate::auth::alg::Alg;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `{issuer}/.well-known/openid-configuration` names the `jwks_uri`
    Discovery(Uri),
    JwksUri(Uri),
    JwksFile(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Issuer {
    pub name: String,
    /// must equal the token's `iss`
    pub issuer: String,
    pub source: KeySource,
    pub algorithms: Vec<Alg>,
    pub refresh_interval: Duration,
    pub leeway: Duration,
    /// (header, claim): when the client sends the header, it must equal the claim
    pub bind_headers: Vec<(HeaderName, String)>,
    pub fetch_timeout: Duration,
    /// an unknown `kid` triggers at most one refetch per this interval
    pub unknown_kid_refetch: Duration,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Discovery(u) => write!(f, "discovery via {u}"),
            KeySource::JwksUri(u) => write!(f, "{u}"),
            KeySource::JwksFile(p) => write!(f, "file {}", p.display()),
        }
    }
}

impl Validator {
    pub(super) fn issuers(&self, raws: Vec<RawIssuer>) -> VResult<Vec<Issuer>> {
        let mut names = HashSet::new();
        let mut isses = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in raws.into_iter().enumerate() {
            let p = format!("issuers[{i}]");
            self.name(&format!("{p}.name"), &r.name)?;
            if !names.insert(r.name.clone()) {
                return Err(self.err(
                    format!("{p}.name"),
                    format!("duplicate issuer name {:?}", r.name),
                ));
            }
            if r.issuer.is_empty() {
                return Err(self.err(
                    format!("{p}.issuer"),
                    "must not be empty (it must equal the tokens' iss)",
                ));
            }
            if !isses.insert(r.issuer.clone()) {
                return Err(self.err(
                    format!("{p}.issuer"),
                    format!("{:?} is configured twice", r.issuer),
                ));
            }
            let sources = r.discovery.unwrap_or(false) as u8
                + r.jwks_uri.is_some() as u8
                + r.jwks_file.is_some() as u8;
            if sources != 1 {
                return Err(self.err(
                    p.to_string(),
                    "needs exactly one key source: discovery = true, jwks_uri = \"…\" or jwks_file = \"…\"",
                ));
            }
            let source = if let Some(u) = &r.jwks_uri {
                KeySource::JwksUri(self.http_uri(&format!("{p}.jwks_uri"), u)?)
            } else if let Some(f) = &r.jwks_file {
                KeySource::JwksFile(self.path(f))
            } else {
                let base = r.issuer.trim_end_matches('/');
                let u = format!("{base}/.well-known/openid-configuration");
                KeySource::Discovery(self.http_uri(&format!("{p}.issuer"), &u)?)
            };
            let algorithms = match &r.algorithms {
                None => vec![Alg::RS256],
                Some(v) if v.is_empty() => {
                    return Err(self.err(format!("{p}.algorithms"), "needs at least one algorithm"))
                }
                Some(v) => {
                    let mut algs = Vec::new();
                    for (j, a) in v.iter().enumerate() {
                        let alg = Alg::from_name(a).ok_or_else(|| {
                            let hint = if a == "none" || a.starts_with("HS") {
                                " (refused: \"none\" and HMAC algorithms allow forgery by anyone holding the public key)"
                            } else {
                                ""
                            };
                            self.err(
                                format!("{p}.algorithms[{j}]"),
                                format!("unsupported algorithm {a:?}{hint}; supported: {}", Alg::ALL_NAMES),
                            )
                        })?;
                        if !algs.contains(&alg) {
                            algs.push(alg);
                        }
                    }
                    algs
                }
            };
            let mut bind_headers = Vec::new();
            for (h, claim) in &r.bind_headers {
                let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    self.err(
                        format!("{p}.bind_headers"),
                        format!("{h:?} is not a valid header name"),
                    )
                })?;
                if claim.is_empty() {
                    return Err(self.err(
                        format!("{p}.bind_headers.{h}"),
                        "claim name must not be empty",
                    ));
                }
                bind_headers.push((name, claim.clone()));
            }
            out.push(Issuer {
                name: r.name,
                issuer: r.issuer,
                source,
                algorithms,
                refresh_interval: self.positive_duration(
                    &format!("{p}.refresh_interval"),
                    &r.refresh_interval,
                    Duration::from_secs(3600),
                )?,
                leeway: self.duration(
                    &format!("{p}.leeway"),
                    &r.leeway,
                    Duration::from_secs(30),
                )?,
                bind_headers,
                fetch_timeout: self.positive_duration(
                    &format!("{p}.fetch_timeout"),
                    &r.fetch_timeout,
                    Duration::from_secs(5),
                )?,
                unknown_kid_refetch: self.positive_duration(
                    &format!("{p}.unknown_kid_refetch"),
                    &r.unknown_kid_refetch,
                    Duration::from_secs(30),
                )?,
            });
        }
        Ok(out)
    }

    fn http_uri(&self, path: &str, s: &str) -> VResult<Uri> {
        let u: Uri = s
            .parse()
            .map_err(|_| self.err(path, format!("{s:?} is not a URL")))?;
        match u.scheme_str() {
            Some("http") | Some("https") if u.host().is_some() => Ok(u),
            _ => Err(self.err(path, format!("{s:?}: expected an http:// or https:// URL"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};
    use super::*;

    #[test]
    fn exactly_one_key_source() {
        let both = GOOD.replace(
            "discovery = true",
            "discovery = true\njwks_uri = \"https://gitlab.com/keys\"",
        );
        assert_eq!(parse(&both).unwrap_err().path, "issuers[0]");
        let file =
            parse(&GOOD.replace("discovery = true", "jwks_file = \"keys.json\"")).expect("valid");
        assert_eq!(
            file.issuers[0].source,
            KeySource::JwksFile(PathBuf::from("keys.json")),
            "relative to the config file's directory (here: none)"
        );
        let e =
            parse(&GOOD.replace("discovery = true", "jwks_uri = \"ftp://x/keys\"")).unwrap_err();
        assert_eq!(e.path, "issuers[0].jwks_uri", "{e}");
    }

    #[test]
    fn forgeable_algorithms_are_refused_with_the_reason() {
        for alg in ["none", "HS256"] {
            let text = GOOD.replace(
                "discovery = true",
                &format!("discovery = true\nalgorithms = [\"RS256\", \"{alg}\"]"),
            );
            let e = parse(&text).unwrap_err();
            assert_eq!(e.path, "issuers[0].algorithms[1]", "{e}");
            assert!(e.problem.contains("forgery"), "{e}");
        }
        let dups = GOOD.replace(
            "discovery = true",
            "discovery = true\nalgorithms = [\"ES256\", \"ES256\"]",
        );
        assert_eq!(
            parse(&dups).expect("valid").issuers[0].algorithms,
            vec![Alg::ES256]
        );
    }

    #[test]
    fn bind_headers_and_defaults() {
        let i = &parse(GOOD).expect("valid").issuers[0];
        assert_eq!(
            i.bind_headers,
            vec![(
                HeaderName::from_static("x-gitlab-instance-id"),
                "sub".to_string()
            )]
        );
        assert_eq!(i.refresh_interval, Duration::from_secs(3600));
        assert_eq!(i.unknown_kid_refetch, Duration::from_secs(30));
        let e = parse(&GOOD.replace("= \"sub\"", "= \"\"")).unwrap_err();
        assert_eq!(
            e.path, "issuers[0].bind_headers.X-Gitlab-Instance-Id",
            "{e}"
        );
    }
}
