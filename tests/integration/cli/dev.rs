//! `cc-gateway dev`: a token that works against the demo backend, the addresses it bound, printed
//! commands that run as pasted, and its files (private, removed on exit unless the user named
//! them).

use std::path::Path;

use crate::common::cli::{mode, run_async};
use crate::common::wait;
use crate::common::*;

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
