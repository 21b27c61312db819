//! The shipped deploy files (`deploy/`) are checked by the tools that consume them, where those
//! run here, and against a live gateway:
//!
//! - Prometheus rules: `promtool check rules` and `promtool test rules` (the unit tests in
//!   `alerts.test.yml`); every alert has a unit test and a line in docs/operations.md.
//! - The Grafana dashboard: well-formed (ids, grid, datasource variable), and every query parses
//!   as PromQL (`promtool check rules` on the queries as recording rules).
//! - Every `cc_gateway_*` metric named by the dashboard or the rules is exported by a live
//!   gateway's `/metrics`: a renamed metric breaks this test, not the operator's pager.
//! - The systemd unit: `systemd-analyze verify`, and `systemd-analyze security` under a bound.
//! - The Dockerfile: no container daemon in CI to build it, and no well-kept Dockerfile linter
//!   in Debian; so the facts that tie it to the rest are checked (files copied exist, ports and
//!   health-check address are the example config's, non-root), and its health-check script is
//!   run against a live gateway.
//! - The Kubernetes manifest: its config passes `cc-gateway check`, ports, probe paths (answered
//!   on a live admin listener), grace period vs preStop + drain + shutdown, security context.
//!
//! promtool comes from `scripts/prereqs.sh` (run by `make test`); like redis-server for the
//! budget tests, a missing promtool fails these tests rather than skipping them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::common::fixture::q;
use crate::common::gateway::BIN;
use crate::common::servers::read_head;
use crate::common::wait::DEADLINE;
use crate::common::*;
use crate::tls::{client, send_tls, tls_addr, tls_line, Ca};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// promtool: `$PROMTOOL`, else on `PATH`, else where `scripts/prereqs.sh` extracts it.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMTOOL") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file());
    if let Some(p) = on_path {
        return p;
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("cc-gateway/promtool/promtool"));
    match cache {
        Some(p) if p.is_file() => p,
        _ => panic!(
            "promtool not found (PROMTOOL, PATH, {cache:?}): run scripts/prereqs.sh (make test does)"
        ),
    }
}

/// A duration of the config syntax used in the shipped files: "500ms", "30s", "5m", "1h".
fn duration(s: &str) -> Duration {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .unwrap_or_else(|e| panic!("duration {s:?}: {e}"));
    match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => panic!("duration {s:?}: unit {other:?} not handled by this test"),
    }
}

/// The drain a config asks for on SIGTERM: `server.drain_delay` (default 5 s, issue 13) plus
/// `server.shutdown_timeout` (default 10 s).
fn drain_and_shutdown(config: &toml::Value) -> Duration {
    let server = &config["server"];
    let get = |key: &str, default: &str| {
        duration(server.get(key).and_then(|v| v.as_str()).unwrap_or(default))
    };
    get("drain_delay", "5s") + get("shutdown_timeout", "10s")
}

fn example_config() -> toml::Value {
    let text = read(&repo().join("examples/gateway.toml"));
    toml::from_str(&text).expect("examples/gateway.toml parses")
}

/// The port of an `IP:port` listen address.
fn port(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

// ---------------------------------------------------------------------------------------------
// Prometheus rules

fn alert_rules() -> Vec<Yaml> {
    let text = read(&deploy("prometheus/alerts.yml"));
    let doc: Yaml = serde_yaml_ng::from_str(&text).expect("alerts.yml is YAML");
    doc["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let promtool = promtool();
    let dir = deploy("prometheus");
    let o = run(Command::new(&promtool)
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    assert!(
        o.status.success(),
        "promtool check rules:\n{}",
        describe_output(&o)
    );
    let o = run(Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(&dir));
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("SUCCESS"),
        "promtool test rules:\n{}",
        describe_output(&o)
    );

    // every alert is unit-tested, runbook-annotated and documented for the operator
    let tests: Yaml =
        serde_yaml_ng::from_str(&read(&dir.join("alerts.test.yml"))).expect("alerts.test.yml");
    let tested: BTreeSet<String> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| {
            t["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a["alertname"].as_str().map(str::to_string))
        .collect();
    let docs = read(&repo().join("docs/operations.md"));
    let rules = alert_rules();
    assert!(rules.len() >= 8, "{} alert rules", rules.len());
    for rule in &rules {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        assert!(
            tested.contains(name),
            "{name} has no unit test in alerts.test.yml"
        );
        for key in ["summary", "description", "runbook"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: no {key} annotation"
            );
        }
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["page", "warn", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is not explained in docs/operations.md"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

fn dashboard() -> Json {
    let text = read(&deploy("grafana/cc-gateway.json"));
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard: panel targets and annotations.
fn dashboard_queries(d: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("every target has an expr");
            out.push((
                p["title"].as_str().unwrap_or("?").to_string(),
                expr.to_string(),
            ));
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {}", a["name"]), expr.to_string()));
        }
    }
    out
}

/// A Grafana query with its variables replaced by what Prometheus would get.
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$route", ".*")
}

#[test]
fn dashboard_is_well_formed_and_every_query_parses() {
    let d = dashboard();
    let vars = d["templating"]["list"]
        .as_array()
        .expect("template variables");
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus datasource variable"
    );
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id taken"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().expect("x"), g["w"].as_u64().expect("w"));
        assert!(x + w <= 24, "{title}: wider than the grid");
        if p["type"] == "row" {
            continue;
        }
        // the datasource is the variable, so the dashboard imports into any Grafana
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }

    // promtool parses PromQL only inside rule files: every query becomes a recording rule
    let queries = dashboard_queries(&d);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let expr = serde_json::to_string(&substituted(expr)).expect("a JSON string is YAML");
        rules.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {expr}\n"
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &rules).expect("writing the queries");
    let o = run(Command::new(promtool())
        .arg("check")
        .arg("rules")
        .arg(&file));
    assert!(
        o.status.success(),
        "a dashboard query does not parse:\n{}\n{rules}",
        describe_output(&o)
    );
}

/// Every `cc_gateway_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("cc_gateway_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The names a `/metrics` text exports: every sample's (histograms' `_bucket`, `_sum` and
/// `_count` included) and every family's `# TYPE` line.
fn exported(text: &str) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = crate::common::metrics::parse(text)
        .into_iter()
        .map(|s| s.name)
        .collect();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split_whitespace().next() {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// An OpenAI-style upstream for a `kind = "ai"` route: a request for [`Self::WITH_USAGE`] gets
/// the shared `openai.json` fixture (usage reported, model gpt-4o), anything else an event
/// stream in a shape no parser knows (usage missing). Content-Length, then the connection
/// closes. Requests must come without a body: closing on unread bytes would send a reset,
/// which can cost the gateway the end of the answer.
struct AiUpstream {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AiUpstream {
    const WITH_USAGE: &'static str = "/v1/chat/completions";
    const WITHOUT_USAGE: &'static str = "/v1/unknown";

    async fn start() -> AiUpstream {
        let reply = |ct: &str, body: Vec<u8>| {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        };
        let with = Arc::new(reply("application/json", crate::ai::fixture("openai.json")));
        let without = Arc::new(reply(
            "text/event-stream",
            crate::ai::fixture("unknown.sse"),
        ));
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (with, without) = (with.clone(), without.clone());
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut s).await else {
                        return;
                    };
                    let line = String::from_utf8_lossy(&head);
                    let usage = line
                        .lines()
                        .next()
                        .is_some_and(|l| l.contains(AiUpstream::WITH_USAGE));
                    let _ = s.write_all(if usage { &with } else { &without }).await;
                });
            }
        });
        AiUpstream { addr, task }
    }

    /// A public AI route `/<name>/` to this upstream, and the price of its model.
    fn config(&self, name: &str) -> String {
        format!(
            r#"{}
[[prices]]
model = "gpt-4o*"
input = 2.5
output = 10
cache_read = 1.25
"#,
            crate::common::llm::ai_route(name, self.addr)
        )
    }
}

impl Drop for AiUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_and_rules_name_is_exported_by_a_live_gateway() {
    let mut named = metric_names(&read(&deploy("grafana/cc-gateway.json")));
    named.extend(metric_names(&read(&deploy("prometheus/alerts.yml"))));
    assert!(
        named.contains("cc_gateway_requests_total") && named.len() >= 15,
        "names found: {named:?}"
    );

    // One gateway with what labelled series need to exist: a TLS listener, budget rules (one
    // counted in tokens), an upstream that refuses connections (ejected by its one failure), an
    // upstream failing its health checks, and an AI route; then requests of each kind and a
    // reload.
    let ca = Ca::new("deploy test CA");
    let certs = tempfile::tempdir().expect("temp dir");
    let (c, k) = ca
        .leaf("edge", &["gw.test"], &[])
        .write(certs.path(), "edge");
    let (dead, checked) = (dead_addr(), dead_addr());
    let llm = AiUpstream::start().await;
    let fx = Fixture::with(Opts {
        server_extra: tls_line(&[(&c, &k, &[])], ""),
        budgets: r#"
[budgets]
store = "memory"

[[budgets.rules]]
name = "per-sub"
routes = ["ai"]
key = ["claim:sub"]
rate = "600/1m"
burst = 50

[[budgets.rules]]
name = "llm-tokens"
routes = ["llm"]
key = ["route"]
quota = "1000000/1d"
unit = "tokens"
"#
        .to_string(),
        extra: format!(
            r#"
[[routes]]
name = "dead"
path_prefix = "/dead/"
upstream = "dead"
auth = "public"
retries = {{ attempts = 1 }}

[[upstreams]]
name = "dead"
endpoints = [{dead}]
connect_timeout = "1s"
outlier = {{ consecutive_failures = 1, ejection = "5m" }}

[[upstreams]]
name = "checked"
endpoints = [{checked}]
health_check = {{ path = "/hz", interval = "50ms", unhealthy_threshold = 1 }}

[[tunnels]]
name = "onprem"
issuer = "test"
audience = "cc-gateway-tunnel"
subjects = ["agent-1"]

{ai}"#,
            dead = q(&dead.to_string()),
            checked = q(&checked.to_string()),
            ai = llm.config("llm"),
        ),
        ..Opts::default()
    })
    .await;
    fx.expect_ok(Fixture::ai_req(&fx.token())).await;
    fx.expect_refused(Req::get("/ai/x"), 401, "missing_token")
        .await;
    let r = fx.send(Req::get("/dead/x")).await;
    assert_eq!(r.status, 502, "{}", r.describe());
    for path in [AiUpstream::WITH_USAGE, AiUpstream::WITHOUT_USAGE] {
        let r = fx.send(Req::post(&format!("/llm{path}"), "")).await;
        assert_eq!(r.status, 200, "{path}: {}", r.describe());
    }
    let r = send_tls(
        tls_addr(&fx.gw),
        "gw.test",
        client(&ca, None),
        Req::get("/public/x"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let r = fx.gw.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.describe());
    wait_metric(
        &fx.gw,
        "cc_gateway_upstream_errors_total",
        &[("upstream", "dead")],
        1.0,
    )
    .await;
    // the series the "Upstream endpoints" row and alerts read, with the values that mean
    // something: the refused connect ejected "dead", the checks took "checked" out
    wait_metric(
        &fx.gw,
        "cc_gateway_upstream_ejections_total",
        &[("upstream", "dead"), ("cause", "consecutive_failures")],
        1.0,
    )
    .await;
    for upstream in ["dead", "checked"] {
        wait_until(
            &format!("upstream {upstream} has no healthy endpoint"),
            DEADLINE,
            || async {
                let m = fx.metrics().await;
                let v = metric(&m, "cc_gateway_endpoint_healthy", &[("upstream", upstream)]);
                if v == 0.0 {
                    Ok(())
                } else {
                    Err(format!("{v} healthy"))
                }
            },
        )
        .await;
    }
    // the "AI usage" row's: openai.json's 1200 input tokens, and one response without usage
    wait_metric(
        &fx.gw,
        "cc_gateway_ai_tokens_total",
        &[("route", "llm"), ("kind", "input")],
        1200.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        "cc_gateway_ai_usage_missing_total",
        &[("route", "llm")],
        1.0,
    )
    .await;
    wait_metric(
        &fx.gw,
        "cc_gateway_budget_unmetered_total",
        &[("rule", "llm-tokens")],
        1.0,
    )
    .await;
    let mut have = exported(&fx.metrics().await);

    // PROXY protocol series exist only on a gateway that expects the header (which every
    // request above would then need): a second gateway, for its /metrics only
    let pp = Fixture::with(Opts {
        server_extra: "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]".into(),
        ..Opts::default()
    })
    .await;
    have.extend(exported(&pp.metrics().await));

    let missing: Vec<&String> = named.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not exported by the gateway: {missing:?}\nexported: {have:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// systemd

/// `Key=value` lines of a unit file (comments and sections skipped), in order.
fn unit_directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn systemd_unit_verifies_and_keeps_its_sandbox() {
    let path = deploy("systemd/cc-gateway.service");
    let text = read(&path);
    let directives = unit_directives(&text);
    let value = |key: &str| -> Vec<&str> {
        directives
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, expected) in [
        ("Type", "notify"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("ConfigurationDirectory", "cc-gateway"),
        ("StateDirectory", "cc-gateway"),
    ] {
        assert_eq!(value(key), vec![expected], "{key}= in {}", path.display());
    }
    // systemd must not SIGKILL a drain in progress (the unit runs /etc/cc-gateway/gateway.toml,
    // which starts as examples/gateway.toml)
    let stop = duration(value("TimeoutStopSec").first().expect("TimeoutStopSec"));
    let drain = drain_and_shutdown(&example_config());
    assert!(
        stop > drain,
        "TimeoutStopSec {stop:?} <= drain + shutdown {drain:?}"
    );
    let exec_start = value("ExecStart");
    let exec = exec_start.first().expect("ExecStart");
    assert!(
        exec.contains(" run --config /etc/cc-gateway/gateway.toml"),
        "ExecStart={exec}: the config in ConfigurationDirectory"
    );

    // `systemd-analyze verify` checks that every Exec*= command exists and is executable: the
    // unit's /usr/local/bin/cc-gateway is not installed here, so a copy names the built binary
    // instead (everything else unchanged). The copy keeps the unit's file name, which systemd
    // takes as the unit name.
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("cc-gateway.service");
    assert!(
        text.contains("/usr/local/bin/cc-gateway "),
        "the unit's binary path changed"
    );
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/cc-gateway ", &format!("{BIN} ")),
    )
    .expect("writing the unit copy");
    let o = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    // an unknown or misspelt directive is only a warning (exit 0) on stderr: none allowed
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        describe_output(&o)
    );
    // the sandbox as systemd scores it (0 best .. 100): 1.7 when written; 2.0 allows slack,
    // dropping a protection such as ProtectSystem or the system call filter exceeds it
    let o = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&copy));
    assert!(
        o.status.success(),
        "systemd-analyze security:\n{}",
        describe_output(&o)
    );
}

// ---------------------------------------------------------------------------------------------
// Docker

/// Dockerfile instructions (continuation lines joined, comments dropped): `(INSTRUCTION, args)`.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&deploy("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(t);
                let whole = std::mem::take(&mut current);
                if let Some((i, args)) = whole.split_once(char::is_whitespace) {
                    out.push((i.to_ascii_uppercase(), args.trim().to_string()));
                }
            }
        }
    }
    out
}

#[test]
fn dockerfile_matches_the_example_config_and_runs_as_non_root() {
    let ins = dockerfile();
    let all = |name: &str| -> Vec<&str> {
        ins.iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let froms = all("FROM");
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let runtime_start = ins.iter().rposition(|(i, _)| i == "FROM").expect("a FROM");
    let runtime = &ins[runtime_start..];

    // every file copied from the build context exists (paths relative to the repository root),
    // and the config directory as the image lays it out passes `check` (a file the example
    // comes to name but the image lacks fails here)
    let etc = tempfile::tempdir().expect("temp dir");
    let mut copied_to = Vec::new();
    for (i, args) in &ins {
        if i != "COPY" {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        let (dest, sources) = words.split_last().expect("COPY has a destination");
        copied_to.push(dest.to_string());
        if words[0].starts_with("--from") {
            continue;
        }
        for src in sources.iter().filter(|s| !s.starts_with("--")) {
            assert!(repo().join(src).exists(), "COPY {src}: no such file");
            if *dest == "/etc/cc-gateway/" {
                let name = Path::new(src).file_name().expect("a file name");
                std::fs::copy(repo().join(src), etc.path().join(name)).expect("copying");
            }
        }
    }
    let o = run_check(&etc.path().join("gateway.toml"), &[]);
    assert!(
        o.status.success(),
        "the image's /etc/cc-gateway does not pass check:\n{}",
        describe_output(&o)
    );

    // runs as a numeric non-root user (Kubernetes' runAsNonRoot can only check a number)
    let users: Vec<&str> = runtime
        .iter()
        .filter(|(i, _)| i == "USER")
        .map(|(_, a)| a.as_str())
        .collect();
    let uid: u32 = users
        .last()
        .and_then(|u| u.split(':').next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER of the runtime stage: {users:?}"));
    assert_ne!(uid, 0, "the image runs as root");

    // the ports it exposes and the address its health check probes are the example config's
    let example = example_config();
    let mut ports: BTreeSet<u16> = example["server"]["listen"]
        .as_array()
        .expect("server.listen")
        .iter()
        .map(|a| port(a.as_str().expect("address")))
        .collect();
    let admin = example["server"]["admin_listen"]
        .as_str()
        .expect("admin_listen");
    ports.insert(port(admin));
    let exposed: BTreeSet<u16> = all("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| p.parse().expect("EXPOSE port"))
        .collect();
    assert_eq!(exposed, ports, "EXPOSE vs examples/gateway.toml");
    let health = all("HEALTHCHECK");
    let health = health.first().expect("a HEALTHCHECK");
    assert!(
        health.contains(&format!("\"{admin}\"")) && health.contains("cc-gateway-healthcheck"),
        "HEALTHCHECK {health} does not probe the example's admin_listen {admin}"
    );
    assert!(
        copied_to
            .iter()
            .any(|d| d == "/usr/local/bin/cc-gateway-healthcheck")
            && copied_to.iter().any(|d| d == "/etc/cc-gateway/"),
        "the health check script and the example config are copied in: {copied_to:?}"
    );
    assert_eq!(all("STOPSIGNAL"), vec!["SIGTERM"]);
    let entry = all("ENTRYPOINT");
    assert_eq!(entry, vec![r#"["/usr/local/bin/cc-gateway"]"#]);
    let env = all("ENV");
    assert!(
        env.contains(&"CC_GATEWAY_CONFIG=/etc/cc-gateway/gateway.toml"),
        "ENV {env:?}"
    );
    // the build context leaves out the build output
    let ignore = read(&deploy("Dockerfile.dockerignore"));
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "target/ in the build context"
    );
}

/// Runs the image's health check script (bash, as in the image) against `addr`.
fn health_check(addr: &str) -> Output {
    run(Command::new("bash")
        .arg(deploy("docker/healthcheck.sh"))
        .arg(addr))
}

#[tokio::test]
async fn docker_health_check_passes_only_on_a_200_from_healthz() {
    let fx = Fixture::start().await;
    let o = health_check(&fx.gw.admin.to_string());
    assert!(
        o.status.success(),
        "admin listener:\n{}",
        describe_output(&o)
    );
    // the data plane has no /healthz route (404 no_route): unhealthy
    let o = health_check(&fx.gw.addr.to_string());
    assert!(
        !o.status.success(),
        "a 404 passed:\n{}",
        describe_output(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("404"),
        "{}",
        describe_output(&o)
    );
    // nothing listening: unhealthy
    let o = health_check(&dead_addr().to_string());
    assert!(
        !o.status.success(),
        "a refused connection passed:\n{}",
        describe_output(&o)
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

fn kubernetes() -> BTreeMap<String, Yaml> {
    let text = read(&deploy("kubernetes/cc-gateway.yaml"));
    let mut out = BTreeMap::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = <Yaml as serde::Deserialize>::deserialize(doc).expect("a YAML document");
        let kind = v["kind"].as_str().expect("kind").to_string();
        assert!(out.insert(kind.clone(), v).is_none(), "two {kind} objects");
    }
    out
}

fn named_port(container: &Yaml, name: &str) -> u16 {
    container["ports"]
        .as_sequence()
        .expect("container ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

#[tokio::test]
async fn kubernetes_manifest_config_ports_probes_and_grace_period_fit_together() {
    let k = kubernetes();
    let (cm, dep, svc) = (&k["ConfigMap"], &k["Deployment"], &k["Service"]);
    let pod = &dep["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // the config: where the container reads it, and valid for `cc-gateway check`
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("arg"))
        .collect();
    let config_path = Path::new(
        args[args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config")
            + 1],
    );
    let mount = c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| {
            Path::new(m["mountPath"].as_str().unwrap_or_default())
                == config_path.parent().expect("dir")
        })
        .expect("the config's directory is a mount");
    let volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);
    let file = config_path
        .file_name()
        .and_then(|f| f.to_str())
        .expect("file name");
    let text = cm["data"][file]
        .as_str()
        .expect("the ConfigMap holds the config file");
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join(file);
    std::fs::write(&copy, text).expect("writing the config");
    let config: toml::Value = toml::from_str(text).expect("TOML");
    // the admin token comes from the Secret through the variable the config names
    let token_var = config["server"]["admin_token"]
        .as_str()
        .and_then(|t| t.strip_prefix("env:"))
        .expect("admin_token = \"env:…\" (the admin listener is not on loopback)");
    assert!(
        c["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .any(|e| e["name"].as_str() == Some(token_var)
                && e["valueFrom"]["secretKeyRef"]["name"].is_string()),
        "{token_var} is not set from a Secret"
    );
    let o = run_check(&copy, &[(token_var, "k8s-example-admin-token-0123456789")]);
    assert!(
        o.status.success(),
        "cc-gateway check:\n{}",
        describe_output(&o)
    );

    // ports: the container's named ports are the config's listeners, the Service targets one
    let listen = config["server"]["listen"]
        .as_array()
        .expect("server.listen");
    assert_eq!(
        named_port(c, "http"),
        port(listen[0].as_str().expect("address"))
    );
    let admin = config["server"]["admin_listen"]
        .as_str()
        .expect("admin_listen");
    assert!(
        admin.starts_with("0.0.0.0:"),
        "the kubelet probes the pod IP, not {admin}"
    );
    assert_eq!(named_port(c, "admin"), port(admin));
    for p in svc["spec"]["ports"].as_sequence().expect("service ports") {
        named_port(c, p["targetPort"].as_str().expect("a named targetPort"));
    }
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&dep["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&svc["spec"]["selector"], labels);

    // probes on the admin listener; their paths answer 200 on a live gateway's admin listener
    let fx = Fixture::start().await;
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_str(), Some("admin"), "{probe}");
        let r = fx.gw.admin_get(path).await;
        assert_eq!(r.status, 200, "{probe} {path}: {}", r.describe());
    }

    // grace period: the preStop sleep, then SIGTERM's drain_delay and shutdown_timeout
    let pre_stop: Vec<&str> = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .expect("a preStop exec")
        .iter()
        .map(|a| a.as_str().expect("word"))
        .collect();
    assert_eq!(pre_stop.len(), 2, "{pre_stop:?}");
    assert_eq!(pre_stop[0], "sleep");
    let sleep = Duration::from_secs(pre_stop[1].parse().expect("sleep seconds"));
    let grace = Duration::from_secs(
        pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds"),
    );
    let needed = sleep + drain_and_shutdown(&config);
    assert!(
        grace > needed,
        "grace {grace:?} <= preStop + drain + shutdown {needed:?}"
    );

    // non-root (the image's user), read-only root file system, no privilege
    let uid = dockerfile()
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .and_then(|(_, u)| u.split(':').next().and_then(|u| u.parse::<u64>().ok()))
        .expect("the image's USER");
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        psc["runAsUser"].as_u64(),
        Some(uid),
        "runAsUser vs the image's USER"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
}
