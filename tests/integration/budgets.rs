//! Request budgets (`[budgets]`, store = "memory"): quotas (fixed UTC windows) and rates (GCRA),
//! the 429 answer and its headers, keys, tiers, overrides, route costs, the admin API and its
//! bearer token, metrics, and what `check` refuses.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use serde_json::{json, Value};

use crate::common::fixture::{q, standard_config};
use crate::common::metrics::has_series;
use crate::common::wait::DEADLINE;
use crate::common::*;

const DECISIONS: &str = "cc_gateway_budget_decisions_total";
const HOUR: u64 = 3600;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A fixture whose config has `budgets` (the `[budgets]` table and its rules) and `extra`.
async fn budget_fx(budgets: &str, extra: &str) -> Fixture {
    Fixture::with(Opts {
        budgets: budgets.to_string(),
        extra: extra.to_string(),
        ..Opts::default()
    })
    .await
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Quota windows are aligned to UTC: a test that counts requests inside one window must not
/// straddle a window end. When less than a minute of the current `period`-second window is left,
/// this waits (bounded, polling the clock) until the next window has begun.
async fn clear_of_window_end(period: u64) {
    let left = |t: f64| period as f64 - t.rem_euclid(period as f64);
    if left(unix_now()) >= 60.0 {
        return;
    }
    let window = (unix_now() / period as f64).floor();
    wait_until(
        "the next UTC quota window to begin",
        Duration::from_secs(70),
        || async move {
            let now = unix_now();
            if (now / period as f64).floor() > window {
                Ok(())
            } else {
                Err(format!("{:.1}s left in the window", left(now)))
            }
        },
    )
    .await;
}

/// Seconds from `t` to the end of its `period`-second UTC window.
fn to_window_end(t: f64, period: u64) -> f64 {
    let p = period as f64;
    ((t / p).floor() + 1.0) * p - t
}

/// The integer range a "seconds until the window ends" value may take for an answer produced
/// between `before` and `after` (allowing floor or ceil rounding).
fn window_end_range(before: f64, after: f64, period: u64) -> std::ops::RangeInclusive<i64> {
    let lo = to_window_end(after, period).floor() as i64;
    let hi = to_window_end(before, period).ceil() as i64;
    lo.max(0)..=hi
}

/// One item of a structured-field list header: `"name";k=v;k=v`.
type SfItem = (String, BTreeMap<String, i64>);

/// Parses `"a";q=1;w=2, "b";q=3;w=4`. Panics (with the header) on anything else.
fn parse_sf_list(header: &str) -> Vec<SfItem> {
    header
        .split(',')
        .map(|item| {
            let item = item.trim();
            let bad =
                |why: &str| -> ! { panic!("malformed item {item:?} ({why}) in header {header:?}") };
            let rest = item
                .strip_prefix('"')
                .unwrap_or_else(|| bad("name is not a quoted string"));
            let end = rest.find('"').unwrap_or_else(|| bad("unterminated name"));
            let name = rest[..end].to_string();
            let mut params = BTreeMap::new();
            let params_text = &rest[end + 1..];
            if !params_text.is_empty() {
                let params_text = params_text
                    .strip_prefix(';')
                    .unwrap_or_else(|| bad("parameters do not start with ';'"));
                for p in params_text.split(';') {
                    let (k, v) = p
                        .split_once('=')
                        .unwrap_or_else(|| bad("parameter without '='"));
                    let v: i64 = v
                        .trim()
                        .parse()
                        .unwrap_or_else(|_| bad("parameter value is not an integer"));
                    params.insert(k.trim().to_string(), v);
                }
            }
            (name, params)
        })
        .collect()
}

/// The parameters of `rule` in header `name` (`RateLimit-Policy` or `RateLimit`), if listed.
fn sf_rule(r: &Resp, name: &str, rule: &str) -> Option<BTreeMap<String, i64>> {
    let h = r.header(name)?;
    let items = parse_sf_list(&h);
    let mut found: Vec<_> = items.into_iter().filter(|(n, _)| n == rule).collect();
    assert!(
        found.len() <= 1,
        "rule {rule:?} listed more than once in {name}: {h:?}"
    );
    found.pop().map(|(_, p)| p)
}

/// Names of the rules listed in header `name`, sorted (empty when the header is absent).
fn sf_names(r: &Resp, name: &str) -> Vec<String> {
    let mut names: Vec<String> = r
        .header(name)
        .map(|h| parse_sf_list(&h).into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// `RateLimit-Policy` parameters of `rule` (asserts present, with integer `q` and `w`).
fn policy(r: &Resp, rule: &str) -> (i64, i64) {
    let p = sf_rule(r, "ratelimit-policy", rule)
        .unwrap_or_else(|| panic!("RateLimit-Policy does not list {rule:?}: {}", r.describe()));
    let q = *p
        .get("q")
        .unwrap_or_else(|| panic!("RateLimit-Policy for {rule:?} lacks q: {}", r.describe()));
    let w = *p
        .get("w")
        .unwrap_or_else(|| panic!("RateLimit-Policy for {rule:?} lacks w: {}", r.describe()));
    (q, w)
}

/// `RateLimit` parameters of `rule` (asserts present, with integer `r` and `t`).
fn ratelimit(r: &Resp, rule: &str) -> (i64, i64) {
    let p = sf_rule(r, "ratelimit", rule)
        .unwrap_or_else(|| panic!("RateLimit does not list {rule:?}: {}", r.describe()));
    let rem = *p
        .get("r")
        .unwrap_or_else(|| panic!("RateLimit for {rule:?} lacks r: {}", r.describe()));
    let t = *p
        .get("t")
        .unwrap_or_else(|| panic!("RateLimit for {rule:?} lacks t: {}", r.describe()));
    assert!(
        rem >= 0 && t >= 0,
        "negative RateLimit values: {}",
        r.describe()
    );
    (rem, t)
}

fn assert_no_budget_headers(r: &Resp, what: &str) {
    for h in ["ratelimit", "ratelimit-policy"] {
        assert!(
            r.header(h).is_none(),
            "{what}: unexpected {h} header: {}",
            r.describe()
        );
    }
}

/// Asserts an admitted answer from the echo upstream.
fn assert_admitted(r: &Resp, what: &str) {
    assert_eq!(
        r.status,
        200,
        "{what}: expected admission, got {}",
        r.describe()
    );
    assert_eq!(
        r.json()["server"],
        "echo",
        "{what}: not the upstream's answer: {}",
        r.describe()
    );
}

/// Asserts a 429 `budget_exceeded` answer naming `rule` with `Retry-After` ≥ 1 and both
/// RateLimit headers listing the rule; returns `Retry-After`.
fn assert_over_budget(r: &Resp, rule: &str) -> i64 {
    assert_error(r, 429, rule);
    let body = r.json();
    assert_eq!(
        body["error"],
        "budget_exceeded",
        "429 `error` field: {}",
        r.describe()
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "429 without a `message`: {}",
        r.describe()
    );
    let ra = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {}", r.describe()));
    assert!(
        !ra.is_empty() && ra.bytes().all(|b| b.is_ascii_digit()),
        "Retry-After {ra:?} is not integer seconds: {}",
        r.describe()
    );
    let ra: i64 = ra.parse().expect("digits");
    assert!(ra >= 1, "Retry-After {ra} < 1: {}", r.describe());
    policy(r, rule);
    ratelimit(r, rule);
    ra
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for a key in an admin path).
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn sha256_hex(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A request to the admin listener, with `Authorization: Bearer token` when given.
async fn admin(gw: &Gateway, method: Method, path: &str, token: Option<&str>) -> Resp {
    let mut req = Req::new(method, path);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    req.send(gw.admin).await
}

/// `GET /budgets/<rule>/<key>`: asserts 200 and the documented fields; returns the JSON.
async fn usage(gw: &Gateway, rule: &str, key: &str) -> Value {
    let path = format!("/budgets/{rule}/{}", pct(key));
    let r = admin(gw, Method::GET, &path, None).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.describe());
    let v = r.json();
    assert_eq!(v["rule"], rule, "GET {path}: {v}");
    assert_eq!(v["key"], key, "GET {path}: {v}");
    for f in ["used", "remaining", "reset_seconds"] {
        assert!(v[f].is_number(), "GET {path}: `{f}` is not a number: {v}");
    }
    let limit = limit_of(&v);
    assert!(
        limit.is_some(),
        "GET {path}: `limit` is neither N nor \"N/period\": {v}"
    );
    v
}

/// The `limit` of an admin usage answer: a number, or the count of an "N/period" string.
fn limit_of(v: &Value) -> Option<i64> {
    match &v["limit"] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.split_once('/').and_then(|(n, _)| n.trim().parse().ok()),
        _ => None,
    }
}

async fn used(gw: &Gateway, rule: &str, key: &str) -> i64 {
    usage(gw, rule, key).await["used"]
        .as_i64()
        .unwrap_or_else(|| panic!("`used` of {rule}/{key} is not an integer"))
}

/// A valid token for route `ai` whose `sub` is `sub`.
fn token_for(fx: &Fixture, sub: &str) -> String {
    let sub = sub.to_string();
    fx.token_with(move |c| c["sub"] = json!(sub))
}

/// Sends `n` requests built by `req` on one kept-alive connection; returns the responses.
async fn burst(fx: &Fixture, req: impl Fn() -> Req, n: usize) -> Vec<Resp> {
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(conn.send(req()).await);
    }
    out
}

/// Asserts the first `admitted` responses are admitted and the rest are 429 naming `rule`.
fn assert_split(rs: &[Resp], admitted: usize, rule: &str, what: &str) {
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    let n_ok = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(
        n_ok,
        admitted,
        "{what}: {n_ok} of {} admitted, expected {admitted}; statuses {statuses:?}",
        rs.len()
    );
    for (i, r) in rs.iter().enumerate() {
        if i < admitted {
            assert_admitted(r, &format!("{what}: request {}", i + 1));
        } else {
            assert_over_budget(r, rule);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quotas and rates

#[tokio::test]
async fn quota_admits_exactly_the_limit_then_429s() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "hourly"
key = ["claim:sub"]
quota = "100/1h"
"#,
        "",
    )
    .await;
    let token = fx.token();
    clear_of_window_end(HOUR).await;
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    let mut statuses = Vec::new();
    let mut first_429 = None;
    for i in 1..=150i64 {
        let before = unix_now();
        let r = conn.send(Fixture::ai_req(&token)).await;
        let after = unix_now();
        statuses.push(r.status);
        let window = window_end_range(before, after, HOUR);
        if r.status == 200 {
            assert_admitted(&r, &format!("request {i}"));
            assert_eq!(policy(&r, "hourly"), (100, 3600), "{}", r.describe());
            let (rem, t) = ratelimit(&r, "hourly");
            assert_eq!(
                rem,
                100 - i,
                "RateLimit r after {i} admissions: {}",
                r.describe()
            );
            assert!(
                window.contains(&t),
                "RateLimit t={t} is not the time to the end of the UTC hour ({window:?}): {}",
                r.describe()
            );
        } else if first_429.is_none() {
            first_429 = Some((r, window));
        }
    }
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(
        admitted, 100,
        "admitted {admitted} of 150; statuses {statuses:?}"
    );
    assert!(
        statuses[..100].iter().all(|&s| s == 200) && statuses[100..].iter().all(|&s| s == 429),
        "not 100 x 200 then 50 x 429: {statuses:?}"
    );
    let (r, window) = first_429.expect("a 429");
    let ra = assert_over_budget(&r, "hourly");
    assert!(
        window.contains(&ra),
        "Retry-After {ra} is not the time to the end of the UTC hour ({window:?}): {}",
        r.describe()
    );
    assert_eq!(policy(&r, "hourly"), (100, 3600), "{}", r.describe());
    let (rem, t) = ratelimit(&r, "hourly");
    assert_eq!(rem, 0, "RateLimit r on the 429: {}", r.describe());
    assert!(
        window.contains(&t),
        "RateLimit t={t} on the 429 ({window:?})"
    );
    assert_eq!(fx.echo.count(), 100, "the upstream saw rejected requests");

    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "hourly"), ("result", "admitted")],
        100.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "hourly"), ("result", "rejected")],
        50.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        "cc_gateway_requests_total",
        &[("route", "ai"), ("status", "429")],
        50.0,
    )
    .await;
    let text = fx.metrics().await;
    assert!(
        has_series(
            &text,
            "cc_gateway_budget_store_duration_seconds_bucket",
            &[("store", "memory"), ("le", "+Inf")]
        ),
        "budget_store_duration_seconds{{store=\"memory\"}} is not a histogram:\n{text}"
    );
    let timed = metric(
        &text,
        "cc_gateway_budget_store_duration_seconds_count",
        &[("store", "memory")],
    );
    assert!(
        timed >= 150.0,
        "budget_store_duration_seconds_count{{store=\"memory\"}} = {timed} after 150 decisions"
    );
    assert_eq!(
        metric(
            &text,
            "cc_gateway_budget_store_errors_total",
            &[("store", "memory")]
        ),
        0.0,
        "store errors with the memory store:\n{text}"
    );
    let u = usage(&fx.gw, "hourly", SUB).await;
    assert_eq!(
        (limit_of(&u), u["used"].as_i64(), u["remaining"].as_i64()),
        (Some(100), Some(100), Some(0)),
        "{u}"
    );
}

#[tokio::test]
async fn gcra_admits_the_burst_then_one_per_emission_interval() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "per-second"
key = ["claim:sub"]
rate = "60/1m"
burst = 5
"#,
        "",
    )
    .await;
    let token = fx.token();
    let started = std::time::Instant::now();
    let rs = burst(&fx, || Fixture::ai_req(&token), 10).await;
    let elapsed = started.elapsed();
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429, 429, 429],
        "rate 60/1m burst 5: 10 requests in {elapsed:?} (one emission interval is 1 s)"
    );
    for r in &rs[..5] {
        assert_admitted(r, "burst");
        ratelimit(r, "per-second");
    }
    for r in &rs[5..] {
        let ra = assert_over_budget(r, "per-second");
        assert_eq!(
            ra,
            1,
            "Retry-After must be ceil(wait) = 1 (one emission interval of 1 s): {}",
            r.describe()
        );
        assert_eq!(ratelimit(r, "per-second").0, 0, "{}", r.describe());
    }
    // Steady state: one more request becomes admissible per emission interval. Rejected polls
    // consume nothing, so polling is safe.
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let addr = fx.gw.addr;
    let t = token.clone();
    wait_until(
        "the next emission interval to admit a request",
        DEADLINE,
        move || {
            let p = p.clone();
            let t = t.clone();
            async move {
                let r = Fixture::ai_req(&t).send(addr).await;
                match r.status {
                    200 => Ok(()),
                    429 => {
                        p.fetch_add(1, Ordering::SeqCst);
                        Err(r.describe())
                    }
                    _ => panic!("unexpected answer while polling: {}", r.describe()),
                }
            }
        },
    )
    .await;
    let r = fx.send(Fixture::ai_req(&token)).await;
    let ra = assert_over_budget(&r, "per-second");
    assert!(
        ra == 1,
        "Retry-After right after a steady-state admission: {}",
        r.describe()
    );
    let rejected = 5 + polls.load(Ordering::SeqCst) + 1;
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "per-second"), ("result", "admitted")],
        6.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "per-second"), ("result", "rejected")],
        rejected as f64,
    )
    .await;
    assert_eq!(fx.echo.count(), 6);
    // The policy is the rule's limit per window: 60 per 60 s (not the burst).
    for r in rs.iter().chain([&r]) {
        assert_eq!(
            policy(r, "per-second"),
            (60, 60),
            "RateLimit-Policy of rate = \"60/1m\": {}",
            r.describe()
        );
    }
}

#[tokio::test]
async fn a_rejected_request_consumes_nothing_from_any_rule() {
    // The loose rules come first: a naive implementation charges them before the tight one says no.
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "gcra"
key = ["claim:sub"]
rate = "10/1h"
burst = 3

[[budgets.rules]]
name = "loose"
key = ["claim:sub"]
quota = "100/1h"

[[budgets.rules]]
name = "tight"
key = ["claim:sub"]
quota = "2/1h"
"#,
        "",
    )
    .await;
    let token = fx.token();
    clear_of_window_end(HOUR).await;
    let rs = burst(&fx, || Fixture::ai_req(&token), 7).await;
    assert_split(&rs, 2, "tight", "tight quota 2/1h");
    assert_eq!(
        sf_names(&rs[0], "ratelimit-policy"),
        ["gcra", "loose", "tight"],
        "RateLimit-Policy should list every applicable rule, comma-joined: {}",
        rs[0].describe()
    );
    assert_eq!(policy(&rs[0], "loose"), (100, 3600));
    assert_eq!(policy(&rs[0], "tight"), (2, 3600));
    assert_eq!(ratelimit(&rs[1], "loose").0, 98, "{}", rs[1].describe());
    assert_eq!(ratelimit(&rs[1], "tight").0, 0, "{}", rs[1].describe());
    assert_eq!(
        used(&fx.gw, "loose", SUB).await,
        2,
        "5 requests rejected by `tight` were charged to `loose`"
    );
    assert_eq!(used(&fx.gw, "tight", SUB).await, 2);

    // Reset `tight`: `gcra` (burst 3) must still have its third slot, i.e. the 5 rejected
    // requests took nothing from it either.
    let r = admin(
        &fx.gw,
        Method::DELETE,
        &format!("/budgets/tight/{}", pct(SUB)),
        None,
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "DELETE /budgets/tight/<sub>: {}",
        r.describe()
    );
    let r = fx.send(Fixture::ai_req(&token)).await;
    assert_admitted(&r, "third request of gcra's burst after resetting `tight`");
    let r = fx.send(Fixture::ai_req(&token)).await;
    let ra = assert_over_budget(&r, "gcra");
    assert!(
        (300..=360).contains(&ra),
        "rate 10/1h (emission interval 360 s) after a burst of 3: Retry-After {ra}: {}",
        r.describe()
    );
    assert_eq!(
        used(&fx.gw, "loose", SUB).await,
        3,
        "a request rejected by `gcra` was charged to `loose`"
    );
    assert_eq!(
        used(&fx.gw, "tight", SUB).await,
        1,
        "a request rejected by `gcra` was charged to `tight`"
    );

    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "tight"), ("result", "rejected")],
        5.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "gcra"), ("result", "rejected")],
        1.0,
    )
    .await;
    let text = fx.metrics().await;
    assert_eq!(
        metric(
            &text,
            DECISIONS,
            &[("rule", "loose"), ("result", "rejected")]
        ),
        0.0,
        "`loose` never rejected anything:\n{text}"
    );
    assert_eq!(fx.echo.count(), 3);
}

#[tokio::test]
async fn concurrent_clients_on_one_key_never_over_admit() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "shared"
key = ["claim:sub"]
quota = "50/1h"
"#,
        "",
    )
    .await;
    let token = fx.token();
    clear_of_window_end(HOUR).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (addr, token, barrier) = (fx.gw.addr, token.clone(), barrier.clone());
        set.spawn(async move {
            let mut conn = H1Conn::connect(addr).await;
            barrier.wait().await;
            conn.send(Fixture::ai_req(&token)).await
        });
    }
    let (mut ok, mut over) = (0, 0);
    while let Some(r) = set.join_next().await {
        let r = r.expect("client task");
        match r.status {
            200 => {
                assert_admitted(&r, "concurrent client");
                ok += 1;
            }
            _ => {
                assert_over_budget(&r, "shared");
                over += 1;
            }
        }
    }
    assert_eq!(
        (ok, over),
        (50, 14),
        "64 concurrent clients on a 50/1h quota"
    );
    assert_eq!(fx.echo.count(), 50);
    let u = usage(&fx.gw, "shared", SUB).await;
    assert_eq!(
        (u["used"].as_i64(), u["remaining"].as_i64()),
        (Some(50), Some(0)),
        "{u}"
    );
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "shared"), ("result", "admitted")],
        50.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "shared"), ("result", "rejected")],
        14.0,
    )
    .await;
}

#[tokio::test]
async fn requests_refused_by_auth_never_touch_budgets() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "user"
key = ["claim:sub"]
quota = "5/1h"
"#,
        "",
    )
    .await;
    clear_of_window_end(HOUR).await;
    let expired = fx.token_with(|c| {
        c["iat"] = json!(now() - 7200);
        c["nbf"] = json!(now() - 7200);
        c["exp"] = json!(now() - 3600);
    });
    let no_scope = fx.token_with(|c| c["scopes"] = json!(["something_else"]));
    let wrong_aud = fx.token_with(|c| c["aud"] = json!("another-service"));
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    for i in 0..20 {
        let (req, status) = match i % 5 {
            0 => (Fixture::ai_req("x.y.z"), 401),
            1 => (Fixture::ai_req(&expired), 401),
            2 => (Fixture::ai_req(&no_scope), 403),
            3 => (Fixture::ai_req(&wrong_aud), 401),
            _ => (Req::post("/ai/v2/completions", "{}"), 401),
        };
        let r = conn.send(req).await;
        assert_eq!(r.status, status, "bad request {i}: {}", r.describe());
        assert_ne!(r.reason(), "user", "{}", r.describe());
        assert_no_budget_headers(&r, "an auth failure");
    }
    assert_eq!(
        used(&fx.gw, "user", SUB).await,
        0,
        "auth failures were charged to the budget"
    );
    let token = fx.token();
    let rs = burst(&fx, || Fixture::ai_req(&token), 6).await;
    assert_split(&rs, 5, "user", "full quota after 20 auth failures");
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "user"), ("result", "admitted")],
        5.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "user"), ("result", "rejected")],
        1.0,
    )
    .await;
    assert_eq!(fx.echo.count(), 5);
}

#[tokio::test]
async fn rules_apply_only_to_their_routes() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "ai-only"
routes = ["ai"]
key = ["client_ip"]
quota = "2/1h"

[[budgets.rules]]
name = "everywhere"
key = ["route"]
quota = "1000/1h"
"#,
        "",
    )
    .await;
    clear_of_window_end(HOUR).await;
    let rs = burst(&fx, || Req::get("/public/x"), 5).await;
    for r in &rs {
        assert_admitted(r, "public route");
        assert_eq!(
            sf_names(r, "ratelimit-policy"),
            ["everywhere"],
            "only the all-routes rule applies to /public/: {}",
            r.describe()
        );
        assert_eq!(policy(r, "everywhere"), (1000, 3600));
    }
    let token = fx.token();
    let rs = burst(&fx, || Fixture::ai_req(&token), 3).await;
    assert_split(&rs, 2, "ai-only", "ai route under ai-only 2/1h");
    assert_eq!(
        sf_names(&rs[0], "ratelimit-policy"),
        ["ai-only", "everywhere"]
    );
    let r = fx.send(Req::get("/public/y")).await;
    assert_admitted(&r, "public route after ai-only is exhausted");

    assert_eq!(used(&fx.gw, "ai-only", "127.0.0.1").await, 2);
    assert_eq!(used(&fx.gw, "everywhere", "public").await, 6);
    assert_eq!(used(&fx.gw, "everywhere", "ai").await, 2);
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "ai-only"), ("result", "admitted")],
        2.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        DECISIONS,
        &[("rule", "ai-only"), ("result", "rejected")],
        1.0,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Keys

#[tokio::test]
async fn key_parts_are_escaped_and_long_values_hashed() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

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

#[tokio::test]
async fn a_missing_claim_or_header_keys_as_missing() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

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

// ---------------------------------------------------------------------------------------------
// Tiers, overrides, costs

#[tokio::test]
async fn tiers_pick_the_limit_from_a_signed_claim() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "seats"
key = ["claim:sub"]
quota = "3/1h"
tiers = { claim = "duo_seat_count", ranges = [[0, 100, "2/1h"], [101, "inf", "5/1h"]] }
"#,
        "",
    )
    .await;
    clear_of_window_end(HOUR).await;
    let cases: Vec<(&str, Option<Value>, usize)> = vec![
        ("small", Some(json!(50)), 2),
        ("large", Some(json!(5000)), 5),
        ("edge100", Some(json!(100)), 2),
        ("edge101", Some(json!(101)), 5),
        ("no-claim", None, 3),
        ("not-numeric", Some(json!("lots")), 3),
    ];
    let mut admin_views = Vec::new();
    for (sub, seats, limit) in &cases {
        let token = fx.token_with(|c| {
            c["sub"] = json!(sub);
            if let Some(s) = seats {
                c["duo_seat_count"] = s.clone();
            }
        });
        // An unsigned seat-count header must not influence the tier.
        let req = || {
            Fixture::ai_req(&token)
                .header("X-Gitlab-Duo-Seat-Count", "999999")
                .header("X-Gitlab-Seat-Count", "999999")
        };
        let rs = burst(&fx, req, limit + 1).await;
        let what = format!("sub {sub} duo_seat_count {seats:?}");
        assert_split(&rs, *limit, "seats", &what);
        assert_eq!(
            policy(&rs[0], "seats"),
            (*limit as i64, 3600),
            "{what}: {}",
            rs[0].describe()
        );
        let u = usage(&fx.gw, "seats", sub).await;
        admin_views.push((what, *limit as i64, u));
    }
    // The admin view of a key shows the limit that key is held to (its tier), and a remaining
    // count consistent with it.
    let wrong: Vec<String> = admin_views
        .iter()
        .filter(|(_, limit, u)| limit_of(u) != Some(*limit) || u["remaining"].as_i64() != Some(0))
        .map(|(what, limit, u)| format!("{what}: expected limit {limit}, remaining 0; got {u}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "GET /budgets/seats/<key> after the key used its whole tier:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn overrides_give_single_keys_their_own_limit() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "per-user"
key = ["claim:sub"]
quota = "2/1h"
overrides = { "vip" = "5/1h", "a%7Cb" = "4/1h" }
"#,
        "",
    )
    .await;
    clear_of_window_end(HOUR).await;
    for (sub, key, limit) in [
        ("vip", "vip", 5usize),
        ("regular", "regular", 2),
        ("a|b", "a%7Cb", 4),
    ] {
        let token = token_for(&fx, sub);
        let rs = burst(&fx, || Fixture::ai_req(&token), limit + 1).await;
        assert_split(&rs, limit, "per-user", &format!("sub {sub:?}"));
        assert_eq!(
            policy(&rs[0], "per-user").0,
            limit as i64,
            "{}",
            rs[0].describe()
        );
        let u = usage(&fx.gw, "per-user", key).await;
        assert_eq!(limit_of(&u), Some(limit as i64), "{u}");
    }
}

#[tokio::test]
async fn route_cost_overrides_the_rule_cost() {
    let extra = format!(
        r#"
[[routes]]
name = "costly"
path_prefix = "/costly/"
strip_prefix = true
upstream = "echo"
audience = "{AUD}"
scopes = ["code_suggestions"]
cost = 10
"#
    );
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "units"
routes = ["costly"]
key = ["claim:sub"]
quota = "25/1h"

[[budgets.rules]]
name = "rule-cost"
routes = ["ai"]
key = ["claim:sub"]
quota = "10/1h"
cost = 3

[[budgets.rules]]
name = "both"
routes = ["ai", "costly"]
key = ["claim:sub"]
quota = "1000/1h"
cost = 3
"#,
        &extra,
    )
    .await;
    clear_of_window_end(HOUR).await;
    let token = fx.token();
    let rs = burst(&fx, || Req::post("/costly/x", "{}").token(&token), 3).await;
    assert_split(&rs, 2, "units", "route cost 10 under quota 25/1h");
    assert_eq!(ratelimit(&rs[0], "units").0, 15, "{}", rs[0].describe());
    assert_eq!(ratelimit(&rs[1], "units").0, 5, "{}", rs[1].describe());
    assert_eq!(
        ratelimit(&rs[2], "units").0,
        5,
        "RateLimit r on the 429: {}",
        rs[2].describe()
    );
    assert_eq!(used(&fx.gw, "units", SUB).await, 20);

    let rs = burst(&fx, || Fixture::ai_req(&token), 4).await;
    assert_split(&rs, 3, "rule-cost", "rule cost 3 under quota 10/1h");
    assert_eq!(ratelimit(&rs[2], "rule-cost").0, 1, "{}", rs[2].describe());
    assert_eq!(used(&fx.gw, "rule-cost", SUB).await, 9);
    // Two admissions on `costly` at the route's cost 10, three on `ai` at the rule's cost 3.
    assert_eq!(used(&fx.gw, "both", SUB).await, 2 * 10 + 3 * 3);
}

#[tokio::test]
async fn response_headers_off_leaves_admitted_answers_alone() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"
response_headers = false

[[budgets.rules]]
name = "one"
key = ["claim:sub"]
quota = "1/1h"
"#,
        "",
    )
    .await;
    clear_of_window_end(HOUR).await;
    let token = fx.token();
    let rs = burst(&fx, || Fixture::ai_req(&token), 2).await;
    assert_admitted(&rs[0], "first");
    assert_no_budget_headers(&rs[0], "admitted with response_headers = false");
    assert_over_budget(&rs[1], "one");
}

// ---------------------------------------------------------------------------------------------
// Admin API

#[tokio::test]
async fn admin_api_lists_shows_and_resets_budgets() {
    let fx = budget_fx(
        r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "three"
key = ["claim:sub"]
quota = "3/1h"

[[budgets.rules]]
name = "steady"
routes = ["public"]
key = ["client_ip"]
rate = "60/1m"
burst = 2
"#,
        "",
    )
    .await;
    let r = admin(&fx.gw, Method::GET, "/budgets", None).await;
    assert_eq!(r.status, 200, "GET /budgets: {}", r.describe());
    let listing = r.json().to_string();
    for name in ["\"three\"", "\"steady\""] {
        assert!(
            listing.contains(name),
            "GET /budgets does not list {name}: {listing}"
        );
    }

    clear_of_window_end(HOUR).await;
    let u = usage(&fx.gw, "three", "nobody").await;
    assert_eq!(
        (limit_of(&u), u["used"].as_i64(), u["remaining"].as_i64()),
        (Some(3), Some(0), Some(3)),
        "unknown key: {u}"
    );
    let token = fx.token();
    let before = unix_now();
    let rs = burst(&fx, || Fixture::ai_req(&token), 4).await;
    assert_split(&rs, 3, "three", "quota 3/1h");
    let u = usage(&fx.gw, "three", SUB).await;
    let after = unix_now();
    assert_eq!(
        (limit_of(&u), u["used"].as_i64(), u["remaining"].as_i64()),
        (Some(3), Some(3), Some(0)),
        "{u}"
    );
    let reset = u["reset_seconds"].as_f64().expect("number");
    let window = window_end_range(before, after, HOUR);
    assert!(
        reset >= (*window.start() as f64) - 1.0 && reset <= *window.end() as f64,
        "reset_seconds {reset} is not the time to the end of the UTC hour ({window:?}): {u}"
    );

    let path = format!("/budgets/three/{}", pct(SUB));
    let r = admin(&fx.gw, Method::DELETE, &path, None).await;
    assert_eq!(r.status, 200, "DELETE {path}: {}", r.describe());
    let u = usage(&fx.gw, "three", SUB).await;
    assert_eq!(
        (u["used"].as_i64(), u["remaining"].as_i64()),
        (Some(0), Some(3)),
        "after DELETE: {u}"
    );
    let rs = burst(&fx, || Fixture::ai_req(&token), 4).await;
    assert_split(&rs, 3, "three", "quota 3/1h after the reset");

    for (method, path) in [
        (Method::GET, "/budgets/nope/x"),
        (Method::DELETE, "/budgets/nope/x"),
    ] {
        let r = admin(&fx.gw, method.clone(), path, None).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.describe());
        assert_eq!(
            r.reason(),
            "unknown_rule",
            "{method} {path}: {}",
            r.describe()
        );
    }
}

#[tokio::test]
async fn admin_token_guards_every_admin_endpoint_but_health() {
    let secrets = tempfile::tempdir().expect("temp dir");
    let token_file = secrets.path().join("admin-token");
    std::fs::write(&token_file, "file-secret-0123").expect("writing token file");
    let fx = Fixture::with(Opts {
        server_extra: format!(
            "admin_token = {}",
            q(&format!("file:{}", token_file.display()))
        ),
        budgets: r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "r"
key = ["claim:sub"]
quota = "10/1h"
"#
        .to_string(),
        ..Opts::default()
    })
    .await;
    check_admin_token(&fx.gw, "file-secret-0123").await;
    // The data plane does not care.
    assert_admitted(&fx.send(Fixture::ai_req(&fx.token())).await, "data plane");

    // The same from an environment variable.
    let text = std::fs::read_to_string(&fx.config_path).expect("config");
    let line = format!(
        "admin_token = {}",
        q(&format!("file:{}", token_file.display()))
    );
    assert!(text.contains(&line));
    let text = text
        .replace(&line, "admin_token = \"env:CC_TEST_ADMIN_TOKEN\"")
        .replace(
            &fx.access_log.display().to_string(),
            &fx.dir.path().join("access2.log").display().to_string(),
        );
    let path = fx.dir.path().join("env.toml");
    std::fs::write(&path, text).expect("writing config");
    let gw = Gateway::start_with_env(
        &path,
        &[("CC_TEST_ADMIN_TOKEN", "env-secret-0123456789abcdef")],
    )
    .await;
    check_admin_token(&gw, "env-secret-0123456789abcdef").await;
}

async fn check_admin_token(gw: &Gateway, secret: &str) {
    for path in ["/healthz", "/readyz"] {
        let r = admin(gw, Method::GET, path, None).await;
        assert_eq!(
            r.status,
            200,
            "GET {path} without a token: {}",
            r.describe()
        );
    }
    for (method, path) in [
        (Method::GET, "/budgets"),
        (Method::GET, "/budgets/r/someone"),
        (Method::DELETE, "/budgets/r/someone"),
        (Method::GET, "/metrics"),
        (Method::GET, "/issuers"),
        (Method::POST, "/reload"),
    ] {
        let r = admin(gw, method.clone(), path, None).await;
        assert_eq!(
            r.status,
            401,
            "{method} {path} without a token: {}",
            r.describe()
        );
        let r = admin(gw, method.clone(), path, Some("wrong-secret")).await;
        assert_eq!(
            r.status,
            401,
            "{method} {path} with a wrong token: {}",
            r.describe()
        );
        let r = admin(gw, method.clone(), path, Some(&format!("{secret}x"))).await;
        assert_eq!(
            r.status,
            401,
            "{method} {path} with the token plus a byte: {}",
            r.describe()
        );
        let r = Req::new(method.clone(), path)
            .header("Authorization", &format!("Basic {secret}"))
            .send(gw.admin)
            .await;
        assert_eq!(
            r.status,
            401,
            "{method} {path} with a Basic scheme: {}",
            r.describe()
        );
    }
    for (method, path) in [
        (Method::GET, "/budgets"),
        (Method::GET, "/budgets/r/someone"),
        (Method::DELETE, "/budgets/r/someone"),
        (Method::GET, "/metrics"),
        (Method::GET, "/issuers"),
    ] {
        let r = admin(gw, method.clone(), path, Some(secret)).await;
        assert_eq!(
            r.status,
            200,
            "{method} {path} with the right token: {}",
            r.describe()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// check

/// A config that `check` validates without any server, with `budgets`, `server_extra` and a
/// `costly` route.
fn check_config(dir: &Path, budgets: &str, server_extra: &str) -> String {
    standard_config(
        dir,
        "https://gitlab.example",
        "jwks_uri = \"https://gitlab.example/oauth/discovery/keys\"",
        "127.0.0.1:5052".parse().expect("addr"),
        &Opts {
            budgets: budgets.to_string(),
            server_extra: server_extra.to_string(),
            extra: format!(
                "\n[[routes]]\nname = \"costly\"\npath_prefix = \"/costly/\"\nupstream = \"echo\"\naudience = \"{AUD}\"\ncost = 10\n"
            ),
            ..Opts::default()
        },
    )
}

const GOOD_RULE: &str = r#"
[[budgets.rules]]
name = "ok"
key = ["claim:sub"]
quota = "10/1h"
"#;

fn budgets_with(table: &str, rules: &str) -> String {
    format!("\n[budgets]\nstore = \"memory\"\n{table}\n{GOOD_RULE}\n{rules}")
}

#[test]
fn check_accepts_budget_configs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = r#"
[budgets]
store = "memory"
on_store_error = "deny"
store_timeout = "20ms"
response_headers = true

[[budgets.rules]]
name = "instance-rate"
routes = ["ai"]
key = ["claim:sub"]
rate = "600/1m"
burst = 50

[[budgets.rules]]
name = "user-daily"
key = ["claim:sub", "header:X-Gitlab-Global-User-Id", "route", "client_ip"]
quota = "5000/1d"
cost = 1
tiers = { claim = "duo_seat_count", ranges = [[0, 100, "600/1m"], [101, 1000, "3000/1m"], [1001, "inf", "12000/1m"]] }
overrides = { "some-key" = "10/1m" }

[[budgets.rules]]
name = "instance-tier"
routes = ["ai", "costly"]
key = ["claim:sub"]
tiers = { claim = "duo_seat_count", ranges = [[0, 100, "600/1m"], [101, "inf", "3000/1m"]] }
"#;
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "fedcba9876543210fedcba9876543210").expect("writing token file");
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "loopback admin, no admin_token",
            check_config(dir.path(), full, ""),
            vec![],
        ),
        (
            "non-loopback admin with an env admin_token",
            check_config(dir.path(), full, "admin_token = \"env:CC_ADMIN_TOKEN\"").replace(
                "admin_listen = \"127.0.0.1:0\"",
                "admin_listen = \"0.0.0.0:9091\"",
            ),
            vec![("CC_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef")],
        ),
        (
            "non-loopback admin with a file admin_token",
            check_config(
                dir.path(),
                full,
                &format!(
                    "admin_token = {}",
                    q(&format!("file:{}", token_file.display()))
                ),
            )
            .replace(
                "admin_listen = \"127.0.0.1:0\"",
                "admin_listen = \"0.0.0.0:9091\"",
            ),
            vec![],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, text, env)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("good-{i}.toml"));
        std::fs::write(&path, text).expect("writing config");
        let o = run_check(&path, env);
        if o.status.code() != Some(0) {
            failures.push(format!(
                "[{what}] expected exit 0; got {}",
                describe_output(&o)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_refuses_bad_budget_configs_with_the_key_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let short_token = d.join("short-token");
    std::fs::write(&short_token, "short").expect("writing token file");
    let rule = |body: &str| format!("[[budgets.rules]]\nname = \"bad\"\n{body}\n");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "both rate and quota",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nrate = \"10/1m\"\nquota = \"10/1h\"")), ""),
            "budgets.rules[1]",
        ),
        (
            "neither rate nor quota",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]")), ""),
            "budgets.rules[1]",
        ),
        (
            "bad rate",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nrate = \"10/parsec\"")), ""),
            "budgets.rules[1].rate",
        ),
        (
            "bad quota",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nquota = \"ten/1h\"")), ""),
            "budgets.rules[1].quota",
        ),
        (
            "unknown route",
            check_config(d, &budgets_with("", &rule("routes = [\"ai\", \"nope\"]\nkey = [\"claim:sub\"]\nquota = \"10/1h\"")), ""),
            "budgets.rules[1].routes",
        ),
        (
            "bogus key part",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\", \"bogus:x\"]\nquota = \"10/1h\"")), ""),
            "budgets.rules[1].key",
        ),
        (
            "unknown key in a rule",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nquota = \"10/1h\"\nbogus = 1")), ""),
            "budgets.rules[1].bogus",
        ),
        (
            "bad tier limit",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nquota = \"10/1h\"\ntiers = { claim = \"duo_seat_count\", ranges = [[0, \"inf\", \"5/parsec\"]] }")), ""),
            "budgets.rules[1].tiers",
        ),
        (
            "bad override limit",
            check_config(d, &budgets_with("", &rule("key = [\"claim:sub\"]\nquota = \"10/1h\"\noverrides = { \"k\" = \"lots\" }")), ""),
            "budgets.rules[1].overrides",
        ),
        (
            "malformed redis URL",
            check_config(d, &budgets_with("", "").replace("store = \"memory\"", "store = \"redis://127.0.0.1:notaport/0\""), ""),
            "budgets.store",
        ),
        (
            "sqlite store without a path",
            check_config(d, &budgets_with("", "").replace("store = \"memory\"", "store = \"sqlite://\""), ""),
            "budgets.store",
        ),
        (
            "unknown store",
            check_config(d, &budgets_with("", "").replace("store = \"memory\"", "store = \"floppy\""), ""),
            "budgets.store",
        ),
        (
            "bad on_store_error",
            check_config(d, &budgets_with("on_store_error = \"maybe\"", ""), ""),
            "budgets.on_store_error",
        ),
        (
            "bad store_timeout",
            check_config(d, &budgets_with("store_timeout = \"soon\"", ""), ""),
            "budgets.store_timeout",
        ),
        (
            "max_keys below 1024",
            check_config(d, &budgets_with("max_keys = 10", ""), ""),
            "budgets.max_keys",
        ),
        (
            "max_keys not a number",
            check_config(d, &budgets_with("max_keys = \"many\"", ""), ""),
            "budgets.max_keys",
        ),
        (
            "non-loopback admin without admin_token",
            check_config(d, &budgets_with("", ""), "")
                .replace("admin_listen = \"127.0.0.1:0\"", "admin_listen = \"0.0.0.0:9091\""),
            "server.admin_token",
        ),
        (
            "admin_token written into the config",
            check_config(
                d,
                &budgets_with("", ""),
                "admin_token = \"0123456789abcdef0123456789abcdef\"",
            ),
            "server.admin_token",
        ),
        (
            "admin_token from an unset environment variable",
            check_config(
                d,
                &budgets_with("", ""),
                "admin_token = \"env:CC_TEST_UNSET_ADMIN_TOKEN_4711\"",
            ),
            "server.admin_token",
        ),
        (
            "admin_token file shorter than 16 characters",
            check_config(
                d,
                &budgets_with("", ""),
                &format!("admin_token = {}", q(&format!("file:{}", short_token.display()))),
            ),
            "server.admin_token",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, text, key_path)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("broken-{i}.toml"));
        std::fs::write(&path, text).expect("writing config");
        let p = path.to_str().expect("utf-8 path");
        let o = run_check(&path, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        if !(o.status.code() == Some(1) && err.contains(p) && err.contains(key_path)) {
            failures.push(format!(
                "[{what}] expected exit 1 and stderr naming {p:?} and {key_path:?}; got {}",
                describe_output(&o)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn sf_list_parser_reads_policies() {
    let items = parse_sf_list("\"a\";q=100;w=3600, \"b-2\";q=5;w=60");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].0, "a");
    assert_eq!(items[0].1["q"], 100);
    assert_eq!(items[1].0, "b-2");
    assert_eq!(items[1].1["w"], 60);
    assert_eq!(pct("a%7Cb|u1"), "a%257Cb%7Cu1");
    assert_eq!(window_end_range(3599.5, 3599.6, 3600), 0..=1);
}

#[tokio::test]
async fn sqlite_counters_survive_a_restart() {
    let db = tempfile::tempdir().expect("temp dir");
    let path = db.path().join("budgets.db");
    let budgets = format!(
        "\n[budgets]\nstore = \"sqlite://{}\"\nflush_interval = \"1h\"\n\n[[budgets.rules]]\nname = \"hourly\"\nkey = [\"claim:sub\"]\nquota = \"100/1h\"\n",
        path.display()
    );
    let mut fx = budget_fx(&budgets, "").await;
    let token = fx.token();
    clear_of_window_end(HOUR).await;
    let rs = burst(&fx, || Fixture::ai_req(&token), 60).await;
    assert_split(&rs, 60, "hourly", "first life");
    // graceful stop: the final flush writes the counters (the 1 h interval never fires here)
    let st = std::process::Command::new("kill")
        .args(["-TERM", &fx.gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    wait_until("the first gateway to exit", DEADLINE, || {
        let running = fx.gw.is_running();
        async move {
            if running {
                Err("still running".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
    assert!(path.exists(), "no database at {}", path.display());
    // a second life on the same file: 40 left of the hour's 100
    let gw = Gateway::start(&fx.config_path).await;
    let mut admitted = 0;
    let mut conn = H1Conn::connect(gw.addr).await;
    for _ in 0..60 {
        let r = conn.send(Fixture::ai_req(&token)).await;
        match r.status {
            200 => admitted += 1,
            429 => assert_eq!(r.reason(), "hourly", "{}", r.describe()),
            _ => panic!("unexpected {}", r.describe()),
        }
    }
    assert_eq!(admitted, 40, "the count did not survive the restart");
}

/// An authenticated client inventing keys (a fresh user id per request) cannot grow the memory
/// store past `max_keys`: live keys are evicted (their budget starts afresh) and counted, and
/// the gateway keeps deciding.
#[tokio::test]
async fn invented_keys_are_bounded_by_max_keys() {
    let fx = budget_fx(
        "\n[budgets]\nstore = \"memory\"\nmax_keys = 1024\n\n[[budgets.rules]]\nname = \"per-user\"\nkey = [\"header:X-User\"]\nquota = \"5/1d\"\n",
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
        &[("store", "memory")],
    );
    assert!(evicted >= 1500.0 - 1024.0, "evicted {evicted}");
    // a key that is used keeps being enforced
    let rs = burst(&fx, || Fixture::ai_req(&t).header("X-User", "steady"), 6).await;
    assert_split(&rs, 5, "per-user", "steady user after the flood");
}
