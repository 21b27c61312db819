//! The verified identity: what a genuine token says, with what the request path needs
//! pre-computed (identity header values). Produced by `verify`, kept by `cache`, read by
//! authorization, budgets and forwarding — its own module so none of them depends on another.

use http::HeaderValue;
use serde_json::{Map, Value};

use super::alg::Alg;

/// Claims of a verified token, with what the request path needs pre-computed.
#[derive(Debug)]
pub struct Verified {
    /// index into the verifier's issuers (not the `iss` value: that is `iss`)
    pub issuer_index: usize,
    /// the key that verified it (cache invalidation at rotation)
    pub key_serial: u64,
    pub alg: Alg,
    pub kid: Option<String>,
    pub exp: i64,
    pub iss: Box<str>,
    pub sub: Option<Box<str>>,
    pub realm: Option<Box<str>>,
    pub aud: Box<[Box<str>]>,
    pub scopes: Box<[Box<str>]>,
    pub claims: Map<String, Value>,
    /// identity header values, built once per verified token
    pub identity: Identity,
}

/// The identity header values forwarded upstream (`<prefix>Subject` …), each present only when
/// the claim is there and fits in a header.
#[derive(Debug, Default)]
pub struct Identity {
    pub subject: Option<HeaderValue>,
    /// the `iss` claim as a header value
    pub issuer: Option<HeaderValue>,
    pub scopes: Option<HeaderValue>,
    pub realm: Option<HeaderValue>,
}

impl Identity {
    /// Built once per verified token (a cache hit reuses it).
    pub fn new(sub: Option<&str>, iss: &str, scopes: &[Box<str>], realm: Option<&str>) -> Self {
        Identity {
            subject: sub.and_then(identity_header_value),
            issuer: identity_header_value(iss),
            scopes: (!scopes.is_empty())
                .then(|| identity_header_value(&scopes.join(",")))
                .flatten(),
            realm: realm.and_then(identity_header_value),
        }
    }
}

impl Verified {
    /// A claim as a string, for header binding: strings as-is, numbers and booleans in their
    /// JSON form; objects, arrays and null have no string form.
    pub fn claim_str(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match self.claims.get(name)? {
            Value::String(s) => Some(s.as_str().into()),
            Value::Number(n) => Some(n.to_string().into()),
            Value::Bool(b) => Some(if *b { "true" } else { "false" }.into()),
            _ => None,
        }
    }
}

/// A claim value as an identity header value. Only visible ASCII (and spaces) is forwarded;
/// anything else is left out rather than smuggled into a header.
fn identity_header_value(s: &str) -> Option<HeaderValue> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        HeaderValue::from_str(s).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_leave_out_what_cannot_be_a_header() {
        let scopes: Vec<Box<str>> = vec!["read".into(), "write".into()];
        let id = Identity::new(Some("user:1"), "https://iss", &scopes, Some("saas\u{e9}"));
        assert_eq!(
            id.subject.as_ref().map(|v| v.as_bytes()),
            Some(&b"user:1"[..])
        );
        assert_eq!(
            id.issuer.as_ref().map(|v| v.as_bytes()),
            Some(&b"https://iss"[..])
        );
        assert_eq!(
            id.scopes.as_ref().map(|v| v.as_bytes()),
            Some(&b"read,write"[..])
        );
        assert!(
            id.realm.is_none(),
            "non-ASCII realm forwarded: {:?}",
            id.realm
        );
        let id = Identity::new(None, "a\nb", &[], None);
        assert!(id.subject.is_none() && id.issuer.is_none() && id.scopes.is_none());
    }
}
