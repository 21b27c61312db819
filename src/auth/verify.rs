//! Token verification: decode → algorithm → issuer → key → signature → time claims, each
//! failure with its own stable reason. Verified claims are cached by token digest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::alg::Alg;
use super::cache::TokenCache;
use super::claims::{check_claims, truncate};
use super::identity::Verified;
use super::jwk::{Key, KeySet};
use super::jwt::{self, Jwt};
use super::keys::IssuerKeys;
use super::reason::{AuthError, Reason};
use crate::config::Config;
use crate::metrics::METRICS;

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
        self.verify_noting_cache(token).await.map(|(v, _)| v)
    }

    /// `verify`, also telling whether the token came from the cache (traces' `cc.token_cache`).
    pub async fn verify_noting_cache(
        &self,
        token: &str,
    ) -> Result<(Arc<Verified>, bool), AuthError> {
        let Some(cache) = &self.cache else {
            return self
                .verify_uncached(token)
                .await
                .map(|v| (Arc::new(v), false));
        };
        let key = TokenCache::key(token);
        if let Some(v) = cache.get(&key) {
            let leeway = self.issuers[v.issuer_index].cfg.leeway.as_secs() as i64;
            if unix_now() < v.exp.saturating_add(leeway) {
                METRICS.token_cache_hits.inc();
                return Ok((v, true));
            }
            cache.remove(&key); // expired: verify again to report it precisely
        }
        METRICS.token_cache_misses.inc();
        let v = Arc::new(self.verify_uncached(token).await?);
        cache.insert(key, v.clone());
        Ok((v, false))
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
        let idx = self.issuer_of(&jwt.claims)?;
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
        let leeway = issuer.cfg.leeway.as_secs() as i64;
        check_claims(jwt, alg, idx, key_serial, leeway, unix_now())
    }

    /// The index of the token's issuer (`iss`), which must be one we trust.
    fn issuer_of(&self, claims: &Map<String, Value>) -> Result<usize, AuthError> {
        let iss = match claims.get("iss") {
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
        self.by_iss.get(iss).copied().ok_or_else(|| {
            AuthError::new(
                Reason::UnknownIssuer,
                format!("issuer {:?} is not trusted", truncate(iss)),
            )
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{json, Map, Value};

    use super::*;

    fn verifier_trusting(iss: &str) -> Verifier {
        Verifier {
            issuers: Vec::new(),
            by_iss: HashMap::from([(iss.to_string(), 3)]),
            cache: None,
            cache_size: 0,
        }
    }

    #[test]
    fn the_issuer_must_be_trusted() {
        let v = verifier_trusting("https://iss.example");
        let claims = |iss: Value| {
            json!({ "iss": iss })
                .as_object()
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(v.issuer_of(&claims(json!("https://iss.example"))), Ok(3));
        let err = |c| v.issuer_of(&c).map_err(|e| (e.reason, e.detail));
        assert_eq!(
            err(claims(json!("https://iss.example/"))),
            Err((
                Reason::UnknownIssuer,
                r#"issuer "https://iss.example/" is not trusted"#.into()
            ))
        );
        // an attacker's issuer is cut before it reaches the message
        let long = "x".repeat(100);
        assert_eq!(
            err(claims(json!(long))),
            Err((
                Reason::UnknownIssuer,
                format!("issuer {:?} is not trusted", "x".repeat(64))
            ))
        );
        assert_eq!(
            err(claims(json!(["https://iss.example"]))),
            Err((Reason::MalformedToken, "iss is not a string".into()))
        );
        assert_eq!(
            err(Map::new()),
            Err((Reason::MalformedToken, "iss claim is missing".into()))
        );
    }
}
