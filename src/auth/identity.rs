//! The verified identity: what a genuine token says, with what the request path needs
//! pre-computed (identity header values). Produced by `verify`, kept by `cache`, read by
//! authorization, budgets and forwarding — its own module so none of them depends on another.

use bytes::Bytes;
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
    pub aud: StrList,
    pub scopes: StrList,
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
    /// Built once per verified token (a cache hit reuses it). The four values are slices of
    /// one buffer: a request clones all of them, and with many distinct tokens (one per GitLab
    /// instance) each separate allocation is another cache miss on every request.
    pub fn new(sub: Option<&str>, iss: &str, scopes: &StrList, realm: Option<&str>) -> Self {
        let joined;
        let scopes = if scopes.is_empty() {
            None
        } else {
            joined = scopes.iter().collect::<Vec<_>>().join(",");
            Some(joined.as_str())
        };
        let values = [sub, Some(iss), scopes, realm].map(|v| v.filter(|s| fits_header(s)));
        let mut buf = Vec::with_capacity(values.iter().flatten().map(|s| s.len()).sum());
        let ranges = values.map(|v| {
            v.map(|s| {
                buf.extend_from_slice(s.as_bytes());
                buf.len() - s.len()..buf.len()
            })
        });
        let buf = Bytes::from(buf);
        let [subject, issuer, scopes, realm] =
            ranges.map(|r| r.and_then(|r| HeaderValue::from_maybe_shared(buf.slice(r)).ok()));
        Identity {
            subject,
            issuer,
            scopes,
            realm,
        }
    }
}

/// A token's string-list claim (`aud`, `scopes`) in one allocation: authorization reads it on
/// every request, and one allocation is one cache line to fetch rather than one per string.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StrList {
    /// each item as its length (4 bytes, little-endian), then its UTF-8 bytes
    buf: Box<[u8]>,
}

impl StrList {
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        // built from `&str`s only, so this never fails
        self.items()
            .map_while(|item| std::str::from_utf8(item).ok())
    }

    /// Compares bytes: authorization asks this on every request, and a UTF-8 check per item
    /// costs more than the comparison.
    pub fn contains(&self, s: &str) -> bool {
        self.items().any(|t| t == s.as_bytes())
    }

    fn items(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut rest = &self.buf[..];
        std::iter::from_fn(move || {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            let (item, tail) = tail.split_at_checked(len)?;
            rest = tail;
            Some(item)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }
}

impl<'a> FromIterator<&'a str> for StrList {
    fn from_iter<I: IntoIterator<Item = &'a str>>(items: I) -> Self {
        let mut buf = Vec::new();
        for s in items {
            // a token is at most a few KiB, so no claim comes near 4 GiB
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&s.as_bytes()[..len as usize]);
        }
        StrList { buf: buf.into() }
    }
}

impl std::fmt::Debug for StrList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
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

/// Only visible ASCII (and spaces) is forwarded as an identity header; anything else is left
/// out rather than smuggled into a header.
fn fits_header(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_leave_out_what_cannot_be_a_header() {
        let scopes: StrList = ["read", "write"].into_iter().collect();
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
        let id = Identity::new(None, "a\nb", &StrList::default(), None);
        assert!(id.subject.is_none() && id.issuer.is_none() && id.scopes.is_none());
    }

    #[test]
    fn a_str_list_keeps_every_item_whole_and_in_order() {
        let items = ["svc", "", "a b", "gr\u{fc}n", "x,y"];
        let l: StrList = items.into_iter().collect();
        assert_eq!(l.iter().collect::<Vec<_>>(), items);
        assert_eq!(l.len(), 5);
        assert!(
            l.contains("") && l.contains("a b") && l.contains("x,y") && l.contains("gr\u{fc}n")
        );
        // whole items only: no prefix, suffix or join of neighbours matches
        for probe in ["sv", "svc ", "a", "x", "svca b", "b"] {
            assert!(!l.contains(probe), "{probe:?} matched");
        }
        let empty = StrList::default();
        assert!(empty.is_empty() && empty.iter().next().is_none() && !empty.contains(""));
        assert!(!std::iter::once("").collect::<StrList>().is_empty());
    }

    #[test]
    fn identity_values_share_one_buffer() {
        let scopes: StrList = ["a", "b"].into_iter().collect();
        let id = Identity::new(Some("s"), "i", &scopes, Some("r"));
        let values = [&id.subject, &id.issuer, &id.scopes, &id.realm]
            .map(|v| v.as_ref().map(|v| v.as_bytes()));
        assert_eq!(
            values,
            [Some(&b"s"[..]), Some(b"i"), Some(b"a,b"), Some(b"r")]
        );
        // adjacent in one allocation (what makes a cache hit cheap)
        let at = |v: &Option<HeaderValue>| v.as_ref().map_or(0, |v| v.as_bytes().as_ptr() as usize);
        assert_eq!(at(&id.issuer), at(&id.subject) + 1);
        assert_eq!(at(&id.realm), at(&id.scopes) + 3);
    }
}
