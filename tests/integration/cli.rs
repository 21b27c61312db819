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

// ---- key tooling, `--config` default, `inspect -`, startup errors, `dev` files ----

/// The file's permission bits (`0o600`, ...).
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

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
    let o = keygen(&dup, &jwks, &["--add", "--kid", &kids[0]]);
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

#[test]
fn config_defaults_to_cc_gateway_config_then_etc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &good_config(dir.path()));
    let p = path.to_str().expect("utf-8 path");
    let o = command()
        .args(["check"])
        .env("CC_GATEWAY_CONFIG", p)
        .output()
        .expect("running cc-gateway");
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("{p}: OK")),
        "{}",
        describe_output(&o)
    );
    // --config wins over the variable
    let o = command()
        .args(["check", "--config", p])
        .env("CC_GATEWAY_CONFIG", dir.path().join("absent.toml"))
        .output()
        .expect("running cc-gateway");
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));

    // neither: the packaged location (valid or not on this machine, it is the file tried)
    for cmd in [&["check"][..], &["token", "inspect", "x.y.z"][..]] {
        let o = command()
            .args(cmd)
            .env_remove("CC_GATEWAY_CONFIG")
            .output()
            .expect("running cc-gateway");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            all.contains("/etc/cc-gateway/gateway.toml"),
            "{cmd:?}: {}",
            describe_output(&o)
        );
    }

    for sub in [&["run"][..], &["check"][..], &["token", "inspect"][..]] {
        let o = run(&[sub, &["--help"][..]].concat());
        let help = String::from_utf8_lossy(&o.stdout);
        let line = help
            .lines()
            .find(|l| l.contains("--config"))
            .unwrap_or_else(|| panic!("{sub:?} --help has no --config: {help}"));
        for want in [
            "config file",
            "CC_GATEWAY_CONFIG",
            "/etc/cc-gateway/gateway.toml",
        ] {
            assert!(
                line.contains(want),
                "{sub:?} --help: {line:?} lacks {want:?}"
            );
        }
    }
}

#[test]
fn a_gateway_that_cannot_bind_says_why_once_and_not_that_it_stopped() {
    let dir = tempfile::tempdir().expect("temp dir");
    // held without SO_REUSEPORT, so the gateway's bind fails
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let text = replace_once(
        &good_config(dir.path()),
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"{addr}\"]"),
    );
    let path = write_config(dir.path(), &text);
    let o = run(&["run", "--config", path.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert_eq!(
        err.matches(&addr).count(),
        1,
        "the address is not named exactly once: {}",
        describe_output(&o)
    );
    assert_eq!(
        err.matches("os error").count(),
        1,
        "the cause is not given exactly once: {}",
        describe_output(&o)
    );
    assert!(
        !err.contains("stopped"),
        "a gateway that never started is said to have stopped: {}",
        describe_output(&o)
    );
}

/// The indented commands `dev` prints that start with the gateway binary (`… token …`).
fn printed_gateway_commands(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| l.contains(" token inspect ") || l.contains(" token mint "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn dev_prints_gateway_commands_that_run_as_pasted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gw, token) = start_dev(dir.path()).await;
    let out = gw.stdout();
    let cmds = printed_gateway_commands(&out);
    assert_eq!(
        cmds.len(),
        2,
        "expected an inspect and a mint command:\n{out}"
    );
    for cmd in cmds {
        let token = token.clone();
        let o = tokio::task::spawn_blocking(move || {
            // a fresh clone's shell: no cc-gateway on the PATH
            std::process::Command::new("sh")
                .args(["-c", &cmd])
                .env("PATH", "/usr/bin:/bin")
                .env("TOKEN", token)
                .env_remove("CC_GATEWAY_CONFIG")
                .stdin(std::process::Stdio::null())
                .output()
                .expect("running sh")
        })
        .await
        .expect("sh task");
        assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            stdout.contains("verdict: valid") || stdout.trim().split('.').count() == 3,
            "neither a verdict nor a token: {}",
            describe_output(&o)
        );
    }
}

fn sigterm(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -TERM {pid}");
}

async fn wait_exit(gw: &mut Gateway) {
    wait_until(
        "cc-gateway dev to exit after SIGTERM",
        wait::DEADLINE,
        || {
            let running = gw.is_running();
            async move {
                if running {
                    Err("still running".to_string())
                } else {
                    Ok(())
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn dev_keeps_its_key_private_and_removes_its_temp_dir_on_sigterm() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let tmpdir = tmp.path().to_str().expect("utf-8").to_string();
    let args = ["dev", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        .iter()
        .map(std::ffi::OsString::from)
        .collect();
    let mut gw =
        Gateway::spawn_with_env(args, &tmp.path().join("(dev)"), &[("TMPDIR", &tmpdir)]).await;
    let files = wait_until("dev prints `Files: DIR`", wait::DEADLINE, || async {
        let out = gw.stdout();
        match out
            .lines()
            .find_map(|l| l.strip_prefix("Files: "))
            .and_then(|r| r.split("  (").next())
        {
            Some(d) => Ok(std::path::PathBuf::from(d)),
            None => Err(format!("stdout so far:\n{out}")),
        }
    })
    .await;
    assert!(
        files.starts_with(tmp.path()),
        "{} is not in TMPDIR {tmpdir}",
        files.display()
    );
    assert_eq!(mode(&files), 0o700, "dev dir mode");
    assert_eq!(mode(&files.join("dev-signing-key.pem")), 0o600, "key mode");

    sigterm(gw.pid());
    wait_exit(&mut gw).await;
    assert!(
        !files.exists(),
        "{} is left behind after SIGTERM; stderr:\n{}",
        files.display(),
        gw.stderr()
    );
}

#[tokio::test]
async fn dev_keeps_a_dir_the_user_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let named = dir.path().join("mine");
    let (mut gw, _token) = start_dev(&named).await;
    assert_eq!(mode(&named.join("dev-signing-key.pem")), 0o600, "key mode");
    sigterm(gw.pid());
    wait_exit(&mut gw).await;
    for f in ["gateway.toml", "dev-signing-key.pem"] {
        assert!(named.join(f).exists(), "--dir lost {f}: {}", gw.stderr());
    }
}
