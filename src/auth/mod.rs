//! Authentication (is the token genuine?) and authorization (may it use this route?).

pub mod alg;
pub mod cache;
mod claims;
pub mod client_cert;
pub mod identity;
pub mod jwk;
pub mod jwt;
pub mod keys;
pub mod reason;
pub mod verify;

use http::HeaderMap;

use crate::config::{Route, TokenHeader};
pub use identity::{Identity, Verified};
pub use reason::{AuthError, Reason};
pub use verify::Verifier;

/// The token from the first configured header that is present.
///
/// Ambiguity is refused: a token header sent twice is `malformed_token` (two components
/// could each pick a different one). `Authorization` counts only with the `Bearer` scheme
/// (case-insensitive, RFC 9110 §11.1); other schemes are not ours and are skipped.
pub fn token_from<'h>(
    headers: &'h HeaderMap,
    from: &[TokenHeader],
    max_bytes: usize,
) -> Result<&'h str, AuthError> {
    for th in from {
        let (name, bearer) = match th {
            TokenHeader::Authorization => (&http::header::AUTHORIZATION, true),
            TokenHeader::Plain(n) => (n, false),
        };
        let mut all = headers.get_all(name).iter();
        let Some(value) = all.next() else { continue };
        if all.next().is_some() {
            return Err(AuthError::new(
                Reason::MalformedToken,
                format!("{name} header sent more than once"),
            ));
        }
        let bytes = value.as_bytes();
        let token = if bearer {
            match bytes.get(..7) {
                Some(s) if s.eq_ignore_ascii_case(b"bearer ") => &bytes[7..],
                _ => continue,
            }
        } else {
            bytes
        };
        let token = token.trim_ascii();
        if token.len() > max_bytes {
            return Err(AuthError::new(
                Reason::TokenTooLarge,
                format!("token of {} bytes exceeds {max_bytes}", token.len()),
            ));
        }
        if token.is_empty() {
            continue;
        }
        // a JWS is base64url and dots: anything outside visible ASCII is malformed. A fold
        // without early exit, so the check over the whole token vectorizes.
        let visible = token
            .iter()
            .fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x5e));
        if !visible {
            return Err(AuthError::new(
                Reason::MalformedToken,
                format!("{name} contains bytes that cannot be in a token"),
            ));
        }
        // SAFETY: every byte is visible ASCII (0x21..=0x7e), and ASCII is valid UTF-8. (A
        // second, byte-at-a-time UTF-8 check cost ~480 instructions per request.)
        return Ok(unsafe { std::str::from_utf8_unchecked(token) });
    }
    Err(AuthError::new(
        Reason::MissingToken,
        "no token in the request",
    ))
}

/// Route requirements for a verified token: issuer, audience, bound headers, scopes.
pub fn authorize(
    route: &Route,
    v: &Verified,
    verifier: &Verifier,
    headers: &HeaderMap,
) -> Result<(), AuthError> {
    let issuer = &verifier.issuers()[v.issuer_index].cfg;
    if let Some(allowed) = &route.issuers {
        if !allowed.contains(&v.issuer_index) {
            return Err(AuthError::new(
                Reason::UnknownIssuer,
                format!(
                    "issuer {} is not accepted on route {}",
                    issuer.name, route.name
                ),
            ));
        }
    }
    if let Some(aud) = &route.audience {
        if !v.aud.contains(aud) {
            return Err(AuthError::new(
                Reason::AudienceMismatch,
                format!("token audience does not include {aud:?}"),
            ));
        }
    }
    for (header, claim) in &issuer.bind_headers {
        let mut sent = headers.get_all(header).iter();
        let Some(value) = sent.next() else { continue };
        let agrees = sent.next().is_none()
            && v.claim_str(claim)
                .is_some_and(|c| c.as_bytes() == value.as_bytes());
        if !agrees {
            return Err(AuthError::new(
                Reason::HeaderMismatch,
                format!("{header} does not match the token's {claim}"),
            ));
        }
    }
    if !route.scopes.is_empty() && !route.scopes.iter().any(|s| v.scopes.contains(s)) {
        return Err(AuthError::new(
            Reason::InsufficientScope,
            format!("token needs one of the scopes: {}", route.scopes.join(" ")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hdrs(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn cfg() -> Vec<TokenHeader> {
        vec![
            TokenHeader::Plain(http::HeaderName::from_static("x-gitlab-token")),
            TokenHeader::Authorization,
        ]
    }

    #[test]
    fn extraction_rules() {
        assert_eq!(
            token_from(&hdrs(&[("x-gitlab-token", b"a.b.c")]), &cfg(), 8192).unwrap(),
            "a.b.c"
        );
        assert_eq!(
            token_from(&hdrs(&[("authorization", b"bearer a.b.c")]), &cfg(), 8192).unwrap(),
            "a.b.c"
        );
        assert_eq!(
            token_from(&hdrs(&[("authorization", b"Bearer  a.b.c ")]), &cfg(), 8192).unwrap(),
            "a.b.c"
        );
        // first configured header wins
        let both = hdrs(&[
            ("authorization", b"Bearer z.z.z"),
            ("x-gitlab-token", b"a.b.c"),
        ]);
        assert_eq!(token_from(&both, &cfg(), 8192).unwrap(), "a.b.c");
        let err = |h: HeaderMap| token_from(&h, &cfg(), 8192).unwrap_err().reason;
        assert_eq!(err(hdrs(&[])), Reason::MissingToken);
        assert_eq!(
            err(hdrs(&[("authorization", b"Basic dXNlcjpwYXNz")])),
            Reason::MissingToken
        );
        assert_eq!(
            err(hdrs(&[("x-gitlab-token", b"a"), ("x-gitlab-token", b"b")])),
            Reason::MalformedToken
        );
        assert_eq!(
            err(hdrs(&[("x-gitlab-token", b"a.\xff.c")])),
            Reason::MalformedToken
        );
        assert_eq!(
            err(hdrs(&[("x-gitlab-token", &vec![b'a'; 8193])])),
            Reason::TokenTooLarge
        );
    }

    #[test]
    fn only_visible_ascii_makes_a_token() {
        // the edges of 0x21..=0x7e pass, every byte around them fails — anywhere in a long
        // token (the check is a vectorized pass: each lane and the tail must count)
        assert_eq!(
            token_from(&hdrs(&[("x-gitlab-token", b"!a.b.c~")]), &cfg(), 8192).unwrap(),
            "!a.b.c~"
        );
        for bad in [b'\t', b' ', 0x80, 0xfe, 0xff] {
            for at in [1, 2, 31, 32, 33, 100, 797, 798] {
                let mut t = vec![b'a'; 800];
                t[at] = bad; // not at either end, where the value is trimmed
                let h = hdrs(&[("x-gitlab-token", &t)]);
                let r = token_from(&h, &cfg(), 8192);
                assert_eq!(
                    r.unwrap_err().reason,
                    Reason::MalformedToken,
                    "{bad:#x} at {at}"
                );
            }
        }
    }
}
