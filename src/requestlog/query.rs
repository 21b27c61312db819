//! The questions the CLI (`cc-gateway logs`) and the admin API (`GET /logs…`) ask, as SQL both
//! stores run: a [`Filter`] becomes one WHERE clause with placeholders in the store's
//! [`Dialect`], and stats are aggregated here in Rust from the matching rows' few columns, so
//! percentiles are computed the same way on SQLite and PostgreSQL (nearest rank).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::row::{Kind, Value, COLUMNS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The `n`th (1-based) placeholder for a value of `kind`. PostgreSQL gets explicit casts so
    /// that every parameter is bound as one of a few Rust types (`text`, `int8`, `float8`, `bool`).
    pub fn param(self, n: usize, kind: Kind) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => match kind {
                Kind::Text => format!("${n}::text"),
                Kind::Int => format!("${n}::int8"),
                Kind::Real => format!("${n}::float8"),
                Kind::Bool => format!("${n}::bool"),
                Kind::Time => format!("${n}::text::timestamptz"),
                Kind::Json => format!("${n}::text::jsonb"),
            },
        }
    }

    /// The select list reading every column back as [`Value`]-friendly types.
    pub fn select_list(self) -> String {
        let cols: Vec<String> = COLUMNS
            .iter()
            .map(|&(name, kind)| match (self, kind) {
                (Dialect::Postgres, Kind::Time) => format!(
                    "to_char({name} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
                ),
                (Dialect::Postgres, Kind::Json) => format!("{name}::text"),
                (Dialect::Postgres, Kind::Int) => format!("{name}::int8"),
                _ => name.to_string(),
            })
            .collect();
        cols.join(", ")
    }
}

/// Which rows: every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// RFC 3339 UTC bounds (`since` inclusive, `until` exclusive)
    pub since: Option<String>,
    pub until: Option<String>,
    pub route: Option<String>,
    pub sub: Option<String>,
    pub status: Option<StatusFilter>,
    pub reason: Option<String>,
    pub model: Option<String>,
    pub node: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(i64),
    /// `5xx`: 500..=599
    Class(i64),
}

impl std::str::FromStr for StatusFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let bad = || format!("{s:?}: expected a status (429) or a class (5xx)");
        if let Some(d) = s.strip_suffix("xx") {
            let d: i64 = d.parse().map_err(|_| bad())?;
            return (1..=5)
                .contains(&d)
                .then_some(StatusFilter::Class(d))
                .ok_or_else(bad);
        }
        let n: i64 = s.parse().map_err(|_| bad())?;
        (100..=599)
            .contains(&n)
            .then_some(StatusFilter::Exact(n))
            .ok_or_else(bad)
    }
}

/// `1h`, `7d` before now, or an RFC 3339 time, as the RFC 3339 UTC text rows are compared with.
pub fn parse_time(s: &str) -> Result<String, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        let t = SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        return Ok(humantime::format_rfc3339_millis(t).to_string());
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .map_err(|_| format!("{s:?}: expected a duration ago (\"1h\", \"7d\") or an RFC 3339 time"))
}

/// Now minus `age`, as row time text.
pub fn time_ago(age: Duration) -> String {
    let t = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A WHERE clause (`" WHERE …"` or empty) and its parameters, numbered from 1.
pub fn where_clause(d: Dialect, f: &Filter, params: &mut Vec<Value>) -> String {
    let mut conds = Vec::new();
    let mut push = |cond: &str, kind: Kind, v: Value, params: &mut Vec<Value>| {
        params.push(v);
        conds.push(cond.replace('$', &d.param(params.len(), kind)));
    };
    if let Some(s) = &f.since {
        push("time >= $", Kind::Time, Value::Text(s.clone()), params);
    }
    if let Some(s) = &f.until {
        push("time < $", Kind::Time, Value::Text(s.clone()), params);
    }
    for (col, v) in [
        ("route", &f.route),
        ("sub", &f.sub),
        ("reason", &f.reason),
        ("model", &f.model),
        ("node", &f.node),
    ] {
        if let Some(v) = v {
            push(
                &format!("{col} = $"),
                Kind::Text,
                Value::Text(v.clone()),
                params,
            );
        }
    }
    match f.status {
        Some(StatusFilter::Exact(n)) => push("status = $", Kind::Int, Value::Int(n), params),
        Some(StatusFilter::Class(c)) => {
            push("status >= $", Kind::Int, Value::Int(c * 100), params);
            push("status <= $", Kind::Int, Value::Int(c * 100 + 99), params);
        }
        None => {}
    }
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// `SELECT … FROM requests WHERE … ORDER BY time DESC LIMIT n`.
pub fn rows_sql(d: Dialect, f: &Filter, limit: usize, params: &mut Vec<Value>) -> String {
    let w = where_clause(d, f, params);
    format!(
        "SELECT {} FROM requests{w} ORDER BY time DESC, request_id DESC LIMIT {limit}",
        d.select_list()
    )
}

/// What stats are grouped by: a column, or a key of the `fields` JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    Column(&'static str),
    Field(String),
}

/// Columns one may group by; any other name is looked up in `fields`.
const GROUP_COLUMNS: &[&str] = &[
    "route",
    "sub",
    "model",
    "status",
    "reason",
    "node",
    "upstream",
    "endpoint",
    "iss",
    "realm",
    "method",
    "usage_source",
    "client_ip",
];

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(c) = GROUP_COLUMNS.iter().find(|c| **c == s) {
            return Ok(GroupBy::Column(c));
        }
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        ok.then(|| GroupBy::Field(s.to_string())).ok_or_else(|| {
            format!(
                "{s:?}: group by a column ({}) or a field name",
                GROUP_COLUMNS.join(", ")
            )
        })
    }
}

impl GroupBy {
    pub fn name(&self) -> &str {
        match self {
            GroupBy::Column(c) => c,
            GroupBy::Field(f) => f,
        }
    }

    fn expr(&self, d: Dialect, params: &mut Vec<Value>) -> String {
        match (self, d) {
            (GroupBy::Column("status"), Dialect::Sqlite) => "CAST(status AS TEXT)".into(),
            (GroupBy::Column("status"), Dialect::Postgres) => "status::text".into(),
            (GroupBy::Column(c), _) => c.to_string(),
            (GroupBy::Field(f), Dialect::Sqlite) => {
                // a quoted JSON path member: a name with dots stays one key
                params.push(Value::Text(format!("$.\"{f}\"")));
                format!("json_extract(fields, ?{})", params.len())
            }
            (GroupBy::Field(f), Dialect::Postgres) => {
                params.push(Value::Text(f.clone()));
                format!("fields ->> ${}::text", params.len())
            }
        }
    }
}

/// The columns stats are computed from, in this order: group, status, duration_ms,
/// input_tokens, output_tokens, cost_usd.
pub fn stats_sql(d: Dialect, by: &GroupBy, f: &Filter, params: &mut Vec<Value>) -> String {
    let g = by.expr(d, params);
    let w = where_clause(d, f, params);
    let cast = match d {
        Dialect::Sqlite => "",
        Dialect::Postgres => "::text",
    };
    format!(
        "SELECT ({g}){cast}, status{}, duration_ms, input_tokens{}, output_tokens{}, cost_usd FROM requests{w}",
        if d == Dialect::Postgres { "::int8" } else { "" },
        if d == Dialect::Postgres { "::int8" } else { "" },
        if d == Dialect::Postgres { "::int8" } else { "" },
    )
}

/// One row of a stats answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// the group's value (None: the column or field was absent)
    pub group: Option<String>,
    pub requests: u64,
    /// status 400 and above: refusals, upstream failures and client aborts alike
    pub errors: u64,
    pub error_ratio: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// One matching row's share of the stats.
pub struct Sample {
    pub group: Option<String>,
    pub status: i64,
    pub duration_ms: f64,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cost_usd: Option<f64>,
}

/// How groups are ordered in the answer (largest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Requests,
    Tokens,
    Cost,
    P99,
    Errors,
}

impl std::str::FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            "requests" => Order::Requests,
            "tokens" => Order::Tokens,
            "cost" => Order::Cost,
            "p99" => Order::P99,
            "errors" => Order::Errors,
            o => {
                return Err(format!(
                    "{o:?}: sort by requests, tokens, cost, p99 or errors"
                ))
            }
        })
    }
}

/// Aggregates samples into groups, largest first by `order` (ties: group name).
pub fn aggregate(samples: impl IntoIterator<Item = Sample>, order: Order) -> Vec<Group> {
    let mut acc: HashMap<Option<String>, (Group, Vec<f64>)> = HashMap::new();
    for s in samples {
        let (g, durations) = acc.entry(s.group.clone()).or_insert_with(|| {
            (
                Group {
                    group: s.group.clone(),
                    requests: 0,
                    errors: 0,
                    error_ratio: 0.0,
                    p50_ms: 0.0,
                    p95_ms: 0.0,
                    p99_ms: 0.0,
                    input_tokens: 0,
                    output_tokens: 0,
                    cost_usd: 0.0,
                },
                Vec::new(),
            )
        });
        g.requests += 1;
        g.errors += u64::from(s.status >= 400);
        g.input_tokens += s.input_tokens.unwrap_or(0).max(0) as u64;
        g.output_tokens += s.output_tokens.unwrap_or(0).max(0) as u64;
        g.cost_usd += s.cost_usd.unwrap_or(0.0);
        durations.push(s.duration_ms);
    }
    let mut out: Vec<Group> = acc
        .into_values()
        .map(|(mut g, mut d)| {
            d.sort_by(f64::total_cmp);
            g.p50_ms = percentile(&d, 50.0);
            g.p95_ms = percentile(&d, 95.0);
            g.p99_ms = percentile(&d, 99.0);
            g.error_ratio = g.errors as f64 / g.requests as f64;
            g.cost_usd = (g.cost_usd * 1e9).round() / 1e9;
            g
        })
        .collect();
    let key = |g: &Group| -> f64 {
        match order {
            Order::Requests => g.requests as f64,
            Order::Tokens => (g.input_tokens + g.output_tokens) as f64,
            Order::Cost => g.cost_usd,
            Order::P99 => g.p99_ms,
            Order::Errors => g.errors as f64,
        }
    };
    out.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then_with(|| a.group.cmp(&b.group))
    });
    out
}

/// Nearest-rank percentile of sorted values (0 for none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters() {
        assert_eq!("5xx".parse(), Ok(StatusFilter::Class(5)));
        assert_eq!("429".parse(), Ok(StatusFilter::Exact(429)));
        assert!("6xx".parse::<StatusFilter>().is_err());
        assert!("abc".parse::<StatusFilter>().is_err());
    }

    #[test]
    fn where_clause_numbers_placeholders_per_dialect() {
        let f = Filter {
            route: Some("ai".into()),
            status: Some(StatusFilter::Class(5)),
            ..Filter::default()
        };
        let mut p = Vec::new();
        let w = where_clause(Dialect::Postgres, &f, &mut p);
        assert_eq!(
            w,
            " WHERE route = $1::text AND status >= $2::int8 AND status <= $3::int8"
        );
        assert_eq!(
            p,
            vec![Value::Text("ai".into()), Value::Int(500), Value::Int(599)]
        );
        let mut p = Vec::new();
        assert_eq!(
            where_clause(Dialect::Sqlite, &f, &mut p),
            " WHERE route = ?1 AND status >= ?2 AND status <= ?3"
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn aggregate_orders_and_counts() {
        let s = |g: &str, status, d, tin| Sample {
            group: Some(g.into()),
            status,
            duration_ms: d,
            input_tokens: tin,
            output_tokens: Some(1),
            cost_usd: Some(0.5),
        };
        let out = aggregate(
            vec![
                s("a", 200, 1.0, Some(10)),
                s("b", 500, 3.0, None),
                s("b", 200, 2.0, Some(1)),
            ],
            Order::Requests,
        );
        assert_eq!(out[0].group.as_deref(), Some("b"));
        assert_eq!(out[0].requests, 2);
        assert_eq!(out[0].errors, 1);
        assert_eq!(out[0].p99_ms, 3.0);
        assert_eq!(out[0].input_tokens, 1);
        let by_tokens = aggregate(
            vec![
                s("a", 200, 1.0, Some(10)),
                s("b", 200, 2.0, Some(1)),
                s("b", 200, 2.0, Some(1)),
            ],
            Order::Tokens,
        );
        assert_eq!(by_tokens[0].group.as_deref(), Some("a"));
    }
}
