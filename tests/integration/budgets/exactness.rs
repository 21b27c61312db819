//! Budgets admit exactly their limit and no more, on every store: quotas (fixed UTC windows) and
//! rates (GCRA), the 429 answer and its headers, concurrency, all-or-nothing across rules, and
//! which requests and routes a rule counts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Method;
use serde_json::json;

use crate::common::budgets::*;
use crate::common::metrics::has_series;
use crate::common::wait::DEADLINE;
use crate::common::*;

per_store!(quota_admits_exactly_the_limit_then_429s: memory, sqlite, redis);
async fn quota_admits_exactly_the_limit_then_429s(store: &Store) {
    let fx = budget_fx(
        store,
        r#"
[budgets]

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
            &[("store", store.label), ("le", "+Inf")]
        ),
        "budget_store_duration_seconds{{store={:?}}} is not a histogram:\n{text}",
        store.label
    );
    let timed = metric(
        &text,
        "cc_gateway_budget_store_duration_seconds_count",
        &[("store", store.label)],
    );
    assert!(
        timed >= 150.0,
        "budget_store_duration_seconds_count{{store={:?}}} = {timed} after 150 decisions",
        store.label
    );
    assert_eq!(
        metric(
            &text,
            "cc_gateway_budget_store_errors_total",
            &[("store", store.label)]
        ),
        0.0,
        "store errors with the {} store:\n{text}",
        store.label
    );
    let u = usage(&fx.gw, "hourly", SUB).await;
    assert_eq!(
        (limit_of(&u), u["used"].as_i64(), u["remaining"].as_i64()),
        (Some(100), Some(100), Some(0)),
        "{u}"
    );
}

per_store!(gcra_admits_the_burst_then_one_per_emission_interval: memory, sqlite, redis);
async fn gcra_admits_the_burst_then_one_per_emission_interval(store: &Store) {
    let fx = budget_fx(
        store,
        r#"
[budgets]

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

per_store!(a_rate_admits_exactly_its_burst: memory, sqlite, redis);
/// A rate whose burst is the whole budget (its 1/h refill cannot matter here): of 150 requests
/// on one connection the first 100 are admitted, the rest are 429 naming the rule.
async fn a_rate_admits_exactly_its_burst(store: &Store) {
    let fx = budget_fx(store, &shared_rate(100), "").await;
    let t = fx.token();
    let rs = burst(&fx, || Fixture::ai_req(&t), 150).await;
    assert_split(&rs, 100, "shared", "rate 1/1h burst 100");
    assert_eq!(fx.echo.count(), 100, "the upstream saw rejected requests");
}

per_store!(rate_headers_and_retry_after_are_exact: memory, sqlite, redis);
/// GCRA: the burst passes, the next request waits exactly one emission interval, and the
/// RateLimit headers say so.
async fn rate_headers_and_retry_after_are_exact(store: &Store) {
    let fx = budget_fx(
        store,
        "\n[budgets]\n\n[[budgets.rules]]\nname = \"slow\"\nkey = [\"claim:sub\"]\nrate = \"6/1m\"\nburst = 3\n",
        "",
    )
    .await;
    let t = fx.token();
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    for left in [2, 1, 0] {
        let r = conn.send(Fixture::ai_req(&t)).await;
        assert_admitted(&r, &format!("{} of the burst of 3", 3 - left));
        assert_eq!(
            r.header("ratelimit").as_deref(),
            Some(format!("\"slow\";r={left};t={}", 10 * (3 - left)).as_str()),
            "{}",
            r.describe()
        );
        assert_eq!(
            r.header("ratelimit-policy").as_deref(),
            Some("\"slow\";q=6;w=60"),
            "{}",
            r.describe()
        );
    }
    let r = conn.send(Fixture::ai_req(&t)).await;
    assert_over_budget(&r, "slow");
    // one unit every 10 s: the next one is 10 s away (less the milliseconds spent here)
    assert_eq!(
        r.header("retry-after").as_deref(),
        Some("10"),
        "{}",
        r.describe()
    );
    assert_eq!(
        r.header("ratelimit").as_deref(),
        Some("\"slow\";r=0;t=30"),
        "{}",
        r.describe()
    );
}

per_store!(a_rejected_request_consumes_nothing_from_any_rule: memory, sqlite, redis);
async fn a_rejected_request_consumes_nothing_from_any_rule(store: &Store) {
    // The loose rules come first: a naive implementation charges them before the tight one says no.
    let fx = budget_fx(
        store,
        r#"
[budgets]

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

per_store!(concurrent_clients_on_one_key_never_over_admit: memory, sqlite, redis);
/// 64 clients, already connected, fire at once at a budget of 50: exactly 50 are admitted, for a
/// quota and for a rate whose burst is the whole budget (its 1/h refill cannot matter here).
async fn concurrent_clients_on_one_key_never_over_admit(store: &Store) {
    for limit in ["quota = \"50/1h\"", "rate = \"1/1h\"\nburst = 50"] {
        let fx = budget_fx(
            store,
            &format!(
                "\n[budgets]\n\n[[budgets.rules]]\nname = \"shared\"\nkey = [\"claim:sub\"]\n{limit}\n"
            ),
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
            "64 concurrent clients on a budget of 50 ({limit})"
        );
        assert_eq!(fx.echo.count(), 50, "{limit}");
        let u = usage(&fx.gw, "shared", SUB).await;
        assert_eq!(
            (u["used"].as_i64(), u["remaining"].as_i64()),
            (Some(50), Some(0)),
            "{limit}: {u}"
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
}

per_store!(requests_refused_by_auth_never_touch_budgets: memory, sqlite, redis);
async fn requests_refused_by_auth_never_touch_budgets(store: &Store) {
    let fx = budget_fx(
        store,
        r#"
[budgets]

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

per_store!(rules_apply_only_to_their_routes: memory, sqlite, redis);
async fn rules_apply_only_to_their_routes(store: &Store) {
    let fx = budget_fx(
        store,
        r#"
[budgets]

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
