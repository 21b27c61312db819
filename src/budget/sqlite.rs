//! SQLite persistence for budget counters. Decisions stay in memory (fast, atomic across
//! rules); this writes what changed to the database every `flush_interval`, in one
//! transaction, on its own thread — never on the request path — and once more at shutdown.
//! A crash loses at most the last flush interval. The file holds one gateway's counters (many
//! nodes sharing one budget is Redis's job).

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};

use super::memory::{MemoryStore, Row};
use crate::metrics::METRICS;

#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    /// opening, creating, reading or writing the database
    #[error("budget store {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("budget store {path}: cannot start the thread that writes it: {source}")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("budget store {path}: the thread that writes it panicked; the last counters are not written")]
    Panicked { path: String },
}

pub struct Persist {
    /// the file, as errors name it
    path: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    /// the flusher; it ends with the final flush's result
    thread: Mutex<Option<std::thread::JoinHandle<Result<(), rusqlite::Error>>>>,
}

fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let c = Connection::open(path)?;
    // WAL: the flush does not block readers; NORMAL sync is durable at checkpoints, enough for
    // counters that are flushed every second anyway
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS budget_counters (
             key TEXT PRIMARY KEY, kind INTEGER NOT NULL, a INTEGER NOT NULL, used INTEGER NOT NULL,
             limit_count INTEGER NOT NULL, limit_period INTEGER NOT NULL)",
    )?;
    Ok(c)
}

fn load(c: &Connection) -> Result<Vec<Row>, rusqlite::Error> {
    let mut st =
        c.prepare("SELECT key, kind, a, used, limit_count, limit_period FROM budget_counters")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })?;
    rows.collect()
}

/// Writes what changed since the last flush, in one transaction. On failure the rows stay
/// pending (the next flush retries them) and the error is returned with how many there were.
fn flush(c: &mut Connection, store: &MemoryStore) -> Result<(), (usize, rusqlite::Error)> {
    let (rows, removed) = store.drain_changes();
    if rows.is_empty() && removed.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let result = (|| -> Result<(), rusqlite::Error> {
        let tx = c.transaction()?;
        {
            let mut up = tx.prepare_cached(
                "INSERT OR REPLACE INTO budget_counters (key, kind, a, used, limit_count, limit_period) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (k, kind, a, used, n, p) in &rows {
                up.execute(params![k, kind, a, used, n, p])?;
            }
            let mut del = tx.prepare_cached("DELETE FROM budget_counters WHERE key = ?1")?;
            for k in &removed {
                del.execute(params![k])?;
            }
        }
        tx.commit()
    })();
    METRICS
        .budget_store_duration
        .with_label_values(&["sqlite"])
        .observe(started.elapsed().as_secs_f64());
    result.map_err(|e| {
        METRICS
            .budget_store_errors
            .with_label_values(&["sqlite"])
            .inc();
        let n = rows.len();
        store.mark_dirty(rows.into_iter().map(|r| r.0));
        (n, e)
    })
}

impl Persist {
    /// Opens (creating) the database, loads its counters into `store`, starts the flusher.
    pub fn start(
        path: &Path,
        store: Arc<MemoryStore>,
        every: Duration,
        now_ns: i64,
    ) -> Result<Persist, SqliteError> {
        let err = |source| SqliteError::Db {
            path: path.display().to_string(),
            source,
        };
        let mut conn = open(path).map_err(err)?;
        store.persist_removals();
        store.load(load(&conn).map_err(err)?, now_ns);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cc-budget-flush".into())
            .spawn(move || loop {
                let (lock, cv) = &*s;
                let stopping = match lock.lock() {
                    // the flag is checked before waiting (and after spurious wake-ups): a stop
                    // signalled while a flush ran must not be missed for a whole interval
                    Ok(g) => cv
                        .wait_timeout_while(g, every, |stop| !*stop)
                        .map(|(g, _)| *g)
                        .unwrap_or(true),
                    Err(_) => true,
                };
                match flush(&mut conn, &store) {
                    // the final flush's failure goes to `shutdown`, which reports it
                    result if stopping => return result.map_err(|(_, e)| e),
                    Ok(()) => {}
                    // a background failure that the next flush retries: one line per interval
                    Err((rows, e)) => {
                        tracing::error!(error = %e, rows, "budget store flush failed; will retry")
                    }
                }
            })
            .map_err(|source| SqliteError::Spawn {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Persist {
            path: path.display().to_string(),
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Final flush and stop (idempotent: once stopped, there is nothing left to write).
    pub fn shutdown(&self) -> Result<(), SqliteError> {
        let (lock, cv) = &*self.stop;
        if let Ok(mut g) = lock.lock() {
            *g = true;
        }
        cv.notify_all();
        let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) else {
            return Ok(());
        };
        match t.join() {
            Ok(flushed) => flushed.map_err(|source| SqliteError::Db {
                path: self.path.clone(),
                source,
            }),
            Err(_) => Err(SqliteError::Panicked {
                path: self.path.clone(),
            }),
        }
    }
}

impl Drop for Persist {
    /// The store replaced by a reload (or the process ending without `flush`) still writes its
    /// last counters; a failure then has no caller to go to, so it is logged here.
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            super::failure_log::log_failure("sqlite", "flush", &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Probe, StoreError};
    use crate::config::Limit;

    /// The final flush's failure reaches the caller with the file and the cause.
    #[test]
    fn a_failed_final_flush_is_returned_with_its_cause() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("budgets.db");
        let store = Arc::new(MemoryStore::default());
        let every = Duration::from_secs(3600); // only the final flush runs
        let persist = Persist::start(&path, store.clone(), every, 0).expect("a new database");
        let probe = Probe {
            key: "q|alice".into(),
            rate: false,
            limit: Limit {
                count: 10,
                period: Duration::from_secs(86_400),
            },
            burst: 1,
            cost: 1,
            tokens: false,
        };
        let now = 1_000_000_000_000;
        assert!(store.decide(&[probe], now).expect("decided").admitted);
        // the table goes away under the flusher: its write must fail
        let other = Connection::open(&path).expect("a second connection");
        other
            .execute_batch("DROP TABLE budget_counters")
            .expect("dropped");
        let err = persist.shutdown().expect_err("the final flush fails");
        let text = StoreError::from(err).to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("no such table"), "{text}");
        assert!(persist.shutdown().is_ok(), "stopped: nothing left to write");
    }
}
