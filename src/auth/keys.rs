//! Per-issuer key state shared by the workers (read on every verification, lock-free) and
//! the control plane (which fetches and swaps it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};

use super::jwk::KeySet;
use crate::config::Issuer;

pub struct IssuerKeys {
    pub cfg: Issuer,
    keys: ArcSwapOption<KeySet>,
    /// bumped after every fetch attempt, success or not: unknown-kid waiters await it
    attempts: watch::Sender<u64>,
    /// wakes the issuer's refresher (unknown kid)
    pub wake: Notify,
    in_flight: AtomicBool,
    /// ms since `epoch` of the last unknown-kid refetch (u64::MAX: never)
    last_kid_refetch: AtomicU64,
    epoch: Instant,
    /// serialises fetches of this issuer (background loop and admin refresh)
    pub fetch_lock: tokio::sync::Mutex<()>,
    pub last_error: ArcSwapOption<String>,
}

impl IssuerKeys {
    pub fn new(cfg: Issuer) -> Self {
        IssuerKeys {
            cfg,
            keys: ArcSwapOption::empty(),
            attempts: watch::channel(0).0,
            wake: Notify::new(),
            in_flight: AtomicBool::new(false),
            last_kid_refetch: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_error: ArcSwapOption::empty(),
        }
    }

    /// The current keys; `None` until they have loaded once.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    pub fn is_loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// Installs a new key set; returns the previous one.
    pub fn swap(&self, set: KeySet) -> Option<Arc<KeySet>> {
        self.keys.swap(Some(Arc::new(set)))
    }

    /// Installs keys carried over from the previous config (reload).
    pub fn install_arc(&self, set: Arc<KeySet>) {
        crate::metrics::METRICS
            .jwks_keys
            .with_label_values(&[&self.cfg.name])
            .set(set.keys.len() as i64);
        self.keys.store(Some(set));
    }

    pub fn begin_fetch(&self) {
        self.in_flight.store(true, Ordering::Release);
    }

    pub fn end_fetch(&self) {
        self.in_flight.store(false, Ordering::Release);
        self.attempts.send_modify(|n| *n += 1);
    }

    /// An unknown `kid` was seen. Returns a receiver to await the next completed fetch when a
    /// refetch was started (at most one per `unknown_kid_refetch`, single-flight) or one is
    /// already under way; `None` when the token must be refused without a fetch.
    pub fn request_refetch_for_unknown_kid(&self) -> Option<watch::Receiver<u64>> {
        let rx = self.attempts.subscribe();
        if self.in_flight.load(Ordering::Acquire) {
            return Some(rx); // join the fetch under way
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let min = self.cfg.unknown_kid_refetch.as_millis() as u64;
        let last = self.last_kid_refetch.load(Ordering::Acquire);
        if last != u64::MAX && now.saturating_sub(last) < min {
            return None;
        }
        // only one request wins the right to trigger the fetch
        if self
            .last_kid_refetch
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Some(rx);
        }
        self.wake.notify_one();
        Some(rx)
    }

    /// Awaits the fetch after the one `rx` has seen, at most `limit`.
    pub async fn wait_for_fetch(mut rx: watch::Receiver<u64>, limit: Duration) {
        rx.mark_unchanged();
        let _ = tokio::time::timeout(limit, rx.changed()).await;
    }
}
