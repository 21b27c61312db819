//! `check` on a split: the summary shows the shares and the key; a bad share is named down to
//! its key path, and a reload with it changes nothing.

use super::Split;
use crate::common::*;

#[tokio::test]
async fn check_shows_the_split_and_names_a_bad_share() {
    let s = Split::start(5, 95).await;
    let o = run_check(&s.fx.config_path, &[]);
    let out = describe_output(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("[ai-v2 5%, ai-v1 95%] by claim:sub"),
        "no split in the summary: {out}"
    );
    let good = std::fs::read_to_string(&s.fx.config_path).expect("config");
    // routes: ai, public, canary, … — the canary route is routes[2]
    for (from, to, key) in [
        (
            "{ name = \"ai-v1\", weight = 95 }",
            "{ name = \"ai-v1\", weight = 0 }",
            "routes[2].upstream[1].weight",
        ),
        (
            "{ name = \"ai-v1\", weight = 95 }",
            "{ name = \"ai-v3\", weight = 95 }",
            "routes[2].upstream[1].name",
        ),
        (
            "{ name = \"ai-v1\", weight = 95 }",
            "{ name = \"ai-v2\", weight = 95 }",
            "routes[2].upstream[1].name",
        ),
        (
            "override_header = \"X-Canary-Upstream\"",
            "override_header = \"X Canary\"",
            "routes[2].canary.override_header",
        ),
    ] {
        std::fs::write(&s.fx.config_path, good.replacen(from, to, 1)).expect("write");
        let o = run_check(&s.fx.config_path, &[]);
        let out = describe_output(&o);
        assert!(!o.status.success(), "{to}: {out}");
        assert!(out.contains(&format!("gw.toml: {key}: ")), "{to}: {out}");
        let r = s.fx.gw.admin_post("/reload").await;
        assert_eq!(r.status, 422, "{to}: {}", r.describe());
    }
    // the running split is the one before: still both upstreams, by the same key
    std::fs::write(&s.fx.config_path, &good).expect("write");
    let t = s.token("check-subject");
    let first = s.fx.send(Req::get("/canary/x").token(&t)).await;
    assert_eq!(first.status, 200, "{}", first.describe());
}
