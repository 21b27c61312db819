//! One endpoint's health, shared by every worker of the process: a handful of atomics read
//! lock-free on the request path (`usable`), written when a request fails, when an ejection
//! starts, and by the one active checker. Workers keep their own balancing state
//! (`balance.rs`); what must agree across workers — is this endpoint in rotation — lives here.
//!
//! Two independent ways out of rotation:
//! - passive ejection (`outlier`): `consecutive_failures` failures in a row from live traffic
//!   (connect failures, resets, TLS, timeouts, 5xx answers) eject for `ejection`; an endpoint
//!   that fails again before any success after its ejection ended is ejected for twice as long,
//!   up to `max_ejection`. Only time ends an ejection — not a passing active check.
//! - active checks: `unhealthy_threshold` failed checks in a row take the endpoint out,
//!   `healthy_threshold` passing ones in a row bring it back. A result resets the opposite
//!   run, so alternating results never change the state (no flapping).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus::{IntCounter, IntGauge};

use crate::config::{HealthCheck, Outlier};
use crate::metrics::POOL_METRICS;

/// Milliseconds since the process's first look at the clock, plus one (0 means "never").
/// Monotonic, so ejections survive wall-clock jumps.
pub fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64 + 1
}

/// A stable name for an endpoint for the life of the process: the same address in the same
/// upstream keeps its id (and its health) across reloads and re-resolutions. A retry asks the
/// balancer for an endpoint not among the ids it already tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointId(pub u64);

/// What one exchange with an endpoint came to, as counted in
/// `cc_gateway_upstream_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Status5xx,
    Connect,
    Tls,
    Timeout,
    Protocol,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Status5xx,
        Outcome::Connect,
        Outcome::Tls,
        Outcome::Timeout,
        Outcome::Protocol,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Status5xx => "5xx",
            Outcome::Connect => "connect",
            Outcome::Tls => "tls",
            Outcome::Timeout => "timeout",
            Outcome::Protocol => "protocol",
        }
    }

    /// Counted toward passive ejection.
    pub fn is_failure(self) -> bool {
        self != Outcome::Ok
    }
}

#[repr(align(64))]
struct CacheLine<T>(T);

/// Pre-resolved metric handles: recording a request is one atomic add, no label hashing.
struct Handles {
    requests: [IntCounter; 6],
    healthy: IntGauge,
    ejected_passive: IntCounter,
    ejected_active: IntCounter,
}

pub struct EndpointState {
    pub id: EndpointId,
    upstream: String,
    /// `ip:port` (or `host:port` when it was not resolved)
    addr: String,
    /// passive: failures in a row from live traffic
    failures: AtomicU32,
    /// passive: the ejection lasts until this `now_ms` (0: never ejected)
    ejected_until: AtomicU64,
    /// passive: the length of the last ejection, in ms; 0 once a request succeeded after it
    /// (the back-off starts over)
    ejection_ms: AtomicU64,
    /// active: failing its checks
    check_down: AtomicBool,
    check_ok_run: AtomicU32,
    check_fail_run: AtomicU32,
    /// when a request or check last failed (`now_ms`), for panic mode
    last_failure: AtomicU64,
    last_error: ArcSwapOption<String>,
    /// latency to the response head, an EWMA over all workers in µs (f64 bits), for
    /// `/upstreams`; balancing uses each worker's own. Written by every answered request, so
    /// on a cache line of its own: the lines `usable` reads stay shared between the workers.
    ewma_us: CacheLine<AtomicU64>,
    metrics: Handles,
}

impl EndpointState {
    pub fn new(upstream: &str, addr: &str) -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let m = &*POOL_METRICS;
        let requests = Outcome::ALL.map(|o| {
            m.upstream_requests
                .with_label_values(&[upstream, addr, o.label()])
        });
        let healthy = m.endpoint_healthy.with_label_values(&[upstream, addr]);
        healthy.set(1);
        Arc::new(EndpointState {
            id: EndpointId(NEXT.fetch_add(1, Ordering::Relaxed)),
            upstream: upstream.to_string(),
            addr: addr.to_string(),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejection_ms: AtomicU64::new(0),
            check_down: AtomicBool::new(false),
            check_ok_run: AtomicU32::new(0),
            check_fail_run: AtomicU32::new(0),
            last_failure: AtomicU64::new(0),
            last_error: ArcSwapOption::empty(),
            ewma_us: CacheLine(AtomicU64::new(0f64.to_bits())),
            metrics: Handles {
                requests,
                healthy,
                ejected_passive: m.upstream_ejections.with_label_values(&[
                    upstream,
                    addr,
                    "consecutive_failures",
                ]),
                ejected_active: m.upstream_ejections.with_label_values(&[
                    upstream,
                    addr,
                    "health_check",
                ]),
            },
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// In rotation: not ejected, not failing its active checks. Two relaxed loads.
    pub fn usable(&self, now: u64) -> bool {
        !self.check_down.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    pub fn check_down(&self) -> bool {
        self.check_down.load(Ordering::Relaxed)
    }

    pub fn last_failure(&self) -> u64 {
        self.last_failure.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    /// ms left of the current ejection, and the ejection's length (the back-off step)
    pub fn ejection(&self, now: u64) -> (u64, u64) {
        let until = self.ejected_until.load(Ordering::Relaxed);
        (
            until.saturating_sub(now),
            self.ejection_ms.load(Ordering::Relaxed),
        )
    }

    pub fn ewma(&self) -> Duration {
        Duration::from_micros(f64::from_bits(self.ewma_us.0.load(Ordering::Relaxed)) as u64)
    }

    /// Counts an exchange in `upstream_requests_total` only: a failure that was not the
    /// endpoint's (the client's body broke off) says nothing about its health.
    pub fn count(&self, outcome: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|x| *x == outcome) {
            self.metrics.requests[i].inc();
        }
    }

    /// Keeps the gauge in step with ejections that ended by time (nothing else notices).
    pub fn refresh_gauge(&self, now: u64) {
        self.metrics.healthy.set(i64::from(self.usable(now)));
    }

    /// Records one exchange's outcome (and its latency to the response head, when it got one).
    pub fn record(
        &self,
        outcome: Outcome,
        latency: Option<Duration>,
        error: Option<String>,
        o: &Outlier,
    ) {
        self.count(outcome);
        if let Some(l) = latency {
            // the shared EWMA is for display: a racy read-modify-write loses at worst a sample
            let old = f64::from_bits(self.ewma_us.0.load(Ordering::Relaxed));
            let x = l.as_micros() as f64;
            let new = if old == 0.0 { x } else { old * 0.9 + x * 0.1 };
            self.ewma_us.0.store(new.to_bits(), Ordering::Relaxed);
        }
        if !outcome.is_failure() {
            // loads first: a healthy endpoint's successes write nothing shared
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            if self.ejection_ms.load(Ordering::Relaxed) != 0 && !self.ejected(now_ms()) {
                self.ejection_ms.store(0, Ordering::Relaxed);
            }
            return;
        }
        let now = now_ms();
        self.last_failure.store(now, Ordering::Relaxed);
        if let Some(e) = error {
            self.last_error.store(Some(Arc::new(e)));
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if o.consecutive_failures == 0 || self.ejected(now) {
            // off, or a panic-mode request to an ejected endpoint: the ejection stands as is
            return;
        }
        let last = self.ejection_ms.load(Ordering::Relaxed);
        let len = if last != 0 {
            // failing again right after an ejection ended: back off
            (last.saturating_mul(2)).min(o.max_ejection.as_millis() as u64)
        } else if n >= o.consecutive_failures {
            o.ejection.as_millis() as u64
        } else {
            return;
        };
        self.eject(now, len.max(1));
    }

    fn eject(&self, now: u64, len: u64) {
        let prev = self.ejected_until.load(Ordering::Relaxed);
        // another worker may eject at the same moment: one of them does
        if prev > now
            || self
                .ejected_until
                .compare_exchange(prev, now + len, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.ejection_ms.store(len, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.metrics.ejected_passive.inc();
        self.metrics.healthy.set(0);
        tracing::warn!(upstream = %self.upstream, endpoint = %self.addr, ejection_ms = len, "upstream endpoint ejected after consecutive failures");
    }

    /// One active check's result (the checker is the only caller, once per process). Returns
    /// the new state when this result changed it: `Some(true)` back in, `Some(false)` out.
    pub fn check_result(&self, ok: bool, error: Option<String>, hc: &HealthCheck) -> Option<bool> {
        let down = self.check_down.load(Ordering::Relaxed);
        if ok {
            self.check_fail_run.store(0, Ordering::Relaxed);
            let run = self.check_ok_run.fetch_add(1, Ordering::Relaxed) + 1;
            if down && run >= hc.healthy_threshold {
                self.check_down.store(false, Ordering::Relaxed);
                self.check_ok_run.store(0, Ordering::Relaxed);
                self.refresh_gauge(now_ms());
                tracing::info!(upstream = %self.upstream, endpoint = %self.addr, "upstream endpoint passes its health checks again");
                return Some(true);
            }
            return None;
        }
        self.check_ok_run.store(0, Ordering::Relaxed);
        self.last_failure.store(now_ms(), Ordering::Relaxed);
        if let Some(e) = error {
            self.last_error.store(Some(Arc::new(e)));
        }
        let run = self.check_fail_run.fetch_add(1, Ordering::Relaxed) + 1;
        if !down && run >= hc.unhealthy_threshold {
            self.check_down.store(true, Ordering::Relaxed);
            self.check_fail_run.store(0, Ordering::Relaxed);
            self.metrics.ejected_active.inc();
            self.metrics.healthy.set(0);
            tracing::warn!(upstream = %self.upstream, endpoint = %self.addr, "upstream endpoint failed its health checks");
            return Some(false);
        }
        None
    }
}

impl Drop for EndpointState {
    /// The endpoint left the configuration (or its name no longer resolves to it): its gauge
    /// would claim a state nobody maintains. Its counters stay, as counters do.
    fn drop(&mut self) {
        let _ = POOL_METRICS
            .endpoint_healthy
            .remove_label_values(&[&self.upstream, &self.addr]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier(n: u32, ms: u64, max: u64) -> Outlier {
        Outlier {
            consecutive_failures: n,
            ejection: Duration::from_millis(ms),
            max_ejection: Duration::from_millis(max),
        }
    }

    fn hc(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            expect_status: vec![200],
        }
    }

    #[test]
    fn ejects_at_the_threshold_and_backs_off_while_failing() {
        let e = EndpointState::new("t-eject", "127.0.0.1:1");
        let o = outlier(3, 60_000, 200_000);
        e.record(Outcome::Connect, None, None, &o);
        e.record(Outcome::Status5xx, None, None, &o);
        assert!(e.usable(now_ms()));
        e.record(Outcome::Protocol, None, Some("reset".into()), &o);
        let now = now_ms();
        assert!(!e.usable(now));
        assert_eq!(e.ejection(now).1, 60_000);
        // as if the ejection had ended: one more failure doubles it, then the cap
        e.ejected_until.store(1, Ordering::Relaxed);
        e.record(Outcome::Connect, None, None, &o);
        assert_eq!(e.ejection(now_ms()).1, 120_000);
        e.ejected_until.store(1, Ordering::Relaxed);
        e.record(Outcome::Connect, None, None, &o);
        assert_eq!(e.ejection(now_ms()).1, 200_000);
        // a success after the ejection starts the back-off over
        e.ejected_until.store(1, Ordering::Relaxed);
        e.record(Outcome::Ok, None, None, &o);
        assert_eq!(e.ejection(now_ms()).1, 0);
        e.record(Outcome::Connect, None, None, &o);
        assert!(
            e.usable(now_ms()),
            "one failure after a success is not an ejection"
        );
        assert_eq!(e.last_error().as_deref().map(String::as_str), Some("reset"));
    }

    #[test]
    fn successes_in_between_prevent_ejection() {
        let e = EndpointState::new("t-alt", "127.0.0.1:1");
        let o = outlier(2, 60_000, 60_000);
        for _ in 0..20 {
            e.record(Outcome::Connect, None, None, &o);
            e.record(Outcome::Ok, Some(Duration::from_millis(2)), None, &o);
        }
        assert!(e.usable(now_ms()));
        assert!(e.ewma() >= Duration::from_millis(1));
        let off = outlier(0, 1, 1);
        for _ in 0..20 {
            e.record(Outcome::Connect, None, None, &off);
        }
        assert!(e.usable(now_ms()), "consecutive_failures = 0 never ejects");
    }

    #[test]
    fn active_checks_change_state_only_at_the_thresholds() {
        let e = EndpointState::new("t-active", "127.0.0.1:1");
        let h = hc(2, 3);
        // alternating results: never a state change
        for _ in 0..10 {
            assert_eq!(e.check_result(false, None, &h), None);
            assert_eq!(e.check_result(true, None, &h), None);
        }
        assert_eq!(e.check_result(false, None, &h), None);
        assert_eq!(e.check_result(false, None, &h), None);
        assert!(e.usable(now_ms()));
        assert_eq!(e.check_result(false, None, &h), Some(false));
        assert!(!e.usable(now_ms()));
        assert_eq!(e.check_result(true, None, &h), None);
        assert_eq!(e.check_result(false, None, &h), None);
        assert_eq!(e.check_result(true, None, &h), None);
        assert_eq!(e.check_result(true, None, &h), Some(true));
        assert!(e.usable(now_ms()));
    }

    #[test]
    fn a_passing_check_does_not_end_a_passive_ejection() {
        let e = EndpointState::new("t-both", "127.0.0.1:1");
        e.record(Outcome::Connect, None, None, &outlier(1, 60_000, 60_000));
        for _ in 0..5 {
            e.check_result(true, None, &hc(1, 1));
        }
        assert!(!e.usable(now_ms()));
    }
}
