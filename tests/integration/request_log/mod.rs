//! The request log (`[request_log]`) end to end: rows for every kind of request on SQLite and
//! PostgreSQL, read back through `cc-gateway logs --json` and the admin API; queue overflow,
//! SIGTERM with a full queue, retention, feedback, `check`'s refusals and redaction.

mod postgres;
mod query;
mod sqlite;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::servers::canned;
use crate::common::wait::{wait_until, DEADLINE};
use crate::common::*;

/// An OpenAI-style answer with usage, from a canned upstream (one response per connection).
pub fn ai_reply() -> &'static [u8] {
    let body =
        r#"{"id":"c1","model":"gpt-4o-mini","usage":{"prompt_tokens":100,"completion_tokens":20}}"#;
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Box::leak(reply.into_boxed_str()).as_bytes()
}

/// The standard fixture plus a public AI route `/llm/` (priced), a route `/down/` to a dead
/// upstream, a token budget-free `[budgets]` rule (`shared`, burst `burst`) on route `ai`, and
/// `[request_log]` with `request_log` as its body.
pub async fn fixture(request_log: &str, burst: u32) -> Fixture {
    let (llm, _task) = canned(ai_reply(), false).await;
    fixture_with(llm, request_log, burst, "").await
}

pub async fn fixture_with(
    llm: SocketAddr,
    request_log: &str,
    burst: u32,
    server_extra: &str,
) -> Fixture {
    Fixture::with(Opts {
        server_extra: server_extra.to_string(),
        budgets: format!(
            "\n[budgets]\n\n[[budgets.rules]]\nname = \"shared\"\nkey = [\"claim:sub\"]\nrate = \"1/1h\"\nburst = {burst}\nroutes = [\"ai\"]\n"
        ),
        extra: format!(
            r#"{llm_route}
[[routes]]
name = "down"
path_prefix = "/down/"
upstream = "dead"
auth = "public"

[[upstreams]]
name = "dead"
endpoints = ["{dead}"]
connect_timeout = "1s"

[request_log]
{request_log}
"#,
            llm_route = crate::common::llm::llm_route(llm),
            dead = dead_addr(),
        ),
        ..Opts::default()
    })
    .await
}

/// `[request_log]` keys for a SQLite file in `dir`.
pub fn sqlite_store(dir: &Path, more: &str) -> String {
    format!(
        "store = \"sqlite://{}\"\nflush_interval = \"20ms\"\nfields = {{ instance = \"header:X-Gitlab-Instance-Id\", realm_claim = \"claim:gitlab_realm\" }}\n{more}",
        dir.join("requests.db").display()
    )
}

/// `cc-gateway logs ARGS --config CONFIG --json`: the rows (or groups), one JSON per line.
pub async fn cli_json(config: &Path, args: &[&str]) -> Vec<Value> {
    let mut a: Vec<String> = vec!["logs".into()];
    a.extend(args.iter().map(|s| s.to_string()));
    a.extend([
        "--config".into(),
        config.display().to_string(),
        "--json".into(),
    ]);
    let out = crate::common::cli::run_async(a.clone()).await;
    assert!(
        out.status.success(),
        "cc-gateway {a:?}: {}",
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Waits until the admin API has the row of `id`, and returns it.
pub async fn row(gw: &Gateway, id: &str) -> Value {
    wait_until(
        &format!("row {id} in the request log"),
        DEADLINE,
        || async {
            let r = gw.admin_get(&format!("/logs/{id}")).await;
            if r.status == 200 {
                Ok(r.json())
            } else {
                Err(format!("{} {}", r.status, r.text()))
            }
        },
    )
    .await
}

/// Waits until the CLI sees exactly `n` rows (with `--limit` above it).
pub async fn wait_rows(config: &Path, n: usize) -> Vec<Value> {
    wait_until(&format!("{n} rows"), DEADLINE, || async {
        let rows = cli_json(config, &["--limit", "10000"]).await;
        if rows.len() == n {
            Ok(rows)
        } else {
            Err(format!("{} rows", rows.len()))
        }
    })
    .await
}

/// Each kind of request once; asserts each one's row (read through the admin API and the CLI).
pub async fn every_kind_of_request_is_a_row(fx: &Fixture) {
    let token = fx.token();
    let id = |r: &Resp| r.header("x-request-id").expect("x-request-id");
    let ok = fx
        .send(Fixture::ai_req(&token).header("X-Gitlab-Instance-Id", SUB))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.describe());
    let limited = fx.send(Fixture::ai_req(&token)).await;
    assert_eq!(limited.status, 429, "{}", limited.describe());
    let unauth = fx.send(Req::post("/ai/v2/completions", "{}")).await;
    assert_eq!(unauth.status, 401);
    let forbidden = fx
        .send(Fixture::ai_req(
            &fx.token_with(|c| c["scopes"] = serde_json::json!(["other"])),
        ))
        .await;
    assert_eq!(forbidden.status, 403, "{}", forbidden.describe());
    let nowhere = fx.send(Req::get("/nowhere")).await;
    assert_eq!(nowhere.status, 404);
    let down = fx.send(Req::get("/down/x")).await;
    assert_eq!(down.status, 502, "{}", down.describe());
    let llm = fx
        .send(Req::post(
            "/llm/v1/chat/completions",
            r#"{"model":"gpt-4o-mini"}"#,
        ))
        .await;
    assert_eq!(llm.status, 200, "{}", llm.describe());

    let r = row(&fx.gw, &id(&ok)).await;
    assert_eq!(r["status"], 200);
    assert_eq!(r["route"], "ai");
    assert_eq!(r["upstream"], "echo");
    assert_eq!(r["attempts"], 1, "{r}");
    assert!(
        r["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("127.0.0.1:")),
        "{r}"
    );
    assert!(r["trace_id"].is_null(), "no [telemetry]: no trace: {r}");
    assert_eq!(r["sub"], SUB);
    assert_eq!(r["realm"], REALM);
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path"], "/ai/v2/completions");
    assert_eq!(r["fields"]["instance"], SUB);
    assert_eq!(r["fields"]["realm_claim"], REALM);
    assert!(r["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{r}");
    assert!(
        r["ttfb_ms"]
            .as_f64()
            .is_some_and(|t| t > 0.0 && t <= r["duration_ms"].as_f64().unwrap_or(0.0)),
        "{r}"
    );
    assert!(r["model"].is_null() && r["input_tokens"].is_null(), "{r}");
    for (resp, status, reason) in [
        // a budget refusal's logged reason is its rule, as in the access log
        (&limited, 429, "shared"),
        (&unauth, 401, "missing_token"),
        (&forbidden, 403, "insufficient_scope"),
        (&nowhere, 404, "no_route"),
        (&down, 502, &*down.reason()),
    ] {
        let r = row(&fx.gw, &id(resp)).await;
        assert_eq!(r["status"], status, "{r}");
        assert_eq!(r["reason"], reason, "{r}");
        if status != 502 {
            assert!(r["attempts"].is_null(), "refused before any try: {r}");
        }
    }
    let r = row(&fx.gw, &id(&llm)).await;
    assert_eq!(r["route"], "llm");
    assert_eq!(r["model"], "gpt-4o-mini");
    assert_eq!(r["input_tokens"], 100);
    assert_eq!(r["output_tokens"], 20);
    assert_eq!(r["usage_source"], "reported");
    assert_eq!(r["stream"], false);
    let cost = r["cost_usd"].as_f64().expect("cost");
    assert!(
        (cost - (100.0 * 0.15 + 20.0 * 0.6) / 1e6).abs() < 1e-12,
        "{cost}"
    );

    // the CLI reads the same store: newest first, filters by status class
    // (a row's time is when its response ended, logged by the worker that served it: the
    // order of requests sent one after another is not asserted, only the order of the times)
    let rows = wait_rows(&fx.config_path, 7).await;
    let times: Vec<&str> = rows
        .iter()
        .map(|r| r["time"].as_str().unwrap_or(""))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let mut got: Vec<&str> = rows
        .iter()
        .map(|r| r["request_id"].as_str().unwrap_or(""))
        .collect();
    let mut sent: Vec<String> = [&ok, &limited, &unauth, &forbidden, &nowhere, &down, &llm]
        .iter()
        .map(|r| id(r))
        .collect();
    got.sort_unstable();
    sent.sort_unstable();
    assert_eq!(got, sent);
    let refused = cli_json(&fx.config_path, &["--status", "4xx"]).await;
    assert_eq!(refused.len(), 4, "{refused:?}");
    let budget = cli_json(&fx.config_path, &["--status", "429"]).await;
    assert_eq!(budget.len(), 1);
    assert_eq!(budget[0]["request_id"], id(&limited).as_str());
}
