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

#[tokio::test]
async fn a_request_abandoned_by_its_client_is_counted_as_499() {
    use tokio::io::AsyncWriteExt;
    let slow = crate::common::servers::Slow::start().await;
    let extra = format!(
        "\n[[routes]]\nname = \"slow\"\npath_prefix = \"/slow/\"\nupstream = \"slow\"\nauth = \"public\"\n\n[[upstreams]]\nname = \"slow\"\nendpoints = [\"{}\"]\nread_timeout = \"60s\"\n",
        slow.addr
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let before = metric(
        &fx.metrics().await,
        "cc_gateway_requests_total",
        &[("route", "slow"), ("status", "499")],
    );
    let mut c = tokio::net::TcpStream::connect(fx.gw.addr)
        .await
        .expect("connect");
    c.write_all(b"GET /slow/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: abandoned-1\r\n\r\n")
        .await
        .expect("write");
    wait_until("the gateway to reach the slow upstream", DEADLINE, || {
        let n = slow.accepted();
        async move {
            if n >= 1 {
                Ok(())
            } else {
                Err(format!("{n} connections"))
            }
        }
    })
    .await;
    drop(c); // the client gives up long before the upstream's 60 s
    wait_metric(
        &fx.gw,
        "cc_gateway_requests_total",
        &[("route", "slow"), ("status", "499")],
        before + 1.0,
    )
    .await;
    let log = fx.access_log.clone();
    wait_until(
        "the access log line of the abandoned request",
        DEADLINE,
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                let line = text
                    .lines()
                    .find(|l| l.contains("abandoned-1"))
                    .ok_or("no line yet".to_string())?;
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
                if v["status"] == 499 && v["reason"] == "client_closed" {
                    Ok(())
                } else {
                    Err(line.to_string())
                }
            }
        },
    )
    .await;
}
