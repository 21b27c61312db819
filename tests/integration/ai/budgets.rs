//! Token budgets (`unit = "tokens"`) on every store: a response's input + output tokens are
//! charged after it; the request that crosses the limit completes, the next is refused with
//! 429 `budget_exceeded`; a response without usage charges nothing and is counted.

use super::*;
use crate::common::budgets::{
    assert_over_budget, clear_of_window_end, per_store, usage, with_store, Store,
};

const DAY: u64 = 86_400;

/// 2000 tokens a day per route: `openai.json` reports 1200 + 300 = 1500.
const TOKENS: &str = "\n[budgets]\n\n[[budgets.rules]]\nname = \"tokens\"\nkey = [\"route\"]\nquota = \"2000/1d\"\nunit = \"tokens\"\n";

/// Waits until the admin API shows `remaining` tokens (a Redis charge lands just after the
/// response it charges).
async fn wait_remaining(fx: &Fixture, remaining: i64) {
    wait_until(
        &format!("{remaining} tokens remaining"),
        DEADLINE,
        || async {
            let v = usage(&fx.gw, "tokens", "llm").await;
            match v["remaining"].as_i64() {
                Some(r) if r == remaining => Ok(()),
                other => Err(format!("{other:?}: {v}")),
            }
        },
    )
    .await
}

async fn token_budget(store: &Store) {
    clear_of_window_end(DAY).await;
    let up = Stepped::start().await;
    let fx = ai_fixture_with(up.addr, with_store(store, TOKENS)).await;
    let json = fixture("openai.json");
    // listed from the start, for dashboards and alerts
    let m = fx.metrics().await;
    assert!(
        crate::common::metrics::has_series(
            &m,
            "cc_gateway_budget_unmetered_total",
            &[("rule", "tokens")]
        ),
        "no unmetered series before any response"
    );

    // no usage: nothing charged, counted
    let v = through(
        &fx,
        &up,
        "text/event-stream",
        &fixture("unknown.sse"),
        "t-0",
    )
    .await;
    assert_eq!(v["usage_source"], "missing", "{v}");
    wait_metric(
        &fx.gw,
        "cc_gateway_budget_unmetered_total",
        &[("rule", "tokens")],
        1.0,
    )
    .await;
    wait_remaining(&fx, 2000).await;

    through(&fx, &up, "application/json", &json, "t-1").await;
    wait_remaining(&fx, 500).await;
    // under the limit: admitted, and it crosses the limit — served in full all the same
    let v = through(&fx, &up, "application/json", &json, "t-2").await;
    assert_eq!(v["status"], 200, "{v}");
    assert!(v.get("incomplete").is_none(), "{v}");
    wait_remaining(&fx, 0).await;

    let r = fx.send(Req::post("/llm/v1/chat/completions", "")).await;
    assert_over_budget(&r, "tokens");
    let m = fx.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cc_gateway_budget_decisions_total",
            &[("rule", "tokens"), ("result", "rejected")]
        ),
        1.0
    );
}

per_store!(token_budget: memory, sqlite, redis);
