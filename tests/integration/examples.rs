//! The shipped example config stays valid: `cc-gateway check` accepts `examples/gateway.toml`
//! as it is, and with every commented-out optional key (and commented-out table, such as
//! `# [server.tls]`) switched on, so a comment cannot advertise a key or value the gateway would
//! refuse. The TLS files those keys name are generated into the copy: `check` reads them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::common::{describe_output, run_check};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn example_text() -> String {
    let path = examples_dir().join("gateway.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A copy of `examples/` (key files the config names relative to itself included) in a temp
/// dir, with `gateway.toml` replaced by `text`.
fn example_copy(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(examples_dir()).expect("reading examples/") {
        let entry = entry.expect("examples/ entry");
        if entry.file_type().expect("file type").is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
        }
    }
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).expect("writing the config");
    (dir, path)
}

fn assert_check_ok(path: &Path, env: &[(&str, &str)]) {
    let o = run_check(path, env);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.trim_end().ends_with(": OK"),
        "check refused {}:\n{}",
        path.display(),
        describe_output(&o)
    );
}

/// The certificates, keys and CA bundles the example's commented-out TLS keys name (relative to
/// the config), generated with rcgen: `check` loads each one (a key must match its
/// certificate), so they must be real. A name the example adds but this list lacks fails
/// `check` with the missing path.
fn write_tls_files(dir: &Path) {
    let tls = dir.join("tls");
    std::fs::create_dir(&tls).expect("creating tls/");
    let edge_ca = crate::tls::Ca::new("example edge CA");
    edge_ca
        .leaf("gateway.example.org", &["gateway.example.org"], &[])
        .write(&tls, "edge");
    let clients_ca = crate::tls::Ca::new("example clients CA");
    std::fs::write(tls.join("clients-ca.pem"), clients_ca.issuer_pem()).expect("clients-ca.pem");
    let backend_ca = crate::tls::Ca::new("example backend CA");
    std::fs::write(tls.join("backend-ca.pem"), backend_ca.issuer_pem()).expect("backend-ca.pem");
    backend_ca
        .leaf(
            "cc-gateway",
            &[],
            &["spiffe://example.org/ns/edge/sa/cc-gateway"],
        )
        .write(&tls, "gw");
}

/// Is this line a table header, `[x]` / `[[x]]`?
fn is_header(line: &str) -> bool {
    line.starts_with('[')
}

/// `line` without its leading `# ` (or `#`), if it is a comment.
fn uncomment(line: &str) -> Option<&str> {
    line.strip_prefix('#')
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
}

/// `key` of a `key = value` line (`None` for anything else).
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(key)
}

/// The example with each commented-out `# key = value` line uncommented, unless its table
/// already sets that key (an alternative value, e.g. a second `level`), and each commented-out
/// table header (`# [server.tls]`) uncommented with it, so the keys commented out below it
/// land in that table. Returns the text and the keys switched on.
fn with_optional_keys_enabled(text: &str) -> (String, Vec<String>) {
    // tables in file order ([[issuers]] entries each count, commented-out ones too): the keys
    // each one sets
    let mut set: Vec<HashSet<&str>> = vec![HashSet::new()];
    for line in text.lines() {
        if is_header(line) || uncomment(line).is_some_and(is_header) {
            set.push(HashSet::new());
        } else if let Some(k) = key_of(line) {
            set.last_mut().expect("a table").insert(k);
        }
    }
    let mut table = 0;
    let mut out = String::new();
    let mut enabled = Vec::new();
    for line in text.lines() {
        let uncommented = uncomment(line);
        if is_header(line) {
            table += 1;
        } else if let Some(header) = uncommented.filter(|l| is_header(l)) {
            table += 1;
            out.push_str(header);
            out.push('\n');
            continue;
        }
        match uncommented.and_then(|l| key_of(l).map(|k| (l, k))) {
            // `insert` also keeps a key commented twice in one table from being set twice
            Some((l, k)) if set[table].insert(k) => {
                enabled.push(k.to_string());
                out.push_str(l);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    (out, enabled)
}

/// `"env:NAME"` references in a config: the variables `check` will read.
fn env_refs(text: &str) -> Vec<&str> {
    text.split("\"env:")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name))
        .collect()
}

#[test]
fn the_example_config_passes_check() {
    assert_check_ok(&examples_dir().join("gateway.toml"), &[]);
}

#[test]
fn the_example_config_passes_check_with_its_optional_keys_enabled() {
    let (text, enabled) = with_optional_keys_enabled(&example_text());
    for key in [
        "threads",
        "trusted_proxies",
        "admin_token",
        "forward_token",
        "proxy_protocol",
        "certificates",
        "client_auth",
        "client_cert",
        "upgrades",
        "idle_timeout",
        "timeout",
        "protocol",
        "tls",
    ] {
        assert!(
            enabled.iter().any(|k| k == key),
            "expected the example to offer `# {key} = …` (enabled: {enabled:?})"
        );
    }
    let secret = "example-admin-token-0123456789";
    let env: Vec<(&str, &str)> = env_refs(&text).into_iter().map(|n| (n, secret)).collect();
    let (dir, path) = example_copy(&text);
    write_tls_files(dir.path());
    assert_check_ok(&path, &env);
}

/// The two tests above are only worth something if `check` judges this file strictly.
#[test]
fn an_unknown_key_in_the_example_is_refused() {
    let text = example_text().replacen("[server]\n", "[server]\nlisten_adress = \"x\"\n", 1);
    let (_dir, path) = example_copy(&text);
    let o = run_check(&path, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1) && stderr.contains("server.listen_adress"),
        "{}",
        describe_output(&o)
    );
}
