//! The request log on SQLite: the embedded default. WAL (readers — `cc-gateway logs`, the
//! admin API — never block the writer), incremental auto-vacuum (rows deleted by `max_size`
//! give their pages back to the file system), versioned migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{params_from_iter, Connection, OptionalExtension};

use super::query::{self, Dialect, Filter, GroupBy, Sample};
use super::row::{Cell, Row, Value, COLUMNS};

/// The schema, one entry per version, applied in order inside one transaction each.
const MIGRATIONS: &[&str] = &[
    // 1: the requests table and the indexes the CLI's filters use
    "CREATE TABLE requests (
        request_id TEXT NOT NULL PRIMARY KEY,
        trace_id TEXT, time TEXT NOT NULL, node TEXT NOT NULL, route TEXT, upstream TEXT,
        endpoint TEXT, attempts INTEGER, method TEXT NOT NULL, path TEXT, status INTEGER NOT NULL,
        reason TEXT, duration_ms REAL NOT NULL, ttfb_ms REAL, bytes_in INTEGER NOT NULL,
        bytes_out INTEGER NOT NULL, sub TEXT, iss TEXT, realm TEXT, client_ip TEXT, fields TEXT,
        model TEXT, input_tokens INTEGER, output_tokens INTEGER, cache_read_tokens INTEGER,
        cache_write_tokens INTEGER, reasoning_tokens INTEGER, usage_source TEXT, cost_usd REAL,
        stream INTEGER, feedback_score INTEGER, feedback_comment TEXT
     );
     CREATE INDEX requests_time ON requests (time);
     CREATE INDEX requests_route ON requests (route, time);
     CREATE INDEX requests_sub ON requests (sub, time);
     CREATE INDEX requests_status ON requests (status, time);
     CREATE INDEX requests_model ON requests (model, time);",
];

pub struct SqliteStore {
    conn: Connection,
}

/// A cell bound as it is (its text borrowed from the row or the query's parameter).
struct BoundCell<'a>(&'a Cell<'a>);
impl rusqlite::ToSql for BoundCell<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Cell::Null => ToSqlOutput::Owned(SqlValue::Null),
            Cell::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Cell::Int(n) => ToSqlOutput::Owned(SqlValue::Integer(*n)),
            Cell::Real(f) => ToSqlOutput::Owned(SqlValue::Real(*f)),
            Cell::Bool(b) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*b))),
        })
    }
}

fn read(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null | ValueRef::Blob(_) => Value::Null,
        ValueRef::Integer(n) => Value::Int(n),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
    }
}

impl SqliteStore {
    /// Opens (creating) the database; the writer (`migrate`) brings the schema up to date.
    pub fn open(path: &Path, migrate: bool) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        // a reader waiting on a checkpoint, or another writer, waits this long, no longer: the
        // writer's batch is spooled and retried rather than stalled behind a lock
        conn.busy_timeout(Duration::from_millis(1000))?;
        if migrate {
            // only takes effect on a new file, before the first table
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // the writer checkpoints (copies the WAL back, then fsyncs) every 10,000 pages
            // rather than SQLite's 1,000: the pages every batch rewrites (the table's and the
            // time index's last ones) are copied once per checkpoint, and fsyncs are a tenth;
            // the WAL file grows to ~40 MiB
            conn.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        }
        let mut s = SqliteStore { conn };
        if migrate {
            s.migrate()?;
        }
        Ok(s)
    }

    fn migrate(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        )?;
        let have: i64 = self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            if version <= have {
                continue;
            }
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                rusqlite::params![version, query::time_ago(Duration::ZERO)],
            )?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Inserts `rows` as one statement, atomic on its own; a request id already there is
    /// skipped. No BEGIN/COMMIT around it: inside an explicit transaction SQLite keeps a
    /// statement journal for the multi-row insert (spilled to a temp file past 64 KiB), which
    /// took a tenth of the writer's time in a profile at 28k rows/s.
    pub fn insert(&mut self, rows: &[Row]) -> rusqlite::Result<()> {
        let sql = insert_sql(rows.len());
        let mut stmt = self.conn.prepare_cached(&sql)?;
        // the rows' strings are bound where they are (SQLite copies each once, as it must)
        let cells: Vec<Cell> = rows.iter().flat_map(Row::cells).collect();
        stmt.execute(params_from_iter(cells.iter().map(BoundCell)))?;
        Ok(())
    }

    /// Deletes rows older than `cutoff`, then the oldest while the live pages exceed
    /// `max_size`, in batches of `BATCH` (each its own short transaction). Returns rows deleted.
    pub fn sweep(&mut self, cutoff: Option<&str>, max_size: Option<u64>) -> rusqlite::Result<u64> {
        const BATCH: usize = 1000;
        let mut deleted = 0u64;
        if let Some(c) = cutoff {
            loop {
                let n = self.conn.execute(
                    &format!("DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests WHERE time < ?1 LIMIT {BATCH})"),
                    [c],
                )?;
                deleted += n as u64;
                if n < BATCH {
                    break;
                }
            }
        }
        if let Some(max) = max_size {
            // Deleting the oldest rows frees few whole pages at once (the request_id index is
            // in random order, so every page loses a few entries): pages do not shrink in step
            // with rows. So the rows to keep are estimated from the average row size, and the
            // space the deleted ones leave is reused by the next inserts.
            let used = self.used_bytes()?;
            if used > max {
                let rows: i64 = self
                    .conn
                    .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))?;
                let per_row = used as f64 / rows.max(1) as f64;
                let keep = (max as f64 * 0.9 / per_row) as i64;
                let mut excess = rows - keep;
                while excess > 0 {
                    let n = self.conn.execute(
                        &format!("DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests ORDER BY time LIMIT {})", excess.min(BATCH as i64)),
                        [],
                    )?;
                    deleted += n as u64;
                    excess -= n as i64;
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        if deleted > 0 {
            self.conn.execute_batch("PRAGMA incremental_vacuum")?;
        }
        Ok(deleted)
    }

    fn used_bytes(&self) -> rusqlite::Result<u64> {
        let p = |name: &str| -> rusqlite::Result<i64> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        };
        let live = (p("page_count")? - p("freelist_count")?).max(0) as u64;
        Ok(live * p("page_size")?.max(0) as u64)
    }

    pub fn rows(&self, f: &Filter, limit: usize) -> rusqlite::Result<Vec<Row>> {
        let mut params = Vec::new();
        let sql = query::rows_sql(Dialect::Sqlite, f, limit, &mut params);
        self.select_rows(&sql, &params)
    }

    pub fn get(&self, request_id: &str) -> rusqlite::Result<Option<Row>> {
        let sql = format!(
            "SELECT {} FROM requests WHERE request_id = ?1",
            Dialect::Sqlite.select_list()
        );
        Ok(self
            .select_rows(&sql, &[Value::Text(request_id.to_string())])?
            .pop())
    }

    fn select_rows(&self, sql: &str, params: &[Value]) -> rusqlite::Result<Vec<Row>> {
        let mut stmt = self.conn.prepare(sql)?;
        let cells: Vec<Cell> = params.iter().map(Value::as_cell).collect();
        let rows = stmt.query_map(params_from_iter(cells.iter().map(BoundCell)), |r| {
            let mut v = Vec::with_capacity(COLUMNS.len());
            for i in 0..COLUMNS.len() {
                v.push(read(r.get_ref(i)?));
            }
            Ok(Row::from_values(v))
        })?;
        rows.collect()
    }

    pub fn samples(&self, by: &GroupBy, f: &Filter) -> rusqlite::Result<Vec<Sample>> {
        let mut params = Vec::new();
        let sql = query::stats_sql(Dialect::Sqlite, by, f, &mut params);
        let mut stmt = self.conn.prepare(&sql)?;
        let cells: Vec<Cell> = params.iter().map(Value::as_cell).collect();
        let rows = stmt.query_map(params_from_iter(cells.iter().map(BoundCell)), |r| {
            Ok(Sample {
                group: match read(r.get_ref(0)?) {
                    Value::Text(s) => Some(s),
                    Value::Int(n) => Some(n.to_string()),
                    Value::Real(f) => Some(f.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    Value::Null => None,
                },
                status: r.get(1)?,
                duration_ms: r.get(2)?,
                input_tokens: r.get(3)?,
                output_tokens: r.get(4)?,
                cost_usd: r.get(5)?,
            })
        })?;
        rows.collect()
    }

    /// Records feedback; false when no row has that id.
    pub fn feedback(&self, id: &str, score: i64, comment: Option<&str>) -> rusqlite::Result<bool> {
        let n = self.conn.execute(
            "UPDATE requests SET feedback_score = ?1, feedback_comment = ?2 WHERE request_id = ?3",
            rusqlite::params![score, comment, id],
        )?;
        Ok(n > 0)
    }

    /// Whether the table exists (a reader on a file the gateway never wrote).
    pub fn has_table(&self) -> rusqlite::Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'requests'",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

/// One statement for `n` rows. Placeholders are anonymous `?` (numbered in order): at tens of
/// thousands of rows a second, formatting `?NNN` per value was a tenth of the writer's time.
fn insert_sql(n: usize) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
    let group = format!("({})", vec!["?"; COLUMNS.len()].join(", "));
    let mut sql = format!("INSERT INTO requests ({}) VALUES ", names.join(", "));
    sql.reserve(n * (group.len() + 2) + 40);
    for r in 0..n {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&group);
    }
    sql.push_str(" ON CONFLICT (request_id) DO NOTHING");
    sql
}
