//! What `check` accepts and refuses in `[budgets]` and the admin token, naming the key path.

use std::path::Path;

use crate::common::fixture::{q, standard_config};
use crate::common::*;

/// A config that `check` validates without any server, with `budgets`, `server_extra` and a
/// `costly` route.
fn check_config(dir: &Path, budgets: &str, server_extra: &str) -> String {
    standard_config(
        dir,
        "https://gitlab.example",
        "jwks_uri = \"https://gitlab.example/oauth/discovery/keys\"",
        "127.0.0.1:5052".parse().expect("addr"),
        &Opts {
            budgets: budgets.to_string(),
            server_extra: server_extra.to_string(),
            extra: format!(
                "\n[[routes]]\nname = \"costly\"\npath_prefix = \"/costly/\"\nupstream = \"echo\"\naudience = \"{AUD}\"\ncost = 10\n"
            ),
            ..Opts::default()
        },
    )
}

const GOOD_RULE: &str = r#"
[[budgets.rules]]
name = "ok"
key = ["claim:sub"]
quota = "10/1h"
"#;

/// A memory `[budgets]` table with `table`'s keys, a valid rule and then `rules`.
fn budgets_with(table: &str, rules: &str) -> String {
    format!("\n[budgets]\nstore = \"memory\"\n{table}\n{GOOD_RULE}\n{rules}")
}

#[test]
fn check_accepts_budget_configs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = r#"
[budgets]
store = "memory"
on_store_error = "deny"
store_timeout = "20ms"
response_headers = true

[[budgets.rules]]
name = "instance-rate"
routes = ["ai"]
key = ["claim:sub"]
rate = "600/1m"
burst = 50

[[budgets.rules]]
name = "user-daily"
key = ["claim:sub", "header:X-Gitlab-Global-User-Id", "route", "client_ip"]
quota = "5000/1d"
cost = 1
tiers = { claim = "duo_seat_count", ranges = [[0, 100, "600/1m"], [101, 1000, "3000/1m"], [1001, "inf", "12000/1m"]] }
overrides = { "some-key" = "10/1m" }

[[budgets.rules]]
name = "instance-tier"
routes = ["ai", "costly"]
key = ["claim:sub"]
tiers = { claim = "duo_seat_count", ranges = [[0, 100, "600/1m"], [101, "inf", "3000/1m"]] }
"#;
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "fedcba9876543210fedcba9876543210").expect("writing token file");
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "loopback admin, no admin_token",
            check_config(dir.path(), full, ""),
            vec![],
        ),
        (
            "non-loopback admin with an env admin_token",
            check_config(dir.path(), full, "admin_token = \"env:CC_ADMIN_TOKEN\"").replace(
                "admin_listen = \"127.0.0.1:0\"",
                "admin_listen = \"0.0.0.0:9091\"",
            ),
            vec![("CC_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef")],
        ),
        (
            "non-loopback admin with a file admin_token",
            check_config(
                dir.path(),
                full,
                &format!(
                    "admin_token = {}",
                    q(&format!("file:{}", token_file.display()))
                ),
            )
            .replace(
                "admin_listen = \"127.0.0.1:0\"",
                "admin_listen = \"0.0.0.0:9091\"",
            ),
            vec![],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, text, env)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("good-{i}.toml"));
        std::fs::write(&path, text).expect("writing config");
        let o = run_check(&path, env);
        if o.status.code() != Some(0) {
            failures.push(format!(
                "[{what}] expected exit 0; got {}",
                describe_output(&o)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_refuses_bad_budget_configs_with_the_key_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let short_token = d.join("short-token");
    std::fs::write(&short_token, "short").expect("writing token file");
    let rule = |body: &str| format!("[[budgets.rules]]\nname = \"bad\"\n{body}\n");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "both rate and quota",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nrate = \"10/1m\"\nquota = \"10/1h\"")), ""),
            "budgets.rules[1]",
        ),
        (
            "neither rate nor quota",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]")), ""),
            "budgets.rules[1]",
        ),
        (
            "bad rate",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nrate = \"10/parsec\"")), ""),
            "budgets.rules[1].rate",
        ),
        (
            "bad quota",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nquota = \"ten/1h\"")), ""),
            "budgets.rules[1].quota",
        ),
        (
            "unknown route",
            check_config(d, &budgets_with("", &rule("routes = [\"ai\", \"nope\"]\nkey = [\"claim:sub\"]\nquota = \"10/1h\"")), ""),
            "budgets.rules[1].routes",
        ),
        (
            "bogus key part",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\", \"bogus:x\"]\nquota = \"10/1h\"")), ""),
            "budgets.rules[1].key",
        ),
        (
            "unknown key in a rule",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nquota = \"10/1h\"\nbogus = 1")), ""),
            "budgets.rules[1].bogus",
        ),
        (
            "bad tier limit",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nquota = \"10/1h\"\ntiers = { claim = \"duo_seat_count\", ranges = [[0, \"inf\", \"5/parsec\"]] }")), ""),
            "budgets.rules[1].tiers",
        ),
        (
            "bad override limit",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nquota = \"10/1h\"\noverrides = { \"k\" = \"lots\" }")), ""),
            "budgets.rules[1].overrides",
        ),
        (
            "malformed redis URL",
            check_config(d, &budgets_with("", "").replace("store = \"memory\"", "store = \"redis://127.0.0.1:notaport/0\""), ""),
            "budgets.store",
        ),
        (
            "sqlite store without a path",
            check_config(d, &budgets_with("", "").replace("store = \"memory\"", "store = \"sqlite://\""), ""),
            "budgets.store",
        ),
        (
            "unknown store",
            check_config(d, &budgets_with("", "").replace("store = \"memory\"", "store = \"floppy\""), ""),
            "budgets.store",
        ),
        (
            "bad on_store_error",
            check_config(d, &budgets_with("on_store_error = \"maybe\"", ""), ""),
            "budgets.on_store_error",
        ),
        (
            "bad store_timeout",
            check_config(d, &budgets_with("store_timeout = \"soon\"", ""), ""),
            "budgets.store_timeout",
        ),
        (
            "max_keys below 1024",
            check_config(d, &budgets_with("max_keys = 10", ""), ""),
            "budgets.max_keys",
        ),
        (
            "max_keys not a number",
            check_config(d, &budgets_with("max_keys = \"many\"", ""), ""),
            "budgets.max_keys",
        ),
        (
            "non-loopback admin without admin_token",
            check_config(d, &budgets_with("", ""), "")
                .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"0.0.0.0:9091\""),
            "server.admin_token",
        ),
        (
            "admin_token written into the config",
            check_config(
                d,
                &budgets_with("", ""),
                "admin_token = \"0123456789abcdef0123456789abcdef\"",
            ),
            "server.admin_token",
        ),
        (
            "admin_token from an unset environment variable",
            check_config(
                d,
                &budgets_with("", ""),
                "admin_token = \"env:CC_TEST_UNSET_ADMIN_TOKEN_4711\"",
            ),
            "server.admin_token",
        ),
        (
            "admin_token file shorter than 16 characters",
            check_config(
                d,
                &budgets_with("", ""),
                &format!("admin_token = {}", q(&format!("file:{}", short_token.display()))),
            ),
            "server.admin_token",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, text, key_path)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("broken-{i}.toml"));
        std::fs::write(&path, text).expect("writing config");
        let p = path.to_str().expect("utf-8 path");
        let o = run_check(&path, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        if !(o.status.code() == Some(1) && err.contains(p) && err.contains(key_path)) {
            failures.push(format!(
                "[{what}] expected exit 1 and stderr naming {p:?} and {key_path:?}; got {}",
                describe_output(&o)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
