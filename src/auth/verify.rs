//! Token verification: decode → algorithm → issuer → key → signature → time claims, each
//! failure with its own stable reason. Verified claims are cached by token digest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::alg::Alg;
use super::cache::TokenCache;
use super::identity::{Identity, Verified};
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
        let Some(cache) = &self.cache else {
            return self.verify_uncached(token).await.map(Arc::new);
        };
        let key = TokenCache::key(token);
        if let Some(v) = cache.get(&key) {
            let leeway = self.issuers[v.issuer_index].cfg.leeway.as_secs() as i64;
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

/// The claims of a token whose signature verified, checked at `now` (Unix seconds) with
/// `leeway` seconds of clock skew allowed: time claims, then the shape of `aud`, `scopes`,
/// `sub`, `gitlab_realm` and `iss`. A pure function, so its verdicts are unit-tested.
fn check_claims(
    jwt: Jwt<'_>,
    alg: Alg,
    issuer_index: usize,
    key_serial: u64,
    leeway: i64,
    now: i64,
) -> Result<Verified, AuthError> {
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
    let identity = Identity::new(sub.as_deref(), &iss, &scopes, realm.as_deref());
    Ok(Verified {
        issuer_index,
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

/// Attacker-controlled strings are cut before they reach a message or a log.
fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const LEEWAY: i64 = 30;

    /// A compact token with `claims` (the signature is not looked at by the claim checks).
    fn token(claims: &Value) -> String {
        let enc = |v: String| URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            enc(json!({"alg": "RS256", "kid": "k1"}).to_string()),
            enc(claims.to_string()),
            enc("sig".into())
        )
    }

    /// Valid claims, `edit`ed, checked at NOW with LEEWAY.
    fn check(edit: impl FnOnce(&mut Map<String, Value>)) -> Result<Verified, AuthError> {
        let mut c = json!({"iss": "https://iss.example", "sub": "user:1", "exp": NOW + 60})
            .as_object()
            .cloned()
            .unwrap_or_default();
        edit(&mut c);
        let t = token(&Value::Object(c));
        let jwt =
            jwt::decode(&t).map_err(|e| AuthError::new(Reason::MalformedToken, e.to_string()))?;
        check_claims(jwt, Alg::RS256, 2, 7, LEEWAY, NOW)
    }

    fn refused(edit: impl FnOnce(&mut Map<String, Value>)) -> (Reason, String) {
        match check(edit) {
            Ok(v) => panic!("accepted: {v:?}"),
            Err(e) => (e.reason, e.detail),
        }
    }

    fn set(name: &'static str, v: Value) -> impl FnOnce(&mut Map<String, Value>) {
        move |c| {
            c.insert(name.into(), v);
        }
    }

    #[test]
    fn a_valid_token_keeps_what_the_request_path_needs() {
        let v = check(|c| {
            c.insert("aud".into(), json!("svc"));
            c.insert("scopes".into(), json!(["read", "write"]));
            c.insert("gitlab_realm".into(), json!("saas"));
        })
        .unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!((v.issuer_index, v.key_serial, v.alg), (2, 7, Alg::RS256));
        assert_eq!(v.kid.as_deref(), Some("k1"));
        assert_eq!(v.exp, NOW + 60);
        assert_eq!(&*v.iss, "https://iss.example");
        assert_eq!(v.sub.as_deref(), Some("user:1"));
        assert_eq!(v.realm.as_deref(), Some("saas"));
        assert_eq!(&*v.aud, &["svc".into()] as &[Box<str>]);
        assert_eq!(&*v.scopes, &["read".into(), "write".into()] as &[Box<str>]);
        let scopes = v.identity.scopes.as_ref().map(|h| h.as_bytes());
        assert_eq!(scopes, Some(&b"read,write"[..]));
    }

    #[test]
    fn exp_counts_with_leeway() {
        // still valid one second before exp + leeway
        assert!(check(set("exp", json!(NOW - LEEWAY + 1))).is_ok());
        assert_eq!(
            refused(set("exp", json!(NOW - LEEWAY))),
            (Reason::Expired, format!("token expired {LEEWAY}s ago"))
        );
        assert_eq!(
            refused(set("exp", json!(NOW - 100))),
            (Reason::Expired, "token expired 100s ago".into())
        );
        // fractions are allowed (RFC 7519 NumericDate) and rounded down
        assert_eq!(
            check(set("exp", json!(NOW as f64 + 0.5))).map(|v| v.exp),
            Ok(NOW)
        );
        assert_eq!(
            refused(|c| {
                c.remove("exp");
            }),
            (Reason::MalformedToken, "exp claim is missing".into())
        );
    }

    #[test]
    fn nbf_and_iat_in_the_future_count_with_leeway() {
        assert!(check(set("nbf", json!(NOW + LEEWAY))).is_ok());
        assert_eq!(
            refused(set("nbf", json!(NOW + LEEWAY + 1))),
            (
                Reason::NotYetValid,
                format!("token is not valid for another {}s (nbf)", LEEWAY + 1)
            )
        );
        assert!(check(set("iat", json!(NOW + LEEWAY))).is_ok());
        assert_eq!(
            refused(set("iat", json!(NOW + LEEWAY + 5))),
            (
                Reason::NotYetValid,
                format!("token issued {}s in the future (iat)", LEEWAY + 5)
            )
        );
        // issued long ago is fine: only exp bounds a token's age
        assert!(check(set("iat", json!(NOW - 86_400))).is_ok());
    }

    #[test]
    fn time_claims_of_the_wrong_type_are_refused_not_skipped() {
        for name in ["exp", "nbf", "iat"] {
            assert_eq!(
                refused(set(name, json!("1800000000"))),
                (Reason::MalformedToken, format!("{name} is not a number")),
                "{name}"
            );
            assert_eq!(
                refused(set(name, json!(null))),
                (Reason::MalformedToken, format!("{name} is not a number")),
                "{name}"
            );
        }
    }

    #[test]
    fn aud_is_a_string_or_an_array_of_strings() {
        let aud = |v: Value| check(set("aud", v)).map(|v| v.aud.to_vec());
        assert_eq!(aud(json!("a b")), Ok(vec!["a b".into()]));
        assert_eq!(aud(json!(["a", "b"])), Ok(vec!["a".into(), "b".into()]));
        assert_eq!(check(|_| {}).map(|v| v.aud.len()), Ok(0));
        assert_eq!(
            refused(set("aud", json!(["a", 1]))),
            (Reason::MalformedToken, "aud has a non-string entry".into())
        );
        assert_eq!(
            refused(set("aud", json!(5))),
            (
                Reason::MalformedToken,
                "aud is neither a string nor an array".into()
            )
        );
    }

    #[test]
    fn scopes_are_an_array_or_a_space_separated_string() {
        let scopes = |v: Value| check(set("scopes", v)).map(|v| v.scopes.to_vec());
        assert_eq!(
            scopes(json!("read  write")),
            Ok(vec!["read".into(), "write".into()])
        );
        assert_eq!(scopes(json!(["read write"])), Ok(vec!["read write".into()]));
        assert_eq!(
            refused(set("scopes", json!({"read": true}))),
            (
                Reason::MalformedToken,
                "scopes is neither a string nor an array".into()
            )
        );
        assert_eq!(
            refused(set("scopes", json!([true]))),
            (
                Reason::MalformedToken,
                "scopes has a non-string entry".into()
            )
        );
    }

    #[test]
    fn sub_realm_and_iss_must_be_strings() {
        assert_eq!(check(set("sub", json!(null))).map(|v| v.sub), Ok(None));
        assert_eq!(
            refused(set("sub", json!(42))),
            (Reason::MalformedToken, "sub is not a string".into())
        );
        assert_eq!(
            refused(set("gitlab_realm", json!(["saas"]))),
            (
                Reason::MalformedToken,
                "gitlab_realm is not a string".into()
            )
        );
        assert_eq!(
            refused(set("iss", json!(1))),
            (Reason::MalformedToken, "iss is not a string".into())
        );
    }

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
