//! Compact JWS parsing (RFC 7515 §7.1) without trusting anything: split, base64url-decode,
//! parse the header and the claims as strict JSON. Signature and claim checks are in
//! `verify`. Every failure is a typed error, never a panic (fuzzed in `fuzz/`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A decoded, not yet verified token.
#[derive(Debug)]
pub struct Jwt<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// `base64(header) . base64(claims)`: what the signature covers
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
    /// critical extensions (RFC 7515 §4.1.11): we implement none, so any is refused
    #[serde(default)]
    pub crit: Option<Value>,
    /// JWE headers carry `enc`; a JWS never does
    #[serde(default)]
    pub enc: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is not three base64url segments separated by '.' ({0} segments{jwe})", jwe = if *.0 == 5 { ", looks like an encrypted JWE" } else { "" })]
    Segments(usize),
    #[error("{0} segment is not base64url")]
    Base64(&'static str),
    #[error("{0} is not a JSON object: {1}")]
    Json(&'static str, String),
    #[error("header has unsupported critical extensions")]
    Crit,
    #[error("encrypted tokens (JWE) are not accepted")]
    Jwe,
}

/// Splits and decodes a compact JWS.
pub fn decode(token: &str) -> Result<Jwt<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Segments(token.split('.').count()));
    };
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| JwtError::Base64("header"))?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|e| JwtError::Json("header", e.to_string()))?;
    if header.crit.is_some() {
        return Err(JwtError::Crit);
    }
    if header.enc.is_some() {
        return Err(JwtError::Jwe);
    }
    let claim_bytes = URL_SAFE_NO_PAD
        .decode(c)
        .map_err(|_| JwtError::Base64("claims"))?;
    let claims = serde_json::from_slice::<StrictObject>(&claim_bytes)
        .map_err(|e| JwtError::Json("claims", e.to_string()))?
        .0;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Base64("signature"))?;
    Ok(Jwt {
        header,
        claims,
        signing_input: &token[..h.len() + 1 + c.len()],
        signature,
    })
}

/// A JSON object that refuses duplicate keys: `{"sub":"a","sub":"b"}` could be read as "a" by
/// one component and "b" by another, so it is never accepted.
struct StrictObject(Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<StrictObject, A::Error> {
                let mut out = Map::new();
                while let Some(k) = m.next_key::<String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format_args!(
                            "duplicate claim {k:?}"
                        )));
                    }
                    let v: Value = m.next_value()?;
                    out.insert(k, v);
                }
                Ok(StrictObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn decodes_a_compact_jws() {
        let t = format!(
            "{}.{}.{}",
            enc(r#"{"alg":"RS256","kid":"k1"}"#),
            enc(r#"{"sub":"x","exp":1}"#),
            enc("sig")
        );
        let j = decode(&t).unwrap();
        assert_eq!(j.header.alg, "RS256");
        assert_eq!(j.header.kid.as_deref(), Some("k1"));
        assert_eq!(j.claims["sub"], "x");
        assert_eq!(j.signature, b"sig");
        assert_eq!(j.signing_input, &t[..t.rfind('.').unwrap()]);
    }

    #[test]
    fn refuses_malformed() {
        let h = enc(r#"{"alg":"RS256"}"#);
        let c = enc(r#"{"sub":"x"}"#);
        assert_eq!(decode("a.b").unwrap_err(), JwtError::Segments(2));
        assert_eq!(decode("a.b.c.d.e").unwrap_err(), JwtError::Segments(5));
        assert_eq!(
            decode(&format!("{h}.{c}.!!")).unwrap_err(),
            JwtError::Base64("signature")
        );
        assert_eq!(
            decode(&format!("{h}=.{c}.")).unwrap_err(),
            JwtError::Base64("header")
        );
        assert!(matches!(
            decode(&format!("{}.{c}.", enc("[1]"))),
            Err(JwtError::Json("header", _))
        ));
        assert!(matches!(
            decode(&format!("{h}.{}.", enc(r#"{"sub":"a","sub":"b"}"#))),
            Err(JwtError::Json("claims", _))
        ));
        assert_eq!(
            decode(&format!("{}.{c}.", enc(r#"{"alg":"RS256","crit":["x"]}"#))).unwrap_err(),
            JwtError::Crit
        );
        assert!(matches!(
            decode(&format!("{}.{c}.", enc(r#"{"alg":"RS256","alg":"none"}"#))),
            Err(JwtError::Json("header", _))
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = decode(&s);
        }

        #[test]
        fn never_panics_on_dotted_base64(a in "[A-Za-z0-9_-]{0,60}", b in "[A-Za-z0-9_-]{0,60}", c in "[A-Za-z0-9_=.-]{0,60}") {
            let t = format!("{a}.{b}.{c}");
            if let Ok(j) = decode(&t) {
                // whatever decodes must round-trip its signing input
                proptest::prop_assert!(t.starts_with(j.signing_input));
            }
        }
    }
}
