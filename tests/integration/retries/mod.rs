//! Safe retries: a second endpoint after a refused connection, exactly one retry after a stale
//! keep-alive connection and after HTTP/2 REFUSED_STREAM, never a second delivery of a POST
//! the upstream may have read, per-try and total timeouts, status retries for idempotent
//! requests with small bodies only. Every upstream counts exactly what it saw.

mod goaway;
mod upstreams;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::common::fixture::write_config;
use crate::common::servers::Slow;
use crate::common::wait::DEADLINE;
use crate::common::{dead_addr, metric, wait_until, Echo, Gateway, Req};
use upstreams::{Cut, Refusing, Scripted, Stale};

/// One worker (one keep-alive pool, an exact round robin), an access log, a public route `/`
/// to upstream "pool" with the route keys `route_extra`, and `upstreams`.
fn config(dir: &Path, route_extra: &str, upstreams: &str) -> PathBuf {
    let log = dir.join("access.log");
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
threads = 1

[log]
level = "info"
access = "{}"

[[routes]]
name = "all"
path_prefix = "/"
upstream = "pool"
auth = "public"
{route_extra}

{upstreams}
"#,
        log.display()
    );
    write_config(dir, &text)
}

fn pool(endpoints: &[String], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[[upstreams]]\nname = \"pool\"\nendpoints = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// The access-log line of request `id` (waits for it: lines are flushed every 10 ms).
async fn log_line(dir: &Path, id: &str) -> Value {
    let path = dir.join("access.log");
    wait_until(&format!("access log line {id}"), DEADLINE, || async {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["request_id"] == id)
            .ok_or_else(|| format!("no line for {id} in {text}"))
    })
    .await
}

fn retries(m: &str, cause: &str) -> f64 {
    metric(
        m,
        "cc_gateway_upstream_retries_total",
        &[("upstream", "pool"), ("cause", cause)],
    )
}

#[tokio::test]
async fn refused_connection_goes_to_the_second_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("alive").await;
    let dead = dead_addr();
    // no `retries` table: one more try on `connect`, for every method
    let cfg = config(
        dir.path(),
        "",
        &pool(&[dead.to_string(), echo.addr.to_string()], ""),
    );
    let gw = Gateway::start(&cfg).await;
    let mut retried = 0;
    for i in 0..4 {
        let id = format!("refused-{i}");
        // a POST with a body: a refused connection proves nothing was sent, and the body,
        // lent to the failed try untouched, goes whole to the next
        let r = gw
            .send(Req::post("/x", "payload").header("X-Request-Id", &id))
            .await;
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(r.json()["body_len"], 7, "{}", r.describe());
        let line = log_line(dir.path(), &id).await;
        let attempts = line["attempts"].as_u64().unwrap_or(0);
        assert!(attempts == 1 || attempts == 2, "{line}");
        assert_eq!(line["endpoint"], echo.addr.to_string(), "{line}");
        retried += (attempts == 2) as u32;
    }
    // the round robin starts at the dead endpoint at least once in four requests
    assert!(retried >= 1, "no request met the dead endpoint");
    assert_eq!(
        echo.count(),
        4,
        "each request reached the live endpoint exactly once"
    );
    assert_eq!(retries(&gw.metrics().await, "connect"), retried as f64);
}

#[tokio::test]
async fn a_stale_keep_alive_connection_costs_a_get_exactly_one_retry() {
    let dir = tempfile::tempdir().unwrap();
    let up = Stale::start(Cut::Close).await;
    let cfg = config(dir.path(), "", &pool(&[up.addr.to_string()], ""));
    let gw = Gateway::start(&cfg).await;
    let first = gw.send(Req::get("/a")).await;
    assert_eq!(first.status, 200, "{}", first.describe());
    // the pooled connection takes this one and is closed under it, unanswered; the retry
    // (the same endpoint, the only one) opens a new connection, whose first request is answered
    let r = gw
        .send(Req::get("/b").header("X-Request-Id", "stale-get"))
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.text(), "ok");
    assert_eq!(
        up.heads(),
        3,
        "/a once, /b twice (the cut try and its one retry)"
    );
    let line = log_line(dir.path(), "stale-get").await;
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["endpoint"], up.addr.to_string(), "{line}");
    assert_eq!(retries(&gw.metrics().await, "refused"), 1.0);
}

#[tokio::test]
async fn a_post_the_upstream_read_before_a_reset_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let up = Stale::start(Cut::ResetAfterBody).await;
    let spare = Echo::start("spare").await;
    let cfg = config(
        dir.path(),
        r#"retries = { attempts = 3, on = ["connect", "refused", "502", "503", "504", "timeout"] }"#,
        &(pool(&[up.addr.to_string()], "fallback = [\"spare\"]")
            + &pool(&[spare.addr.to_string()], "").replace("\"pool\"", "\"spare\"")),
    );
    let gw = Gateway::start(&cfg).await;
    assert_eq!(gw.send(Req::get("/a")).await.status, 200);
    let r = gw
        .send(Req::post("/b", vec![b'x'; 1000]).header("X-Request-Id", "reset-post"))
        .await;
    assert_eq!(r.status, 502, "{}", r.describe());
    assert_eq!(up.heads(), 2, "the POST reached the upstream once");
    assert_eq!(spare.count(), 0, "and nowhere else");
    let line = log_line(dir.path(), "reset-post").await;
    assert_eq!(line["attempts"], 1, "{line}");
    let m = gw.metrics().await;
    for cause in ["connect", "refused", "timeout", "502"] {
        assert_eq!(retries(&m, cause), 0.0, "{cause}");
    }
}

#[tokio::test]
async fn refused_stream_is_retried_exactly_once_even_for_a_post() {
    let dir = tempfile::tempdir().unwrap();
    let up = Refusing::start().await;
    let cfg = config(
        dir.path(),
        "",
        &pool(&[up.addr.to_string()], "protocol = \"h2c\""),
    );
    let gw = Gateway::start(&cfg).await;
    // REFUSED_STREAM: the server did no processing of the stream, so even a POST goes again
    up.refuse(1);
    let r = gw
        .send(Req::new(Method::POST, "/once").header("X-Request-Id", "refused-once"))
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.text(), "h2");
    assert_eq!(up.streams(), 2);
    assert_eq!(log_line(dir.path(), "refused-once").await["attempts"], 2);
    // refused every time: two tries in all (the default), then 502
    up.refuse(100);
    let r = gw.send(Req::new(Method::POST, "/always")).await;
    assert_eq!(r.status, 502, "{}", r.describe());
    assert_eq!(up.streams(), 4, "exactly one retry");
    assert_eq!(retries(&gw.metrics().await, "refused"), 2.0);
}

#[tokio::test]
async fn per_try_timeout_moves_a_get_on_but_never_a_post() {
    let dir = tempfile::tempdir().unwrap();
    let slow = Slow::start().await;
    let cfg = config(
        dir.path(),
        r#"retries = { attempts = 2, per_try_timeout = "300ms", on = ["timeout"] }"#,
        &pool(&[slow.addr.to_string()], ""),
    );
    let gw = Gateway::start(&cfg).await;
    let t = Instant::now();
    let r = gw
        .send(Req::post("/p", "once").header("X-Request-Id", "slow-post"))
        .await;
    assert_eq!(r.status, 504, "{}", r.describe());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(
        slow.accepted(),
        1,
        "a POST that timed out may have been read: one try"
    );
    let t = Instant::now();
    let r = gw
        .send(Req::get("/g").header("X-Request-Id", "slow-get"))
        .await;
    assert_eq!(r.status, 504, "{}", r.describe());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "two tries of 300 ms: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(slow.accepted(), 3, "a GET gets its second try");
    assert_eq!(log_line(dir.path(), "slow-get").await["attempts"], 2);
    assert_eq!(retries(&gw.metrics().await, "timeout"), 1.0);
}

#[tokio::test]
async fn route_timeout_bounds_all_tries_together() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Slow::start().await, Slow::start().await);
    let cfg = config(
        dir.path(),
        "timeout = \"1500ms\"\nretries = { attempts = 3, backoff = \"1ms\", per_try_timeout = \"1s\", on = [\"timeout\"] }",
        &pool(&[a.addr.to_string(), b.addr.to_string()], ""),
    );
    let gw = Gateway::start(&cfg).await;
    let t = Instant::now();
    let r = gw
        .send(Req::get("/g").header("X-Request-Id", "total"))
        .await;
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.describe());
    // three tries of 1 s would take 3 s; the route's 1.5 s ends the second
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(
        (a.accepted(), b.accepted()),
        (1, 1),
        "the second try went to the other endpoint"
    );
    assert_eq!(log_line(dir.path(), "total").await["attempts"], 2);
}

#[tokio::test]
async fn statuses_retry_idempotent_requests_with_small_bodies_only() {
    let dir = tempfile::tempdir().unwrap();
    let a = Scripted::start("a").await;
    let cfg = config(
        dir.path(),
        r#"retries = { attempts = 2, backoff = "1ms", on = ["503"], body_limit = "1KiB" }"#,
        &pool(&[a.addr.to_string()], ""),
    );
    let gw = Gateway::start(&cfg).await;
    let put = |n: usize, id: &str| {
        let mut r = Req::new(Method::PUT, "/p").header("X-Request-Id", id);
        r.body = vec![b'x'; n];
        r
    };
    // a PUT of 100 bytes is buffered: after the 503 it is replayed whole (to the same
    // endpoint, the only one)
    a.script(&[503]);
    let r = gw.send(put(100, "put")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(a.seen(), vec![("PUT".to_string(), 100); 2]);
    assert_eq!(log_line(dir.path(), "put").await["attempts"], 2);
    // a POST is never retried on a status
    a.script(&[503]);
    let r = gw
        .send(Req::post("/p", "x").header("X-Request-Id", "post"))
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(a.seen().len(), 3);
    assert_eq!(log_line(dir.path(), "post").await["attempts"], 1);
    // a PUT over `body_limit` streams once, unbuffered, and its 503 stands
    a.script(&[503]);
    let r = gw.send(put(4096, "big")).await;
    assert_eq!(r.status, 503);
    assert_eq!(a.seen().len(), 4);
    assert_eq!(a.seen()[3], ("PUT".to_string(), 4096));
    assert_eq!(log_line(dir.path(), "big").await["attempts"], 1);
    // `attempts` caps the tries: the second 503 is the answer
    a.script(&[503, 503]);
    let r = gw.send(Req::get("/g")).await;
    assert_eq!(r.status, 503);
    assert_eq!(a.seen().len(), 6);
    assert_eq!(retries(&gw.metrics().await, "503"), 2.0);
}
