//! Filters and stats against known rows (seeded straight into the store the gateway created),
//! through `cc-gateway logs --json` and the admin API; feedback with `PATCH /logs/<id>`.

use std::path::Path;

use http::Method;

use super::*;

/// 100 rows, `i` = 1..=100: `i` minutes and 30 s old, route `even`/`odd`, instance `big`
/// (i ≤ 30) or `small`, duration `i` ms, status 503 when i % 10 == 0, 429 when i % 10 == 5,
/// else 200; `10·i` tokens in, `i` out, `i/1000` USD. Plain SQL both stores accept.
pub fn seed_sql() -> Vec<String> {
    let now = std::time::SystemTime::now();
    (1..=100u64)
        .map(|i| {
            let t = humantime::format_rfc3339_millis(now - std::time::Duration::from_secs(i * 60 + 30));
            let status = match i % 10 {
                0 => 503,
                5 => 429,
                _ => 200,
            };
            format!(
                "INSERT INTO requests (request_id, time, node, route, method, status, duration_ms, bytes_in, bytes_out, fields, model, input_tokens, output_tokens, cost_usd) \
                 VALUES ('seed-{i}', '{t}', 'n1', '{route}', 'POST', {status}, {i}, 0, 0, '{{\"instance\":\"{inst}\"}}', 'm', {tin}, {i}, {cost})",
                route = if i % 2 == 0 { "even" } else { "odd" },
                inst = if i <= 30 { "big" } else { "small" },
                tin = i * 10,
                cost = i as f64 / 1000.0,
            )
        })
        .collect()
}

pub fn seed_sqlite(db: &Path) {
    let c = rusqlite::Connection::open(db).expect("open");
    c.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    for s in seed_sql() {
        c.execute(&s, []).expect("seed");
    }
}

/// The questions and their known answers; the same on every store.
pub async fn filters_and_stats_answer_known_data(fx: &Fixture) {
    let cfg = &fx.config_path;
    let ids = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|r| r["request_id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let seeded = |rows: Vec<Value>| -> Vec<Value> {
        rows.into_iter()
            .filter(|r| {
                r["request_id"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("seed-"))
            })
            .collect()
    };
    assert_eq!(seeded(cli_json(cfg, &["--limit", "1000"]).await).len(), 100);
    assert_eq!(
        cli_json(cfg, &["--route", "even", "--limit", "1000"])
            .await
            .len(),
        50
    );
    assert_eq!(
        seeded(cli_json(cfg, &["--status", "5xx", "--limit", "1000"]).await).len(),
        10
    );
    let r429 = cli_json(cfg, &["--route", "odd", "--status", "429"]).await;
    assert_eq!(r429.len(), 10);
    assert!(r429
        .iter()
        .all(|r| r["reason"].is_null() && r["status"] == 429));
    assert_eq!(
        seeded(cli_json(cfg, &["--since", "30m", "--limit", "1000"]).await).len(),
        29
    );
    let newest = seeded(cli_json(cfg, &["--until", "1m", "--limit", "3"]).await);
    assert_eq!(ids(&newest), ["seed-1", "seed-2", "seed-3"]);

    // which instance burnt the most tokens this week, and its p99
    let g = cli_json(
        cfg,
        &[
            "stats", "--by", "instance", "--since", "7d", "--sort", "tokens",
        ],
    )
    .await;
    // (other tests' requests may carry an instance too: only the seeded ones are known)
    let g: Vec<&Value> = g
        .iter()
        .filter(|g| g["group"] == "small" || g["group"] == "big")
        .collect();
    assert_eq!(g.len(), 2, "{g:?}");
    let (small, big) = (g[0], g[1]);
    assert_eq!(small["instance"], "small");
    assert_eq!(small["requests"], 70);
    assert_eq!(small["errors"], 14);
    assert_eq!(
        (
            small["p50_ms"].as_f64(),
            small["p95_ms"].as_f64(),
            small["p99_ms"].as_f64()
        ),
        (Some(65.0), Some(97.0), Some(100.0))
    );
    assert_eq!(small["input_tokens"], 45_850);
    assert_eq!(small["output_tokens"], 4_585);
    assert!(
        (small["cost_usd"].as_f64().unwrap_or(0.0) - 4.585).abs() < 1e-9,
        "{small}"
    );
    assert_eq!(big["group"], "big");
    assert_eq!(big["requests"], 30);
    assert_eq!(big["errors"], 6);
    assert_eq!(
        (
            big["p50_ms"].as_f64(),
            big["p95_ms"].as_f64(),
            big["p99_ms"].as_f64()
        ),
        (Some(15.0), Some(29.0), Some(30.0))
    );
    assert_eq!(big["input_tokens"], 4_650);

    // the admin API answers the same
    let r = fx
        .gw
        .admin_get("/logs/stats?by=instance&since=7d&sort=tokens")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["by"], "instance");
    assert_eq!(v["groups"][0]["group"], "small");
    assert_eq!(v["groups"][0]["p99_ms"], 100.0);
    let r = fx.gw.admin_get("/logs/stats?by=status&route=even").await;
    let groups = r.json()["groups"].as_array().cloned().unwrap_or_default();
    let of = |s: &str| {
        groups
            .iter()
            .find(|g| g["group"] == s)
            .map(|g| g["requests"].clone())
    };
    assert_eq!(of("200"), Some(40.into()));
    assert_eq!(of("503"), Some(10.into()));
    let r = fx.gw.admin_get("/logs?status=5xx&route=even&limit=2").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        ids(r.json()["rows"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])),
        ["seed-10", "seed-20"]
    );
    assert_eq!(fx.gw.admin_get("/logs?stauts=5xx").await.status, 400);
    assert_eq!(fx.gw.admin_get("/logs?status=9xx").await.status, 400);
    assert_eq!(fx.gw.admin_get("/logs/stats?by=a%20b").await.status, 400);
}

pub async fn feedback_is_recorded_and_validated(fx: &Fixture) {
    let patch = |id: &str, body: &str| {
        let mut r = Req::new(Method::PATCH, &format!("/logs/{id}"));
        r.body = body.as_bytes().to_vec();
        r.header("content-type", "application/json")
            .send(fx.gw.admin)
    };
    let r = patch("seed-7", r#"{"score": -1, "comment": "wrong answer"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["feedback_score"], -1);
    let r = fx.gw.admin_get("/logs/seed-7").await.json();
    assert_eq!(
        (r["feedback_score"].clone(), r["feedback_comment"].clone()),
        ((-1).into(), "wrong answer".into())
    );
    let r = patch("seed-7", r#"{"score": 1}"#).await;
    assert_eq!(r.json()["feedback_score"], 1);
    assert!(r.json()["feedback_comment"].is_null());
    for bad in [
        r#"{"score": 2}"#,
        r#"{"score": "1"}"#,
        r#"{"comment": "x"}"#,
        "nope",
        r#"{"score": 0, "extra": 1}"#,
    ] {
        let r = patch("seed-7", bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let long = format!(r#"{{"score": 0, "comment": "{}"}}"#, "é".repeat(2001));
    assert_eq!(patch("seed-7", &long).await.status, 400);
    let fits = format!(r#"{{"score": 0, "comment": "{}"}}"#, "é".repeat(2000));
    assert_eq!(patch("seed-7", &fits).await.status, 200);
    let r = patch("no-such-request", r#"{"score": 1}"#).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.reason(), "unknown_request_id");
    assert_eq!(fx.gw.admin_get("/logs/no-such-request").await.status, 404);
}

#[tokio::test]
async fn filters_stats_and_feedback_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = fixture(&sqlite_store(dir.path(), ""), 1000).await;
    let db = dir.path().join("requests.db");
    // the writer creates the table at startup
    let probe = fx.send(Req::get("/public/x")).await;
    row(&fx.gw, &probe.header("x-request-id").expect("id")).await;
    seed_sqlite(&db);
    filters_and_stats_answer_known_data(&fx).await;
    feedback_is_recorded_and_validated(&fx).await;
    // the human form: a header line, then rows with their request ids
    let cfg = fx.config_path.display().to_string();
    let out = crate::common::cli::run_async(
        ["logs", "--config", &cfg, "--route", "odd", "--limit", "2"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe_output(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("TIME") && lines[0].ends_with("REQUEST_ID"),
        "{text}"
    );
    assert!(
        lines[1].ends_with("seed-1") && lines[2].ends_with("seed-3"),
        "{text}"
    );
    let out = crate::common::cli::run_async(
        [
            "logs", "stats", "--config", &cfg, "--by", "instance", "--sort", "tokens",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().nth(1).is_some_and(|l| l.starts_with("small ")),
        "{text}"
    );
    let out = crate::common::cli::run_async(
        ["logs", "--config", &cfg, "--status", "6xx"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(!out.status.success(), "{}", describe_output(&out));
}

#[tokio::test]
async fn logs_endpoints_say_when_the_request_log_is_off() {
    let fx = Fixture::start().await;
    let r = fx.gw.admin_get("/logs").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.reason(), "request_log_off");
}
