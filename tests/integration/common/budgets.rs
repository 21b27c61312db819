//! Helpers of the budget tests: the store a shared contract test runs against, fixtures with a
//! `[budgets]` table, readers of the RateLimit headers, the admin API, UTC quota windows.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

use super::client::{H1Conn, Req, Resp};
use super::fixture::{assert_error, q, Fixture, Opts};
use super::gateway::Gateway;
use super::redis::RedisServer;
use super::wait::wait_until;

/// The budget decisions counter (`rule`, `result` labels).
pub const DECISIONS: &str = "cc_gateway_budget_decisions_total";
/// One hour in seconds: the period of most test quotas.
pub const HOUR: u64 = 3600;

// ---------------------------------------------------------------------------------------------
// Stores

/// A budget store a shared contract test runs against, alive as long as the test: the `store`
/// value of `[budgets]` and the Redis server or SQLite directory behind it.
pub struct Store {
    /// `memory`, `sqlite` or `redis`: also the `store` label of the budget metrics.
    pub label: &'static str,
    url: String,
    _redis: Option<RedisServer>,
    _dir: Option<TempDir>,
}

impl Store {
    /// Starts the store called `name` (`memory`, `sqlite` or `redis`).
    pub async fn start(name: &str) -> Store {
        match name {
            "memory" => Store {
                label: "memory",
                url: "memory".into(),
                _redis: None,
                _dir: None,
            },
            "sqlite" => {
                let dir = tempfile::tempdir().expect("temp dir for the SQLite store");
                let url = format!("sqlite://{}", dir.path().join("budgets.db").display());
                Store {
                    label: "sqlite",
                    url,
                    _redis: None,
                    _dir: Some(dir),
                }
            }
            "redis" => {
                let redis = RedisServer::start().await;
                Store {
                    label: "redis",
                    url: redis.url(),
                    _redis: Some(redis),
                    _dir: None,
                }
            }
            other => panic!("no budget store called {other:?}"),
        }
    }

    /// The `[budgets]` keys that select this store. Redis also gets a `store_timeout` a shared
    /// machine meets and `on_store_error = "deny"`, so a decision Redis did not answer shows as
    /// a 503 instead of a silent admission that would look like over-admitting.
    pub fn table_keys(&self) -> String {
        let mut keys = format!("store = {}\n", q(&self.url));
        if self.label == "redis" {
            keys.push_str("on_store_error = \"deny\"\nstore_timeout = \"500ms\"\n");
        }
        keys
    }
}

/// Instantiates the shared contract test `async fn body(store: &Store)` once per named store, as
/// the `#[tokio::test]`s `body::memory`, `body::sqlite`, `body::redis`.
macro_rules! per_store {
    ($body:ident: $($store:ident),+ $(,)?) => {
        mod $body {
            $(
                #[tokio::test]
                async fn $store() {
                    let store =
                        crate::common::budgets::Store::start(stringify!($store)).await;
                    super::$body(&store).await;
                }
            )+
        }
    };
}
pub(crate) use per_store;

/// A fixture on `store` whose config has `budgets` (the `[budgets]` table without a `store` key,
/// then its rules) and `extra`.
pub async fn budget_fx(store: &Store, budgets: &str, extra: &str) -> Fixture {
    Fixture::with(Opts {
        budgets: with_store(store, budgets),
        extra: extra.to_string(),
        ..Opts::default()
    })
    .await
}

/// A `[budgets]` table (without its store) with one rule `shared`, keyed by `sub`: a rate whose
/// burst is the whole budget and whose refill (1/h) cannot matter in a test.
pub fn shared_rate(burst: u32) -> String {
    format!(
        "\n[budgets]\n\n[[budgets.rules]]\nname = \"shared\"\nkey = [\"claim:sub\"]\nrate = \"1/1h\"\nburst = {burst}\n"
    )
}

/// `budgets` with `store`'s keys at the top of its `[budgets]` table.
pub fn with_store(store: &Store, budgets: &str) -> String {
    assert_eq!(
        budgets.matches("[budgets]\n").count(),
        1,
        "budgets text without exactly one [budgets] table: {budgets}"
    );
    assert!(
        !budgets.contains("store ="),
        "the store is the test's parameter, not in the budgets text: {budgets}"
    );
    budgets.replacen(
        "[budgets]\n",
        &format!("[budgets]\n{}", store.table_keys()),
        1,
    )
}

// ---------------------------------------------------------------------------------------------
// Time, headers, admin API, requests

/// Wall-clock time in seconds since the Unix epoch (the quota windows' clock).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Quota windows are aligned to UTC: a test that counts requests inside one window must not
/// straddle a window end. When less than a minute of the current `period`-second window is left,
/// this waits (bounded, polling the clock) until the next window has begun.
pub async fn clear_of_window_end(period: u64) {
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
pub fn to_window_end(t: f64, period: u64) -> f64 {
    let p = period as f64;
    ((t / p).floor() + 1.0) * p - t
}

/// The integer range a "seconds until the window ends" value may take for an answer produced
/// between `before` and `after` (allowing floor or ceil rounding).
pub fn window_end_range(before: f64, after: f64, period: u64) -> std::ops::RangeInclusive<i64> {
    let lo = to_window_end(after, period).floor() as i64;
    let hi = to_window_end(before, period).ceil() as i64;
    lo.max(0)..=hi
}

/// One item of a structured-field list header: `"name";k=v;k=v`.
pub type SfItem = (String, BTreeMap<String, i64>);

/// Parses `"a";q=1;w=2, "b";q=3;w=4`. Panics (with the header) on anything else.
pub fn parse_sf_list(header: &str) -> Vec<SfItem> {
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
pub fn sf_rule(r: &Resp, name: &str, rule: &str) -> Option<BTreeMap<String, i64>> {
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
pub fn sf_names(r: &Resp, name: &str) -> Vec<String> {
    let mut names: Vec<String> = r
        .header(name)
        .map(|h| parse_sf_list(&h).into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// `RateLimit-Policy` parameters of `rule` (asserts present, with integer `q` and `w`).
pub fn policy(r: &Resp, rule: &str) -> (i64, i64) {
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
pub fn ratelimit(r: &Resp, rule: &str) -> (i64, i64) {
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

/// Asserts `r` carries neither `RateLimit` nor `RateLimit-Policy`.
pub fn assert_no_budget_headers(r: &Resp, what: &str) {
    for h in ["ratelimit", "ratelimit-policy"] {
        assert!(
            r.header(h).is_none(),
            "{what}: unexpected {h} header: {}",
            r.describe()
        );
    }
}

/// Asserts an admitted answer from the echo upstream.
pub fn assert_admitted(r: &Resp, what: &str) {
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
pub fn assert_over_budget(r: &Resp, rule: &str) -> i64 {
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
pub fn pct(s: &str) -> String {
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

/// Lower-case hex SHA-256 of `s` (how long key parts are stored).
pub fn sha256_hex(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A request to the admin listener, with `Authorization: Bearer token` when given.
pub async fn admin(gw: &Gateway, method: Method, path: &str, token: Option<&str>) -> Resp {
    let mut req = Req::new(method, path);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    req.send(gw.admin).await
}

/// `GET /budgets/<rule>/<key>`: asserts 200 and the documented fields; returns the JSON.
pub async fn usage(gw: &Gateway, rule: &str, key: &str) -> Value {
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
pub fn limit_of(v: &Value) -> Option<i64> {
    match &v["limit"] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.split_once('/').and_then(|(n, _)| n.trim().parse().ok()),
        _ => None,
    }
}

/// `used` of `rule`/`key` from the admin API (with `usage`'s checks of the other fields).
pub async fn used(gw: &Gateway, rule: &str, key: &str) -> i64 {
    usage(gw, rule, key).await["used"]
        .as_i64()
        .unwrap_or_else(|| panic!("`used` of {rule}/{key} is not an integer"))
}

/// A valid token for route `ai` whose `sub` is `sub`.
pub fn token_for(fx: &Fixture, sub: &str) -> String {
    let sub = sub.to_string();
    fx.token_with(move |c| c["sub"] = json!(sub))
}

/// Sends `n` requests built by `req` on one kept-alive connection; returns the responses.
pub async fn burst(fx: &Fixture, req: impl Fn() -> Req, n: usize) -> Vec<Resp> {
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(conn.send(req()).await);
    }
    out
}

/// Asserts the first `admitted` responses are admitted and the rest are 429 naming `rule`.
pub fn assert_split(rs: &[Resp], admitted: usize, rule: &str, what: &str) {
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
