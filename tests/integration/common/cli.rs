//! Helpers of the CLI tests: running the binary, a config `check` accepts, file modes.

use std::path::Path;
use std::process::Output;

use crate::common::fixture::standard_config;
use crate::common::gateway::command;
use crate::common::*;

/// Runs `cc-gateway args` to completion.
pub fn run(args: &[&str]) -> Output {
    command()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running cc-gateway {args:?}: {e}"))
}

/// Runs the CLI off the async runtime (in-test servers keep answering meanwhile).
pub async fn run_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&a)
    })
    .await
    .expect("CLI task")
}

/// A valid config that `check` can validate without any server running.
pub fn good_config(dir: &Path) -> String {
    standard_config(
        dir,
        "https://gitlab.example",
        "jwks_uri = \"https://gitlab.example/oauth/discovery/keys\"",
        "127.0.0.1:5052".parse().expect("addr"),
        &Opts::default(),
    )
}

/// `text` with the first `from` replaced by `to`; asserts `from` is there.
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "config template lacks {from:?}");
    text.replacen(from, to, 1)
}

/// The file's permission bits (`0o600`, ...).
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}
