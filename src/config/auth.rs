//! `[auth]`: where the token is read from, the identity header prefix, the token cache.

use http::HeaderName;

use super::raw::RawAuth;
use super::{VResult, Validator};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenHeader {
    /// `Authorization: Bearer <token>` (scheme matched case-insensitively, RFC 9110 §11.1)
    Authorization,
    /// the whole header value is the token
    Plain(HeaderName),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub token_headers: Vec<TokenHeader>,
    /// lower-cased (header names are lower-case in `http`), e.g. `x-cc-`
    pub identity_header_prefix: String,
    /// which identity headers are set upstream (all by default)
    pub identity_headers: IdentityHeaders,
    pub token_cache_size: usize,
    pub max_token_bytes: usize,
    pub forward_token: bool,
}

/// The identity headers a backend gets (`auth.identity_headers`): one it does not read is
/// bytes every request carries for nothing (the upstream parses each header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub subject: bool,
    pub issuer: bool,
    pub scopes: bool,
    pub realm: bool,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            subject: true,
            issuer: true,
            scopes: true,
            realm: true,
        }
    }
}

impl Validator {
    fn identity_headers(&self, names: Option<Vec<String>>) -> VResult<IdentityHeaders> {
        let Some(names) = names else {
            return Ok(IdentityHeaders::default());
        };
        let mut h = IdentityHeaders {
            subject: false,
            issuer: false,
            scopes: false,
            realm: false,
        };
        for (i, n) in names.iter().enumerate() {
            let slot = match n.to_ascii_lowercase().as_str() {
                "subject" => &mut h.subject,
                "issuer" => &mut h.issuer,
                "scopes" => &mut h.scopes,
                "realm" => &mut h.realm,
                _ => {
                    return Err(self.err(
                        format!("auth.identity_headers[{i}]"),
                        format!("{n:?}: expected \"subject\", \"issuer\", \"scopes\" or \"realm\""),
                    ))
                }
            };
            if *slot {
                return Err(self.err(
                    format!("auth.identity_headers[{i}]"),
                    format!("{n:?} is listed twice"),
                ));
            }
            *slot = true;
        }
        Ok(h)
    }

    pub(super) fn auth(&self, r: RawAuth) -> VResult<Auth> {
        let names = r
            .token_headers
            .unwrap_or_else(|| vec!["X-Gitlab-Token".into(), "Authorization".into()]);
        if names.is_empty() {
            return Err(self.err("auth.token_headers", "needs at least one header"));
        }
        let mut token_headers = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let h = HeaderName::from_bytes(n.trim().as_bytes()).map_err(|_| {
                self.err(
                    format!("auth.token_headers[{i}]"),
                    format!("{n:?} is not a valid header name"),
                )
            })?;
            let th = if h == http::header::AUTHORIZATION {
                TokenHeader::Authorization
            } else {
                TokenHeader::Plain(h)
            };
            if token_headers.contains(&th) {
                return Err(self.err(
                    format!("auth.token_headers[{i}]"),
                    format!("{n:?} is listed twice"),
                ));
            }
            token_headers.push(th);
        }
        let prefix = r.identity_header_prefix.unwrap_or_else(|| "X-Cc-".into());
        if prefix.len() < 2
            || HeaderName::from_bytes(format!("{prefix}subject").as_bytes()).is_err()
        {
            return Err(self.err(
                "auth.identity_header_prefix",
                format!("{prefix:?} is not a usable header name prefix (e.g. \"X-Cc-\")"),
            ));
        }
        Ok(Auth {
            token_headers,
            identity_header_prefix: prefix.to_ascii_lowercase(),
            identity_headers: self.identity_headers(r.identity_headers)?,
            token_cache_size: self.count(
                "auth.token_cache_size",
                r.token_cache_size,
                100_000,
                0,
                100_000_000,
            )?,
            max_token_bytes: self.count(
                "auth.max_token_bytes",
                r.max_token_bytes,
                8192,
                64,
                1 << 20,
            )?,
            forward_token: r.forward_token.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};
    use super::*;

    fn with_auth(auth: &str) -> String {
        format!("{GOOD}\n[auth]\n{auth}\n")
    }

    #[test]
    fn authorization_is_the_bearer_scheme_other_headers_are_plain() {
        let a = parse(&with_auth(
            "token_headers = [\"authorization\", \"X-Token\"]",
        ))
        .expect("valid")
        .auth;
        assert_eq!(
            a.token_headers,
            vec![
                TokenHeader::Authorization,
                TokenHeader::Plain(HeaderName::from_static("x-token"))
            ]
        );
        assert!(a.forward_token, "forwarded by default");
    }

    #[test]
    fn bad_headers_and_prefixes_name_their_key() {
        let cases = [
            ("token_headers = []", "auth.token_headers"),
            (
                "token_headers = [\"X-A\", \"x-a\"]",
                "auth.token_headers[1]",
            ),
            ("token_headers = [\"bad header\"]", "auth.token_headers[0]"),
            (
                "identity_header_prefix = \"X \"",
                "auth.identity_header_prefix",
            ),
            ("max_token_bytes = 10", "auth.max_token_bytes"),
        ];
        for (auth, path) in cases {
            let e = parse(&with_auth(auth)).unwrap_err();
            assert_eq!(e.path, path, "{auth}: {e}");
        }
    }

    #[test]
    fn identity_prefix_is_lower_cased() {
        let a = parse(&with_auth("identity_header_prefix = \"X-Gw-\""))
            .expect("valid")
            .auth;
        assert_eq!(a.identity_header_prefix, "x-gw-");
        assert_eq!(
            a.identity_headers,
            IdentityHeaders::default(),
            "all by default"
        );
        let a = parse(&with_auth("identity_headers = [\"Subject\", \"realm\"]"))
            .expect("valid")
            .auth;
        assert_eq!(
            a.identity_headers,
            IdentityHeaders {
                subject: true,
                issuer: false,
                scopes: false,
                realm: true
            }
        );
        let none = parse(&with_auth("identity_headers = []"))
            .expect("valid")
            .auth;
        assert!(!none.identity_headers.subject && !none.identity_headers.realm);
        for (bad, path) in [
            (
                "identity_headers = [\"subject\", \"sub\"]",
                "auth.identity_headers[1]",
            ),
            (
                "identity_headers = [\"realm\", \"Realm\"]",
                "auth.identity_headers[1]",
            ),
        ] {
            let e = parse(&with_auth(bad)).unwrap_err().to_string();
            assert!(e.contains(path), "{bad}: {e}");
        }
    }
}
