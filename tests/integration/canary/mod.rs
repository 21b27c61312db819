//! Sticky canaries, black-box: a real gateway, two in-test upstreams (`ai-v1`, `ai-v2`), a route
//! split between them by weight and placed by `claim:sub`; tokens for 2,000 subjects. Each
//! subject always lands on the same upstream — across requests, connections (so workers) and a
//! reload that keeps the weights — and a reload raising `ai-v2`'s weight moves subjects only
//! from `ai-v1` to `ai-v2`. The override header is honoured only where configured, only for
//! names in the split, and never forwarded.

mod check;
mod override_header;
mod sticky;

use std::collections::BTreeMap;

use tokio::task::JoinSet;

use crate::common::*;

/// The two versions of the backend and a gateway whose route `/canary/` splits between them
/// (`ai-v2` weight `v2`, `ai-v1` weight `v1`) with the override header, and `/plain/` (the
/// same split, no `canary` table: the default key, no override) and `/by-header/` (placed by
/// `header:X-Instance`).
pub struct Split {
    pub fx: Fixture,
    pub v1: Echo,
    pub v2: Echo,
}

/// The routes and upstreams of a [`Split`] with weights `v2` and `v1`.
pub fn split_config(v1: &Echo, v2: &Echo, w2: u32, w1: u32) -> String {
    let up = format!(
        "upstream = [{{ name = \"ai-v2\", weight = {w2} }}, {{ name = \"ai-v1\", weight = {w1} }}]"
    );
    format!(
        r#"
[[routes]]
name = "canary"
path_prefix = "/canary/"
strip_prefix = true
{up}
canary = {{ key = "claim:sub", override_header = "X-Canary-Upstream" }}

[[routes]]
name = "plain"
path_prefix = "/plain/"
strip_prefix = true
{up}

[[routes]]
name = "by-header"
path_prefix = "/by-header/"
{up}
canary = {{ key = "header:X-Instance" }}

[[upstreams]]
name = "ai-v1"
endpoints = ["{a1}"]

[[upstreams]]
name = "ai-v2"
endpoints = ["{a2}"]
"#,
        a1 = v1.addr,
        a2 = v2.addr,
    )
}

impl Split {
    pub async fn start(w2: u32, w1: u32) -> Split {
        let (v1, v2) = (Echo::start("ai-v1").await, Echo::start("ai-v2").await);
        let fx = Fixture::with(Opts {
            extra: split_config(&v1, &v2, w2, w1),
            // every subject's token stays cached: the test is about placement, not verifying
            token_cache_size: 10_000,
            ..Opts::default()
        })
        .await;
        Split { fx, v1, v2 }
    }

    /// Rewrites the config with weights `w2`/`w1` and reloads it.
    pub async fn reload(&self, w2: u32, w1: u32) {
        let text = std::fs::read_to_string(&self.fx.config_path).expect("config");
        let start = text
            .find("\n[[routes]]\nname = \"canary\"")
            .expect("the split routes");
        let text = format!(
            "{}{}",
            &text[..start],
            split_config(&self.v1, &self.v2, w2, w1)
        );
        std::fs::write(&self.fx.config_path, text).expect("write config");
        let r = self.fx.gw.admin_post("/reload").await;
        assert_eq!(r.status, 200, "reload: {}", r.describe());
        assert_eq!(r.json()["result"], "ok", "reload: {}", r.describe());
    }

    /// A token for subject `sub`.
    pub fn token(&self, sub: &str) -> String {
        self.fx.token_with(|c| c["sub"] = serde_json::json!(sub))
    }

    /// The upstream that served each `(subject, token)` on `path`, over `conns` kept-alive
    /// connections at once (so over the gateway's workers).
    pub async fn placements(
        &self,
        path: &str,
        tokens: &[(String, String)],
        conns: usize,
    ) -> BTreeMap<String, String> {
        self.placements_on(self.fx.gw.addr, path, tokens, conns)
            .await
    }

    /// [`Split::placements`] through the gateway listening on `addr`.
    pub async fn placements_on(
        &self,
        addr: std::net::SocketAddr,
        path: &str,
        tokens: &[(String, String)],
        conns: usize,
    ) -> BTreeMap<String, String> {
        let mut set = JoinSet::new();
        for chunk in tokens.chunks(tokens.len().div_ceil(conns)) {
            let chunk = chunk.to_vec();
            let path = path.to_string();
            set.spawn(async move {
                let mut conn = H1Conn::connect(addr).await;
                let mut out = Vec::with_capacity(chunk.len());
                for (sub, token) in chunk {
                    let r = conn.send(Req::get(&path).token(&token)).await;
                    assert_eq!(r.status, 200, "{sub}: {}", r.describe());
                    let server = r.json()["server"].as_str().unwrap_or("").to_string();
                    out.push((sub, server));
                }
                out
            });
        }
        let mut all = BTreeMap::new();
        while let Some(done) = set.join_next().await {
            all.extend(done.expect("a request task panicked"));
        }
        all
    }
}

/// `cc_gateway_canary_decisions_total` of `route` for `upstream` and `cause`.
pub fn decisions(metrics: &str, route: &str, upstream: &str, cause: &str) -> f64 {
    metric(
        metrics,
        "cc_gateway_canary_decisions_total",
        &[("route", route), ("upstream", upstream), ("cause", cause)],
    )
}
