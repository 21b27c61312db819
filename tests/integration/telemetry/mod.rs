//! Traces (`[telemetry]`): the spans an in-test OTLP collector receives, the `traceparent` the
//! upstream sees, sampling (the client's flag, the head ratio, errors kept), and a collector
//! that is down or stuck costing no latency, its drops counted.
//!
//! "Not exported" is observed without waiting for time to pass: the gateway exports through
//! one FIFO queue, so once a trace sent *after* a request has arrived, that request's spans
//! would have arrived before it.

mod receiver;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::servers::echoed_header;
use crate::common::{metric, wait_until, Fixture, Opts, Req, Resp, REALM, SUB};
use receiver::{hex, Collector, Got, CLIENT, INTERNAL, SERVER};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

async fn traced(collector_endpoint: &str, telemetry: &str, extra: &str) -> Fixture {
    Fixture::with(Opts {
        extra: format!(
            "{extra}\n[telemetry]\notlp_endpoint = \"{collector_endpoint}\"\n{telemetry}\n"
        ),
        ..Opts::default()
    })
    .await
}

/// Waits for the trace `trace` (hex) to have `n` spans at the collector.
async fn spans_of(c: &Collector, trace: &str, n: usize) -> Vec<Got> {
    wait_until(
        &format!("{n} spans of trace {trace}"),
        Duration::from_secs(15),
        || async {
            let got = c.trace(trace);
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} spans: {:?}", got.len(), names(&got)))
            }
        },
    )
    .await
}

fn names(g: &[Got]) -> Vec<String> {
    g.iter().map(|g| g.span.name.clone()).collect()
}

fn one<'a>(g: &'a [Got], name: &str) -> &'a Got {
    let found: Vec<&Got> = g.iter().filter(|g| g.span.name == name).collect();
    assert_eq!(found.len(), 1, "exactly one {name:?} in {:?}", names(g));
    found[0]
}

/// The `traceparent` values the echo upstream saw.
fn upstream_traceparent(r: &Resp) -> Vec<String> {
    echoed_header(&r.json(), "traceparent")
}

/// A request carrying the client's sampled trace (a marker: once it is exported, everything
/// queued before it was too).
async fn marker(fx: &Fixture, c: &Collector, n: usize) -> Vec<Got> {
    let trace = format!("{:032x}", fastrand::u128(1..));
    let r = fx
        .send(
            Req::get("/public/marker")
                .header("traceparent", &format!("00-{trace}-{CLIENT_SPAN}-01")),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    spans_of(c, &trace, n).await
}

/// The access-log line of request `id`.
async fn log_line(fx: &Fixture, id: &str) -> Value {
    wait_until(
        &format!("access log line of {id}"),
        Duration::from_secs(10),
        || async {
            let text = std::fs::read_to_string(&fx.access_log).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["request_id"] == id)
                .ok_or_else(|| format!("{} lines", text.lines().count()))
        },
    )
    .await
}

#[tokio::test]
async fn spans_nest_carry_attributes_and_propagate() {
    let c = Collector::start().await;
    let secret = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(secret.path(), "Bearer collector-secret\n").expect("write secret");
    let budgets = "\n[budgets]\n\n[[budgets.rules]]\nname = \"per_sub\"\nkey = [\"claim:sub\"]\nrate = \"100/1s\"\n";
    let fx = traced(
        &c.endpoint(),
        &format!(
            "sample_ratio = 1.0\nservice_name = \"edge\"\nresource = {{ \"deployment.environment\" = \"test\" }}\nheaders = {{ Authorization = \"file:{}\" }}",
            secret.path().display()
        ),
        budgets,
    )
    .await;
    let token = fx.token();
    let r = fx.send(Fixture::ai_req(&token)).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let seen = upstream_traceparent(&r);
    assert_eq!(seen.len(), 1, "the upstream gets one traceparent: {seen:?}");
    let parts: Vec<&str> = seen[0].split('-').collect();
    assert_eq!(
        (parts.len(), parts[0], parts[3]),
        (4, "00", "01"),
        "{seen:?}"
    );
    let trace = parts[1].to_string();

    let spans = spans_of(&c, &trace, 4).await;
    let server = one(&spans, "POST ai");
    let auth = one(&spans, "auth.verify");
    let budget = one(&spans, "budget.decide");
    let attempt = one(&spans, "upstream.attempt");
    assert_eq!(server.span.kind, SERVER);
    assert!(
        server.span.parent_span_id.is_empty(),
        "a new trace: the server span is its root"
    );
    for child in [auth, budget, attempt] {
        assert_eq!(
            child.span.parent_span_id, server.span.span_id,
            "{}",
            child.span.name
        );
        assert!(child.span.start_time_unix_nano >= server.span.start_time_unix_nano);
        assert!(child.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    }
    assert_eq!(
        (auth.span.kind, budget.span.kind, attempt.span.kind),
        (INTERNAL, INTERNAL, CLIENT)
    );
    // the upstream's parent is our attempt span
    assert_eq!(parts[2], hex(&attempt.span.span_id));
    assert_eq!(auth.attr("cc.token_cache").as_deref(), Some("miss"));
    let want = [
        ("http.request.method", "POST"),
        ("http.route", "/ai/"),
        ("http.response.status_code", "200"),
        ("url.path", "/ai/v2/completions"),
        ("server.address", "127.0.0.1"),
        ("client.address", "127.0.0.1"),
        ("network.protocol.version", "1.1"),
        ("cc.sub", SUB),
        ("cc.realm", REALM),
        ("cc.route", "ai"),
    ];
    for (k, v) in want {
        assert_eq!(
            server.attr(k).as_deref(),
            Some(v),
            "server span {k}: {:?}",
            server.span.attributes
        );
    }
    assert_eq!(server.attr("cc.reason"), None);
    assert_eq!(
        attempt.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attempt.attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        server.resource.get("service.name").map(String::as_str),
        Some("edge")
    );
    assert_eq!(
        server
            .resource
            .get("deployment.environment")
            .map(String::as_str),
        Some("test")
    );
    let auth_header = c.state.lock().expect("state").exports[0]
        .get("authorization")
        .cloned();
    assert_eq!(auth_header.as_deref(), Some("Bearer collector-secret"));

    // the access log names the trace
    let id = r.header("x-request-id").expect("request id");
    assert_eq!(log_line(&fx, &id).await["trace_id"], trace.as_str());

    // the same token again: from the cache
    let r = fx.send(Fixture::ai_req(&token)).await;
    let trace2 = upstream_traceparent(&r)[0]
        .split('-')
        .nth(1)
        .map(String::from)
        .expect("trace");
    assert_ne!(trace2, trace, "each request is its own trace");
    let spans = spans_of(&c, &trace2, 4).await;
    assert_eq!(
        one(&spans, "auth.verify").attr("cc.token_cache").as_deref(),
        Some("hit")
    );
}

#[tokio::test]
async fn the_clients_trace_and_sampled_flag_are_honoured() {
    let c = Collector::start().await;
    let fx = traced(&c.endpoint(), "sample_ratio = 0.0\nkeep_errors = false", "").await;

    // sampled by the client: exported as a child of the client's span, tracestate kept
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let r = fx
        .send(
            Req::get("/public/a")
                .header("traceparent", &tp)
                .header("tracestate", "vendor=x"),
        )
        .await;
    let up = upstream_traceparent(&r);
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(
        up[0].starts_with(&format!("00-{CLIENT_TRACE}-")) && up[0].ends_with("-01"),
        "{up:?}"
    );
    assert!(
        !up[0].contains(CLIENT_SPAN),
        "the upstream's parent is our span: {up:?}"
    );
    assert_eq!(echoed_header(&r.json(), "tracestate"), vec!["vendor=x"]);
    let spans = spans_of(&c, CLIENT_TRACE, 2).await;
    let server = one(&spans, "GET public");
    assert_eq!(hex(&server.span.parent_span_id), CLIENT_SPAN);
    assert_eq!(server.span.trace_state, "vendor=x");
    let id = r.header("x-request-id").expect("request id");
    assert_eq!(log_line(&fx, &id).await["trace_id"], CLIENT_TRACE);

    // not sampled by the client: carried on upstream (flag 00), not exported
    let unsampled = "5bf92f3577b34da6a3ce929d0e0e4736";
    let r = fx
        .send(
            Req::get("/public/b")
                .header("traceparent", &format!("00-{unsampled}-{CLIENT_SPAN}-00")),
        )
        .await;
    let up = upstream_traceparent(&r);
    assert!(
        up.len() == 1 && up[0].starts_with(&format!("00-{unsampled}-")) && up[0].ends_with("-00"),
        "{up:?}"
    );

    // malformed (uppercase hex): ignored — a new, unsampled trace; never forwarded
    let bad = format!("00-{}-{CLIENT_SPAN}-01", CLIENT_TRACE.to_uppercase());
    let r = fx
        .send(Req::get("/public/c").header("traceparent", &bad))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream_traceparent(&r), Vec::<String>::new());
    let id = r.header("x-request-id").expect("request id");
    assert_eq!(
        log_line(&fx, &id).await.get("trace_id"),
        None,
        "no trace, no trace_id"
    );

    marker(&fx, &c, 2).await;
    let traces: std::collections::BTreeSet<String> = c.spans().iter().map(Got::trace_hex).collect();
    assert!(
        !traces.contains(unsampled),
        "the client's unsampled trace was exported"
    );
    assert_eq!(
        traces.len(),
        2,
        "only the sampled trace and the marker: {traces:?}"
    );
}

#[tokio::test]
async fn head_sampling_follows_the_ratio() {
    let c = Collector::start().await;
    let fx = traced(&c.endpoint(), "sample_ratio = 0.5\nkeep_errors = false", "").await;
    let n = 200;
    let mut conn = crate::common::H1Conn::connect(fx.gw.addr).await;
    let mut sampled = std::collections::BTreeSet::new();
    for _ in 0..n {
        let r = conn.send(Req::get("/public/x")).await;
        if let Some(tp) = upstream_traceparent(&r).first() {
            sampled.insert(tp.split('-').nth(1).expect("trace id").to_string());
        }
    }
    // Binomial(200, 0.5): 100 ± 7; outside 60..=140 is a 1-in-10^8 event
    assert!(
        (60..=140).contains(&sampled.len()),
        "{} of {n} sampled",
        sampled.len()
    );
    marker(&fx, &c, 1).await;
    let exported: std::collections::BTreeSet<String> = c
        .spans()
        .iter()
        .filter(|g| g.span.name == "GET public" && g.span.parent_span_id.is_empty())
        .map(Got::trace_hex)
        .collect();
    assert_eq!(
        exported, sampled,
        "exactly the traces propagated as sampled were exported"
    );
}

#[tokio::test]
async fn errors_and_slow_requests_are_kept() {
    let c = Collector::start().await;
    let down = crate::common::dead_addr();
    let extra = format!(
        "\n[[routes]]\nname = \"down\"\npath_prefix = \"/down/\"\nupstream = \"down\"\nauth = \"public\"\n\n[[upstreams]]\nname = \"down\"\nendpoints = [\"{down}\"]\nconnect_timeout = \"1s\"\n"
    );
    let fx = traced(
        &c.endpoint(),
        "sample_ratio = 0.0\nkeep_errors = true\nslow_threshold = \"1h\"",
        &extra,
    )
    .await;
    let ok = fx.send(Req::get("/public/fine")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        upstream_traceparent(&ok),
        Vec::<String>::new(),
        "unsampled: nothing propagated"
    );
    let refused = fx.send(Fixture::ai_req("not-a-token")).await;
    assert_eq!(refused.status, 401);
    let failed = fx.send(Req::get("/down/x")).await;
    assert_eq!(failed.status, 502, "{}", failed.describe());
    marker(&fx, &c, 2).await;

    let spans = c.spans();
    let servers: Vec<&Got> = spans.iter().filter(|g| g.span.kind == SERVER).collect();
    assert_eq!(
        servers.len(),
        3,
        "refused, 502 and the marker: {:?}",
        names(&spans)
    );
    let refused_span = servers
        .iter()
        .find(|g| g.span.name == "POST ai")
        .expect("refused request's span");
    assert!(refused_span
        .attr("cc.reason")
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(
        refused_span.attr("http.response.status_code").as_deref(),
        Some("401")
    );
    let failed_span = servers
        .iter()
        .find(|g| g.span.name == "GET down")
        .expect("502's span");
    assert_eq!(
        failed_span.span.status.as_ref().map(|s| s.code),
        Some(2),
        "5xx: status error"
    );
    let trace = failed_span.trace_hex();
    let attempt = one(&c.trace(&trace), "upstream.attempt").clone();
    assert_eq!(attempt.span.status.as_ref().map(|s| s.code), Some(2));
    // the log names exported traces only
    let id = |r: &Resp| r.header("x-request-id").expect("request id");
    assert_eq!(
        log_line(&fx, &id(&failed)).await["trace_id"],
        trace.as_str()
    );
    assert_eq!(log_line(&fx, &id(&ok)).await.get("trace_id"), None);

    // slow: a threshold every request passes keeps them all
    let fx2 = traced(
        &c.endpoint(),
        "sample_ratio = 0.0\nkeep_errors = true\nslow_threshold = \"1ns\"",
        "",
    )
    .await;
    let r = fx2.send(Req::get("/public/slow")).await;
    let id2 = r.header("x-request-id").expect("request id");
    let t = log_line(&fx2, &id2).await["trace_id"]
        .as_str()
        .expect("a slow request is traced")
        .to_string();
    spans_of(&c, &t, 2).await;
}

/// A collector that accepts connections and never answers.
async fn stuck_collector() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_collector_that_is_down_costs_no_latency_and_drops_are_counted() {
    // refused connections: every export fails, and is counted
    let dead = crate::common::dead_addr();
    let fx = traced(&format!("http://{dead}"), "sample_ratio = 1.0", "").await;
    let mut conn = crate::common::H1Conn::connect(fx.gw.addr).await;
    for _ in 0..20 {
        assert_eq!(conn.send(Req::get("/public/x")).await.status, 200);
    }
    wait_until(
        "spans counted as dropped",
        Duration::from_secs(15),
        || async {
            let v = metric(
                &fx.metrics().await,
                "cc_gateway_spans_dropped_total",
                &[("cause", "export_failed")],
            );
            if v >= 40.0 {
                Ok(())
            } else {
                Err(format!("{v}"))
            }
        },
    )
    .await;

    // a collector that never answers: the export thread waits (10 s per export), requests don't
    let (stuck, _task) = stuck_collector().await;
    let fx = traced(&format!("http://{stuck}"), "sample_ratio = 1.0", "").await;
    let mut conn = crate::common::H1Conn::connect(fx.gw.addr).await;
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    for _ in 0..300 {
        let t = Instant::now();
        assert_eq!(conn.send(Req::get("/public/x")).await.status, 200);
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_secs(1),
        "slowest request {worst:?} with a stuck collector"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "300 requests took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sigterm_exports_what_is_queued() {
    let c = Collector::start().await;
    let mut fx = Fixture::with(Opts {
        server_extra: "drain_delay = \"0s\"".into(),
        extra: format!(
            "\n[telemetry]\notlp_endpoint = \"{}\"\nsample_ratio = 1.0\n",
            c.endpoint()
        ),
        ..Opts::default()
    })
    .await;
    let r = fx.send(Req::get("/public/last")).await;
    let trace = upstream_traceparent(&r)[0]
        .split('-')
        .nth(1)
        .map(String::from)
        .expect("trace id");
    // right away: well inside the exporter's batch delay
    let st = std::process::Command::new("kill")
        .args(["-TERM", &fx.gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    wait_until("the gateway to exit", Duration::from_secs(20), || {
        let running = fx.gw.is_running();
        async move {
            if running {
                Err("running".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
    assert_eq!(
        c.trace(&trace).len(),
        2,
        "the last request's spans: {:?}",
        names(&c.spans())
    );
}
