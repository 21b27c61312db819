//! `token mint` and `token inspect`: a round trip through the gateway, a missing key, a token
//! read from stdin.

use serde_json::json;

use crate::common::cli::{run, run_async};
use crate::common::gateway::command;
use crate::common::*;

#[tokio::test]
async fn token_mint_then_inspect_round_trip() {
    let fx = Fixture::start().await;
    let pem = fx.dir.path().join("key.pem");
    std::fs::write(&pem, fx.key.to_pkcs8_pem()).expect("writing PEM");
    let config = fx.config_path.display().to_string();
    let o = run_async(
        [
            "token",
            "mint",
            "--key",
            pem.to_str().expect("utf-8"),
            "--kid",
            KID,
            "--iss",
            &fx.iss,
            "--aud",
            AUD,
            "--sub",
            SUB,
            "--scopes",
            "code_suggestions,duo_chat",
            "--ttl",
            "1h",
            "--claim",
            "gitlab_realm=saas",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "mint: {}", describe_output(&o));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let (h, p, _) = segments(&token);
    let header = decode_segment(&h);
    let claims = decode_segment(&p);
    assert_eq!(header["alg"], "RS256", "{header}");
    assert_eq!(header["kid"], KID, "{header}");
    assert_eq!(claims["iss"], fx.iss.as_str(), "{claims}");
    assert!(
        claims["aud"] == AUD || claims["aud"] == json!([AUD]),
        "{claims}"
    );
    assert_eq!(claims["sub"], SUB, "{claims}");
    assert_eq!(
        claims["scopes"],
        json!(["code_suggestions", "duo_chat"]),
        "{claims}"
    );
    assert_eq!(claims["gitlab_realm"], REALM, "{claims}");
    let exp = claims["exp"].as_i64().expect("numeric exp");
    let iat = claims["iat"].as_i64().expect("numeric iat");
    assert!(
        (3599..=3601).contains(&(exp - iat)),
        "ttl 1h gave exp-iat = {}",
        exp - iat
    );
    assert!((iat - now()).abs() < 120, "iat {iat} is not now");

    // The gateway accepts what the CLI minted.
    let v = fx
        .expect_ok(Fixture::ai_req(&token).header("X-Gitlab-Realm", REALM))
        .await;
    assert_eq!(v["headers"]["x-cc-subject"][0], SUB);

    // inspect: valid.
    let o = run_async(vec![
        "token".into(),
        "inspect".into(),
        "--config".into(),
        config.clone(),
        token.clone(),
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "inspect valid: {}",
        describe_output(&o)
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("valid") && !out.contains("invalid"),
        "{}",
        describe_output(&o)
    );
    assert!(
        out.contains(SUB) && out.contains("RS256") && out.contains(KID),
        "header/claims not printed: {}",
        describe_output(&o)
    );

    // inspect: expired.
    let expired = fx.token_with(|c| {
        c["iat"] = json!(now() - 7200);
        c["nbf"] = json!(now() - 7200);
        c["exp"] = json!(now() - 3600);
    });
    let o = run_async(vec![
        "token".into(),
        "inspect".into(),
        "--config".into(),
        config.clone(),
        expired,
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "inspect expired: {}",
        describe_output(&o)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("expired"), "{}", describe_output(&o));

    // inspect: genuine, but no route takes its audience -> refused like the gateway would.
    let other_aud = fx.token_with(|c| c["aud"] = json!("some-other-service"));
    let o = run_async(vec![
        "token".into(),
        "inspect".into(),
        "--config".into(),
        config.clone(),
        other_aud.clone(),
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "inspect other audience: {}",
        describe_output(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("audience_mismatch"),
        "{}",
        describe_output(&o)
    );
    let r = fx.send(Fixture::ai_req(&other_aud)).await;
    assert_error(&r, 401, "audience_mismatch");

    // inspect: tampered -> the same reason code the gateway uses.
    let (h, p, s) = segments(&token);
    let mut c = decode_segment(&p);
    c["sub"] = json!("admin");
    let tampered = format!("{h}.{}.{s}", b64_json(&c));
    let o = run_async(vec![
        "token".into(),
        "inspect".into(),
        "--config".into(),
        config.clone(),
        tampered.clone(),
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "inspect tampered: {}",
        describe_output(&o)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("bad_signature"), "{}", describe_output(&o));
    let r = fx.send(Fixture::ai_req(&tampered)).await;
    assert_error(&r, 401, "bad_signature");

    // inspect: garbage.
    let o = run_async(vec![
        "token".into(),
        "inspect".into(),
        "--config".into(),
        config,
        "not-a-jwt".into(),
    ])
    .await;
    assert_eq!(
        o.status.code(),
        Some(1),
        "inspect garbage: {}",
        describe_output(&o)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("malformed_token"), "{}", describe_output(&o));
}

#[test]
fn token_mint_with_a_missing_key_file_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nope.pem");
    let o = run(&[
        "token",
        "mint",
        "--key",
        missing.to_str().expect("utf-8"),
        "--kid",
        "k",
        "--iss",
        "i",
        "--aud",
        "a",
        "--sub",
        "s",
        "--scopes",
        "x",
        "--ttl",
        "1h",
    ]);
    assert_ne!(o.status.code(), Some(0), "{}", describe_output(&o));
    assert!(
        o.stdout.is_empty() || !String::from_utf8_lossy(&o.stdout).contains('.'),
        "printed a token: {}",
        describe_output(&o)
    );
}

#[tokio::test]
async fn token_inspect_dash_reads_the_token_from_stdin() {
    use std::io::Write;
    let fx = Fixture::start().await;
    let token = fx.token();
    let config = fx.config_path.display().to_string();
    let o = tokio::task::spawn_blocking(move || {
        let mut child = command()
            .args(["token", "inspect", "--config", &config, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawning cc-gateway");
        // as `pbpaste | cc-gateway token inspect -` or `<<<"$TOKEN"` gives it: newline-terminated
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(format!("{token}\n").as_bytes())
            .expect("writing stdin");
        child.wait_with_output().expect("waiting for cc-gateway")
    })
    .await
    .expect("CLI task");
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("verdict: valid") && out.contains(SUB),
        "{}",
        describe_output(&o)
    );
}
