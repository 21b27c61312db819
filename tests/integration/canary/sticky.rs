//! One subject, one upstream: across requests, connections and reloads; a raised weight moves
//! subjects only toward the upstream whose weight rose.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{decisions, Split};
use crate::common::wait::DEADLINE;
use crate::common::*;

const SUBJECTS: usize = 2_000;

/// Share of `placements` on `upstream`, in percent.
fn share(placements: &BTreeMap<String, String>, upstream: &str) -> f64 {
    let n = placements.values().filter(|u| *u == upstream).count();
    100.0 * n as f64 / placements.len() as f64
}

#[tokio::test]
async fn each_subject_stays_on_one_upstream_and_a_raised_weight_moves_subjects_one_way() {
    let s = Split::start(20, 80).await;
    let tokens: Vec<(String, String)> = (0..SUBJECTS)
        .map(|i| {
            let sub = format!("canary-subject-{i:04}");
            let t = s.token(&sub);
            (sub, t)
        })
        .collect();

    let first = s.placements("/canary/v2/x", &tokens, 8).await;
    assert_eq!(first.len(), SUBJECTS);
    // 2,000 subjects: the split is close to the weights (±2 points over 10,000 is a unit test)
    let v2 = share(&first, "ai-v2");
    assert!(
        (v2 - 20.0).abs() <= 3.0,
        "ai-v2 got {v2:.1}% of subjects, weight 20%"
    );
    assert!(first.values().all(|u| u == "ai-v1" || u == "ai-v2"));

    // the same subjects again, spread over other connections (other workers): no one moves
    let again = s.placements("/canary/v2/x", &tokens, 5).await;
    assert_eq!(again, first, "a subject changed upstream between requests");
    // the default key of a split without a `canary` table is claim:sub as well
    let plain = s.placements("/plain/x", &tokens, 8).await;
    assert_eq!(
        plain, first,
        "/plain/ (default key) placed subjects differently"
    );

    // metrics by upstream show the split: every request above, as placed
    let m = s.fx.metrics().await;
    let on_v2 = first.values().filter(|u| *u == "ai-v2").count() as f64;
    assert_eq!(decisions(&m, "canary", "ai-v2", "hash"), 2.0 * on_v2);
    assert_eq!(
        decisions(&m, "canary", "ai-v1", "hash"),
        2.0 * (SUBJECTS as f64 - on_v2)
    );
    assert_eq!(s.v2.count() + s.v1.count(), 3 * SUBJECTS);
    let sent_to = |up: &str| {
        metric(
            &m,
            "cc_gateway_upstream_duration_seconds_count",
            &[("upstream", up)],
        )
    };
    assert_eq!(
        sent_to("ai-v2"),
        3.0 * on_v2,
        "upstream metrics by upstream"
    );

    // another gateway process on the same config places every subject the same way
    let other = Gateway::start(&s.fx.config_path).await;
    let elsewhere = s
        .placements_on(other.addr, "/canary/v2/x", &tokens, 8)
        .await;
    assert_eq!(
        elsewhere, first,
        "another process placed subjects differently"
    );
    drop(other);

    // a reload that keeps the weights (the file rewritten, the split rebuilt) moves no one
    s.reload(20, 80).await;
    let reloaded = s.placements("/canary/v2/x", &tokens, 8).await;
    assert_eq!(
        reloaded, first,
        "a reload with the same weights moved subjects"
    );

    // raising ai-v2's weight moves subjects from ai-v1 to ai-v2 only
    s.reload(50, 50).await;
    let raised = s.placements("/canary/v2/x", &tokens, 8).await;
    let mut moved = 0;
    for (sub, before) in &first {
        let after = &raised[sub];
        if after != before {
            assert_eq!(
                (before.as_str(), after.as_str()),
                ("ai-v1", "ai-v2"),
                "{sub} moved the wrong way"
            );
            moved += 1;
        }
    }
    let v2 = share(&raised, "ai-v2");
    assert!((v2 - 50.0).abs() <= 3.0, "ai-v2 got {v2:.1}%, weight 50%");
    assert!(
        moved >= SUBJECTS / 5,
        "only {moved} subjects moved to ai-v2"
    );
}

#[tokio::test]
async fn the_access_log_names_the_chosen_upstream_and_a_missing_key_goes_to_the_heaviest() {
    let s = Split::start(30, 70).await;
    let sub = "canary-log-subject";
    let t = s.token(sub);
    let r =
        s.fx.send(
            Req::get("/canary/x")
                .token(&t)
                .header("X-Request-Id", "canary-log-1"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let served = r.json()["server"].as_str().unwrap_or("").to_string();

    // /by-header/ places by X-Instance: without it there is no key, so the heaviest (ai-v1)
    let before = s.fx.metrics().await;
    for _ in 0..3 {
        let r =
            s.fx.send(
                Req::get("/by-header/x")
                    .token(&t)
                    .header("X-Request-Id", "canary-log-2"),
            )
            .await;
        assert_eq!(r.json()["server"], "ai-v1", "{}", r.describe());
    }
    let after = s.fx.metrics().await;
    assert_eq!(
        decisions(&after, "by-header", "ai-v1", "no_key")
            - decisions(&before, "by-header", "ai-v1", "no_key"),
        3.0
    );
    // with it, instances spread over both
    let mut seen = BTreeMap::new();
    for i in 0..40 {
        let r =
            s.fx.send(
                Req::get("/by-header/x")
                    .token(&t)
                    .header("X-Instance", &format!("i-{i}")),
            )
            .await;
        *seen
            .entry(r.json()["server"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "40 instances all on one upstream: {seen:?}");

    let lines = wait_until("the access log lines", DEADLINE, || async {
        let text = std::fs::read_to_string(&s.fx.access_log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let wanted = |id: &str| lines.iter().filter(|l| l["request_id"] == id).count();
        if wanted("canary-log-1") == 1 && wanted("canary-log-2") == 3 {
            Ok(lines)
        } else {
            Err(format!("{} lines so far", lines.len()))
        }
    })
    .await;
    for l in &lines {
        match l["request_id"].as_str() {
            Some("canary-log-1") => assert_eq!(l["upstream"], served.as_str(), "{l}"),
            Some("canary-log-2") => assert_eq!(l["upstream"], "ai-v1", "{l}"),
            _ => {}
        }
    }
}
