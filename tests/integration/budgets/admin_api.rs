//! The budgets admin API (list, usage, reset) on every store, and the admin bearer token.

use http::Method;

use crate::common::budgets::*;
use crate::common::fixture::q;
use crate::common::*;

per_store!(admin_api_lists_shows_and_resets_budgets: memory, sqlite, redis);
async fn admin_api_lists_shows_and_resets_budgets(store: &Store) {
    let fx = budget_fx(
        store,
        r#"
[budgets]

[[budgets.rules]]
name = "three"
key = ["claim:sub"]
quota = "3/1h"

[[budgets.rules]]
name = "steady"
routes = ["public"]
key = ["client_ip"]
rate = "60/1m"
burst = 2
"#,
        "",
    )
    .await;
    let r = admin(&fx.gw, Method::GET, "/budgets", None).await;
    assert_eq!(r.status, 200, "GET /budgets: {}", r.describe());
    let listing = r.json().to_string();
    for name in ["\"three\"", "\"steady\""] {
        assert!(
            listing.contains(name),
            "GET /budgets does not list {name}: {listing}"
        );
    }

    clear_of_window_end(HOUR).await;
    let u = usage(&fx.gw, "three", "nobody").await;
    assert_eq!(
        (limit_of(&u), u["used"].as_i64(), u["remaining"].as_i64()),
        (Some(3), Some(0), Some(3)),
        "unknown key: {u}"
    );
    let token = fx.token();
    let before = unix_now();
    let rs = burst(&fx, || Fixture::ai_req(&token), 4).await;
    assert_split(&rs, 3, "three", "quota 3/1h");
    let u = usage(&fx.gw, "three", SUB).await;
    let after = unix_now();
    assert_eq!(
        (limit_of(&u), u["used"].as_i64(), u["remaining"].as_i64()),
        (Some(3), Some(3), Some(0)),
        "{u}"
    );
    let reset = u["reset_seconds"].as_f64().expect("number");
    let window = window_end_range(before, after, HOUR);
    assert!(
        reset >= (*window.start() as f64) - 1.0 && reset <= *window.end() as f64,
        "reset_seconds {reset} is not the time to the end of the UTC hour ({window:?}): {u}"
    );

    let path = format!("/budgets/three/{}", pct(SUB));
    let r = admin(&fx.gw, Method::DELETE, &path, None).await;
    assert_eq!(r.status, 200, "DELETE {path}: {}", r.describe());
    let u = usage(&fx.gw, "three", SUB).await;
    assert_eq!(
        (u["used"].as_i64(), u["remaining"].as_i64()),
        (Some(0), Some(3)),
        "after DELETE: {u}"
    );
    let rs = burst(&fx, || Fixture::ai_req(&token), 4).await;
    assert_split(&rs, 3, "three", "quota 3/1h after the reset");

    for (method, path) in [
        (Method::GET, "/budgets/nope/x"),
        (Method::DELETE, "/budgets/nope/x"),
    ] {
        let r = admin(&fx.gw, method.clone(), path, None).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.describe());
        assert_eq!(
            r.reason(),
            "unknown_rule",
            "{method} {path}: {}",
            r.describe()
        );
    }
}

per_store!(admin_usage_of_a_rate_and_reset: memory, sqlite, redis);
/// The admin API on a rate rule: usage without consuming, reset, unknown rules.
async fn admin_usage_of_a_rate_and_reset(store: &Store) {
    let fx = budget_fx(store, &shared_rate(5), "").await;
    let t = fx.token();
    let rs = burst(&fx, || Fixture::ai_req(&t), 6).await;
    assert_split(&rs, 5, "shared", "rate 1/1h burst 5");
    // looking twice consumes nothing
    assert_eq!(used(&fx.gw, "shared", SUB).await, 5);
    assert_eq!(used(&fx.gw, "shared", SUB).await, 5);
    let path = format!("/budgets/shared/{}", pct(SUB));
    let r = admin(&fx.gw, Method::DELETE, &path, None).await;
    assert_eq!(r.status, 200, "DELETE {path}: {}", r.describe());
    assert_eq!(used(&fx.gw, "shared", SUB).await, 0);
    assert_admitted(
        &fx.send(Fixture::ai_req(&t)).await,
        "first request after the reset",
    );
    let path = format!("/budgets/nope/{}", pct(SUB));
    let r = admin(&fx.gw, Method::GET, &path, None).await;
    assert_eq!(r.status, 404, "GET {path}: {}", r.describe());
}

#[tokio::test]
async fn admin_token_guards_every_admin_endpoint_but_health() {
    let secrets = tempfile::tempdir().expect("temp dir");
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, "file-secret-0123").expect("writing token file");
    let fx = Fixture::with(Opts {
        server_extra: format!(
            "admin_token = {}",
            q(&format!("file:{}", token_file.display()))
        ),
        budgets: r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "r"
key = ["claim:sub"]
quota = "10/1h"
"#
        .to_string(),
        ..Opts::default()
    })
    .await;
    check_admin_token(&fx.gw, "file-secret-0123").await;
    // The data plane does not care.
    assert_admitted(&fx.send(Fixture::ai_req(&fx.token())).await, "data plane");

    // The same from an environment variable.
    let text = std::fs::read_to_string(&fx.config_path).expect("config");
    let line = format!(
        "admin_token = {}",
        q(&format!("file:{}", token_file.display()))
    );
    assert!(text.contains(&line));
    let text = text
        .replace(&line, "admin_token = \"env:CC_TEST_ADMIN_TOKEN\"")
        .replace(
            &fx.access_log.display().to_string(),
            &fx.dir.path().join("access2.log").display().to_string(),
        );
    let path = fx.dir.path().join("env.toml");
    std::fs::write(&path, text).expect("writing config");
    let gw = Gateway::start_with_env(
        &path,
        &[("CC_TEST_ADMIN_TOKEN", "env-secret-0123456789abcdef")],
    )
    .await;
    check_admin_token(&gw, "env-secret-0123456789abcdef").await;
}

/// Asserts `secret` guards every admin endpoint of `gw` but the health checks.
async fn check_admin_token(gw: &Gateway, secret: &str) {
    for path in ["/healthz", "/readyz"] {
        let r = admin(gw, Method::GET, path, None).await;
        assert_eq!(
            r.status,
            200,
            "GET {path} without a token: {}",
            r.describe()
        );
    }
    for (method, path) in [
        (Method::GET, "/budgets"),
        (Method::GET, "/budgets/r/someone"),
        (Method::DELETE, "/budgets/r/someone"),
        (Method::GET, "/metrics"),
        (Method::GET, "/issuers"),
        (Method::POST, "/reload"),
    ] {
        let r = admin(gw, method.clone(), path, None).await;
        assert_eq!(
            r.status,
            401,
            "{method} {path} without a token: {}",
            r.describe()
        );
        let r = admin(gw, method.clone(), path, Some("wrong-secret")).await;
        assert_eq!(
            r.status,
            401,
            "{method} {path} with a wrong token: {}",
            r.describe()
        );
        let r = admin(gw, method.clone(), path, Some(&format!("{secret}x"))).await;
        assert_eq!(
            r.status,
            401,
            "{method} {path} with the token plus a byte: {}",
            r.describe()
        );
        let r = Req::new(method.clone(), path)
            .header("Authorization", &format!("Basic {secret}"))
            .send(gw.admin)
            .await;
        assert_eq!(
            r.status,
            401,
            "{method} {path} with a Basic scheme: {}",
            r.describe()
        );
    }
    for (method, path) in [
        (Method::GET, "/budgets"),
        (Method::GET, "/budgets/r/someone"),
        (Method::DELETE, "/budgets/r/someone"),
        (Method::GET, "/metrics"),
        (Method::GET, "/issuers"),
    ] {
        let r = admin(gw, method.clone(), path, Some(secret)).await;
        assert_eq!(
            r.status,
            200,
            "{method} {path} with the right token: {}",
            r.describe()
        );
    }
}
