//! The request log (`[request_log]`): one row per request in table `requests`, on SQLite or
//! PostgreSQL, queryable with `cc-gateway logs` and the admin API's `/logs`.
//!
//! Nothing here slows the request path: a worker builds the [`Row`] and hands it to a bounded
//! queue with `try_send` — a full queue drops the row and counts it
//! (`request_log_dropped_total{cause="queue_full"}`), it never waits. One writer thread per
//! process (`writer`) writes batches, spools through store outages and sweeps retention;
//! [`RequestLog::shutdown`] drains it at SIGTERM.
//!
//! - `row`: the columns and [`Row`]; `query`: filters, stats, SQL per dialect;
//!   `sqlite`/`postgres`: the two stores, each with its versioned migrations; `store`: either
//!   one behind one type; `api`: what the CLI and the admin endpoints share.

pub mod api;
mod postgres;
pub mod query;
mod row;
mod sqlite;
pub mod store;
mod writer;

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::accesslog::Record;
use crate::auth::Verified;
use crate::config::{FieldSource, RequestLog as Config};
use crate::metrics::REQUEST_LOG;

pub use row::{Row, COLUMNS};
pub use store::{Store, StoreError};

/// The handle workers log through; cheap to clone. The last clone dropped (a reload that
/// changed `[request_log]`) lets the writer finish what it holds and exit on its own.
#[derive(Clone)]
pub struct RequestLog {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    tx: SyncSender<Row>,
    shared: Arc<writer::Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared
            .request_stop(Instant::now() + self.cfg.flush_timeout);
    }
}

/// The request headers `fields` names, taken when the request begins (they are gone by the
/// time it is logged), in `fields` order (None for claim fields and absent headers).
pub struct Captured(Box<[Option<String>]>);

impl RequestLog {
    /// Starts the writer thread. The store is opened (and migrated) there: an unreachable
    /// PostgreSQL at startup spools like a later outage instead of failing the gateway.
    pub fn start(cfg: &Config) -> std::io::Result<RequestLog> {
        let (tx, rx) = sync_channel(cfg.queue_size);
        let shared = Arc::new(writer::Shared::new());
        let (wcfg, wshared) = (cfg.clone(), shared.clone());
        std::thread::Builder::new()
            .name("cc-request-log".into())
            .spawn(move || writer::run(wcfg, rx, &wshared))?;
        // the metrics exist (at 0) from the start, for dashboards and alerts
        REQUEST_LOG.queue_depth.get();
        Ok(RequestLog {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                tx,
                shared,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The header values `fields` wants, if it wants any.
    pub fn capture(&self, headers: &HeaderMap) -> Option<Captured> {
        let f = &self.inner.cfg.fields;
        if !f.iter().any(|(_, s)| matches!(s, FieldSource::Header(_))) {
            return None;
        }
        Some(Captured(
            f.iter()
                .map(|(_, s)| match s {
                    FieldSource::Header(h) => headers
                        .get(h)
                        .and_then(|v| v.to_str().ok())
                        .map(|v| v.chars().take(256).collect()),
                    FieldSource::Claim(_) => None,
                })
                .collect(),
        ))
    }

    /// Queues the row of a finished request (never blocks: a full queue drops it, counted).
    pub fn log(&self, rec: &Record<'_>, id: Option<&Verified>, captured: Option<&Captured>) {
        let row = self.row(rec, id, captured);
        match self.inner.tx.try_send(row) {
            Ok(()) => REQUEST_LOG.queue_depth.inc(),
            Err(TrySendError::Full(_)) => {
                REQUEST_LOG.dropped.with_label_values(&["queue_full"]).inc()
            }
            Err(TrySendError::Disconnected(_)) => {
                REQUEST_LOG.dropped.with_label_values(&["shutdown"]).inc()
            }
        }
    }

    /// The row for an access-log record (the same facts, the column names of the table).
    pub fn row(&self, rec: &Record<'_>, id: Option<&Verified>, captured: Option<&Captured>) -> Row {
        let s = |v: Option<&str>| v.map(str::to_string);
        let ai = rec.ai.as_ref();
        let n = |v: Option<u64>| v.map(|n| n.min(i64::MAX as u64) as i64);
        Row {
            request_id: rec.request_id.to_string(),
            trace_id: s(rec.trace_id),
            time: rec.time.as_str().to_string(),
            node: self.inner.cfg.node.clone(),
            route: s(rec.route),
            upstream: s(rec.upstream),
            endpoint: s(rec.endpoint),
            attempts: (rec.attempts > 0).then_some(i64::from(rec.attempts)),
            method: rec.method.to_string(),
            path: (!rec.path.is_empty()).then(|| rec.path.to_string()),
            status: i64::from(rec.status),
            reason: s(rec.reason),
            duration_ms: rec.duration_ms,
            ttfb_ms: rec.ttfb_ms,
            bytes_in: n(Some(rec.bytes_in)).unwrap_or(0),
            bytes_out: n(Some(rec.bytes_out)).unwrap_or(0),
            sub: s(rec.sub),
            iss: s(rec.iss),
            realm: s(rec.realm),
            client_ip: Some(rec.client_ip.to_string()),
            fields: self.fields(id, captured),
            model: ai.and_then(|a| s(a.model)),
            input_tokens: n(ai.and_then(|a| a.input_tokens)),
            output_tokens: n(ai.and_then(|a| a.output_tokens)),
            cache_read_tokens: n(ai.and_then(|a| a.cache_read_tokens)),
            cache_write_tokens: n(ai.and_then(|a| a.cache_write_tokens)),
            reasoning_tokens: n(ai.and_then(|a| a.reasoning_tokens)),
            usage_source: ai.map(|a| a.usage_source.to_string()),
            cost_usd: ai.and_then(|a| a.cost_usd),
            stream: ai.map(|a| a.stream),
            feedback_score: None,
            feedback_comment: None,
        }
    }

    fn fields(
        &self,
        id: Option<&Verified>,
        captured: Option<&Captured>,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let f = &self.inner.cfg.fields;
        if f.is_empty() {
            return None;
        }
        let mut m = serde_json::Map::new();
        for (i, (name, src)) in f.iter().enumerate() {
            let v = match src {
                FieldSource::Claim(c) => id.and_then(|v| v.claims.get(c)).cloned(),
                FieldSource::Header(_) => captured
                    .and_then(|c| c.0.get(i).cloned().flatten())
                    .map(serde_json::Value::String),
            };
            if let Some(v) = v {
                m.insert(name.clone(), v);
            }
        }
        Some(m)
    }

    /// Writes what is queued and spooled, waiting up to `timeout`; rows still unwritten then
    /// are counted as dropped (`shutdown`). Returns whether everything was written.
    pub fn shutdown(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        self.inner.shared.request_stop(until);
        // a little past the deadline: the writer counts what it could not write, then exits
        self.inner
            .shared
            .wait_done(until + Duration::from_millis(500))
    }
}
