//! One connection to the request log's store, whichever it is: what the writer, the CLI and
//! the admin API call. Blocking: callers on a tokio runtime go through `spawn_blocking`.

use crate::config::RequestLogStore;

use super::postgres::PgStore;
use super::query::{self, Filter, Group, GroupBy, Order};
use super::row::Row;
use super::sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("request log (SQLite): {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("request log (PostgreSQL): {0}")]
    Postgres(#[from] postgres::Error),
    #[error("request log: no table `requests` yet (has the gateway written to this store?)")]
    NoTable,
}

impl StoreError {
    /// The store refused the data itself (a value it cannot hold), not the connection or a
    /// lock: retrying the same rows would fail forever.
    pub fn is_data_error(&self) -> bool {
        match self {
            StoreError::Postgres(e) => e
                .as_db_error()
                .is_some_and(|d| matches!(&d.code().code()[..2], "22" | "23")),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::ConstraintViolation
                    | rusqlite::ErrorCode::TooBig
                    | rusqlite::ErrorCode::TypeMismatch
            ),
            _ => false,
        }
    }
}

pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Store {
    /// Connects; the writer (`migrate`) also brings the schema up to date.
    pub fn open(cfg: &RequestLogStore, migrate: bool) -> Result<Store, StoreError> {
        Ok(match cfg {
            RequestLogStore::Sqlite(p) => {
                let s = SqliteStore::open(p, migrate)?;
                if !migrate && !s.has_table()? {
                    return Err(StoreError::NoTable);
                }
                Store::Sqlite(s)
            }
            RequestLogStore::Postgres(u) => Store::Postgres(PgStore::connect(u.secret(), migrate)?),
        })
    }

    pub fn insert(&mut self, rows: &[Row]) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.insert(rows)?,
            Store::Postgres(s) => s.insert(rows)?,
        }
        Ok(())
    }

    /// Retention: rows older than `cutoff` (RFC 3339), and on SQLite the oldest beyond `max_size`.
    pub fn sweep(
        &mut self,
        cutoff: Option<&str>,
        max_size: Option<u64>,
    ) -> Result<u64, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => s.sweep(cutoff, max_size)?,
            Store::Postgres(s) => s.sweep(cutoff)?,
        })
    }

    /// Matching rows, newest first.
    pub fn rows(&mut self, f: &Filter, limit: usize) -> Result<Vec<Row>, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => s.rows(f, limit)?,
            Store::Postgres(s) => s.rows(f, limit)?,
        })
    }

    pub fn get(&mut self, request_id: &str) -> Result<Option<Row>, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => s.get(request_id)?,
            Store::Postgres(s) => s.get(request_id)?,
        })
    }

    pub fn stats(
        &mut self,
        by: &GroupBy,
        f: &Filter,
        order: Order,
    ) -> Result<Vec<Group>, StoreError> {
        let samples = match self {
            Store::Sqlite(s) => s.samples(by, f)?,
            Store::Postgres(s) => s.samples(by, f)?,
        };
        Ok(query::aggregate(samples, order))
    }

    /// Records feedback on a row; false when no row has that id.
    pub fn feedback(
        &mut self,
        id: &str,
        score: i64,
        comment: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(match self {
            Store::Sqlite(s) => s.feedback(id, score, comment)?,
            Store::Postgres(s) => s.feedback(id, score, comment)?,
        })
    }
}
