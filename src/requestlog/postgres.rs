//! The request log on PostgreSQL: one shared log for several gateway nodes. The blocking
//! `postgres` client (it drives `tokio-postgres` on a small runtime of its own) fits the
//! writer's own thread and keeps the request path's runtimes out of it; callers on a tokio
//! runtime (the admin API) use it through `spawn_blocking`.
//!
//! Batches are one multi-row INSERT … `ON CONFLICT (request_id) DO NOTHING`, so a batch retried
//! after an ambiguous failure (the connection dropped before the commit's answer) never
//! duplicates a row. Migrations run under an advisory lock: two nodes starting at once apply
//! each version once.

use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, NoTls};

use super::query::{self, Dialect, Filter, GroupBy, Sample};
use super::row::{Kind, Row, Value, COLUMNS};

/// The schema, one entry per version.
const MIGRATIONS: &[&str] = &[
    // 1: the requests table and the indexes the CLI's filters use
    "CREATE TABLE requests (
        request_id TEXT NOT NULL PRIMARY KEY,
        trace_id TEXT, time TIMESTAMPTZ NOT NULL, node TEXT NOT NULL, route TEXT, upstream TEXT,
        endpoint TEXT, attempts INTEGER, method TEXT NOT NULL, path TEXT, status INTEGER NOT NULL,
        reason TEXT, duration_ms DOUBLE PRECISION NOT NULL, ttfb_ms DOUBLE PRECISION,
        bytes_in BIGINT NOT NULL, bytes_out BIGINT NOT NULL, sub TEXT, iss TEXT, realm TEXT,
        client_ip TEXT, fields JSONB, model TEXT, input_tokens BIGINT, output_tokens BIGINT,
        cache_read_tokens BIGINT, cache_write_tokens BIGINT, reasoning_tokens BIGINT,
        usage_source TEXT, cost_usd DOUBLE PRECISION, stream BOOLEAN, feedback_score SMALLINT,
        feedback_comment TEXT
     );
     CREATE INDEX requests_time ON requests (time);
     CREATE INDEX requests_route ON requests (route, time);
     CREATE INDEX requests_sub ON requests (sub, time);
     CREATE INDEX requests_status ON requests (status, time);
     CREATE INDEX requests_model ON requests (model, time);",
];

/// The advisory lock key migrations hold (any constant; "ccgw" in ASCII).
const MIGRATION_LOCK: i64 = 0x6363_6777;

pub struct PgStore {
    client: Client,
}

type Param = Box<dyn ToSql + Sync>;

/// A value bound as the Rust type its placeholder's cast expects (`Dialect::param`).
fn bind(v: &Value, kind: Kind) -> Param {
    match (v, kind) {
        (Value::Null, Kind::Int) => Box::new(None::<i64>),
        (Value::Null, Kind::Real) => Box::new(None::<f64>),
        (Value::Null, Kind::Bool) => Box::new(None::<bool>),
        (Value::Null, _) => Box::new(None::<String>),
        // PostgreSQL refuses NUL in TEXT and `\u0000` in JSONB, and claims may carry them: a
        // row it refuses would hold its whole batch in the spool forever
        (Value::Text(s), Kind::Json) if s.contains("\\u0000") => {
            Box::new(s.replace("\\u0000", "\\ufffd"))
        }
        (Value::Text(s), _) if s.contains('\0') => Box::new(s.replace('\0', "\u{fffd}")),
        (Value::Text(s), _) => Box::new(s.clone()),
        (Value::Int(n), Kind::Real) => Box::new(*n as f64),
        (Value::Int(n), _) => Box::new(*n),
        (Value::Real(f), _) => Box::new(*f),
        (Value::Bool(b), _) => Box::new(*b),
    }
}

/// A filter's parameter: text or integer (see `query::where_clause`).
fn bind_plain(v: &Value) -> Param {
    let kind = match v {
        Value::Int(_) => Kind::Int,
        Value::Real(_) => Kind::Real,
        Value::Bool(_) => Kind::Bool,
        _ => Kind::Text,
    };
    bind(v, kind)
}

fn refs(p: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    p.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect()
}

impl PgStore {
    pub fn connect(url: &str, migrate: bool) -> Result<Self, postgres::Error> {
        let mut cfg: postgres::Config = url.parse()?;
        if cfg.get_connect_timeout().is_none() {
            // an unreachable server must not hold the writer (or a CLI) for the OS's minutes
            cfg.connect_timeout(Duration::from_secs(5));
        }
        if cfg.get_application_name().is_none() {
            cfg.application_name("cc-gateway");
        }
        let client = cfg.connect(NoTls)?;
        let mut s = PgStore { client };
        if migrate {
            s.migrate()?;
        }
        Ok(s)
    }

    fn migrate(&mut self) -> Result<(), postgres::Error> {
        let mut tx = self.client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )?;
        let have: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )?
            .get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i32 + 1;
            if version <= have {
                continue;
            }
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&version],
            )?;
        }
        tx.commit()
    }

    pub fn insert(&mut self, rows: &[Row]) -> Result<(), postgres::Error> {
        let names: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
        let mut sql = format!("INSERT INTO requests ({}) VALUES ", names.join(", "));
        let mut params: Vec<Param> = Vec::with_capacity(rows.len() * COLUMNS.len());
        for (r, row) in rows.iter().enumerate() {
            sql.push_str(if r == 0 { "(" } else { ", (" });
            for (i, (v, &(_, kind))) in row.values().iter().zip(COLUMNS).enumerate() {
                params.push(bind(v, kind));
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&Dialect::Postgres.param(params.len(), kind));
            }
            sql.push(')');
        }
        sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
        self.client.execute(&sql, &refs(&params))?;
        Ok(())
    }

    /// Deletes rows older than `cutoff` in batches of `BATCH`, each its own short statement.
    pub fn sweep(&mut self, cutoff: Option<&str>) -> Result<u64, postgres::Error> {
        const BATCH: u64 = 1000;
        let Some(c) = cutoff else { return Ok(0) };
        let mut deleted = 0;
        loop {
            let n = self.client.execute(
                &format!("DELETE FROM requests WHERE ctid IN (SELECT ctid FROM requests WHERE time < $1::text::timestamptz LIMIT {BATCH})"),
                &[&c],
            )?;
            deleted += n;
            if n < BATCH {
                return Ok(deleted);
            }
        }
    }

    pub fn rows(&mut self, f: &Filter, limit: usize) -> Result<Vec<Row>, postgres::Error> {
        let mut params = Vec::new();
        let sql = query::rows_sql(Dialect::Postgres, f, limit, &mut params);
        self.select_rows(&sql, &params)
    }

    pub fn get(&mut self, request_id: &str) -> Result<Option<Row>, postgres::Error> {
        let sql = format!(
            "SELECT {} FROM requests WHERE request_id = $1::text",
            Dialect::Postgres.select_list()
        );
        Ok(self
            .select_rows(&sql, &[Value::Text(request_id.to_string())])?
            .pop())
    }

    fn select_rows(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, postgres::Error> {
        let bound: Vec<Param> = params.iter().map(bind_plain).collect();
        let rows = self.client.query(sql, &refs(&bound))?;
        rows.iter()
            .map(|r| {
                let mut v = Vec::with_capacity(COLUMNS.len());
                for (i, &(_, kind)) in COLUMNS.iter().enumerate() {
                    v.push(match kind {
                        Kind::Text | Kind::Time | Kind::Json => r
                            .try_get::<_, Option<String>>(i)?
                            .map_or(Value::Null, Value::Text),
                        Kind::Int => r
                            .try_get::<_, Option<i64>>(i)?
                            .map_or(Value::Null, Value::Int),
                        Kind::Real => r
                            .try_get::<_, Option<f64>>(i)?
                            .map_or(Value::Null, Value::Real),
                        Kind::Bool => r
                            .try_get::<_, Option<bool>>(i)?
                            .map_or(Value::Null, Value::Bool),
                    });
                }
                Ok(Row::from_values(v))
            })
            .collect()
    }

    pub fn samples(&mut self, by: &GroupBy, f: &Filter) -> Result<Vec<Sample>, postgres::Error> {
        let mut params = Vec::new();
        let sql = query::stats_sql(Dialect::Postgres, by, f, &mut params);
        let bound: Vec<Param> = params.iter().map(bind_plain).collect();
        let rows = self.client.query(&sql, &refs(&bound))?;
        rows.iter()
            .map(|r| {
                Ok(Sample {
                    group: r.try_get(0)?,
                    status: r.try_get(1)?,
                    duration_ms: r.try_get(2)?,
                    input_tokens: r.try_get(3)?,
                    output_tokens: r.try_get(4)?,
                    cost_usd: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub fn feedback(
        &mut self,
        id: &str,
        score: i64,
        comment: Option<&str>,
    ) -> Result<bool, postgres::Error> {
        let n = self.client.execute(
            "UPDATE requests SET feedback_score = $1::int8, feedback_comment = $2::text WHERE request_id = $3::text",
            &[&score, &comment, &id],
        )?;
        Ok(n > 0)
    }
}
