//! `check` as `nginx -t`: it opens and parses what the config references (key files, the SQLite
//! store's directory) and names the absolute path it tried; typos in `log.level` and budget
//! tiers are refused with their key path; the summary speaks config words.

use std::path::Path;
use std::process::Output;

use crate::common::fixture::{standard_config, write_config};
use crate::common::gateway::command;
use crate::common::*;

/// `cc-gateway check --config gw.toml` run from `dir`, so relative paths in the config and on
/// the command line resolve there (the message must still name absolute paths).
fn check_in(dir: &Path) -> Output {
    command()
        .current_dir(dir)
        .args(["check", "--config", "gw.toml"])
        .output()
        .expect("running cc-gateway check")
}

fn config(dir: &Path, key_source: &str, budgets: &str) -> String {
    standard_config(
        dir,
        "https://gitlab.example",
        key_source,
        "127.0.0.1:5052".parse().expect("addr"),
        &Opts {
            budgets: budgets.to_string(),
            ..Opts::default()
        },
    )
}

const URI_KEYS: &str = "jwks_uri = \"https://gitlab.example/oauth/discovery/keys\"";

fn assert_refused(o: &Output, key_path: &str, problem: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(o));
    assert!(
        err.contains(&format!("gw.toml: {key_path}: {problem}")),
        "expected `gw.toml: {key_path}: {problem}…`; got {}",
        describe_output(o)
    );
}

#[test]
fn check_opens_and_parses_the_jwks_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let real = dir.path().canonicalize().expect("canonical temp dir");
    let keys = real.join("keys").join("jwks.json");
    write_config(
        dir.path(),
        &config(dir.path(), "jwks_file = \"keys/jwks.json\"", ""),
    );

    let o = check_in(dir.path());
    assert_refused(
        &o,
        "issuers[0].jwks_file",
        &format!("cannot read {}", keys.display()),
    );

    std::fs::create_dir(real.join("keys")).expect("keys dir");
    std::fs::write(&keys, "{\"keys\": [").expect("writing broken JWKS");
    let o = check_in(dir.path());
    assert_refused(
        &o,
        "issuers[0].jwks_file",
        &format!("{}: not a JWKS document", keys.display()),
    );

    let good = jwks_doc(&[shared_rsa_key().public_jwk(KID)]);
    std::fs::write(&keys, good.to_string()).expect("writing JWKS");
    let o = check_in(dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
}

#[test]
fn check_refuses_an_sqlite_store_in_a_missing_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let real = dir.path().canonicalize().expect("canonical temp dir");
    let budgets = "\n[budgets]\nstore = \"sqlite://state/budgets.db\"\n\n[[budgets.rules]]\nname = \"hourly\"\nkey = [\"claim:sub\"]\nquota = \"100/1h\"\n";
    write_config(dir.path(), &config(dir.path(), URI_KEYS, budgets));

    let o = check_in(dir.path());
    assert_refused(
        &o,
        "budgets.store",
        &format!("directory {} does not exist", real.join("state").display()),
    );

    std::fs::create_dir(real.join("state")).expect("state dir");
    let o = check_in(dir.path());
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
    assert!(
        !real.join("state").join("budgets.db").exists(),
        "check created the store file"
    );
}

#[test]
fn check_refuses_typos_that_used_to_pass() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = config(dir.path(), URI_KEYS, "");

    write_config(
        dir.path(),
        &good.replacen("level = \"info\"", "level = \"inf\"", 1),
    );
    assert_refused(&check_in(dir.path()), "log.level", "\"inf\" is not a level");

    let tiers = "\n[budgets]\n\n[[budgets.rules]]\nname = \"seats\"\nkey = [\"claim:sub\"]\ntiers = { claim = \"duo_seat_count\", ranges = [[0, 100, \"600/1m\"], [50, 1000, \"3000/1m\"]] }\n";
    write_config(dir.path(), &config(dir.path(), URI_KEYS, tiers));
    assert_refused(
        &check_in(dir.path()),
        "budgets.rules[0].tiers.ranges[1]",
        "starts at 50, inside the previous range [0, 100]",
    );
}

#[test]
fn check_summary_speaks_config_words() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rule = |name: &str| {
        format!(
            "\n[[budgets.rules]]\nname = \"{name}\"\nkey = [\"claim:sub\"]\nquota = \"10/1h\"\n"
        )
    };
    let one = format!("\n[budgets]\n{}", rule("a"));
    write_config(dir.path(), &config(dir.path(), URI_KEYS, &one));
    let o = check_in(dir.path());
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
    assert!(
        out.contains("budgets (1 rule, store = \"memory\", on_store_error = \"allow\"):"),
        "{}",
        describe_output(&o)
    );

    let two = format!(
        "\n[budgets]\non_store_error = \"deny\"\n{}{}",
        rule("a"),
        rule("b")
    );
    write_config(dir.path(), &config(dir.path(), URI_KEYS, &two));
    let o = check_in(dir.path());
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("budgets (2 rules, store = \"memory\", on_store_error = \"deny\"):"),
        "{}",
        describe_output(&o)
    );
}
