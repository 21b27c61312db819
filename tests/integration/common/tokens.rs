//! Keys and tokens: the crate's own signer for good tokens, hand-crafted bytes for bad ones.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

pub use cc_gateway::token::{mint, SigningKey};

/// Unix time in seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// base64url without padding, as in a JWS.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `v` serialised and base64url-encoded (a JWS header or claims segment).
pub fn b64_json(v: &Value) -> String {
    b64(v.to_string().as_bytes())
}

/// Decodes a base64url segment; panics when it is not one.
pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(s)
        .unwrap_or_else(|e| panic!("segment {s:?} is not base64url: {e}"))
}

/// The three segments of a JWS compact token.
pub fn segments(token: &str) -> (String, String, String) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "token {token:?} does not have 3 segments");
    (parts[0].into(), parts[1].into(), parts[2].into())
}

/// A JWS header or claims segment as JSON.
pub fn decode_segment(seg: &str) -> Value {
    serde_json::from_slice(&unb64(seg)).expect("segment is JSON")
}

/// A fresh key for `alg` (RSA is 2048-bit: ~0.1-0.5 s, generate once per test).
pub fn new_key(alg: &str) -> SigningKey {
    SigningKey::generate(alg).unwrap_or_else(|e| panic!("SigningKey::generate({alg}): {e:?}"))
}

/// One RSA key shared by the tests of this binary (generated once, loaded from PEM each time).
pub fn shared_rsa_key() -> SigningKey {
    static PEM: OnceLock<String> = OnceLock::new();
    let pem = PEM.get_or_init(|| new_key("RS256").to_pkcs8_pem());
    SigningKey::from_pem(pem).unwrap_or_else(|e| panic!("SigningKey::from_pem: {e:?}"))
}

/// Signs `claims` with the crate's own signer.
pub fn sign(key: &SigningKey, alg: &str, kid: Option<&str>, claims: &Value) -> String {
    mint(key, alg, kid, claims).unwrap_or_else(|e| panic!("mint({alg}, {kid:?}): {e:?}"))
}

/// `header.payload.signature` from raw parts (no signing).
pub fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64_json(header),
        b64_json(claims),
        b64(signature)
    )
}

/// An HMAC-signed token (HS256/384/512) with `secret` as the key.
pub fn hmac_token(alg: &str, header: &Value, claims: &Value, secret: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let algorithm = match alg {
        "HS256" => hmac::HMAC_SHA256,
        "HS384" => hmac::HMAC_SHA384,
        "HS512" => hmac::HMAC_SHA512,
        other => panic!("not an HMAC alg: {other}"),
    };
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let tag = hmac::sign(&hmac::Key::new(algorithm, secret), input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// The RSA public key of `key` as an SPKI PEM ("-----BEGIN PUBLIC KEY-----"), the bytes an
/// algorithm-confusion attacker would use as an HMAC secret.
pub fn rsa_public_pem(key: &SigningKey) -> String {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let pem = key.to_pkcs8_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD
        .decode(body.trim())
        .expect("PKCS#8 PEM body is base64");
    let kp = aws_lc_rs::rsa::KeyPair::from_pkcs8(&der).expect("PKCS#8 is an RSA key");
    let spki = kp.public_key().as_der().expect("public key DER");
    let b = STANDARD.encode(spki.as_ref());
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("ascii"));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

/// A JWKS document for the given public JWKs.
pub fn jwks_doc(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

/// A random id (for jti / kids).
pub fn random_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Signs an arbitrary signing input (`header.payload` text, not necessarily JSON or even base64)
/// with an RSA key as RS256 and returns `input.signature`: a correctly signed malformed token.
pub fn rs256_sign_input(key: &SigningKey, input: &str) -> String {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
    let pem = key.to_pkcs8_pem();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = STANDARD
        .decode(body.trim())
        .expect("PKCS#8 PEM body is base64");
    let kp = RsaKeyPair::from_pkcs8(&der).expect("an RSA key");
    let mut sig = vec![0u8; kp.public_modulus_len()];
    kp.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .expect("RSA signing");
    format!("{input}.{}", b64(&sig))
}
