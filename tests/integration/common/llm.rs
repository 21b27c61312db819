//! The AI route the `ai`, `request_log` and `deploy` tests put in front of their in-test LLM
//! upstreams: one spelling, so they cannot drift apart on path, auth or kind.

use std::net::SocketAddr;

/// A public `kind = "ai"` route `name` on `/<name>/` to an upstream `name` at `up` (no prices:
/// callers add the `[[prices]]` their answers need).
pub fn ai_route(name: &str, up: SocketAddr) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
path_prefix = "/{name}/"
upstream = "{name}"
auth = "public"
kind = "ai"

[[upstreams]]
name = "{name}"
endpoints = ["{up}"]
"#
    )
}

/// [`ai_route`] `llm` with `gpt-4o-mini*` priced (0.15 in, 0.6 out). Callers may add more
/// `[[prices]]` after it: the first matching pattern wins, so this one keeps its price.
pub fn llm_route(up: SocketAddr) -> String {
    format!(
        r#"{}
[[prices]]
model = "gpt-4o-mini*"
input = 0.15
output = 0.6
"#,
        ai_route("llm", up)
    )
}
