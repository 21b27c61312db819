//! Upstream pools: weighted round robin by count, regional placement and failover and back,
//! active checks at their exact thresholds, passive ejection with back-off, no flapping,
//! fallback → panic mode → 503, health carried over by a reload, `/readyz` independent of
//! backends. Backends are real servers on loopback; a dead endpoint is a reserved loopback port
//! nothing listens on, or a backend the test stopped.

mod backend;
mod keepalive;
// the upstream TLS tests' CA and TLS server, reused as they are
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../upstream_tls/pki.rs"]
mod pki;
#[allow(dead_code, clippy::duplicate_mod)]
#[path = "../upstream_tls/server.rs"]
mod server;

use std::path::PathBuf;
use std::time::Duration;

use backend::{endpoint_json, endpoint_state, Backend};

use crate::common::fixture::write_config;
use crate::common::{dead_addr, metric, wait_until, Gateway, Req, Resp};

/// One worker (a worker's round robin is exact; two would each be exact over their own share),
/// a public catch-all route to `route_upstream`, and the given upstreams.
fn config(dir: &std::path::Path, server_extra: &str, upstreams: &str) -> PathBuf {
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
threads = 1
{server_extra}

[log]
level = "info"

[[routes]]
name = "all"
path_prefix = "/"
upstream = "pool"
auth = "public"
# one try per request: these tests count what each endpoint sees (retries: tests/integration/retries)
retries = {{ attempts = 1 }}

{upstreams}
"#
    );
    write_config(dir, &text)
}

async fn get(gw: &Gateway) -> Resp {
    gw.send(Req::get("/x")).await
}

/// Sends `n` requests; returns how many each backend name answered (in `names` order) and
/// asserts every answer was a 200 from one of them.
async fn spread(gw: &Gateway, n: usize, names: &[&str]) -> Vec<usize> {
    let mut c = vec![0; names.len()];
    for _ in 0..n {
        let r = get(gw).await;
        assert_eq!(r.status, 200, "{}", r.describe());
        let i = names
            .iter()
            .position(|b| *b == r.text())
            .unwrap_or_else(|| panic!("unexpected answer {}", r.describe()));
        c[i] += 1;
    }
    c
}

/// The gateway's `name` for `endpoint` with one more label (`result` or `cause`), scraped now.
async fn endpoint_metric(gw: &Gateway, name: &str, endpoint: &str, label: (&str, &str)) -> f64 {
    metric(&gw.metrics().await, name, &[("endpoint", endpoint), label])
}

async fn wait_state(gw: &Gateway, endpoint: &str, state: &str) {
    wait_until(
        &format!("{endpoint} {state} in /upstreams"),
        Duration::from_secs(10),
        || async {
            let s = endpoint_state(gw.admin, endpoint).await;
            if s == state {
                Ok(())
            } else {
                Err(s)
            }
        },
    )
    .await;
}

#[tokio::test]
async fn weighted_round_robin_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let cfg = config(
        dir.path(),
        "",
        &format!(
            "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{}\", {{ addr = \"{}\", weight = 2 }}, {{ addr = \"{}\", weight = 3 }}]\n",
            a.addr, b.addr, c.addr
        ),
    );
    let gw = Gateway::start(&cfg).await;
    assert_eq!(spread(&gw, 60, &["a", "b", "c"]).await, vec![10, 20, 30]);
    let m = gw.metrics().await;
    for (be, n) in [(&a, 10.0), (&b, 20.0), (&c, 30.0)] {
        let ep = be.addr.to_string();
        let labels = [
            ("upstream", "pool"),
            ("endpoint", ep.as_str()),
            ("result", "ok"),
        ];
        assert_eq!(metric(&m, "cc_gateway_upstream_requests_total", &labels), n);
    }
    let v = Req::get("/upstreams").send(gw.admin).await.json();
    assert_eq!(v["upstreams"][0]["endpoints"][2]["weight"], 3, "{v}");
    assert_eq!(v["upstreams"][0]["endpoints"][2]["state"], "healthy", "{v}");
    assert_eq!(gw.admin_post("/upstreams").await.status, 405);
}

/// The gateway's region is preferred while one of its endpoints passes its checks; the other
/// region serves only while none does, and traffic comes back when it recovers.
#[tokio::test]
async fn region_preference_failover_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let home = Backend::start("home").await;
    let home2 = Backend::start("home2").await;
    let away = Backend::start("away").await;
    let cfg = config(
        dir.path(),
        "region = \"europe-west1\"",
        &format!(
            "[[upstreams]]\nname = \"pool\"\n\
             endpoints = [\"{}\", {{ addr = \"{}\", region = \"europe-west1\" }}, {{ addr = \"{}\", region = \"us-east1\", weight = 5 }}]\n\
             health_check = {{ path = \"/hz\", interval = \"50ms\", timeout = \"1s\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n",
            home.addr, home2.addr, away.addr
        ),
    );
    let gw = Gateway::start(&cfg).await;
    assert_eq!(
        spread(&gw, 10, &["home", "home2", "away"]).await,
        vec![5, 5, 0]
    );
    // one home endpoint down: the other home one takes everything, the other region nothing
    home.set_health(503);
    wait_state(&gw, &home.addr.to_string(), "unhealthy").await;
    assert_eq!(
        spread(&gw, 10, &["home", "home2", "away"]).await,
        vec![0, 10, 0]
    );
    // the whole home region down: the other region
    home2.set_health(503);
    wait_state(&gw, &home2.addr.to_string(), "unhealthy").await;
    assert_eq!(
        spread(&gw, 10, &["home", "home2", "away"]).await,
        vec![0, 0, 10]
    );
    let m = gw.metrics().await;
    let ep = home2.addr.to_string();
    let labels = [("upstream", "pool"), ("endpoint", ep.as_str())];
    assert_eq!(metric(&m, "cc_gateway_endpoint_healthy", &labels), 0.0);
    // and back as soon as one home endpoint recovers
    home.set_health(200);
    wait_state(&gw, &home.addr.to_string(), "healthy").await;
    assert_eq!(
        spread(&gw, 10, &["home", "home2", "away"]).await,
        vec![10, 0, 0]
    );
    let v = endpoint_json(gw.admin, &away.addr.to_string()).await;
    assert_eq!(v["region"], "us-east1");
    assert_eq!(v["local"], false);
}

/// Active checks change an endpoint's state exactly at `unhealthy_threshold` failures in a
/// row and `healthy_threshold` passes in a row; alternating results never change it. The
/// backend reads the gateway's view before answering each check, so `seen[k]` is the state
/// after exactly k scripted results.
#[tokio::test]
async fn active_checks_flip_at_exact_thresholds_and_never_flap() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let cfg = config(
        dir.path(),
        "",
        &format!(
            "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{}\"]\n\
             health_check = {{ path = \"/hz\", interval = \"20ms\", timeout = \"5s\", healthy_threshold = 2, unhealthy_threshold = 3 }}\n",
            b.addr
        ),
    );
    let gw = Gateway::start(&cfg).await;
    let (s, f) = (200, 503);
    let script = [s, s, f, f, s, f, f, s, f, f, f, s, f, s, s, s];
    b.health_script(gw.admin, &b.addr.to_string(), &script);
    wait_until("the scripted checks", Duration::from_secs(20), || async {
        if b.script_done() && b.seen().len() == script.len() {
            Ok(())
        } else {
            Err(format!("{:?}", b.seen()))
        }
    })
    .await;
    // the state after the last scripted result, seen at the next check
    let last = endpoint_state(gw.admin, &b.addr.to_string()).await;
    let mut seen = b.seen();
    seen.push(last);
    let (h, u) = ("healthy", "unhealthy");
    let expected = [h, h, h, h, h, h, h, h, h, h, h, u, u, u, u, h, h];
    assert_eq!(seen, expected);
    let ep = b.addr.to_string();
    let ejections = "cc_gateway_upstream_ejections_total";
    let cause = ("cause", "health_check");
    assert_eq!(endpoint_metric(&gw, ejections, &ep, cause).await, 1.0);
}

/// Passive ejection: `consecutive_failures` in a row eject for `ejection`; failing again right
/// after an ejection ends ejects for twice as long, up to `max_ejection`. While ejected the
/// endpoint gets no request at all: its failures are exactly the first run plus one per
/// later ejection.
#[tokio::test]
async fn passive_ejection_backs_off_while_failing() {
    let dir = tempfile::tempdir().unwrap();
    let live = Backend::start("live").await;
    let dead = dead_addr();
    let cfg = config(
        dir.path(),
        "",
        &format!(
            "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{}\", \"{}\"]\n\
             outlier = {{ consecutive_failures = 2, ejection = \"300ms\", max_ejection = \"1s\" }}\n",
            live.addr, dead
        ),
    );
    let gw = Gateway::start(&cfg).await;
    let d = dead.to_string();
    let mut lengths = Vec::new();
    let mut was_ejected = false;
    let mut failed = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lengths.len() < 4 {
        let r = get(&gw).await;
        match r.status {
            200 => assert_eq!(r.text(), "live"),
            502 => failed += 1,
            _ => panic!("{}", r.describe()),
        }
        let v = endpoint_json(gw.admin, &d).await;
        let ejected = v["state"] == "ejected";
        if ejected && !was_ejected {
            lengths.push(v["ejection_ms"].as_u64().unwrap_or(0));
        }
        was_ejected = ejected;
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for four ejections: {lengths:?} {v}"
        );
    }
    assert_eq!(lengths, vec![300, 600, 1000, 1000]);
    // 2 to eject, then 1 per back-off step: never a request while ejected
    assert_eq!(failed, 2 + 3);
    let requests = "cc_gateway_upstream_requests_total";
    let result = ("result", "connect");
    assert_eq!(endpoint_metric(&gw, requests, &d, result).await, 5.0);
    let ejections = "cc_gateway_upstream_ejections_total";
    let cause = ("cause", "consecutive_failures");
    assert_eq!(endpoint_metric(&gw, ejections, &d, cause).await, 4.0);
    let v = endpoint_json(gw.admin, &d).await;
    assert!(
        v["last_error"].as_str().unwrap_or("").contains("connect"),
        "{v}"
    );
}

/// 5xx answers count as failures, but only in a row: alternating 500/200 never ejects.
#[tokio::test]
async fn alternating_answers_never_eject() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let cfg = config(
        dir.path(),
        "",
        &format!(
            "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{}\"]\n\
             outlier = {{ consecutive_failures = 2, ejection = \"1m\" }}\n",
            b.addr
        ),
    );
    let gw = Gateway::start(&cfg).await;
    b.script(&[500, 200].repeat(20));
    for i in 0..40 {
        let r = get(&gw).await;
        assert_eq!(r.status, if i % 2 == 0 { 500 } else { 200 }, "{i}");
    }
    assert_eq!(
        endpoint_state(gw.admin, &b.addr.to_string()).await,
        "healthy"
    );
    // two in a row do
    b.script(&[500, 500]);
    get(&gw).await;
    get(&gw).await;
    assert_eq!(
        endpoint_state(gw.admin, &b.addr.to_string()).await,
        "ejected"
    );
    let ep = b.addr.to_string();
    let requests = "cc_gateway_upstream_requests_total";
    assert_eq!(
        endpoint_metric(&gw, requests, &ep, ("result", "5xx")).await,
        22.0
    );
}

/// Every endpoint out: the fallback upstream serves; its endpoints out too: panic mode sends
/// to the primary's least recently failed endpoint anyway; that one dead: 503
/// `upstream_unavailable`. `/readyz` stays 200 throughout.
#[tokio::test]
async fn all_down_then_fallback_then_panic_then_503() {
    let dir = tempfile::tempdir().unwrap();
    let p = Backend::start("primary").await;
    let s = Backend::start("secondary").await;
    let hc = "health_check = { path = \"/hz\", interval = \"50ms\", healthy_threshold = 1, unhealthy_threshold = 1 }";
    let cfg = config(
        dir.path(),
        "",
        &format!(
            "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{}\"]\nfallback = [\"spare\"]\n{hc}\n\
             [[upstreams]]\nname = \"spare\"\nendpoints = [\"{}\"]\n{hc}\n",
            p.addr, s.addr
        ),
    );
    let gw = Gateway::start(&cfg).await;
    assert_eq!(get(&gw).await.text(), "primary");
    p.set_health(503);
    wait_state(&gw, &p.addr.to_string(), "unhealthy").await;
    assert_eq!(get(&gw).await.text(), "secondary");
    s.set_health(503);
    wait_state(&gw, &s.addr.to_string(), "unhealthy").await;
    // panic mode: the primary's endpoint still answers requests (only its checks fail)
    let r = get(&gw).await;
    assert_eq!((r.status, r.text().as_str()), (200, "primary"));
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    p.stop();
    let r = get(&gw).await;
    crate::common::assert_error(&r, 503, "upstream_unavailable");
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    let m = gw.metrics().await;
    let labels = [("upstream", "spare"), ("result", "ok")];
    assert_eq!(
        metric(&m, "cc_gateway_upstream_requests_total", &labels),
        1.0
    );
}

/// A reload that changes the pool (a weight) keeps the health of the endpoints it still has:
/// an ejected endpoint stays ejected, for new requests.
#[tokio::test]
async fn reload_carries_health_over() {
    let dir = tempfile::tempdir().unwrap();
    let live = Backend::start("live").await;
    let dead = dead_addr();
    let ups = |w: u32| {
        format!(
            "[[upstreams]]\nname = \"pool\"\nendpoints = [{{ addr = \"{}\", weight = {w} }}, \"{}\"]\n\
             outlier = {{ consecutive_failures = 1, ejection = \"10m\" }}\n",
            live.addr, dead
        )
    };
    let cfg = config(dir.path(), "", &ups(1));
    let gw = Gateway::start(&cfg).await;
    let d = dead.to_string();
    wait_until(
        "the dead endpoint ejected",
        Duration::from_secs(10),
        || async {
            get(&gw).await;
            let s = endpoint_state(gw.admin, &d).await;
            if s == "ejected" {
                Ok(())
            } else {
                Err(s)
            }
        },
    )
    .await;
    config(dir.path(), "", &ups(3));
    let r = gw.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = endpoint_json(gw.admin, &live.addr.to_string()).await;
    assert_eq!(v["weight"], 3, "the reload took effect: {v}");
    assert_eq!(endpoint_state(gw.admin, &d).await, "ejected");
    assert_eq!(spread(&gw, 5, &["live"]).await, vec![5]);
}

/// Peak EWMA: after one look at each, the slow endpoint gets (almost) nothing.
#[tokio::test]
async fn peak_ewma_avoids_the_slow_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let fast = Backend::start("fast").await;
    let slow = Backend::start("slow").await;
    slow.set_delay(Duration::from_millis(200));
    let cfg = config(
        dir.path(),
        "",
        &format!(
            "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{}\", \"{}\"]\nbalance = \"peak_ewma\"\n",
            fast.addr, slow.addr
        ),
    );
    let gw = Gateway::start(&cfg).await;
    let c = spread(&gw, 40, &["fast", "slow"]).await;
    // the slow one is tried while unmeasured; a 200 ms EWMA then costs more than the fast
    // one's for the rest of the run (it halves only after ~7 s idle)
    assert!(c[1] <= 2, "{c:?}");
    let v = endpoint_json(gw.admin, &slow.addr.to_string()).await;
    assert!(v["ewma_latency_ms"].as_f64().unwrap_or(0.0) >= 150.0, "{v}");
}

/// A hostname endpoint is resolved; each address becomes an endpoint that carries the name.
#[tokio::test]
async fn hostname_endpoints_are_resolved_to_their_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let name = format!("localhost:{}", b.addr.port());
    let cfg = config(
        dir.path(),
        "",
        &format!(
            "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{name}\"]\nresolve_interval = \"100ms\"\n\
             health_check = {{ path = \"/hz\", interval = \"50ms\" }}\n"
        ),
    );
    let mut expected: Vec<String> = tokio::net::lookup_host(name.as_str())
        .await
        .expect("localhost resolves")
        .map(|a| a.to_string())
        .collect();
    expected.sort();
    expected.dedup();
    let gw = Gateway::start(&cfg).await;
    let got = wait_until("localhost resolved", Duration::from_secs(10), || async {
        let v = Req::get("/upstreams").send(gw.admin).await.json();
        let eps = v["upstreams"][0]["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut addrs: Vec<String> = eps
            .iter()
            .filter(|e| e["host"] == "localhost")
            .map(|e| e["endpoint"].as_str().unwrap_or("").to_string())
            .collect();
        addrs.sort();
        if addrs.len() == eps.len() && !addrs.is_empty() {
            Ok(addrs)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(got, expected);
    assert!(got.contains(&b.addr.to_string()), "{got:?}");
    // checks of the resolved address name the host (a name-based virtual host expects it)
    let host = wait_until(
        "a check of the resolved address",
        Duration::from_secs(10),
        || async {
            match b.health_host() {
                Some(h) if h == name => Ok(h),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(host, name);
}

/// `upstream`'s endpoints in `/upstreams`.
async fn endpoints_of(gw: &Gateway, upstream: &str) -> Vec<serde_json::Value> {
    let v = Req::get("/upstreams").send(gw.admin).await.json();
    v["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["name"] == upstream)
        .and_then(|u| u["endpoints"].as_array().cloned())
        .unwrap_or_default()
}

/// Active checks go the way requests go: HTTP/2 over TLS with the client certificate, the
/// configured host name as the server name of the address it resolved to. Proof: a check that
/// expects 204 fails on the upstream's 200 (so the handshake, mTLS and HTTP/2 worked), one
/// without the client certificate fails in TLS, and requests reach the upstream.
#[tokio::test]
async fn active_checks_use_the_upstreams_protocol_and_tls() {
    use pki::{write, Ca};
    use server::{Opts, TlsUpstream};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend CA");
    let clients = Ca::new("clients CA");
    let leaf = ca.server(&["localhost"]);
    let me = clients.client("gw");
    let up = TlsUpstream::start(Opts {
        leaf: &leaf,
        client_ca: Some(&clients.pem),
        alpn: &[b"h2"],
    })
    .await;
    let ca_file = write(dir.path(), "ca.pem", &ca.pem);
    let cert = write(dir.path(), "gw.pem", &me.cert_pem);
    let key = write(dir.path(), "gw.key", &me.key_pem);
    let name = format!("localhost:{}", up.addr.port());
    let tls = format!(
        "protocol = \"h2\"\ntls = {{ ca = \"{}\", client_cert = \"{}\", client_key = \"{}\" }}",
        ca_file.display(),
        cert.display(),
        key.display()
    );
    let hc = |expect: u16| {
        format!("health_check = {{ path = \"/hz\", interval = \"50ms\", healthy_threshold = 1, unhealthy_threshold = 1, expect_status = [{expect}] }}")
    };
    let ups = format!(
        "[[upstreams]]\nname = \"pool\"\nendpoints = [\"{name}\"]\n{tls}\n{}\n\
         [[upstreams]]\nname = \"expects-204\"\nendpoints = [\"{name}\"]\n{tls}\n{}\n\
         [[upstreams]]\nname = \"no-cert\"\nendpoints = [\"{name}\"]\nprotocol = \"h2\"\ntls = {{ ca = \"{}\" }}\n{}\n",
        hc(200),
        hc(204),
        ca_file.display(),
        hc(200),
    );
    let gw = Gateway::start(&config(dir.path(), "", &ups)).await;
    let ours = up.addr.to_string();
    let wait_for = |upstream: &'static str, state: &'static str, error: &'static str| {
        let (gw, ours) = (&gw, ours.clone());
        async move {
            wait_until(
                &format!("{upstream}: {ours} {state} ({error})"),
                Duration::from_secs(10),
                || async {
                    let eps = endpoints_of(gw, upstream).await;
                    let e = eps.iter().find(|e| e["endpoint"] == ours.as_str());
                    match e {
                        Some(e)
                            if e["state"] == state
                                && e["host"] == "localhost"
                                && e["last_error"].as_str().unwrap_or("").contains(error) =>
                        {
                            Ok(())
                        }
                        _ => Err(format!("{eps:?}")),
                    }
                },
            )
            .await
        }
    };
    wait_for("expects-204", "unhealthy", "answered 200 OK").await;
    wait_for("no-cert", "unhealthy", "health check:").await;
    let e = endpoints_of(&gw, "no-cert").await;
    let e = e.iter().find(|e| e["endpoint"] == ours.as_str()).cloned();
    let err = e.map(|e| e["last_error"].to_string()).unwrap_or_default();
    assert!(
        !err.contains("answered"),
        "no HTTP answer without the client certificate: {err}"
    );
    // the checked pool serves: every other address of "localhost" (::1, where nothing listens)
    // is out first
    wait_until(
        "only our address usable",
        Duration::from_secs(10),
        || async {
            let eps = endpoints_of(&gw, "pool").await;
            let other_in = eps
                .iter()
                .any(|e| e["endpoint"] != ours.as_str() && e["state"] == "healthy");
            let ours_in = eps
                .iter()
                .any(|e| e["endpoint"] == ours.as_str() && e["state"] == "healthy");
            if ours_in && !other_in {
                Ok(())
            } else {
                Err(format!("{eps:?}"))
            }
        },
    )
    .await;
    let r = get(&gw).await;
    assert_eq!(r.text(), "HTTP/2.0 client_cert=true", "{}", r.describe());
}
