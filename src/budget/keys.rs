//! A request's key under a rule: the rule's key parts (`claim:`, `header:`, `route`,
//! `client_ip`) joined with `|`. Each part is escaped so that no value can forge the separator
//! (two different requests never share a key by accident), and long values are hashed so a
//! client cannot make the store hold arbitrarily long keys. Stores hold `<rule>|<key>`.

use std::borrow::Cow;
use std::fmt::Write;
use std::net::IpAddr;

use http::HeaderMap;

use crate::auth::Verified;
use crate::config::{BudgetRule, KeyPart};

/// A part the request has no value for (no such claim or header): such requests share it.
pub(super) const MISSING: &str = "_missing_";
/// The longest part kept as it is, escaped; anything longer is stored as its SHA-256.
const MAX_PART: usize = 128;

/// What key and limit selection read from the verified token. A trait rather than `Verified`
/// itself so that selection can be unit-tested without a signed token.
pub(crate) trait Claims {
    /// A claim's string form (strings as they are, numbers and booleans as JSON).
    fn claim_str(&self, name: &str) -> Option<Cow<'_, str>>;
    /// A claim as a number: a JSON number, or a string that parses as one (tiers).
    fn claim_number(&self, name: &str) -> Option<f64>;
}

impl Claims for Verified {
    fn claim_str(&self, name: &str) -> Option<Cow<'_, str>> {
        Verified::claim_str(self, name)
    }

    fn claim_number(&self, name: &str) -> Option<f64> {
        number(self.claims.get(name)?)
    }
}

/// A claim value as a number: a JSON number, or a string that parses as one (issuers differ).
pub(super) fn number(v: &serde_json::Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str()?.parse().ok())
}

/// How a store names `key` of `rule` (`plan` builds the same in one buffer, see `key_into`).
pub(super) fn stored_key(rule: &BudgetRule, key: &str) -> String {
    format!("{}|{key}", rule.name)
}

/// Appends the key of `rule` for this request to `key`.
pub(super) fn key_into<C: Claims + ?Sized>(
    rule: &BudgetRule,
    route_name: &str,
    id: Option<&C>,
    headers: &HeaderMap,
    ip: IpAddr,
    key: &mut String,
) {
    parts_into(&rule.key, route_name, id, headers, ip, key);
}

/// Writes the key that `parts` make of this request to `out` (a `String`, or a hasher that
/// never holds the key: canary placement); false when a claim or header had no value (written
/// as `_missing_`). Budget rules and canary splits share it, so a key means the same in both.
pub(crate) fn parts_into<C: Claims + ?Sized, W: Write>(
    parts: &[KeyPart],
    route_name: &str,
    id: Option<&C>,
    headers: &HeaderMap,
    ip: IpAddr,
    out: &mut W,
) -> bool {
    // (writing to a String or a hasher cannot fail: the results are not errors to handle)
    let mut complete = true;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            let _ = out.write_char('|');
        }
        match part {
            KeyPart::Claim(c) => match id.and_then(|v| v.claim_str(c)) {
                Some(v) => escape_part(v.as_bytes(), out),
                None => {
                    complete = false;
                    let _ = out.write_str(MISSING);
                }
            },
            KeyPart::Header(h) => match headers.get(h) {
                Some(v) => escape_part(v.as_bytes(), out),
                None => {
                    complete = false;
                    let _ = out.write_str(MISSING);
                }
            },
            KeyPart::Route => escape_part(route_name.as_bytes(), out),
            KeyPart::ClientIp => {
                let _ = write!(out, "{ip}");
            }
        }
    }
    complete
}

/// One key part as stored: `%` and `|` escaped (parts are joined with `|`), long values hashed.
fn escape_part<W: Write>(v: &[u8], out: &mut W) {
    let s = String::from_utf8_lossy(v);
    if s.len() <= MAX_PART && !s.contains(['%', '|']) {
        let _ = out.write_str(&s); // the common case: nothing to escape, no allocation
        return;
    }
    let escaped = s.replace('%', "%25").replace('|', "%7C");
    if escaped.len() > MAX_PART {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v);
        let _ = out.write_str("sha256:");
        for b in d.as_ref() {
            let _ = write!(out, "{b:02x}");
        }
    } else {
        let _ = out.write_str(&escaped);
    }
}
