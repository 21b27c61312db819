//! Operator-facing behaviour: token forwarding policy, Host for HTTP/2 clients, signals.

use crate::common::servers::echoed_header;
use crate::common::wait::DEADLINE;
use crate::common::*;

#[tokio::test]
async fn forward_token_false_keeps_the_token_from_the_upstream() {
    let fx = Fixture::with(Opts {
        auth_extra: "forward_token = false".into(),
        ..Opts::default()
    })
    .await;
    let t = fx.token();
    let v = fx.expect_ok(Fixture::ai_req(&t)).await;
    assert!(
        echoed_header(&v, "x-gitlab-token").is_empty(),
        "token forwarded: {v}"
    );
    // the Bearer form is dropped too, and the identity still arrives
    let v = fx
        .expect_ok(Req::get("/ai/v2/completions").header("Authorization", &format!("Bearer {t}")))
        .await;
    assert!(
        echoed_header(&v, "authorization").is_empty(),
        "token forwarded: {v}"
    );
    assert_eq!(echoed_header(&v, "x-cc-subject"), vec![SUB]);
}

#[tokio::test]
async fn forward_token_default_forwards_it_unchanged() {
    let fx = Fixture::start().await;
    let t = fx.token();
    let v = fx.expect_ok(Fixture::ai_req(&t)).await;
    assert_eq!(echoed_header(&v, "x-gitlab-token"), vec![t.as_str()]);
}

#[tokio::test]
async fn http2_clients_authority_reaches_the_upstream_as_host() {
    let fx = Fixture::start().await;
    let r = Req::get("/public/x").send_h2(fx.gw.addr).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json();
    let host = echoed_header(&v, "host");
    assert_eq!(
        host,
        vec![fx.gw.addr.to_string()],
        "upstream saw Host {host:?}: {v}"
    );
    assert_eq!(
        echoed_header(&v, "x-forwarded-host"),
        vec![fx.gw.addr.to_string()]
    );
}

#[tokio::test]
async fn sighup_does_not_stop_the_gateway() {
    let mut fx = Fixture::start().await;
    let st = std::process::Command::new("kill")
        .args(["-HUP", &fx.gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    wait_until("the SIGHUP warning in stderr", DEADLINE, || {
        let seen = fx.gw.stderr().contains("SIGHUP");
        async move {
            if seen {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        }
    })
    .await;
    assert!(
        fx.gw.is_running(),
        "SIGHUP killed the gateway: {}",
        fx.gw.stderr()
    );
    let t = fx.token();
    fx.expect_ok(Fixture::ai_req(&t)).await;
}
