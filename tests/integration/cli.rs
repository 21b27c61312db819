//! The CLI: `check` on good and broken configs, `token mint` / `token inspect`.

use std::path::Path;
use std::process::Output;

use serde_json::json;

use crate::common::fixture::{standard_config, write_config};
use crate::common::gateway::command;
use crate::common::wait;
use crate::common::*;

/// Runs `cc-gateway args` to completion.
fn run(args: &[&str]) -> Output {
    command()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running cc-gateway {args:?}: {e}"))
}

/// Runs the CLI off the async runtime (in-test servers keep answering meanwhile).
async fn run_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&a)
    })
    .await
    .expect("CLI task")
}

/// A valid config that `check` can validate without any server running.
fn good_config(dir: &Path) -> String {
    standard_config(
        dir,
        "https://gitlab.example",
        "jwks_uri = \"https://gitlab.example/oauth/discovery/keys\"",
        "127.0.0.1:5052".parse().expect("addr"),
        &Opts::default(),
    )
}

/// `text` with the first `from` replaced by `to`; asserts `from` is there.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "config template lacks {from:?}");
    text.replacen(from, to, 1)
}

#[test]
fn check_accepts_a_good_config_and_summarises_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &good_config(dir.path()));
    let o = run(&["check", "--config", path.to_str().expect("utf-8 path")]);
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for name in ["test", "ai", "public", "echo"] {
        assert!(
            out.contains(name),
            "summary does not mention {name:?}: {}",
            describe_output(&o)
        );
    }
}

#[test]
fn check_refuses_broken_configs_with_file_and_key_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = good_config(dir.path());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            replace_once(&good, "threads = 2", "threads = 2\nbogus = 1"),
            "server.bogus",
        ),
        (
            "unknown key in a route",
            replace_once(&good, "name = \"ai\"", "name = \"ai\"\nbogus_key = true"),
            "routes[0].bogus_key",
        ),
        (
            "bad duration",
            replace_once(
                &good,
                "read_timeout = \"10s\"",
                "read_timeout = \"5 parsecs\"",
            ),
            "upstreams[0].read_timeout",
        ),
        (
            "bad leeway duration",
            replace_once(&good, "leeway = \"30s\"", "leeway = \"soon\""),
            "issuers[0].leeway",
        ),
        (
            "route to unknown upstream",
            replace_once(&good, "upstream = \"echo\"", "upstream = \"nope\""),
            "routes[0].upstream",
        ),
        (
            "bad TOML syntax",
            replace_once(&good, "threads = 2", "threads = = 2"),
            "",
        ),
        (
            "duplicate route names",
            replace_once(&good, "name = \"public\"", "name = \"ai\""),
            "routes[1].name",
        ),
        (
            "issuer without any key source",
            replace_once(
                &good,
                "jwks_uri = \"https://gitlab.example/oauth/discovery/keys\"\n",
                "",
            ),
            "issuers[0]",
        ),
        (
            "HMAC algorithm",
            replace_once(
                &good,
                "algorithms = [\"RS256\"]",
                "algorithms = [\"HS256\"]",
            ),
            "issuers[0].algorithms",
        ),
        (
            "bad listen address",
            replace_once(
                &good,
                "listen = [\"127.0.0.1:0\"]",
                "listen = [\"not-an-address\"]",
            ),
            "server.listen",
        ),
        (
            "empty route issuers",
            replace_once(&good, "name = \"ai\"", "name = \"ai\"\nissuers = []"),
            "routes[0].issuers",
        ),
        (
            "reserved route name",
            replace_once(&good, "name = \"public\"", "name = \"_none\""),
            "routes[1].name",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, text, key_path)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("broken-{i}.toml"));
        std::fs::write(&path, text).expect("writing config");
        let p = path.to_str().expect("utf-8 path");
        let o = run(&["check", "--config", p]);
        let err = String::from_utf8_lossy(&o.stderr);
        let ok = o.status.code() == Some(1) && err.contains(p) && err.contains(key_path);
        if !ok {
            failures.push(format!(
                "[{what}] expected exit 1 and stderr naming {p:?} and {key_path:?}; got {}",
                describe_output(&o)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_on_a_missing_file_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.toml");
    let p = path.to_str().expect("utf-8 path");
    let o = run(&["check", "--config", p]);
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(p),
        "{}",
        describe_output(&o)
    );
}

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

/// `cc-gateway dev` on ephemeral ports; returns the process and the token it printed.
async fn start_dev(dir: &Path) -> (Gateway, String) {
    let args = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--dir",
    ]
    .iter()
    .map(std::ffi::OsString::from)
    .chain([dir.as_os_str().to_owned()])
    .collect();
    let gw = Gateway::spawn_with(args, &dir.join("gateway.toml")).await;
    gw.wait_ready().await;
    let token = wait_until(
        "dev prints `export TOKEN='...'`",
        wait::DEADLINE,
        || async {
            let out = gw.stdout();
            match out
                .split("TOKEN='")
                .nth(1)
                .and_then(|r| r.split('\'').next())
            {
                Some(t) if t.split('.').count() == 3 => Ok(t.to_string()),
                _ => Err(format!("stdout so far:\n{out}")),
            }
        },
    )
    .await;
    (gw, token)
}

#[tokio::test]
async fn dev_mode_token_works_against_the_demo_backend() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gw, token) = start_dev(dir.path()).await;
    let r = gw
        .send(
            Req::post(
                "/ai/v2/completions",
                r#"{"prompt_version":1,"current_file":{"file_name":"main.py","content_above_cursor":"def hello"}}"#,
            )
            .token(&token)
            .header("Content-Type", "application/json"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let _ = r.json();
    let r = gw
        .send(
            Req::get("/ai/v2/completions/stream")
                .header("Authorization", &format!("Bearer {token}")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{}",
        r.describe()
    );
    assert!(r.text().matches("data:").count() >= 2, "{}", r.describe());
    let r = gw.send(Req::get("/ai/v2/completions")).await;
    assert_error(&r, 401, "missing_token");
    // The printed `token inspect` command works with the written config.
    let config = dir.path().join("gateway.toml").display().to_string();
    let o = run_async(vec![
        "token".into(),
        "inspect".into(),
        "--config".into(),
        config,
        token,
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
}

#[tokio::test]
async fn dev_mode_prints_the_addresses_it_actually_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gw, _token) = start_dev(dir.path()).await;
    let out = gw.stdout();
    assert!(
        out.contains(&format!("http://{}/ai/v2/completions", gw.addr)),
        "the printed curl command does not use the bound listen address {}:\n{out}",
        gw.addr
    );
    assert!(
        out.contains(&format!("http://{}/metrics", gw.admin)),
        "the printed metrics URL does not use the bound admin address {}:\n{out}",
        gw.admin
    );
}
