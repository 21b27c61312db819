//! JSON Web Keys (RFC 7517) → pre-parsed verification keys.
//!
//! Each usable key is parsed once, per algorithm it may be used with, into an aws-lc-rs
//! `ParsedPublicKey`: a verify then costs only the signature math, not rebuilding the RSA
//! key from `n`/`e` (which is what makes naive per-request verification slow).

use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::signature::ParsedPublicKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

use super::alg::{Alg, KeyType};

/// Keys are numbered process-wide, so the token cache can tell which key verified an entry
/// and drop it when that key disappears at rotation.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

pub struct Key {
    pub kid: Option<String>,
    pub key_type: KeyType,
    /// unique per (kid, material) within this process; kept across refreshes for the same key
    pub serial: u64,
    /// canonical key material (for matching a refreshed key with the one we had)
    material: Vec<u8>,
    /// one parsed key per algorithm this key may verify (the issuer's algorithms of the key's
    /// type, narrowed to the JWK's own `alg` when it has one)
    verifiers: Vec<(Alg, ParsedPublicKey)>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("type", &self.key_type)
            .field("serial", &self.serial)
            .finish()
    }
}

impl Key {
    pub fn verifier(&self, alg: Alg) -> Option<&ParsedPublicKey> {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, k)| k)
    }
}

/// A parsed JWKS. `skipped` explains keys that were present but not usable.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    pub skipped: Vec<String>,
}

impl KeySet {
    pub fn by_kid<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.kid.as_deref() == Some(kid))
    }

    pub fn serials(&self) -> impl Iterator<Item = u64> + '_ {
        self.keys.iter().map(|k| k.serial)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document: {0}")]
    Json(String),
    #[error("no usable key (of {total}): {skipped}")]
    NoUsableKey { total: usize, skipped: String },
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWKS for an issuer allowing `allowed` algorithms. `previous` lets keys that did not
/// change keep their serial (so verified tokens stay cached across refreshes).
pub fn parse_jwks(
    json: &[u8],
    allowed: &[Alg],
    previous: Option<&KeySet>,
) -> Result<KeySet, JwksError> {
    let raw: RawSet = serde_json::from_slice(json).map_err(|e| JwksError::Json(e.to_string()))?;
    let total = raw.keys.len();
    let mut set = KeySet::default();
    for (i, v) in raw.keys.into_iter().enumerate() {
        let label = v
            .get("kid")
            .and_then(|k| k.as_str())
            .map(|k| format!("kid {k:?}"))
            .unwrap_or_else(|| format!("key #{i}"));
        match serde_json::from_value::<RawJwk>(v)
            .map_err(|e| e.to_string())
            .and_then(|j| build_key(j, allowed, previous))
        {
            Ok(k) => set.keys.push(k),
            Err(why) => set.skipped.push(format!("{label}: {why}")),
        }
    }
    if set.keys.is_empty() {
        return Err(JwksError::NoUsableKey {
            total,
            skipped: set.skipped.join("; "),
        });
    }
    Ok(set)
}

fn b64(field: &str, v: &Option<String>) -> Result<Vec<u8>, String> {
    let s = v.as_deref().ok_or_else(|| format!("missing \"{field}\""))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("\"{field}\" is not base64url"))
}

fn build_key(j: RawJwk, allowed: &[Alg], previous: Option<&KeySet>) -> Result<Key, String> {
    if let Some(u) = &j.use_ {
        if u != "sig" {
            return Err(format!("use {u:?} is not \"sig\""));
        }
    }
    let (key_type, material) = match j.kty.as_str() {
        "RSA" => {
            let n = b64("n", &j.n)?;
            let e = b64("e", &j.e)?;
            let n_bits = strip_zeros(&n).len() * 8;
            if n_bits < 2048 {
                return Err(format!("RSA modulus of {n_bits} bits is below 2048"));
            }
            (KeyType::Rsa, rsa_pkcs1_der(&n, &e))
        }
        "EC" => {
            let (kt, len) = match j.crv.as_deref() {
                Some("P-256") => (KeyType::EcP256, 32),
                Some("P-384") => (KeyType::EcP384, 48),
                Some("P-521") => (KeyType::EcP521, 66),
                c => return Err(format!("unsupported EC curve {c:?}")),
            };
            let x = b64("x", &j.x)?;
            let y = b64("y", &j.y)?;
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04); // uncompressed SEC1 point
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kt, point)
        }
        "OKP" => match j.crv.as_deref() {
            Some("Ed25519") => {
                let x = b64("x", &j.x)?;
                if x.len() != 32 {
                    return Err("Ed25519 key must be 32 bytes".into());
                }
                (KeyType::Ed25519, x)
            }
            c => return Err(format!("unsupported OKP curve {c:?}")),
        },
        "oct" => return Err("symmetric (oct) keys are never used".into()),
        k => return Err(format!("unsupported kty {k:?}")),
    };
    let jwk_alg = match &j.alg {
        None => None,
        Some(a) => Some(Alg::from_name(a).ok_or_else(|| format!("alg {a:?} is not supported"))?),
    };
    if let Some(a) = jwk_alg {
        if a.key_type() != key_type {
            return Err(format!("alg {a} does not fit a {key_type:?} key"));
        }
    }
    let mut verifiers = Vec::new();
    for &alg in allowed {
        if alg.key_type() == key_type && jwk_alg.is_none_or(|a| a == alg) {
            let parsed = ParsedPublicKey::new(alg.verification(), &material)
                .map_err(|e| format!("key rejected for {alg}: {e}"))?;
            verifiers.push((alg, parsed));
        }
    }
    if verifiers.is_empty() {
        return Err(format!(
            "no allowed algorithm fits it (key {key_type:?}{}; issuer allows {})",
            jwk_alg.map(|a| format!(", alg {a}")).unwrap_or_default(),
            allowed
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let serial = previous
        .and_then(|p| {
            p.keys
                .iter()
                .find(|k| k.kid == j.kid && k.material == material && k.key_type == key_type)
        })
        .map(|k| k.serial)
        .unwrap_or_else(|| NEXT_SERIAL.fetch_add(1, Ordering::Relaxed));
    Ok(Key {
        kid: j.kid,
        key_type,
        serial,
        material,
        verifiers,
    })
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017).
fn rsa_pkcs1_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        let v = strip_zeros(v);
        let pad = v.first().is_none_or(|&b| b & 0x80 != 0); // keep it positive (or encode 0)
        out.push(0x02);
        der_len(out, v.len() + pad as usize);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let b = strip_zeros(&bytes);
        out.push(0x80 | b.len() as u8);
        out.extend_from_slice(b);
    }
}
