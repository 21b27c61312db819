//! `canary.override_header`: a request may pick an upstream of the split by name — only where
//! the route configures the header, only for names in its split — and the header never goes
//! upstream.

use super::{decisions, Split};
use crate::common::servers::echoed_header;
use crate::common::*;

#[tokio::test]
async fn override_header_is_honoured_only_when_configured_and_only_for_names_in_the_split() {
    let s = Split::start(10, 90).await;
    let sub = "override-subject";
    let t = s.token(sub);
    let placed = s.fx.send(Req::get("/canary/x").token(&t)).await;
    let home = placed.json()["server"].as_str().unwrap_or("").to_string();
    let other = if home == "ai-v1" { "ai-v2" } else { "ai-v1" };
    let before = s.fx.metrics().await;

    // configured, naming the other upstream of the split: honoured, and not forwarded
    for name in [other, &other.to_ascii_uppercase()[..]] {
        let r =
            s.fx.send(
                Req::get("/canary/x")
                    .token(&t)
                    .header("X-Canary-Upstream", name),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.describe());
        let want = if name == other { other } else { home.as_str() };
        assert_eq!(
            r.json()["server"],
            want,
            "{sub} with X-Canary-Upstream: {name}"
        );
        assert!(
            echoed_header(&r.json(), "x-canary-upstream").is_empty(),
            "the override header went upstream"
        );
    }
    // naming an upstream outside the split (it exists: the fixture's "echo"): ignored, placed
    // by the hash, and not forwarded either
    let r =
        s.fx.send(
            Req::get("/canary/x")
                .token(&t)
                .header("X-Canary-Upstream", "echo"),
        )
        .await;
    assert_eq!(r.json()["server"], home.as_str(), "{}", r.describe());
    assert!(echoed_header(&r.json(), "x-canary-upstream").is_empty());

    // not configured (/plain/): an ordinary header, no effect on the placement
    let r =
        s.fx.send(
            Req::get("/plain/x")
                .token(&t)
                .header("X-Canary-Upstream", other),
        )
        .await;
    assert_eq!(r.json()["server"], home.as_str(), "{}", r.describe());
    assert_eq!(
        echoed_header(&r.json(), "x-canary-upstream"),
        vec![other.to_string()]
    );

    let after = s.fx.metrics().await;
    let delta = |route: &str, up: &str, cause: &str| {
        decisions(&after, route, up, cause) - decisions(&before, route, up, cause)
    };
    assert_eq!(delta("canary", other, "override"), 1.0);
    assert_eq!(
        delta("canary", &home, "hash"),
        2.0,
        "case differs, and outside the split"
    );
    assert_eq!(delta("plain", &home, "hash"), 1.0);
    assert_eq!(delta("plain", other, "override"), 0.0);
}
