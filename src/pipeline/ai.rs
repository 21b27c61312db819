//! The AI side of an exchange (routes with `kind = "ai"`): the usage tap put on the upstream
//! response, and what its findings become when the body ends — the `cc_gateway_ai_*` metrics,
//! the cost, the token budgets' charge and the access-log fields. Free functions over explicit
//! arguments, so this file needs nothing from `pipeline.rs`.

use http::{HeaderMap, HeaderValue, Method};

use crate::accesslog::AiFields;
use crate::budget::Metered;
use crate::config::RouteKind;
use crate::gateway::Gateway;
use crate::metrics::AI;
use crate::usage::{Observed, Tap};

/// A tap for an upstream response to a `method` request on a route of `kind` (None: not an
/// AI route, or not a POST). Every provider's generation endpoints are POSTs; the GETs beside
/// them on an AI route (model lists, health) report no usage and would only be counted as
/// missing.
pub(super) fn tap(kind: RouteKind, method: &Method, headers: &HeaderMap) -> Option<Tap> {
    (kind == RouteKind::Ai && method == Method::POST).then(|| {
        Tap::new(
            headers
                .get(http::header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            headers
                .get(http::header::CONTENT_ENCODING)
                .map(HeaderValue::as_bytes),
        )
    })
}

/// An AI response's usage into the `cc_gateway_ai_*` metrics and the token budgets; returns
/// its cost in USD (None: the usage is missing or no `[[prices]]` entry matches the model).
/// A provider's error answer carries no usage by nature: only a successful one without usage
/// counts as missing (and as unmetered).
pub(super) fn account(
    gw: &Gateway,
    route: &str,
    o: &Observed,
    upstream_status: Option<u16>,
    metered: Option<&Metered>,
) -> Option<f64> {
    let cost = o
        .usage
        .and_then(|u| gw.config.prices.cost(o.model.as_deref(), &u));
    let success = upstream_status.is_some_and(|s| (200..300).contains(&s));
    if o.usage.is_none() && !success {
        return cost;
    }
    AI.record(route, o.model.as_deref(), o.usage.as_ref(), cost);
    if let (Some(m), Some(b)) = (metered, &gw.budgets) {
        let pending = b.charge(m, o.usage.map(|u| u.billable()));
        // Redis: on this worker's runtime, where its batch driver runs
        if let (Some(f), Ok(rt)) = (pending, tokio::runtime::Handle::try_current()) {
            rt.spawn(f);
        }
    }
    cost
}

/// The access-log fields of an AI response.
pub(super) fn fields(o: &Observed, cost: Option<f64>) -> AiFields<'_> {
    let u = o.usage;
    AiFields {
        model: o.model.as_deref(),
        input_tokens: u.map(|u| u.input),
        output_tokens: u.map(|u| u.output),
        cache_read_tokens: u.map(|u| u.cache_read),
        cache_write_tokens: u.map(|u| u.cache_write),
        reasoning_tokens: u.map(|u| u.reasoning),
        usage_source: if u.is_some() { "reported" } else { "missing" },
        // a float sum of per-million prices: round off the binary noise
        cost_usd: cost.map(|c| (c * 1e12).round() / 1e12),
        stream: o.stream,
    }
}
