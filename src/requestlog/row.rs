//! One row of table `requests`: its columns (names, SQL kinds, order), the [`Row`] struct,
//! and the store-neutral [`Value`] both stores bind and read through, so the column list is
//! written once for SQLite and PostgreSQL alike.

use serde::Serialize;

/// How a column is stored; each store maps it to its own SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Real,
    Bool,
    /// UTC: TEXT `YYYY-MM-DDTHH:MM:SS.mmmZ` on SQLite (sorts as it reads), TIMESTAMPTZ on PostgreSQL
    Time,
    /// a JSON object: TEXT on SQLite, JSONB on PostgreSQL
    Json,
}

/// The columns in table order. The names are the contract SQL users see (docs/observability.md).
pub const COLUMNS: &[(&str, Kind)] = &[
    ("request_id", Kind::Text),
    ("trace_id", Kind::Text),
    ("time", Kind::Time),
    ("node", Kind::Text),
    ("route", Kind::Text),
    ("upstream", Kind::Text),
    ("endpoint", Kind::Text),
    ("attempts", Kind::Int),
    ("method", Kind::Text),
    ("path", Kind::Text),
    ("status", Kind::Int),
    ("reason", Kind::Text),
    ("duration_ms", Kind::Real),
    ("ttfb_ms", Kind::Real),
    ("bytes_in", Kind::Int),
    ("bytes_out", Kind::Int),
    ("sub", Kind::Text),
    ("iss", Kind::Text),
    ("realm", Kind::Text),
    ("client_ip", Kind::Text),
    ("fields", Kind::Json),
    ("model", Kind::Text),
    ("input_tokens", Kind::Int),
    ("output_tokens", Kind::Int),
    ("cache_read_tokens", Kind::Int),
    ("cache_write_tokens", Kind::Int),
    ("reasoning_tokens", Kind::Int),
    ("usage_source", Kind::Text),
    ("cost_usd", Kind::Real),
    ("stream", Kind::Bool),
    ("feedback_score", Kind::Int),
    ("feedback_comment", Kind::Text),
];

/// A column value, store-neutral.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    Real(f64),
    Bool(bool),
}

impl Value {
    fn text(self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s),
            Value::Int(n) => Some(n.to_string()),
            _ => None,
        }
    }
    fn int(self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(n),
            Value::Real(f) => Some(f as i64),
            Value::Bool(b) => Some(b as i64),
            _ => None,
        }
    }
    fn real(self) -> Option<f64> {
        match self {
            Value::Real(f) => Some(f),
            Value::Int(n) => Some(n as f64),
            _ => None,
        }
    }
    fn bool(self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(b),
            // SQLite has no boolean type
            Value::Int(n) => Some(n != 0),
            _ => None,
        }
    }
}

/// One request. `ttfb_ms` is NULL when no byte of the response went to the client; the AI
/// columns are NULL on other routes, and the token counts and cost are NULL when
/// the usage is missing (unknown is never 0).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    pub request_id: String,
    pub trace_id: Option<String>,
    pub time: String,
    pub node: String,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub endpoint: Option<String>,
    pub attempts: Option<i64>,
    pub method: String,
    pub path: Option<String>,
    pub status: i64,
    pub reason: Option<String>,
    pub duration_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub sub: Option<String>,
    pub iss: Option<String>,
    pub realm: Option<String>,
    pub client_ip: Option<String>,
    pub fields: Option<serde_json::Map<String, serde_json::Value>>,
    pub model: Option<String>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_write_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    pub usage_source: Option<String>,
    pub cost_usd: Option<f64>,
    pub stream: Option<bool>,
    pub feedback_score: Option<i64>,
    pub feedback_comment: Option<String>,
}

/// A column value borrowed from a [`Row`], for binding without copying the row's strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Null,
    Text(std::borrow::Cow<'a, str>),
    Int(i64),
    Real(f64),
    Bool(bool),
}

impl Value {
    /// The value as a cell, its text borrowed (for binding it).
    pub fn as_cell(&self) -> Cell<'_> {
        match self {
            Value::Null => Cell::Null,
            Value::Text(s) => Cell::Text(std::borrow::Cow::Borrowed(s)),
            Value::Int(n) => Cell::Int(*n),
            Value::Real(f) => Cell::Real(*f),
            Value::Bool(b) => Cell::Bool(*b),
        }
    }
}

impl Cell<'_> {
    fn into_value(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Text(s) => Value::Text(s.into_owned()),
            Cell::Int(n) => Value::Int(n),
            Cell::Real(f) => Value::Real(f),
            Cell::Bool(b) => Value::Bool(b),
        }
    }
}

impl Row {
    /// The cells in [`COLUMNS`] order, borrowing the row's strings (the `fields` object is
    /// the one value serialized here).
    pub fn cells(&self) -> [Cell<'_>; COLUMNS.len()] {
        use std::borrow::Cow::Borrowed;
        fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Cell<'static>) -> Cell<'static> {
            v.map_or(Cell::Null, f)
        }
        fn t(s: &Option<String>) -> Cell<'_> {
            s.as_deref().map_or(Cell::Null, |s| Cell::Text(Borrowed(s)))
        }
        let i = |n: Option<i64>| opt(n, Cell::Int);
        let r = |f: Option<f64>| opt(f, Cell::Real);
        [
            Cell::Text(Borrowed(&self.request_id)),
            t(&self.trace_id),
            Cell::Text(Borrowed(&self.time)),
            Cell::Text(Borrowed(&self.node)),
            t(&self.route),
            t(&self.upstream),
            t(&self.endpoint),
            i(self.attempts),
            Cell::Text(Borrowed(&self.method)),
            t(&self.path),
            Cell::Int(self.status),
            t(&self.reason),
            Cell::Real(self.duration_ms),
            r(self.ttfb_ms),
            Cell::Int(self.bytes_in),
            Cell::Int(self.bytes_out),
            t(&self.sub),
            t(&self.iss),
            t(&self.realm),
            t(&self.client_ip),
            self.fields.as_ref().map_or(Cell::Null, |m| {
                Cell::Text(serde_json::to_string(m).unwrap_or_default().into())
            }),
            t(&self.model),
            i(self.input_tokens),
            i(self.output_tokens),
            i(self.cache_read_tokens),
            i(self.cache_write_tokens),
            i(self.reasoning_tokens),
            t(&self.usage_source),
            r(self.cost_usd),
            opt(self.stream, Cell::Bool),
            i(self.feedback_score),
            t(&self.feedback_comment),
        ]
    }

    /// The values in [`COLUMNS`] order, owned.
    pub fn values(&self) -> Vec<Value> {
        self.cells().into_iter().map(Cell::into_value).collect()
    }

    /// A row read back, values in [`COLUMNS`] order (missing trailing values read as NULL).
    pub fn from_values(v: Vec<Value>) -> Row {
        let mut it = v.into_iter();
        let mut next = || it.next().unwrap_or(Value::Null);
        Row {
            request_id: next().text().unwrap_or_default(),
            trace_id: next().text(),
            time: next().text().unwrap_or_default(),
            node: next().text().unwrap_or_default(),
            route: next().text(),
            upstream: next().text(),
            endpoint: next().text(),
            attempts: next().int(),
            method: next().text().unwrap_or_default(),
            path: next().text(),
            status: next().int().unwrap_or_default(),
            reason: next().text(),
            duration_ms: next().real().unwrap_or_default(),
            ttfb_ms: next().real(),
            bytes_in: next().int().unwrap_or_default(),
            bytes_out: next().int().unwrap_or_default(),
            sub: next().text(),
            iss: next().text(),
            realm: next().text(),
            client_ip: next().text(),
            fields: next().text().and_then(|s| serde_json::from_str(&s).ok()),
            model: next().text(),
            input_tokens: next().int(),
            output_tokens: next().int(),
            cache_read_tokens: next().int(),
            cache_write_tokens: next().int(),
            reasoning_tokens: next().int(),
            usage_source: next().text(),
            cost_usd: next().real(),
            stream: next().bool(),
            feedback_score: next().int(),
            feedback_comment: next().text(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_column_order() {
        let mut fields = serde_json::Map::new();
        fields.insert("instance".into(), "42".into());
        let row = Row {
            request_id: "r1".into(),
            time: "2026-01-02T03:04:05.678Z".into(),
            node: "n".into(),
            method: "POST".into(),
            status: 200,
            duration_ms: 1.5,
            fields: Some(fields),
            input_tokens: Some(10),
            stream: Some(true),
            ..Row::default()
        };
        let v = row.values();
        assert_eq!(v.len(), COLUMNS.len());
        assert_eq!(Row::from_values(v), row);
    }
}
