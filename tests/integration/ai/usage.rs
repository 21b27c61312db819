//! Usage read off AI responses as they stream: bytes pass unchanged, the access log carries
//! the exact tokens and cost, streamed and whole responses agree, unknown shapes are missing,
//! an aborted stream keeps the usage seen so far, other routes' lines are unchanged.

use serde_json::Value;

use super::*;
use crate::common::metrics::has_series;

const USAGE_KEYS: [&str; 5] = [
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
];

fn tokens(v: &Value) -> Vec<Value> {
    USAGE_KEYS.iter().map(|k| v[*k].clone()).collect()
}

#[tokio::test]
async fn streamed_and_whole_responses_log_the_same_tokens_and_cost() {
    let up = Stepped::start().await;
    let fx = ai_fixture(up.addr).await;
    // (fixture, model, tokens in USAGE_KEYS order, cost: None when no [[prices]] matches)
    let cases = [
        (
            "openai",
            "gpt-4o-2024-08-06",
            [1200, 300, 1000, 0, 64],
            // 200 uncached * 2.5 + 1000 cached * 1.25 + 300 * 10, per million
            Some(0.00475),
        ),
        (
            "anthropic",
            "claude-sonnet-4-5",
            [1320, 42, 1000, 300, 0],
            // 20 * 3 + 1000 * 0.3 + 300 * 3.75 + 42 * 15, per million
            Some(0.002115),
        ),
        ("responses", "o3-2025-04-16", [500, 80, 100, 0, 40], None),
    ];
    for (name, model, want, cost) in cases {
        let sse = fixture(&format!("{name}.sse"));
        let json = fixture(&format!("{name}.json"));
        let s = through(&fx, &up, "text/event-stream", &sse, &format!("{name}-sse")).await;
        let j = through(&fx, &up, "application/json", &json, &format!("{name}-json")).await;
        for (v, stream) in [(&s, true), (&j, false)] {
            let what = format!("{name} stream={stream}: {v}");
            assert_eq!(v["route"], "llm", "{what}");
            assert_eq!(v["model"], model, "{what}");
            assert_eq!(v["usage_source"], "reported", "{what}");
            assert_eq!(v["stream"], stream, "{what}");
            assert_eq!(tokens(v), want.map(Value::from).to_vec(), "{what}");
            match cost {
                Some(c) => {
                    let got = v["cost_usd"].as_f64().unwrap_or(-1.0);
                    assert!((got - c).abs() < 1e-12, "{what}: cost {got}, want {c}");
                }
                None => assert!(v.get("cost_usd").is_none(), "{what}"),
            }
            assert!(v.get("incomplete").is_none(), "{what}");
        }
        assert_eq!(tokens(&s), tokens(&j), "{name}");
        assert_eq!(s["cost_usd"], j["cost_usd"], "{name}");
    }
    // every access-log line above was written after its metrics were counted
    let m = fx.metrics().await;
    let tok = |model: &str, kind: &str| {
        metric(
            &m,
            "cc_gateway_ai_tokens_total",
            &[("route", "llm"), ("model", model), ("kind", kind)],
        )
    };
    assert_eq!(tok("gpt-4o-2024-08-06", "input"), 2400.0);
    assert_eq!(tok("gpt-4o-2024-08-06", "reasoning"), 128.0);
    assert_eq!(tok("claude-sonnet-4-5", "cache_write"), 600.0);
    assert_eq!(tok("o3-2025-04-16", "output"), 160.0);
    let cost = metric(
        &m,
        "cc_gateway_ai_cost_usd_total",
        &[("route", "llm"), ("model", "claude-sonnet-4-5")],
    );
    assert!((cost - 2.0 * 0.002115).abs() < 1e-12, "{cost}");
    assert!(!has_series(
        &m,
        "cc_gateway_ai_cost_usd_total",
        &[("model", "o3-2025-04-16")]
    ));
    assert_eq!(
        metric(&m, "cc_gateway_ai_usage_missing_total", &[("route", "llm")]),
        0.0
    );
}

#[tokio::test]
async fn an_unknown_shape_is_missing_never_zero() {
    let up = Stepped::start().await;
    let fx = ai_fixture(up.addr).await;
    let body = fixture("unknown.sse");
    let v = through(&fx, &up, "text/event-stream", &body, "unknown-sse").await;
    assert_eq!(v["usage_source"], "missing", "{v}");
    assert_eq!(v["stream"], true, "{v}");
    for k in USAGE_KEYS.iter().chain(&["cost_usd", "model"]) {
        assert!(v.get(*k).is_none(), "{k} logged for a missing usage: {v}");
    }
    let junk = b"{\"usage\": {\"prompt_tokens\": \"many\"}, \"model\": \"gpt-4o\"}";
    let v = through(&fx, &up, "application/json", junk, "malformed-json").await;
    assert_eq!(v["usage_source"], "missing", "{v}");
    assert_eq!(v["model"], "gpt-4o", "{v}");
    assert!(v.get("input_tokens").is_none(), "{v}");
    let m = fx.metrics().await;
    assert_eq!(
        metric(&m, "cc_gateway_ai_usage_missing_total", &[("route", "llm")]),
        2.0
    );
    assert!(!has_series(
        &m,
        "cc_gateway_ai_tokens_total",
        &[("route", "llm")]
    ));
}

/// Plays the Anthropic fixture up to its first `message_delta`, then either the client goes
/// away (`client_leaves`) or the upstream breaks the stream; returns the access-log line.
async fn cut_short(client_leaves: bool, id: &str) -> Value {
    let up = Stepped::start().await;
    let fx = ai_fixture(up.addr).await;
    let all = fixture("anthropic.sse");
    let until = all
        .windows(b"event: message_delta".len())
        .position(|w| w == b"event: message_delta")
        .expect("fixture has a message_delta");
    let script = up.respond("text/event-stream");
    let mut c = Client::post(fx.gw.addr, "/llm/v1/messages", id).await;
    let head = &all[..until];
    let mut sent = 0;
    for p in cut(head, &awkward(head, 29)) {
        sent += p.len();
        script
            .send(Step::Piece(p.to_vec()))
            .expect("upstream alive");
        c.until(sent).await;
    }
    assert_eq!(c.body, head);
    if client_leaves {
        // the upstream never finishes: only the client's leaving ends the exchange
        drop(c);
        let v = log_line(&fx, id).await;
        drop(script);
        v
    } else {
        script.send(Step::Close).expect("upstream alive");
        let v = log_line(&fx, id).await;
        drop(c);
        v
    }
}

#[tokio::test]
async fn a_stream_cut_short_records_the_usage_seen_so_far() {
    for (client_leaves, id) in [(true, "client-left"), (false, "upstream-broke")] {
        let v = cut_short(client_leaves, id).await;
        assert_eq!(v["incomplete"], true, "{v}");
        assert_eq!(v["usage_source"], "reported", "{v}");
        assert_eq!(v["model"], "claude-sonnet-4-5", "{v}");
        assert_eq!(v["input_tokens"], 1320, "{v}");
        // message_start's output count: the deltas never came
        assert_eq!(v["output_tokens"], 1, "{v}");
    }
}

#[tokio::test]
async fn other_routes_and_gets_log_no_usage_fields() {
    let up = Stepped::start().await;
    let fx = ai_fixture(up.addr).await;
    // a GET on the AI route (a model list): not read, not counted as missing
    let script = up.respond("application/json");
    let mut c = Client::request(fx.gw.addr, "GET", "/llm/v1/models", "models-1").await;
    let body = fixture("openai.json");
    play(&script, &mut c, &[&body]).await;
    assert_eq!(c.body, body);
    let v = log_line(&fx, "models-1").await;
    assert_eq!(v["route"], "llm", "{v}");
    assert!(v.get("usage_source").is_none(), "{v}");
    let m = fx.metrics().await;
    assert!(!has_series(
        &m,
        "cc_gateway_ai_usage_missing_total",
        &[("route", "llm")]
    ));
    assert!(!has_series(
        &m,
        "cc_gateway_ai_tokens_total",
        &[("route", "llm")]
    ));

    let r = fx
        .send(Req::get("/public/x").header("x-request-id", "plain-1"))
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = log_line(&fx, "plain-1").await;
    for k in USAGE_KEYS
        .iter()
        .chain(&["cost_usd", "model", "usage_source", "stream"])
    {
        assert!(v.get(*k).is_none(), "{k} on an ordinary route: {v}");
    }
}
