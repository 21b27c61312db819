//! Secrets, one syntax (`env:NAME` / `file:PATH`): the admin token and the Redis URL of the
//! budget store are read through it and used — and `check`, the logs, `/metrics`, the admin API
//! and the access log never print them; upstream and telemetry headers and the request log's
//! store take the same forms. A missing variable or file is a config error naming
//! the key.

use http::Method;

use crate::common::budgets::admin;
use crate::common::fixture::write_config;
use crate::common::redis::RedisServer;
use crate::common::servers::echoed_header;
use crate::common::*;

/// A Redis that requires `password`, and its URL with the password in it.
async fn redis_with_password(password: &str) -> (RedisServer, String) {
    let port = dead_addr().port();
    let redis = RedisServer::start_with(
        port,
        &["--port", &port.to_string(), "--requirepass", password],
    )
    .await;
    let url = format!("redis://:{password}@127.0.0.1:{port}/0");
    (redis, url)
}

/// `[budgets]` with `store` and one rule over route `ai` that admits 3 requests per subject:
/// the 4th answer shows the store was reached (a store failure would be `allow`ed).
fn budgets(store: &str) -> String {
    format!(
        "\n[budgets]\nstore = {store:?}\non_store_error = \"deny\"\n\n[[budgets.rules]]\nname = \"per-sub\"\nkey = [\"claim:sub\"]\nrate = \"1/1h\"\nburst = 3\n"
    )
}

/// Everything a secret could leak into, after some traffic: asserts none holds `secrets`.
async fn assert_never_printed(
    gw: &Gateway,
    token: &str,
    config: &std::path::Path,
    env: &[(&str, &str)],
    secrets: &[&str],
) {
    let mut seen = Vec::new();
    for (method, path) in [
        (Method::GET, "/metrics"),
        (Method::GET, "/budgets"),
        (Method::GET, "/issuers"),
        (Method::GET, "/budgets/per-sub/x"),
        (Method::POST, "/reload"),
        (Method::GET, "/nothing-here"),
    ] {
        let r = admin(gw, method.clone(), path, Some(token)).await;
        assert!(r.status < 500, "{method} {path}: {}", r.describe());
        seen.push((format!("admin {method} {path}"), r.describe()));
    }
    // refused: the answer must not echo what a correct token would be
    let r = admin(gw, Method::GET, "/metrics", Some("wrong-token-0123456789")).await;
    assert_eq!(r.status, 401, "{}", r.describe());
    seen.push(("admin 401".into(), r.describe()));
    let check = run_check(config, env);
    let out = describe_output(&check);
    assert!(check.status.success(), "{out}");
    seen.push(("check".into(), out));
    seen.push(("stderr".into(), gw.stderr()));
    seen.push(("stdout".into(), gw.stdout()));
    for (what, text) in &seen {
        for s in secrets {
            assert!(!text.contains(s), "{what} printed a secret:\n{text}");
        }
    }
    let budgets = &seen[1].1;
    assert!(
        budgets.contains("redis://:***@127.0.0.1"),
        "GET /budgets: {budgets}"
    );
}

/// For each (variable, key): `check` without that variable in `env` fails naming the key and
/// the variable, and prints none of `secrets`.
fn assert_missing_variables_named(
    config: &std::path::Path,
    env: &[(&str, &str)],
    cases: &[(&str, &str)],
    secrets: &[&str],
) {
    for (missing, key) in cases {
        let partial: Vec<(&str, &str)> =
            env.iter().copied().filter(|(k, _)| k != missing).collect();
        let check = run_check(config, &partial);
        let out = describe_output(&check);
        assert!(!check.status.success(), "{out}");
        assert!(
            out.contains(&format!(
                "{key}: environment variable \"{missing}\" is not set"
            )),
            "{out}"
        );
        assert!(secrets.iter().all(|s| !out.contains(s)), "{out}");
    }
}

#[tokio::test]
async fn secrets_from_files_are_used_and_never_printed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let password = format!("pw-{}", random_id());
    let token = format!("admin-{}", random_id());
    let (_redis, url) = redis_with_password(&password).await;
    let (token_file, url_file) = (dir.path().join("admin-token"), dir.path().join("redis-url"));
    std::fs::write(&token_file, format!("{token}\n")).expect("write");
    std::fs::write(&url_file, format!("{url}\n")).expect("write");
    let fx = Fixture::with(Opts {
        log_level: "debug".into(),
        server_extra: format!("admin_token = \"file:{}\"", token_file.display()),
        budgets: budgets(&format!("file:{}", url_file.display())),
        ..Opts::default()
    })
    .await;

    // the admin token is required and accepted; the Redis password authenticates
    assert_eq!(fx.gw.admin_get("/metrics").await.status, 401);
    let t = fx.token();
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(conn.send(Fixture::ai_req(&t)).await.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "the Redis store was not used"
    );
    let u = admin(
        &fx.gw,
        Method::GET,
        &format!("/budgets/per-sub/{SUB}"),
        Some(&token),
    )
    .await;
    assert_eq!(u.json()["used"], 3, "{}", u.describe());

    assert_never_printed(&fx.gw, &token, &fx.config_path, &[], &[&password, &token]).await;
    let log = std::fs::read_to_string(&fx.access_log).unwrap_or_default();
    assert!(
        !log.contains(&password) && !log.contains(&token),
        "access log: {log}"
    );
}

#[tokio::test]
async fn secrets_from_the_environment_are_used_and_a_missing_one_names_its_key() {
    let password = format!("pw-{}", random_id());
    let token = format!("admin-{}", random_id());
    let (_redis, url) = redis_with_password(&password).await;
    let fx = Fixture::start().await;
    // the standard config, with both secrets read from the environment
    let text = std::fs::read_to_string(&fx.config_path)
        .expect("config")
        .replacen(
            "threads = 2\n",
            "threads = 2\nadmin_token = \"env:CC_GW_TEST_ADMIN_TOKEN\"\n",
            1,
        )
        + &budgets("env:CC_GW_TEST_REDIS_URL");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &text);
    let env = [
        ("CC_GW_TEST_ADMIN_TOKEN", token.as_str()),
        ("CC_GW_TEST_REDIS_URL", url.as_str()),
    ];
    let gw = Gateway::start_with_env(&config, &env).await;
    let t = fx.token();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(gw.send(Fixture::ai_req(&t)).await.status);
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "the Redis store was not used"
    );
    assert_never_printed(&gw, &token, &config, &env, &[&password, &token]).await;

    // a variable missing: `check` (and so `run` and a reload) fails naming the key
    assert_missing_variables_named(
        &config,
        &env,
        &[
            ("CC_GW_TEST_REDIS_URL", "budgets.store"),
            ("CC_GW_TEST_ADMIN_TOKEN", "server.admin_token"),
        ],
        &[&password, &token],
    );
}

#[tokio::test]
async fn upstream_headers_carry_secrets_to_the_upstream_only() {
    let fx = Fixture::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (bearer, key) = (
        format!("up-{}", random_id()),
        format!("key-{}", random_id()),
    );
    let key_file = dir.path().join("upstream-key");
    std::fs::write(&key_file, format!("{key}\n")).expect("write");
    let headers = format!(
        "name = \"echo\"\nheaders = {{ \"Authorization\" = \"env:CC_GW_TEST_UP_TOKEN\", \"X-Api-Key\" = \"file:{}\", \"X-Env\" = \"test\" }}\n",
        key_file.display()
    );
    let text = std::fs::read_to_string(&fx.config_path)
        .expect("config")
        .replacen("name = \"echo\"\n", &headers, 1);
    let config = write_config(dir.path(), &text);
    let bearer_header = format!("Bearer {bearer}");
    let env = [("CC_GW_TEST_UP_TOKEN", bearer_header.as_str())];
    let gw = Gateway::start_with_env(&config, &env).await;

    // the upstream gets them, replacing what a client sent under the same names
    let r = gw
        .send(
            Req::get("/public/x")
                .header("Authorization", "Bearer client-sent")
                .header("X-Api-Key", "client-sent"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json();
    assert_eq!(
        echoed_header(&v, "authorization"),
        vec![bearer_header.clone()]
    );
    assert_eq!(echoed_header(&v, "x-api-key"), vec![key.clone()]);
    assert_eq!(echoed_header(&v, "x-env"), vec!["test".to_string()]);

    // check, logs and metrics never show the values
    let check = run_check(&config, &env);
    let out = describe_output(&check);
    assert!(check.status.success(), "{out}");
    let metrics = gw.metrics().await;
    for (what, text) in [
        ("check", out),
        ("stderr", gw.stderr()),
        ("stdout", gw.stdout()),
        ("metrics", metrics),
    ] {
        assert!(
            !text.contains(&bearer) && !text.contains(&key),
            "{what}: {text}"
        );
    }

    // a missing variable names the key; Host is the gateway's to set
    let check = run_check(&config, &[]);
    let out = describe_output(&check);
    assert!(
        !check.status.success()
            && out.contains("upstreams[0].headers.Authorization: environment variable \"CC_GW_TEST_UP_TOKEN\" is not set"),
        "{out}"
    );
    let host = write_config(
        dir.path(),
        &text.replacen("\"X-Env\" = \"test\"", "\"Host\" = \"other\"", 1),
    );
    let out = describe_output(&run_check(&host, &env));
    assert!(
        out.contains("upstreams[0].headers.Host: set by the gateway itself"),
        "{out}"
    );
}

#[test]
fn telemetry_headers_and_the_request_log_store_take_the_same_syntax() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (bearer, password) = (
        format!("otlp-{}", random_id()),
        format!("pg-{}", random_id()),
    );
    let key_file = dir.path().join("otlp-key");
    std::fs::write(&key_file, format!("{bearer}-file\n")).expect("write");
    let extra = format!(
        "\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nheaders = {{ \"Authorization\" = \"env:CC_GW_TEST_OTLP_TOKEN\", \"X-Key\" = \"file:{}\" }}\n\n[request_log]\nstore = \"env:CC_GW_TEST_REQUEST_LOG\"\n",
        key_file.display()
    );
    let text = crate::common::fixture::standard_config(
        dir.path(),
        "https://gitlab.example",
        "jwks_uri = \"https://gitlab.example/oauth/discovery/keys\"",
        "127.0.0.1:5052".parse().expect("addr"),
        &Opts {
            extra,
            ..Opts::default()
        },
    );
    let config = write_config(dir.path(), &text);
    let bearer_header = format!("Bearer {bearer}");
    let url = format!("postgres://gw:{password}@127.0.0.1:1/logs");
    let env = [
        ("CC_GW_TEST_OTLP_TOKEN", bearer_header.as_str()),
        ("CC_GW_TEST_REQUEST_LOG", url.as_str()),
    ];
    let check = run_check(&config, &env);
    let out = describe_output(&check);
    assert!(check.status.success(), "{out}");
    assert!(
        !out.contains(&bearer) && !out.contains(&password),
        "check printed a secret: {out}"
    );
    assert!(out.contains("postgres://gw:***@127.0.0.1:1/logs"), "{out}");

    // a variable missing: `check` fails naming the key
    assert_missing_variables_named(
        &config,
        &env,
        &[
            ("CC_GW_TEST_OTLP_TOKEN", "telemetry.headers.Authorization"),
            ("CC_GW_TEST_REQUEST_LOG", "request_log.store"),
        ],
        &[&bearer, &password],
    );
}
