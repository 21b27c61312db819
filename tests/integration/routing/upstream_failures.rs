//! Upstream failures: unreachable (502) and too slow to answer (504).

use crate::common::routing::expect_request_counted;
use crate::common::servers::Slow;
use crate::common::*;

#[tokio::test]
async fn upstream_unavailable_502() {
    let dead = dead_addr();
    let extra = format!(
        r#"
[[routes]]
name = "dead"
path_prefix = "/dead/"
upstream = "dead"
auth = "public"

[[upstreams]]
name = "dead"
endpoints = ["{dead}"]
connect_timeout = "2s"
"#
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let before = fx.metrics().await;
    let r = fx.send(Req::get("/dead/x")).await;
    assert_error(&r, 502, "upstream_unavailable");
    expect_request_counted(&fx, &before, &[("route", "dead"), ("status", "502")]).await;
}

#[tokio::test]
async fn upstream_timeout_504() {
    let slow = Slow::start().await;
    let extra = format!(
        r#"
[[routes]]
name = "slow"
path_prefix = "/slow/"
upstream = "slow"
auth = "public"

[[upstreams]]
name = "slow"
endpoints = ["{}"]
connect_timeout = "2s"
read_timeout = "300ms"
"#,
        slow.addr
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let before = fx.metrics().await;
    let r = fx.send(Req::get("/slow/x")).await;
    assert_error(&r, 504, "upstream_timeout");
    assert!(
        slow.accepted() >= 1,
        "the gateway never connected to the slow upstream"
    );
    expect_request_counted(&fx, &before, &[("route", "slow"), ("status", "504")]).await;
}
