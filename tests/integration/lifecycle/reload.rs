//! Twenty reloads — SIGHUP and `POST /reload`, each replacing the upstream's pool — under
//! constant load: nothing fails.

use super::load::Load;
use super::signal;
use crate::common::*;

#[tokio::test]
async fn twenty_reloads_under_load_fail_no_request() {
    let fx = Fixture::start().await;
    let load = Load::start(fx.gw.addr, 8, 4, "/public/load");
    load.progress(50).await;
    let text = std::fs::read_to_string(&fx.config_path).expect("config");
    for i in 0..20u32 {
        // a changed upstream gets a new pool: new requests use it, those in flight finish
        // on the old one
        let timeout = if i % 2 == 0 { "3s" } else { "2s" };
        let edited = text.replace(
            "connect_timeout = \"2s\"",
            &format!("connect_timeout = \"{timeout}\""),
        );
        std::fs::write(&fx.config_path, edited).expect("writing config");
        if i % 2 == 0 {
            signal(fx.gw.pid(), "HUP");
            wait_metric(
                &fx.gw,
                "cc_gateway_config_reloads_total",
                &[("result", "ok")],
                f64::from(i + 1),
            )
            .await;
        } else {
            let r = fx.gw.admin_post("/reload").await;
            assert_eq!(r.status, 200, "reload {i}: {}", r.text());
        }
        load.progress(30).await;
    }
    let tally = load.finish().await;
    assert!(
        tally.failures.is_empty(),
        "{} failures over 20 reloads: {:#?}",
        tally.failures.len(),
        tally.failures
    );
    assert_eq!(tally.unsent, 0, "a reload closes no connection: {tally:?}");
    assert!(tally.answered > 600, "{tally:?}");
}
