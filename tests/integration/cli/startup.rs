//! Where the config comes from (`--config`, `CC_GATEWAY_CONFIG`, the packaged path) and a `run`
//! that cannot start.

use crate::common::cli::{good_config, replace_once, run};
use crate::common::fixture::write_config;
use crate::common::gateway::command;
use crate::common::*;

#[test]
fn config_defaults_to_cc_gateway_config_then_etc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &good_config(dir.path()));
    let p = path.to_str().expect("utf-8 path");
    let o = command()
        .args(["check"])
        .env("CC_GATEWAY_CONFIG", p)
        .output()
        .expect("running cc-gateway");
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("{p}: OK")),
        "{}",
        describe_output(&o)
    );
    // --config wins over the variable
    let o = command()
        .args(["check", "--config", p])
        .env("CC_GATEWAY_CONFIG", dir.path().join("absent.toml"))
        .output()
        .expect("running cc-gateway");
    assert_eq!(o.status.code(), Some(0), "{}", describe_output(&o));

    // neither: the packaged location (valid or not on this machine, it is the file tried)
    for cmd in [&["check"][..], &["token", "inspect", "x.y.z"][..]] {
        let o = command()
            .args(cmd)
            .env_remove("CC_GATEWAY_CONFIG")
            .output()
            .expect("running cc-gateway");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            all.contains("/etc/cc-gateway/gateway.toml"),
            "{cmd:?}: {}",
            describe_output(&o)
        );
    }

    for sub in [&["run"][..], &["check"][..], &["token", "inspect"][..]] {
        let o = run(&[sub, &["--help"][..]].concat());
        let help = String::from_utf8_lossy(&o.stdout);
        let line = help
            .lines()
            .find(|l| l.contains("--config"))
            .unwrap_or_else(|| panic!("{sub:?} --help has no --config: {help}"));
        for want in [
            "config file",
            "CC_GATEWAY_CONFIG",
            "/etc/cc-gateway/gateway.toml",
        ] {
            assert!(
                line.contains(want),
                "{sub:?} --help: {line:?} lacks {want:?}"
            );
        }
    }
}

#[test]
fn a_gateway_that_cannot_bind_says_why_once_and_not_that_it_stopped() {
    let dir = tempfile::tempdir().expect("temp dir");
    // held without SO_REUSEPORT, so the gateway's bind fails
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let text = replace_once(
        &good_config(dir.path()),
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"{addr}\"]"),
    );
    let path = write_config(dir.path(), &text);
    let o = run(&["run", "--config", path.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", describe_output(&o));
    assert_eq!(
        err.matches(&addr).count(),
        1,
        "the address is not named exactly once: {}",
        describe_output(&o)
    );
    assert_eq!(
        err.matches("os error").count(),
        1,
        "the cause is not given exactly once: {}",
        describe_output(&o)
    );
    assert!(
        !err.contains("stopped"),
        "a gateway that never started is said to have stopped: {}",
        describe_output(&o)
    );
}
