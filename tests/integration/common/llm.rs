//! The AI route the `ai` and `request_log` tests both put in front of their in-test LLM
//! upstream: one spelling, so the two cannot drift apart on route name, path or kind.

use std::net::SocketAddr;

/// A public `kind = "ai"` route `llm` on `/llm/` to an upstream `llm` at `up`, with
/// `gpt-4o-mini*` priced (0.15 in, 0.6 out). Callers add more `[[prices]]` after it: the first
/// matching pattern wins, so this one keeps its price.
pub fn llm_route(up: SocketAddr) -> String {
    format!(
        r#"
[[routes]]
name = "llm"
path_prefix = "/llm/"
upstream = "llm"
auth = "public"
kind = "ai"

[[upstreams]]
name = "llm"
endpoints = ["{up}"]

[[prices]]
model = "gpt-4o-mini*"
input = 0.15
output = 0.6
"#
    )
}
