//! systemd `Type=notify`: with `$NOTIFY_SOCKET` (here an in-test datagram socket) the gateway
//! says READY=1 once it serves, RELOADING=1 + MONOTONIC_USEC / READY=1 around each reload,
//! STOPPING=1 at SIGTERM; a process that took over says MAINPID= with its READY=1.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use super::{signal, wait_exit};
use crate::common::fixture::{standard_config, write_config};
use crate::common::*;

/// The next datagram, within a bound.
async fn next(sock: &UnixDatagram) -> String {
    let sock = sock.try_clone().expect("clone");
    tokio::task::spawn_blocking(move || {
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 1024];
        let n = sock.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .expect("recv task")
}

#[tokio::test]
async fn the_service_manager_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let notify_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).expect("notify socket");
    let jwks = Jwks::start(vec![shared_rsa_key().public_jwk(KID)]).await;
    let echo = Echo::start("echo").await;
    let opts = Opts {
        server_extra: "drain_delay = \"0s\"\nupgrade_socket = \"upgrade.sock\"".into(),
        ..Opts::default()
    };
    let key_source = format!("jwks_uri = \"{}\"", jwks.jwks_uri());
    let text = standard_config(dir.path(), &jwks.base_url(), &key_source, echo.addr, &opts);
    let config = write_config(dir.path(), &text);
    let env = [("NOTIFY_SOCKET", notify_path.to_str().expect("utf-8"))];
    let args = vec![
        "run".into(),
        "--config".into(),
        config.as_os_str().to_owned(),
    ];
    let gw = Gateway::spawn_with_env(args, &config, &env).await;
    assert_eq!(next(&sock).await, "READY=1");

    let r = gw.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let reloading = next(&sock).await;
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading}"));
    assert!(usec > 0);
    assert_eq!(next(&sock).await, "READY=1", "after the reload");

    // an upgrade: the new process names itself the main one
    let mut old = gw;
    let args = vec![
        "run".into(),
        "--config".into(),
        config.as_os_str().to_owned(),
        "--upgrade".into(),
    ];
    let mut new = Gateway::spawn_with_env(args, &config, &env).await;
    assert_eq!(next(&sock).await, format!("MAINPID={}\nREADY=1", new.pid()));
    wait_exit(&mut old, Duration::from_secs(20)).await;

    signal(new.pid(), "TERM");
    assert_eq!(
        next(&sock).await,
        "STOPPING=1",
        "the old process said nothing when it handed over; the new one says it stops"
    );
    wait_exit(&mut new, Duration::from_secs(20)).await;
}
