//! `check` on good and broken configs and on a missing file.

use crate::common::cli::{good_config, replace_once, run};
use crate::common::fixture::write_config;
use crate::common::*;

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
