//! Signing tokens: `cc-gateway token mint`, `cc-gateway dev`, and tests. Keys come from PEM
//! (PKCS#8, PKCS#1 RSA, SEC1 EC) or are generated. The same aws-lc-rs primitives as
//! verification, so what we mint is exactly what we accept.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use crate::auth::alg::{Alg, KeyType};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unsupported algorithm {0:?} (supported: {all})", all = Alg::ALL_NAMES)]
    Algorithm(String),
    #[error("key generation failed")]
    Generate,
    #[error("not a PEM private key: {0}")]
    Pem(String),
    #[error("algorithm {alg} does not fit this {key:?} key")]
    Mismatch { alg: Alg, key: KeyType },
    #[error("signing failed")]
    Sign,
    #[error("claims must be a JSON object")]
    Claims,
}

pub enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair, KeyType),
    Ed(Ed25519KeyPair),
}

impl SigningKey {
    /// A fresh key for `alg` (RSA keys are 2048-bit).
    pub fn generate(alg: &str) -> Result<SigningKey, TokenError> {
        let alg = Alg::from_name(alg).ok_or_else(|| TokenError::Algorithm(alg.to_string()))?;
        Ok(match alg.key_type() {
            KeyType::Rsa => SigningKey::Rsa(
                RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| TokenError::Generate)?,
            ),
            kt @ (KeyType::EcP256 | KeyType::EcP384 | KeyType::EcP521) => SigningKey::Ec(
                EcdsaKeyPair::generate(ec_signing(kt)).map_err(|_| TokenError::Generate)?,
                kt,
            ),
            KeyType::Ed25519 => {
                SigningKey::Ed(Ed25519KeyPair::generate().map_err(|_| TokenError::Generate)?)
            }
        })
    }

    pub fn from_pem(pem: &str) -> Result<SigningKey, TokenError> {
        let (label, der) = pem_decode(pem)?;
        match label.as_str() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der)
                .map(SigningKey::Rsa)
                .map_err(|e| TokenError::Pem(e.to_string())),
            "EC PRIVATE KEY" => [KeyType::EcP256, KeyType::EcP384, KeyType::EcP521]
                .into_iter()
                .find_map(|kt| {
                    EcdsaKeyPair::from_private_key_der(ec_signing(kt), &der)
                        .ok()
                        .map(|k| SigningKey::Ec(k, kt))
                })
                .ok_or_else(|| TokenError::Pem("unsupported EC key".into())),
            "PRIVATE KEY" => {
                if let Ok(k) = RsaKeyPair::from_pkcs8(&der) {
                    return Ok(SigningKey::Rsa(k));
                }
                for kt in [KeyType::EcP256, KeyType::EcP384, KeyType::EcP521] {
                    if let Ok(k) = EcdsaKeyPair::from_pkcs8(ec_signing(kt), &der) {
                        return Ok(SigningKey::Ec(k, kt));
                    }
                }
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                    .map(SigningKey::Ed)
                    .map_err(|_| {
                        TokenError::Pem(
                            "PKCS#8 key is not RSA, EC (P-256/384/521) or Ed25519".into(),
                        )
                    })
            }
            other => Err(TokenError::Pem(format!("unexpected PEM label {other:?}"))),
        }
    }

    pub fn key_type(&self) -> KeyType {
        match self {
            SigningKey::Rsa(_) => KeyType::Rsa,
            SigningKey::Ec(_, kt) => *kt,
            SigningKey::Ed(_) => KeyType::Ed25519,
        }
    }

    /// The natural algorithm for this key.
    pub fn default_alg(&self) -> Alg {
        match self.key_type() {
            KeyType::Rsa => Alg::RS256,
            KeyType::EcP256 => Alg::ES256,
            KeyType::EcP384 => Alg::ES384,
            KeyType::EcP521 => Alg::ES512,
            KeyType::Ed25519 => Alg::EdDSA,
        }
    }

    pub fn to_pkcs8_pem(&self) -> String {
        let der: Vec<u8> = match self {
            SigningKey::Rsa(k) => AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(k)
                .map(|d| d.as_ref().to_vec())
                .unwrap_or_default(),
            SigningKey::Ec(k, _) => k
                .to_pkcs8v1()
                .map(|d| d.as_ref().to_vec())
                .unwrap_or_default(),
            SigningKey::Ed(k) => k
                .to_pkcs8v1()
                .map(|d| d.as_ref().to_vec())
                .unwrap_or_default(),
        };
        let b64 = STANDARD.encode(der);
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }

    /// The public half as a JWK (`use: sig`, `kid`; `alg` for EC and Ed25519 keys, none for RSA
    /// keys, which serve RS* and PS* alike).
    pub fn public_jwk(&self, kid: &str) -> Value {
        let b = |d: &[u8]| URL_SAFE_NO_PAD.encode(d);
        match self {
            SigningKey::Rsa(k) => {
                let p = k.public_key();
                json!({"kty": "RSA", "kid": kid, "use": "sig",
                       "n": b(p.modulus().big_endian_without_leading_zero()),
                       "e": b(p.exponent().big_endian_without_leading_zero())})
            }
            SigningKey::Ec(k, kt) => {
                let point = k.public_key().as_ref();
                let n = (point.len() - 1) / 2;
                let (crv, alg) = match kt {
                    KeyType::EcP256 => ("P-256", "ES256"),
                    KeyType::EcP384 => ("P-384", "ES384"),
                    _ => ("P-521", "ES512"),
                };
                json!({"kty": "EC", "kid": kid, "use": "sig", "alg": alg, "crv": crv,
                       "x": b(&point[1..1 + n]), "y": b(&point[1 + n..])})
            }
            SigningKey::Ed(k) => {
                json!({"kty": "OKP", "kid": kid, "use": "sig", "alg": "EdDSA", "crv": "Ed25519", "x": b(k.public_key().as_ref())})
            }
        }
    }

    fn sign(&self, alg: Alg, msg: &[u8]) -> Result<Vec<u8>, TokenError> {
        if alg.key_type() != self.key_type() {
            return Err(TokenError::Mismatch {
                alg,
                key: self.key_type(),
            });
        }
        let rng = SystemRandom::new();
        match self {
            SigningKey::Rsa(k) => {
                let enc: &'static dyn signature::RsaEncoding = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_SHA384,
                    _ => &signature::RSA_PSS_SHA512,
                };
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(enc, &rng, msg, &mut sig)
                    .map_err(|_| TokenError::Sign)?;
                Ok(sig)
            }
            SigningKey::Ec(k, _) => k
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| TokenError::Sign),
            SigningKey::Ed(k) => Ok(k.sign(msg).as_ref().to_vec()),
        }
    }
}

fn ec_signing(kt: KeyType) -> &'static signature::EcdsaSigningAlgorithm {
    match kt {
        KeyType::EcP384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        KeyType::EcP521 => &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
        _ => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    }
}

fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), TokenError> {
    let begin = pem
        .find("-----BEGIN ")
        .ok_or_else(|| TokenError::Pem("no BEGIN line".into()))?;
    let rest = &pem[begin + 11..];
    let label_end = rest
        .find("-----")
        .ok_or_else(|| TokenError::Pem("bad BEGIN line".into()))?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end = rest
        .find("-----END ")
        .ok_or_else(|| TokenError::Pem("no END line".into()))?;
    if end < body_start {
        return Err(TokenError::Pem("bad PEM armour".into()));
    }
    let b64: String = rest[body_start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if b64.contains(':') {
        return Err(TokenError::Pem(
            "encrypted PEM keys are not supported".into(),
        ));
    }
    let der = STANDARD
        .decode(b64)
        .map_err(|_| TokenError::Pem("body is not base64".into()))?;
    Ok((label, der))
}

/// Signs `claims` as a compact JWS with header `{alg, typ: "JWT", kid?}`.
pub fn mint(
    key: &SigningKey,
    alg: &str,
    kid: Option<&str>,
    claims: &Value,
) -> Result<String, TokenError> {
    let alg = Alg::from_name(alg).ok_or_else(|| TokenError::Algorithm(alg.to_string()))?;
    if !claims.is_object() {
        return Err(TokenError::Claims);
    }
    let mut header = json!({"alg": alg.name(), "typ": "JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = key.sign(alg, token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    Ok(token)
}

/// RFC 7638 thumbprint of a public JWK: a stable, content-derived `kid`.
pub fn thumbprint(jwk: &Value) -> String {
    let members: &[&str] = match jwk["kty"].as_str() {
        Some("RSA") => &["e", "kty", "n"],
        Some("EC") => &["crv", "kty", "x", "y"],
        _ => &["crv", "kty", "x"],
    };
    let mut canon = String::from("{");
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            canon.push(',');
        }
        canon.push_str(&format!("\"{m}\":{}", jwk[*m]));
    }
    canon.push('}');
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canon.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwk::parse_jwks;
    use crate::auth::jwt;

    #[test]
    fn mint_then_verify_every_algorithm() {
        for alg in Alg::ALL {
            let key = SigningKey::generate(alg.name()).unwrap();
            let jwk = key.public_jwk("k");
            let set =
                parse_jwks(json!({"keys": [jwk]}).to_string().as_bytes(), &[alg], None).unwrap();
            let t = mint(&key, alg.name(), Some("k"), &json!({"sub": "s"})).unwrap();
            let j = jwt::decode(&t).unwrap();
            let v = set.keys[0].verifier(alg).unwrap();
            assert!(
                v.verify_sig(j.signing_input.as_bytes(), &j.signature)
                    .is_ok(),
                "{alg}"
            );
            // a PEM round trip gives the same key
            let again = SigningKey::from_pem(&key.to_pkcs8_pem()).unwrap();
            assert_eq!(again.public_jwk("k"), key.public_jwk("k"), "{alg}");
        }
    }
}
