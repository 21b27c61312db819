//! Micro-benchmark of one budget decision in the memory store (plan → decide → RateLimit
//! headers), in-process: `cargo bench --bench budget`. Reports ns per decision for one and for
//! three rules, and a no-budget baseline (the route lookup the pipeline does anyway) measured
//! in the same run. Not a test: nothing here asserts on time.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Instant;

use cc_gateway::budget::Budgets;
use cc_gateway::config::Config;
use http::{HeaderMap, HeaderValue};

fn config(rules: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
[[issuers]]
name = "i"
issuer = "https://i.example"
jwks_file = "/dev/null"
[[routes]]
name = "ai"
path_prefix = "/ai/"
upstream = "ai"
audience = "a"
[[upstreams]]
name = "ai"
endpoints = ["127.0.0.1:1"]
[budgets]
store = "memory"
{rules}
"#
    );
    match Config::parse(&text, Path::new("bench.toml")) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    }
}

const ONE: &str = r#"
[[budgets.rules]]
name = "instance-rate"
key = ["header:x-instance"]
rate = "100000000/1s"
burst = 1000000
"#;

const THREE: &str = r#"
[[budgets.rules]]
name = "instance-rate"
key = ["header:x-instance"]
rate = "100000000/1s"
burst = 1000000
[[budgets.rules]]
name = "user-daily"
key = ["header:x-instance", "header:x-user"]
quota = "1000000000/1d"
[[budgets.rules]]
name = "route-rate"
key = ["route"]
rate = "100000000/1s"
burst = 1000000
"#;

fn run(name: &str, rules: &str, n: u32, keys: u32) -> f64 {
    let cfg = config(rules);
    let Some(b) = cfg.budgets.as_ref() else {
        panic!("no budgets")
    };
    let budgets = match Budgets::new_from(b, cfg.routes.len(), None) {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    };
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let headers: Vec<HeaderMap> = (0..keys)
        .map(|k| {
            let mut h = HeaderMap::new();
            h.insert("x-instance", HeaderValue::from(k));
            h.insert("x-user", HeaderValue::from(k * 7));
            h
        })
        .collect();
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => panic!("{e}"),
    };
    let ns = rt.block_on(async {
        let started = Instant::now();
        for i in 0..n {
            let h = &headers[(i % keys) as usize];
            let Some(plan) = budgets.plan(0, "ai", None, None, h, ip) else {
                panic!("no plan")
            };
            match budgets.decide(plan).await {
                Ok(h) => {
                    black_box(h);
                }
                Err(r) => panic!("rejected: {r:?}"),
            }
        }
        started.elapsed().as_nanos() as f64 / n as f64
    });
    println!("{name:40} {ns:8.0} ns/decision");
    ns
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a smoke test
    let n = if std::env::args().any(|a| a == "--bench") {
        2_000_000
    } else {
        1_000
    };
    // baseline: what a request without budgets pays here (a header lookup)
    let h = {
        let mut h = HeaderMap::new();
        h.insert("x-instance", HeaderValue::from(1));
        h
    };
    let started = Instant::now();
    for _ in 0..n {
        black_box(black_box(&h).get("x-instance"));
    }
    let base = started.elapsed().as_nanos() as f64 / n as f64;
    println!("{:40} {base:8.0} ns", "baseline (header lookup)");
    let keys = 10_000.min(n);
    run("one rate rule, one key", ONE, n, 1);
    run("one rate rule, 10k keys", ONE, n, keys);
    run("three rules, one key", THREE, n, 1);
    run("three rules, 10k keys", THREE, n, keys);
}
