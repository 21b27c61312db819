//! The writer thread: the only code that writes the store. It takes rows from the bounded
//! queue, writes them in batches, keeps the rows of a failed write in a bounded spool and
//! retries them (with backoff, reconnecting) ahead of newer ones, sweeps retention, and on
//! stop drains the queue and the spool before it says it is done.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::RequestLog as Config;
use crate::metrics::REQUEST_LOG;

use super::query;
use super::row::Row;
use super::store::Store;

/// What the handle and the writer share.
pub struct Shared {
    /// set by `shutdown` (or the last handle's drop): drain, write, exit
    pub stop: AtomicBool,
    /// when the stopping writer gives up on rows it cannot write
    pub deadline: Mutex<Option<Instant>>,
    /// set by the writer as it exits
    pub done: Mutex<bool>,
    pub done_cv: Condvar,
}

impl Shared {
    pub fn new() -> Self {
        Shared {
            stop: AtomicBool::new(false),
            deadline: Mutex::new(None),
            done: Mutex::new(false),
            done_cv: Condvar::new(),
        }
    }

    /// Asks the writer to finish by `deadline` (the earliest asked wins).
    pub fn request_stop(&self, deadline: Instant) {
        let mut d = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        *d = Some(d.map_or(deadline, |old| old.min(deadline)));
        self.stop.store(true, Ordering::Release);
    }

    /// Waits until the writer has exited or `until`; true if it has.
    pub fn wait_done(&self, until: Instant) -> bool {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            done = match self.done_cv.wait_timeout(done, until - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }

    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Writer {
    cfg: Config,
    store: Option<Store>,
    /// rows taken from the queue and not yet written (a batch, or the spool during an outage)
    pending: VecDeque<Row>,
    retry_at: Instant,
    backoff: Duration,
    last_write: Instant,
    next_sweep: Instant,
}

pub fn run(cfg: Config, rx: Receiver<Row>, shared: &Shared) {
    let now = Instant::now();
    let mut w = Writer {
        store: None,
        pending: VecDeque::new(),
        retry_at: now,
        backoff: Duration::from_millis(100),
        last_write: now,
        next_sweep: now,
        cfg,
    };
    let tick = w.cfg.flush_interval.min(Duration::from_millis(100));
    /// how often a filling batch takes what was queued
    const POLL: Duration = Duration::from_millis(5);
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let mut closed = false;
        if !stopping && w.pending.is_empty() {
            // idle: block until a row comes
            match rx.recv_timeout(tick) {
                Ok(r) => w.take(r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => closed = true,
            }
        } else if !stopping {
            // rows are pending: a batch filling is collected by polling. Blocking here had the
            // workers wake this thread once per row (a futex call on the request path, then a
            // context switch) — now it is once per batch. The queue holds far more than a
            // poll's worth. A store in back-off is waited for (up to a tick), not spun on.
            let filling = match w.pending.len() < w.cfg.batch_size {
                true => w
                    .cfg
                    .flush_interval
                    .saturating_sub(w.last_write.elapsed())
                    .min(POLL),
                false => Duration::ZERO,
            };
            let backing_off = w
                .retry_at
                .saturating_duration_since(Instant::now())
                .min(tick);
            let wait = filling.max(backing_off);
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        // what else is queued, up to a batch (all of it when stopping)
        loop {
            if !stopping && w.pending.len() >= w.cfg.batch_size {
                break;
            }
            match rx.try_recv() {
                Ok(r) => w.take(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if closed && !stopping {
            // every handle is gone (a reload replaced this log): finish like a shutdown
            shared.request_stop(Instant::now() + w.cfg.flush_timeout);
            continue;
        }
        if !stopping {
            w.bound_spool();
        }
        let due = w.pending.len() >= w.cfg.batch_size
            || w.last_write.elapsed() >= w.cfg.flush_interval
            || stopping;
        if due && !w.pending.is_empty() && Instant::now() >= w.retry_at {
            w.write();
        }
        if !stopping && Instant::now() >= w.next_sweep {
            w.sweep();
        }
        if stopping {
            let past = shared.deadline().is_none_or(|d| Instant::now() >= d);
            if w.pending.is_empty() || past {
                let lost = w.pending.len() as u64;
                if lost > 0 {
                    tracing::error!(
                        rows = lost,
                        "request log: rows not written before the flush timeout"
                    );
                    REQUEST_LOG
                        .dropped
                        .with_label_values(&["shutdown"])
                        .inc_by(lost);
                }
                REQUEST_LOG.spooled.set(0);
                break;
            }
            if Instant::now() < w.retry_at {
                std::thread::sleep((w.retry_at - Instant::now()).min(Duration::from_millis(50)));
            }
        }
    }
    let mut done = shared.done.lock().unwrap_or_else(|e| e.into_inner());
    *done = true;
    shared.done_cv.notify_all();
}

impl Writer {
    fn take(&mut self, r: Row) {
        REQUEST_LOG.queue_depth.dec();
        self.pending.push_back(r);
    }

    /// During an outage the pending rows are the spool: beyond its bound the oldest go.
    fn bound_spool(&mut self) {
        let bound = self.cfg.spool_size.max(self.cfg.batch_size);
        if self.pending.len() > bound {
            let excess = self.pending.len() - bound;
            self.pending.drain(..excess);
            REQUEST_LOG
                .dropped
                .with_label_values(&["spool_full"])
                .inc_by(excess as u64);
        }
    }

    fn connect(&mut self) -> Option<&mut Store> {
        open_store(&mut self.store, &self.cfg.store)
    }

    /// Writes pending rows, a batch at a time, oldest first; stops at the first failure.
    fn write(&mut self) {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.cfg.batch_size);
            // the rows are written from where they wait, not copied out
            let rows = &self.pending.make_contiguous()[..n];
            let result = match open_store(&mut self.store, &self.cfg.store) {
                Some(s) => s.insert(rows),
                None => {
                    self.failed();
                    return;
                }
            };
            match result {
                Ok(()) => {
                    self.pending.drain(..n);
                    REQUEST_LOG.rows_written.inc_by(n as u64);
                    self.backoff = Duration::from_millis(100);
                    self.last_write = Instant::now();
                }
                Err(e) if e.is_data_error() => {
                    REQUEST_LOG.store_errors.inc();
                    if !self.write_one_by_one(n) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = self.pending.len(), "request log: write failed; rows are spooled and retried");
                    REQUEST_LOG.store_errors.inc();
                    // reconnect next time: the connection may be what broke
                    self.store = None;
                    self.failed();
                    return;
                }
            }
        }
        REQUEST_LOG.spooled.set(0);
    }

    /// A batch the store refused for its data: each row alone, dropping (counted as
    /// `rejected`) only the ones it refuses, so one bad row never holds the others back.
    /// False when the store became unreachable (the rows not written wait, in order).
    fn write_one_by_one(&mut self, n: usize) -> bool {
        let mut batch: VecDeque<Row> = self.pending.drain(..n).collect();
        let mut ok = true;
        while let Some(row) = batch.pop_front() {
            let result = match self.connect() {
                Some(s) => s.insert(std::slice::from_ref(&row)),
                None => {
                    batch.push_front(row);
                    ok = false;
                    break;
                }
            };
            match result {
                Ok(()) => REQUEST_LOG.rows_written.inc(),
                Err(e) if e.is_data_error() => {
                    tracing::warn!(error = %e, request_id = %row.request_id, "request log: row refused by the store");
                    REQUEST_LOG.dropped.with_label_values(&["rejected"]).inc();
                }
                Err(_) => {
                    self.store = None;
                    batch.push_front(row);
                    ok = false;
                    break;
                }
            }
        }
        for r in batch.into_iter().rev() {
            self.pending.push_front(r);
        }
        if !ok {
            self.failed();
        }
        ok
    }

    fn failed(&mut self) {
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        REQUEST_LOG.spooled.set(self.pending.len() as i64);
    }

    fn sweep(&mut self) {
        let cfg_retention = self.cfg.retention;
        // often enough for a short retention to hold, at least every minute
        let mut every = cfg_retention
            .map_or(Duration::from_secs(60), |r| r / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(60));
        if self.cfg.max_size.is_some() {
            // the size check is three pragmas: cheap enough to keep the bound tight
            every = every.min(Duration::from_secs(1));
        }
        self.next_sweep = Instant::now() + every;
        if cfg_retention.is_none() && self.cfg.max_size.is_none() {
            return;
        }
        let cutoff = cfg_retention.map(query::time_ago);
        let max_size = self.cfg.max_size;
        let Some(s) = self.connect() else { return };
        match s.sweep(cutoff.as_deref(), max_size) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "request log: retention deleted rows"),
            Err(e) => {
                tracing::warn!(error = %e, "request log: retention sweep failed");
                self.store = None;
            }
        }
    }
}

/// The writer's store, opened first if it is not yet (a free function: the caller keeps the
/// pending rows borrowed meanwhile).
fn open_store<'a>(
    store: &'a mut Option<Store>,
    at: &crate::config::RequestLogStore,
) -> Option<&'a mut Store> {
    if store.is_none() {
        match Store::open(at, true) {
            Ok(s) => *store = Some(s),
            Err(e) => {
                tracing::warn!(error = %e, store = %at, "request log: cannot open the store; rows are spooled");
                return None;
            }
        }
    }
    store.as_mut()
}
