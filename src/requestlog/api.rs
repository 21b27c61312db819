//! What `cc-gateway logs` and the admin API's `/logs` endpoints share: the query parameters
//! (one spelling for CLI flags and query strings), and the admin handlers themselves, which
//! open a store connection per call on a blocking thread (the admin runtime never blocks).
//!
//! - `GET /logs?since=1h&route=ai&status=5xx&limit=50` → `{"rows": [...]}`, newest first
//! - `GET /logs/stats?by=route&since=7d&sort=tokens` → `{"by": "route", "groups": [...]}`
//! - `GET /logs/<request_id>` → the row, or 404
//! - `PATCH /logs/<request_id>` `{"score": -1|0|1, "comment": "…"}` → the updated row

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::RequestLog as Config;

use super::query::{parse_time, Filter, GroupBy, Order};
use super::store::{Store, StoreError};

/// Rows one answer returns at most.
pub const MAX_LIMIT: usize = 10_000;
pub const DEFAULT_LIMIT: usize = 100;
/// The feedback comment's bound, in characters.
pub const MAX_COMMENT_CHARS: usize = 2_000;

/// Query parameters, as given (CLI flags or a query string).
#[derive(Debug, Default, Clone)]
pub struct Params {
    pub since: Option<String>,
    pub until: Option<String>,
    pub route: Option<String>,
    pub sub: Option<String>,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub model: Option<String>,
    pub node: Option<String>,
    pub limit: Option<String>,
    pub by: Option<String>,
    pub sort: Option<String>,
}

impl Params {
    /// From `a=1&b=2` (percent-decoded; unknown keys refused so a typo is not silently ignored).
    pub fn from_query(q: &str) -> Result<Params, String> {
        let mut p = Params::default();
        for pair in q.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = Some(decode(v));
            match k {
                "since" => p.since = v,
                "until" => p.until = v,
                "route" => p.route = v,
                "sub" => p.sub = v,
                "status" => p.status = v,
                "reason" => p.reason = v,
                "model" => p.model = v,
                "node" => p.node = v,
                "limit" => p.limit = v,
                "by" => p.by = v,
                "sort" => p.sort = v,
                _ => return Err(format!("unknown parameter {k:?}")),
            }
        }
        Ok(p)
    }

    pub fn filter(&self) -> Result<Filter, String> {
        Ok(Filter {
            since: self.since.as_deref().map(parse_time).transpose()?,
            until: self.until.as_deref().map(parse_time).transpose()?,
            route: self.route.clone(),
            sub: self.sub.clone(),
            status: self.status.as_deref().map(str::parse).transpose()?,
            reason: self.reason.clone(),
            model: self.model.clone(),
            node: self.node.clone(),
        })
    }

    pub fn limit(&self) -> Result<usize, String> {
        match self.limit.as_deref() {
            None => Ok(DEFAULT_LIMIT),
            Some(s) => match s.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(format!("limit {s:?}: expected 1..={MAX_LIMIT}")),
            },
        }
    }

    pub fn group_by(&self) -> Result<GroupBy, String> {
        self.by.as_deref().unwrap_or("route").parse()
    }

    pub fn order(&self) -> Result<Order, String> {
        self.sort
            .as_deref()
            .map_or(Ok(Order::default()), str::parse)
    }
}

fn decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Feedback {
    score: i64,
    #[serde(default)]
    comment: Option<String>,
}

fn bad_request(message: impl Into<String>) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({"error": "bad_request", "reason": "invalid_parameter", "message": message.into()}),
    )
}

fn unavailable(e: &StoreError) -> (StatusCode, Value) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "service_unavailable", "reason": "request_log_unavailable", "message": e.to_string()}),
    )
}

fn not_found(reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"error": "not_found", "reason": reason}),
    )
}

/// An admin request under `/logs` (`rest`: what follows `/logs`, e.g. `""`, `/stats`, `/<id>`).
pub async fn admin(
    cfg: Option<Config>,
    method: Method,
    rest: String,
    query: Option<String>,
    body: bytes::Bytes,
) -> (StatusCode, Value) {
    let Some(cfg) = cfg else {
        return not_found("request_log_off");
    };
    match tokio::task::spawn_blocking(move || handle(&cfg, &method, &rest, query.as_deref(), &body))
        .await
    {
        Ok(r) => r,
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "internal", "message": e.to_string()}),
        ),
    }
}

/// The blocking body of [`admin`].
pub fn handle(
    cfg: &Config,
    method: &Method,
    rest: &str,
    query: Option<&str>,
    body: &[u8],
) -> (StatusCode, Value) {
    let params = match Params::from_query(query.unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let id = rest.strip_prefix('/').map(decode);
    match (method, id.as_deref()) {
        (&Method::GET, None | Some("")) => {
            let (f, limit) = match params.filter().and_then(|f| Ok((f, params.limit()?))) {
                Ok(v) => v,
                Err(e) => return bad_request(e),
            };
            match Store::open(&cfg.store, false).and_then(|mut s| s.rows(&f, limit)) {
                Ok(rows) => (StatusCode::OK, json!({ "rows": rows })),
                Err(e) => unavailable(&e),
            }
        }
        (&Method::GET, Some("stats")) => {
            let parsed = params
                .filter()
                .and_then(|f| Ok((f, params.group_by()?, params.order()?)));
            let (f, by, order) = match parsed {
                Ok(v) => v,
                Err(e) => return bad_request(e),
            };
            match Store::open(&cfg.store, false).and_then(|mut s| s.stats(&by, &f, order)) {
                Ok(groups) => (StatusCode::OK, json!({ "by": by.name(), "groups": groups })),
                Err(e) => unavailable(&e),
            }
        }
        (&Method::GET, Some(id)) => {
            match Store::open(&cfg.store, false).and_then(|mut s| s.get(id)) {
                Ok(Some(row)) => (StatusCode::OK, json!(row)),
                Ok(None) => not_found("unknown_request_id"),
                Err(e) => unavailable(&e),
            }
        }
        (&Method::PATCH, Some(id)) if !id.is_empty() && id != "stats" => {
            let fb: Feedback = match serde_json::from_slice(body) {
                Ok(f) => f,
                Err(e) => {
                    return bad_request(format!(
                        "expected {{\"score\": -1|0|1, \"comment\": \"…\"}}: {e}"
                    ))
                }
            };
            if !(-1..=1).contains(&fb.score) {
                return bad_request("score must be -1, 0 or 1");
            }
            if fb
                .comment
                .as_ref()
                .is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS)
            {
                return bad_request(format!(
                    "comment is longer than {MAX_COMMENT_CHARS} characters"
                ));
            }
            let result = Store::open(&cfg.store, false).and_then(|mut s| {
                if s.feedback(id, fb.score, fb.comment.as_deref())? {
                    s.get(id)
                } else {
                    Ok(None)
                }
            });
            match result {
                Ok(Some(row)) => (StatusCode::OK, json!(row)),
                Ok(None) => not_found("unknown_request_id"),
                Err(e) => unavailable(&e),
            }
        }
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "method_not_allowed", "reason": "method_not_allowed"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_parse_and_refuse_typos() {
        let p = Params::from_query("since=1h&status=5xx&route=a%2Fb&limit=5").expect("valid");
        assert_eq!(p.route.as_deref(), Some("a/b"));
        assert_eq!(p.limit(), Ok(5));
        assert!(p.filter().is_ok());
        assert!(Params::from_query("stauts=5xx").is_err());
        assert!(Params::from_query("limit=0")
            .expect("parses")
            .limit()
            .is_err());
        assert!(Params::from_query("status=7xx")
            .expect("parses")
            .filter()
            .is_err());
    }
}
