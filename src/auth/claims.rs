//! The claims of a token whose signature verified: time claims with leeway, and the shape of
//! `aud`, `scopes`, `sub`, `gitlab_realm` and `iss`, into the [`Verified`] record. Pure functions
//! of the claims and the clock, so their verdicts are unit-tested here.

use serde_json::{Map, Value};

use super::alg::Alg;
use super::identity::{Identity, StrList, Verified};
use super::jwt::Jwt;
use super::reason::{AuthError, Reason};

/// The claims of a token whose signature verified, checked at `now` (Unix seconds) with
/// `leeway` seconds of clock skew allowed: time claims, then the shape of `aud`, `scopes`,
/// `sub`, `gitlab_realm` and `iss`. A pure function, so its verdicts are unit-tested.
pub(super) fn check_claims(
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
        aud,
        scopes,
        claims,
        identity,
    })
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
) -> Result<StrList, AuthError> {
    match claims.get(name) {
        None => Ok(StrList::default()),
        Some(Value::String(s)) if split_spaces => Ok(s.split_ascii_whitespace().collect()),
        Some(Value::String(s)) => Ok(std::iter::once(s.as_str()).collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().ok_or_else(|| {
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
pub(super) fn truncate(s: &str) -> &str {
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
    use crate::auth::jwt;

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
        assert_eq!(v.aud.iter().collect::<Vec<_>>(), ["svc"]);
        assert_eq!(v.scopes.iter().collect::<Vec<_>>(), ["read", "write"]);
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
        let aud = |v: Value| {
            check(set("aud", v)).map(|v| v.aud.iter().map(String::from).collect::<Vec<_>>())
        };
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
        let scopes = |v: Value| {
            check(set("scopes", v)).map(|v| v.scopes.iter().map(String::from).collect::<Vec<_>>())
        };
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
}
