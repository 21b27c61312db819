//! Token verification: decode → algorithm → issuer → key → signature → time claims, each
//! failure with its own stable reason. Verified claims are cached by token digest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde_json::{Map, Value};

use super::alg::Alg;
use super::cache::TokenCache;
use super::jwk::{Key, KeySet};
use super::jwt::{self, Jwt};
use super::keys::IssuerKeys;
use super::reason::{AuthError, Reason};
use crate::config::Config;
use crate::metrics::METRICS;

/// Claims of a verified token, with what the request path needs pre-computed.
#[derive(Debug)]
pub struct Verified {
    /// index into the verifier's issuers
    pub issuer: usize,
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

#[derive(Debug, Default)]
pub struct Identity {
    pub subject: Option<HeaderValue>,
    pub issuer: Option<HeaderValue>,
    pub scopes: Option<HeaderValue>,
    pub realm: Option<HeaderValue>,
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

pub struct Verifier {
    issuers: Vec<IssuerKeys>,
    by_iss: HashMap<String, usize>,
    cache: Option<Arc<TokenCache>>,
    cache_size: usize,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Verifier {
    pub fn new(cfg: &Config) -> Self {
        Self::new_from(cfg, None)
    }

    /// A verifier for a reloaded config. Issuers whose key settings did not change keep the
    /// keys they have (no `keys_unavailable` window); the token cache is kept when the issuer
    /// table is identical (cached entries refer to issuers by index).
    pub fn new_from(cfg: &Config, previous: Option<&Verifier>) -> Self {
        let issuers: Vec<IssuerKeys> = cfg.issuers.iter().cloned().map(IssuerKeys::new).collect();
        if let Some(prev) = previous {
            for ik in &issuers {
                let same = prev.issuers.iter().find(|o| {
                    o.cfg.name == ik.cfg.name
                        && o.cfg.issuer == ik.cfg.issuer
                        && o.cfg.source == ik.cfg.source
                        && o.cfg.algorithms == ik.cfg.algorithms
                });
                if let Some(keys) = same.and_then(|o| o.current()) {
                    ik.install_arc(keys);
                }
            }
        }
        let by_iss = issuers
            .iter()
            .enumerate()
            .map(|(i, k)| (k.cfg.issuer.clone(), i))
            .collect();
        let size = cfg.auth.token_cache_size;
        let reusable = previous.filter(|p| {
            p.cache_size == size
                && p.issuers.len() == issuers.len()
                && p.issuers.iter().zip(&issuers).all(|(a, b)| a.cfg == b.cfg)
        });
        let cache = match reusable {
            Some(p) => p.cache.clone(),
            None => (size > 0).then(|| Arc::new(TokenCache::new(size))),
        };
        Verifier {
            issuers,
            by_iss,
            cache,
            cache_size: size,
        }
    }

    pub fn issuers(&self) -> &[IssuerKeys] {
        &self.issuers
    }

    pub fn issuer_by_name(&self, name: &str) -> Option<(usize, &IssuerKeys)> {
        self.issuers
            .iter()
            .enumerate()
            .find(|(_, k)| k.cfg.name == name)
    }

    /// Every issuer's keys have loaded at least once.
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|k| k.is_loaded())
    }

    /// Installs freshly fetched keys and drops cached tokens verified with keys that are gone.
    pub fn install_keys(&self, issuer: usize, set: KeySet) {
        let keys = &self.issuers[issuer];
        let new: Vec<u64> = set.serials().collect();
        METRICS
            .jwks_keys
            .with_label_values(&[&keys.cfg.name])
            .set(set.keys.len() as i64);
        if let Some(old) = keys.swap(set) {
            let removed: Vec<u64> = old.serials().filter(|s| !new.contains(s)).collect();
            if let Some(c) = &self.cache {
                c.invalidate_keys(&removed);
            }
        }
    }

    /// Verifies a token (signature and time claims; route requirements are `authorize`'s).
    pub async fn verify(&self, token: &str) -> Result<Arc<Verified>, AuthError> {
        let Some(cache) = &self.cache else {
            return self.verify_uncached(token).await.map(Arc::new);
        };
        let key = TokenCache::key(token);
        if let Some(v) = cache.get(&key) {
            let leeway = self.issuers[v.issuer].cfg.leeway.as_secs() as i64;
            if unix_now() < v.exp.saturating_add(leeway) {
                METRICS.token_cache_hits.inc();
                return Ok(v);
            }
            cache.remove(&key); // expired: verify again to report it precisely
        }
        METRICS.token_cache_misses.inc();
        let v = Arc::new(self.verify_uncached(token).await?);
        cache.insert(key, v.clone());
        Ok(v)
    }

    /// Full verification, no cache. Async only because an unknown `kid` may wait for a
    /// (rate-limited, single-flight) JWKS refetch.
    pub async fn verify_uncached(&self, token: &str) -> Result<Verified, AuthError> {
        let jwt = jwt::decode(token)
            .map_err(|e| AuthError::new(Reason::MalformedToken, e.to_string()))?;
        let alg = Alg::from_name(&jwt.header.alg).ok_or_else(|| {
            AuthError::new(
                Reason::UnsupportedAlgorithm,
                format!("algorithm {:?} is not accepted", truncate(&jwt.header.alg)),
            )
        })?;
        let iss = match jwt.claims.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(AuthError::new(
                    Reason::MalformedToken,
                    "iss is not a string",
                ))
            }
            None => {
                return Err(AuthError::new(
                    Reason::MalformedToken,
                    "iss claim is missing",
                ))
            }
        };
        let idx = *self.by_iss.get(iss).ok_or_else(|| {
            AuthError::new(
                Reason::UnknownIssuer,
                format!("issuer {:?} is not trusted", truncate(iss)),
            )
        })?;
        let issuer = &self.issuers[idx];
        if !issuer.cfg.algorithms.contains(&alg) {
            return Err(AuthError::new(
                Reason::UnsupportedAlgorithm,
                format!(
                    "algorithm {alg} is not accepted for issuer {}",
                    issuer.cfg.name
                ),
            ));
        }
        let Some(mut keys) = issuer.current() else {
            // nudge the refresher (rate-limited like unknown kids): an issuer that just came back
            // is picked up on demand, not only at the next backoff step
            let _ = issuer.request_refetch_for_unknown_kid();
            return Err(AuthError::new(
                Reason::KeysUnavailable,
                format!("keys of issuer {} have not loaded yet", issuer.cfg.name),
            ));
        };
        if let Some(kid) = &jwt.header.kid {
            if keys.by_kid(kid).next().is_none() {
                // maybe rotated: one refetch per interval, shared by everyone waiting
                if let Some(rx) = issuer.request_refetch_for_unknown_kid() {
                    IssuerKeys::wait_for_fetch(
                        rx,
                        issuer.cfg.fetch_timeout + std::time::Duration::from_secs(1),
                    )
                    .await;
                    if let Some(k) = issuer.current() {
                        keys = k;
                    }
                }
            }
        }
        let key = check_signature(&jwt, alg, &keys)?;
        let key_serial = key.serial;
        self.check_claims(jwt, alg, idx, key_serial)
    }

    fn check_claims(
        &self,
        jwt: Jwt<'_>,
        alg: Alg,
        idx: usize,
        key_serial: u64,
    ) -> Result<Verified, AuthError> {
        let leeway = self.issuers[idx].cfg.leeway.as_secs() as i64;
        let now = unix_now();
        let claims = jwt.claims;
        let exp = numeric_date(&claims, "exp")?
            .ok_or_else(|| AuthError::new(Reason::MalformedToken, "exp claim is missing"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(AuthError::new(
                Reason::Expired,
                format!("token expired {}s ago", now - exp),
            ));
        }
        if let Some(nbf) = numeric_date(&claims, "nbf")? {
            if nbf.saturating_sub(leeway) > now {
                return Err(AuthError::new(
                    Reason::NotYetValid,
                    format!("token is not valid for another {}s (nbf)", nbf - now),
                ));
            }
        }
        if let Some(iat) = numeric_date(&claims, "iat")? {
            if iat.saturating_sub(leeway) > now {
                return Err(AuthError::new(
                    Reason::NotYetValid,
                    format!("token issued {}s in the future (iat)", iat - now),
                ));
            }
        }
        let aud = string_list(&claims, "aud", false)?;
        let scopes = string_list(&claims, "scopes", true)?;
        let sub = opt_string(&claims, "sub")?;
        let realm = opt_string(&claims, "gitlab_realm")?;
        let iss: Box<str> = match claims.get("iss") {
            Some(Value::String(s)) => s.as_str().into(),
            _ => {
                return Err(AuthError::new(
                    Reason::MalformedToken,
                    "iss is not a string",
                ))
            }
        };
        let identity = Identity {
            subject: sub.as_deref().and_then(header_value),
            issuer: header_value(&iss),
            scopes: (!scopes.is_empty())
                .then(|| header_value(&scopes.join(",")))
                .flatten(),
            realm: realm.as_deref().and_then(header_value),
        };
        Ok(Verified {
            issuer: idx,
            key_serial,
            alg,
            kid: jwt.header.kid,
            exp,
            iss,
            sub,
            realm,
            aud: aud.into(),
            scopes: scopes.into(),
            claims,
            identity,
        })
    }
}

/// Picks the key (by `kid`, else every key that can verify `alg`) and checks the signature.
fn check_signature<'k>(jwt: &Jwt<'_>, alg: Alg, keys: &'k KeySet) -> Result<&'k Key, AuthError> {
    let msg = jwt.signing_input.as_bytes();
    match &jwt.header.kid {
        Some(kid) => {
            let mut found = false;
            for key in keys
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
            {
                found = true;
                if let Some(v) = key.verifier(alg) {
                    return v.verify_sig(msg, &jwt.signature).map(|_| key).map_err(|_| {
                        AuthError::new(Reason::BadSignature, "signature does not verify")
                    });
                }
            }
            if found {
                Err(AuthError::new(
                    Reason::UnsupportedAlgorithm,
                    format!("key {:?} cannot be used with {alg}", truncate(kid)),
                ))
            } else {
                Err(AuthError::new(
                    Reason::UnknownKey,
                    format!("no key with kid {:?}", truncate(kid)),
                ))
            }
        }
        None => {
            let mut tried = false;
            for key in &keys.keys {
                if let Some(v) = key.verifier(alg) {
                    tried = true;
                    if v.verify_sig(msg, &jwt.signature).is_ok() {
                        return Ok(key);
                    }
                }
            }
            if tried {
                Err(AuthError::new(
                    Reason::BadSignature,
                    "signature does not verify with any key",
                ))
            } else {
                Err(AuthError::new(
                    Reason::UnknownKey,
                    format!("no key for {alg} (token has no kid)"),
                ))
            }
        }
    }
}

/// A NumericDate claim (RFC 7519 §2): a JSON number, fractions allowed. Anything else in that
/// claim is refused — never skipped.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                Ok(Some(
                    f.floor().clamp(i64::MIN as f64, i64::MAX as f64) as i64
                ))
            } else {
                Err(AuthError::new(
                    Reason::MalformedToken,
                    format!("{name} is not a valid number"),
                ))
            }
        }
        Some(_) => Err(AuthError::new(
            Reason::MalformedToken,
            format!("{name} is not a number"),
        )),
    }
}

/// `aud` (string or array of strings) or `scopes` (array of strings, or a space-separated string
/// as in OAuth's `scope`).
fn string_list(
    claims: &Map<String, Value>,
    name: &str,
    split_spaces: bool,
) -> Result<Vec<Box<str>>, AuthError> {
    match claims.get(name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) if split_spaces => {
            Ok(s.split_ascii_whitespace().map(Into::into).collect())
        }
        Some(Value::String(s)) => Ok(vec![s.as_str().into()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(Into::into).ok_or_else(|| {
                    AuthError::new(
                        Reason::MalformedToken,
                        format!("{name} has a non-string entry"),
                    )
                })
            })
            .collect(),
        Some(_) => Err(AuthError::new(
            Reason::MalformedToken,
            format!("{name} is neither a string nor an array"),
        )),
    }
}

fn opt_string(claims: &Map<String, Value>, name: &str) -> Result<Option<Box<str>>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str().into())),
        Some(_) => Err(AuthError::new(
            Reason::MalformedToken,
            format!("{name} is not a string"),
        )),
    }
}

/// Only visible ASCII is forwarded in identity headers; anything else is left out rather than
/// smuggled into a header.
fn header_value(s: &str) -> Option<HeaderValue> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        HeaderValue::from_str(s).ok()
    } else {
        None
    }
}

/// Attacker-controlled strings are cut before they reach a message or a log.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
