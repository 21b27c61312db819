//! `token keygen`: no silent overwrite, `--add` for the "old + new" phase of a rotation, and
//! `token mint` defaulting to the kid keygen wrote.

use std::path::Path;
use std::process::Output;

use crate::common::cli::{mode, run};
use crate::common::*;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn keygen(key: &Path, jwks: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "token",
        "keygen",
        "--key",
        key.to_str().expect("utf-8"),
        "--jwks",
        jwks.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn jwks_kids(jwks: &Path) -> Vec<String> {
    let set: serde_json::Value = serde_json::from_str(&read(jwks)).expect("JWKS is JSON");
    set["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

/// Asserts a refused run: non-zero exit, the file named on stderr, nothing on stdout.
fn assert_refused_naming(o: &Output, file: &Path, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1)
            && err.contains(file.to_str().expect("utf-8"))
            && o.stdout.is_empty(),
        "{what}: expected exit 1 naming {}; got {}",
        file.display(),
        describe_output(o)
    );
}

#[test]
fn token_keygen_refuses_to_overwrite_a_key_or_jwks_without_force() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, jwks) = (dir.path().join("k.pem"), dir.path().join("jwks.json"));
    let o = keygen(&key, &jwks, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
    assert_eq!(mode(&key), 0o600, "private key mode");
    let (key_before, jwks_before) = (read(&key), read(&jwks));

    // both exist
    let o = keygen(&key, &jwks, &[]);
    assert_refused_naming(&o, &key, "existing key and JWKS");
    // only the key exists: the new JWKS is not written either
    let other_jwks = dir.path().join("other.json");
    let o = keygen(&key, &other_jwks, &[]);
    assert_refused_naming(&o, &key, "existing key");
    assert!(
        !other_jwks.exists(),
        "a refused keygen wrote {other_jwks:?}"
    );
    // only the JWKS exists: the new key is not written either
    let other_key = dir.path().join("other.pem");
    let o = keygen(&other_key, &jwks, &[]);
    assert_refused_naming(&o, &jwks, "existing JWKS");
    assert!(!other_key.exists(), "a refused keygen wrote {other_key:?}");
    assert_eq!(read(&key), key_before, "a refused keygen changed the key");
    assert_eq!(
        read(&jwks),
        jwks_before,
        "a refused keygen changed the JWKS"
    );

    // --force replaces both, and the key stays owner-only
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let o = keygen(&key, &jwks, &["--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
    assert_ne!(read(&key), key_before, "--force did not replace the key");
    assert_ne!(read(&jwks), jwks_before, "--force did not replace the JWKS");
    assert_eq!(jwks_kids(&jwks).len(), 1, "{}", read(&jwks));
    assert_eq!(mode(&key), 0o600, "private key mode after --force");
}

#[test]
fn token_keygen_add_appends_to_the_jwks_and_refuses_a_duplicate_kid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let jwks = dir.path().join("jwks.json");
    let (old, new) = (dir.path().join("old.pem"), dir.path().join("new.pem"));
    let o = keygen(&old, &jwks, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
    let old_kids = jwks_kids(&jwks);

    // the "old + new" phase of a rotation
    let o = keygen(&new, &jwks, &["--add", "--alg", "ES256"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
    let kids = jwks_kids(&jwks);
    assert_eq!(kids.len(), 2, "{}", read(&jwks));
    assert_eq!(
        kids[0],
        old_kids[0],
        "--add changed the old key: {}",
        read(&jwks)
    );
    assert_ne!(kids[1], kids[0]);
    assert_eq!(mode(&new), 0o600, "private key mode");

    // a kid the set already has
    let before = read(&jwks);
    let dup = dir.path().join("dup.pem");
    // `--kid=…`: a thumbprint may start with `-`, which would read as a flag
    let o = keygen(&dup, &jwks, &["--add", &format!("--kid={}", kids[0])]);
    assert_refused_naming(&o, &jwks, "duplicate kid");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&kids[0]),
        "the refusal does not name the kid: {}",
        describe_output(&o)
    );
    assert_eq!(read(&jwks), before, "a refused --add changed the JWKS");
    assert!(!dup.exists(), "a refused --add wrote the key");

    // nothing to add to
    let missing = dir.path().join("missing.json");
    let o = keygen(&dir.path().join("x.pem"), &missing, &["--add"]);
    assert_refused_naming(&o, &missing, "--add without a JWKS");
}

#[test]
fn token_mint_without_kid_uses_the_keys_thumbprint_as_keygen_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    for alg in ["RS256", "ES256", "EdDSA"] {
        let (key, jwks) = (
            dir.path().join(format!("{alg}.pem")),
            dir.path().join(format!("{alg}.json")),
        );
        let o = keygen(&key, &jwks, &["--alg", alg]);
        assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
        let o = run(&[
            "token",
            "mint",
            "--key",
            key.to_str().expect("utf-8"),
            "--iss",
            "https://issuer.example",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
        let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let (h, _, _) = segments(&token);
        let header = decode_segment(&h);
        assert_eq!(
            header["kid"],
            jwks_kids(&jwks)[0].as_str(),
            "{alg}: minted header {header} vs JWKS {}",
            read(&jwks)
        );
    }
}
