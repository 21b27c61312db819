//! Binary upgrade (`server.upgrade_socket`, `run --upgrade`): the new process takes over the
//! very listening sockets, and only once it serves does the old one drain and exit. Under
//! load, twenty upgrades fail no request; a new process that fails leaves the old one serving.

use std::path::Path;
use std::time::Duration;

use super::load::Load;
use super::{route, wait_exit, SseClient};
use crate::common::wait::DEADLINE;
use crate::common::*;

fn upgrade_args(config: &Path) -> Vec<std::ffi::OsString> {
    vec![
        "run".into(),
        "--config".into(),
        config.as_os_str().to_owned(),
        "--upgrade".into(),
    ]
}

/// The fixture's `[server]` keys for upgrades: the socket in the test's temp dir (the path
/// is relative to the config file).
fn upgradable(extra: &str) -> Opts {
    Opts {
        server_extra: "upgrade_socket = \"upgrade.sock\"".into(),
        extra: extra.into(),
        ..Opts::default()
    }
}

/// Starts `run --upgrade` on `config` and waits for it to serve; the old process then exits.
async fn upgrade(old: &mut Gateway, config: &Path) -> Gateway {
    let new = Gateway::spawn_with(upgrade_args(config), config).await;
    assert_eq!(new.listen, old.listen, "the same listening sockets");
    assert_eq!(new.admin, old.admin, "the same admin socket");
    wait_exit(old, Duration::from_secs(20)).await;
    assert!(
        !old.stderr().contains("cc-gateway: "),
        "the old process did not exit cleanly:\n{}",
        old.stderr()
    );
    new
}

#[tokio::test]
async fn twenty_upgrades_under_load_fail_no_request() {
    let mut fx = Fixture::with(upgradable("")).await;
    let sock = fx.dir.path().join("upgrade.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sock)
            .expect("the upgrade socket")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "upgrade socket mode");
    let load = Load::start_with(fx.gw.addr, 8, 4, 16, "/public/load");
    load.progress(50).await;
    let text = std::fs::read_to_string(&fx.config_path).expect("config");
    for i in 0..20 {
        // a changed [server] section goes through an upgrade: more workers, then fewer
        // (the new process keeps every inherited socket either way), other timeouts
        let edited = if i % 2 == 0 {
            text.replace("threads = 2", "threads = 3\nheader_read_timeout = \"20s\"")
        } else {
            text.replace("threads = 2", "threads = 1")
        };
        std::fs::write(&fx.config_path, edited).expect("config");
        let new = upgrade(&mut fx.gw, &fx.config_path).await;
        let _old = std::mem::replace(&mut fx.gw, new);
        load.progress(30).await;
    }
    fx.gw.wait_ready().await;
    // the last process started with the file's [server] section (threads = 1), not the first
    // one's (threads = 2): a reload of the same file finds nothing that needs a restart
    let r = fx.gw.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["restart_needed"],
        serde_json::json!([]),
        "{}",
        r.text()
    );
    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{} failures over 20 upgrades: {:#?}",
        tally.failures.len(),
        tally.failures
    );
    assert!(tally.answered > 600, "{tally:?}");
    // not even a retry: a draining process answers the requests that reach its open
    // connections (Connection: close) before it closes them, and new connections go to the
    // successor (the listening sockets never close)
    assert_eq!(tally.unsent, 0, "{tally:?}");
}

#[tokio::test]
async fn streams_on_the_old_process_complete_after_an_upgrade() {
    let sse = Sse::start().await;
    let mut fx = Fixture::with(upgradable(&route("sse", sse.addr))).await;
    let stream = SseClient::open(fx.gw.addr, "/sse/s").await;
    let new = Gateway::spawn_with(upgrade_args(&fx.config_path), &fx.config_path).await;
    // the new process serves while the old one still carries the stream
    let r = Req::get("/public/x").send(new.addr).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(fx.gw.is_running(), "the old process waits for its stream");
    sse.proceed.notify_one();
    stream.finish().await;
    wait_exit(&mut fx.gw, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_failed_upgrade_leaves_the_old_process_serving() {
    let mut fx = Fixture::with(upgradable("")).await;
    let load = Load::start(fx.gw.addr, 4, 2, "/public/load");
    load.progress(20).await;
    let good = std::fs::read_to_string(&fx.config_path).expect("config");

    // 1. an invalid config: the new process stops before it connects
    let bad = fx.dir.path().join("bad.toml");
    std::fs::write(&bad, good.replace("threads = 2", "threads = \"many\"")).expect("config");
    let o = crate::common::gateway::command()
        .args(upgrade_args(&bad))
        .output()
        .expect("run --upgrade");
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));

    // 2. listen addresses an upgrade cannot change: it fails after it received the sockets
    let moved = fx.dir.path().join("moved.toml");
    std::fs::write(
        &moved,
        good.replace(
            "listen = [\"127.0.0.1:0\"]",
            "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]",
        ),
    )
    .expect("config");
    let o = crate::common::gateway::command()
        .args(upgrade_args(&moved))
        .output()
        .expect("run --upgrade");
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("server.listen"),
        "{}",
        describe_output(&o)
    );
    load.progress(20).await;

    // 3. killed while it waits for its keys (an issuer that never answers), before ready
    let stuck = fx.dir.path().join("stuck.toml");
    std::fs::write(
        &stuck,
        good.replace(&fx.jwks.jwks_uri(), &format!("http://{}/jwks", dead_addr())),
    )
    .expect("config");
    let mut child = crate::common::gateway::command()
        .args(upgrade_args(&stuck))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run --upgrade");
    let stderr = child.stderr.take().expect("piped stderr");
    let took = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("took over the listening sockets"))
    });
    let took = tokio::time::timeout(DEADLINE, took)
        .await
        .expect("the new process to take the sockets in time")
        .expect("stderr reader");
    assert!(took, "the new process never said it took the sockets");
    let _ = child.kill();
    let _ = child.wait();
    wait_until(
        "the old process to abandon the upgrade",
        DEADLINE,
        || async {
            let log = fx.gw.stderr();
            match log.matches("upgrade abandoned").count() {
                2 => Ok(()),
                n => Err(format!("{n} abandoned so far:\n{log}")),
            }
        },
    )
    .await;
    load.progress(20).await;
    // each attempt was abandoned, and the old process still takes upgrades
    assert!(fx.gw.is_running());
    let new = upgrade(&mut fx.gw, &fx.config_path).await;
    let _old = std::mem::replace(&mut fx.gw, new);
    load.progress(20).await;

    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{} failures: {:#?}",
        tally.failures.len(),
        tally.failures
    );
}

#[tokio::test]
async fn a_second_gateway_without_upgrade_does_not_steal_the_socket() {
    let fx = Fixture::with(upgradable("")).await;
    let o = crate::common::gateway::command()
        .args(["run", "--config", fx.config_path.to_str().expect("utf-8")])
        .output()
        .expect("a second run");
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another gateway is listening on it"),
        "{}",
        describe_output(&o)
    );
    // the first one still owns the path: an upgrade still reaches it
    let r = Req::get("/public/x").send(fx.gw.addr).await;
    assert_eq!(r.status, 200);
    assert!(fx.dir.path().join("upgrade.sock").exists());
}
