//! Budget keys on every store: key parts escaped and long values hashed, a missing claim or
//! header as `_missing_`, and invented keys bounded by `max_keys` (memory and SQLite).

use crate::common::budgets::*;
use crate::common::*;

per_store!(key_parts_are_escaped_and_long_values_hashed: memory, sqlite, redis);
async fn key_parts_are_escaped_and_long_values_hashed(store: &Store) {
    let fx = budget_fx(
        store,
        r#"
[budgets]

[[budgets.rules]]
name = "pair"
key = ["claim:sub", "header:X-Gitlab-Global-User-Id"]
quota = "1/1h"
"#,
        "",
    )
    .await;
    let long1 = format!("{}1", "x".repeat(200));
    let long2 = format!("{}2", "x".repeat(200));
    let y128 = "y".repeat(128);
    let y129 = "y".repeat(129);
    let long_sub = "s".repeat(300);
    let cases: Vec<(&str, &str, String)> = vec![
        // Without escaping the first two would both be "a|b|u1".
        ("a|b", "u1", "a%7Cb|u1".to_string()),
        ("a", "b|u1", "a|b%7Cu1".to_string()),
        ("a%7Cb", "u1", "a%257Cb|u1".to_string()),
        // Differ only after 200 bytes: hashed, and to different keys.
        ("a", &long1, format!("a|sha256:{}", sha256_hex(&long1))),
        ("a", &long2, format!("a|sha256:{}", sha256_hex(&long2))),
        // 128 bytes is kept as it is, 129 is hashed.
        ("a", &y128, format!("a|{y128}")),
        ("a", &y129, format!("a|sha256:{}", sha256_hex(&y129))),
        // A long claim is hashed too.
        (
            &long_sub,
            "u1",
            format!("sha256:{}|u1", sha256_hex(&long_sub)),
        ),
    ];
    clear_of_window_end(HOUR).await;
    for (sub, header, key) in &cases {
        let token = token_for(&fx, sub);
        let req = || Fixture::ai_req(&token).header("X-Gitlab-Global-User-Id", header);
        let rs = burst(&fx, req, 2).await;
        assert_split(
            &rs,
            1,
            "pair",
            &format!("sub {sub:?} header {header:?} (key {key:?})"),
        );
        let u = usage(&fx.gw, "pair", key).await;
        assert_eq!(
            (limit_of(&u), u["used"].as_i64(), u["remaining"].as_i64()),
            (Some(1), Some(1), Some(0)),
            "admin usage of key {key:?}: {u}"
        );
    }
    assert_eq!(fx.echo.count(), cases.len());
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "pair"), ("result", "admitted")],
        cases.len() as f64,
    )
    .await;
}

per_store!(a_missing_claim_or_header_keys_as_missing: memory, sqlite, redis);
async fn a_missing_claim_or_header_keys_as_missing(store: &Store) {
    let fx = budget_fx(
        store,
        r#"
[budgets]

[[budgets.rules]]
name = "by-header"
key = ["claim:sub", "header:X-Gitlab-Global-User-Id"]
quota = "2/1h"

[[budgets.rules]]
name = "by-claim"
key = ["claim:namespace_id"]
quota = "3/1h"
"#,
        "",
    )
    .await;
    clear_of_window_end(HOUR).await;
    let token = token_for(&fx, "m");
    let rs = burst(&fx, || Fixture::ai_req(&token), 3).await;
    assert_split(&rs, 2, "by-header", "no X-Gitlab-Global-User-Id header");
    assert_eq!(used(&fx.gw, "by-header", "m|_missing_").await, 2);
    assert_eq!(used(&fx.gw, "by-claim", "_missing_").await, 2);
    // Another user without the claim shares the `_missing_` key of by-claim.
    let other = token_for(&fx, "n");
    let r = fx
        .send(Fixture::ai_req(&other).header("X-Gitlab-Global-User-Id", "7"))
        .await;
    assert_admitted(&r, "user n");
    let r = fx
        .send(Fixture::ai_req(&other).header("X-Gitlab-Global-User-Id", "7"))
        .await;
    assert_over_budget(&r, "by-claim");
    assert_eq!(used(&fx.gw, "by-header", "n|7").await, 1);
    assert_eq!(used(&fx.gw, "by-claim", "_missing_").await, 3);
}

per_store!(invented_keys_are_bounded_by_max_keys: memory, sqlite);
/// An authenticated client inventing keys (a fresh user id per request) cannot grow the memory
/// or SQLite store past `max_keys`: live keys are evicted (their budget starts afresh) and counted, and
/// the gateway keeps deciding.
async fn invented_keys_are_bounded_by_max_keys(store: &Store) {
    let fx = budget_fx(
        store,
        "\n[budgets]\nmax_keys = 1024\n\n[[budgets.rules]]\nname = \"per-user\"\nkey = [\"header:X-User\"]\nquota = \"5/1d\"\n",
        "",
    )
    .await;
    let t = fx.token();
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    for i in 0..1500 {
        let r = conn
            .send(Fixture::ai_req(&t).header("X-User", &format!("invented-{i}")))
            .await;
        assert_eq!(r.status, 200, "{}", r.describe());
    }
    let evicted = metric(
        &fx.metrics().await,
        "cc_gateway_budget_keys_evicted_total",
        &[("store", store.label)],
    );
    assert!(evicted >= 1500.0 - 1024.0, "evicted {evicted}");
    // a key that is used keeps being enforced
    let rs = burst(&fx, || Fixture::ai_req(&t).header("X-User", "steady"), 6).await;
    assert_split(&rs, 5, "per-user", "steady user after the flood");
}
