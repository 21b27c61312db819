//! A worker's choice of endpoint: its own balancing state (smooth weighted round robin
//! counters, peak-EWMA latency and in-flight requests) over the pool's shared health. Only
//! the worker's thread touches this state, so the atomics here are uncontended (they are
//! atomics only because the snapshot holding them is `Sync`): no lock on the request path.
//!
//! Placement first: endpoints of the gateway's region while any of them is usable, the other
//! regions only when none is. Then the balancing among those.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::health::EndpointId;
use super::pool::{Endpoint, EndpointSet};
use crate::config::Balance;

/// Peak EWMA's decay: a latency sample weighs half after about 7 s.
const EWMA_DECAY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Slot {
    /// smooth weighted round robin's running weight
    current: AtomicI64,
    /// peak EWMA of the latency to the response head, ns (f64 bits); 0: no sample yet
    ewma_ns: AtomicU64,
    /// when `ewma_ns` was last updated, ns since `Local::epoch`
    stamp: AtomicU64,
    in_flight: AtomicU32,
}

/// One worker's state for one endpoint set (rebuilt when the set's generation changes).
struct Slots {
    generation: u64,
    slots: Vec<Slot>,
}

pub struct Local {
    slots: ArcSwap<Slots>,
    rng: AtomicU64,
    epoch: Instant,
}

/// What `pick` chose: the endpoint's position in the set it was chosen from.
pub struct Choice {
    pub set: Arc<EndpointSet>,
    pub index: usize,
}

impl Choice {
    pub fn endpoint(&self) -> &Endpoint {
        &self.set.endpoints[self.index]
    }
}

impl Local {
    pub fn new() -> Self {
        Local {
            slots: ArcSwap::from_pointee(Slots {
                generation: 0,
                slots: Vec::new(),
            }),
            rng: AtomicU64::new(fastrand::u64(1..)),
            epoch: Instant::now(),
        }
    }

    fn slots_for(&self, set: &EndpointSet) -> Arc<Slots> {
        let s = self.slots.load_full();
        if s.generation == set.generation {
            return s;
        }
        // a new set (reload, re-resolution): balancing starts over, health does not
        let fresh = Arc::new(Slots {
            generation: set.generation,
            slots: set.endpoints.iter().map(|_| Slot::default()).collect(),
        });
        self.slots.store(fresh.clone());
        fresh
    }

    fn random(&self, n: usize) -> usize {
        // xorshift64: the worker's own, no shared RNG state
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % n as u64) as usize
    }

    /// An endpoint of `set` that can serve and is not in `exclude`, in the gateway's region
    /// when one there can; None when no endpoint is usable.
    pub fn pick(
        &self,
        set: &Arc<EndpointSet>,
        balance: Balance,
        exclude: &[EndpointId],
        now: u64,
    ) -> Option<Choice> {
        let ok = |e: &Endpoint| e.state.usable(now) && !exclude.contains(&e.state.id);
        let local = set.endpoints.iter().any(|e| e.local && ok(e));
        let eligible = |e: &Endpoint| ok(e) && (e.local || !local);
        let slots = self.slots_for(set);
        let index = match balance {
            Balance::RoundRobin => self.round_robin(set, &slots, eligible),
            Balance::PeakEwma => self.two_choices(set, &slots, eligible),
        }?;
        Some(Choice {
            set: set.clone(),
            index,
        })
    }

    /// nginx's smooth weighted round robin: every eligible endpoint gains its weight, the
    /// highest is chosen and loses the total. Over any run of `total` picks each endpoint gets
    /// exactly its weight, interleaved rather than in bursts.
    fn round_robin(
        &self,
        set: &EndpointSet,
        slots: &Slots,
        eligible: impl Fn(&Endpoint) -> bool,
    ) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, (e, s)) in set.endpoints.iter().zip(&slots.slots).enumerate() {
            if !eligible(e) {
                continue;
            }
            let w = i64::from(e.weight);
            let cur = s.current.load(Ordering::Relaxed) + w;
            s.current.store(cur, Ordering::Relaxed);
            total += w;
            if best.is_none_or(|(_, b)| cur > b) {
                best = Some((i, cur));
            }
        }
        let (i, cur) = best?;
        slots.slots[i].current.store(cur - total, Ordering::Relaxed);
        Some(i)
    }

    /// Power of two choices: two distinct eligible endpoints at random, the one with the lower
    /// cost — its peak-EWMA latency times its in-flight requests plus one, per unit of weight.
    fn two_choices(
        &self,
        set: &EndpointSet,
        slots: &Slots,
        eligible: impl Fn(&Endpoint) -> bool,
    ) -> Option<usize> {
        let n = set.endpoints.iter().filter(|e| eligible(e)).count();
        let nth = |k: usize| {
            set.endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| eligible(e))
                .nth(k)
                .map(|(i, _)| i)
        };
        match n {
            0 => None,
            1 => nth(0),
            _ => {
                let a = self.random(n);
                let b = (a + 1 + self.random(n - 1)) % n;
                let (a, b) = (nth(a)?, nth(b)?);
                let cost = |i: usize| {
                    let s = &slots.slots[i];
                    let ewma = self.decayed(s);
                    let load = f64::from(s.in_flight.load(Ordering::Relaxed) + 1);
                    // an endpoint never measured costs like the fastest: it gets tried
                    ewma.max(1.0) * load / f64::from(set.endpoints[i].weight)
                };
                Some(if cost(b) < cost(a) { b } else { a })
            }
        }
    }

    /// The EWMA fading with idleness, for the cost: an endpoint that was slow once and then
    /// left alone is tried again after a while instead of never.
    fn decayed(&self, s: &Slot) -> f64 {
        let ewma = f64::from_bits(s.ewma_ns.load(Ordering::Relaxed));
        let age = self
            .now_ns()
            .saturating_sub(s.stamp.load(Ordering::Relaxed));
        ewma * (-(age as f64) / EWMA_DECAY.as_nanos() as f64).exp()
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A request to `c` starts: counted in flight until `finish`.
    pub fn start(&self, c: &Choice) {
        if let Some(ss) = self.slots_of(c) {
            ss.slots[c.index].in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The request to `c` got its answer (`latency`) or failed (None) or was dropped.
    pub fn finish(&self, c: &Choice, latency: Option<Duration>) {
        let Some(ss) = self.slots_of(c) else { return };
        let s = &ss.slots[c.index];
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(l) = latency else { return };
        // peak EWMA (Finagle's): a slower sample takes over at once, faster ones pull it down
        // by how much time passed since the last one
        let x = l.as_nanos() as f64;
        let old = f64::from_bits(s.ewma_ns.load(Ordering::Relaxed));
        let now = self.now_ns();
        let age = now.saturating_sub(s.stamp.load(Ordering::Relaxed));
        let w = (-(age as f64) / EWMA_DECAY.as_nanos() as f64).exp();
        let new = if x > old { x } else { old * w + x * (1.0 - w) };
        s.ewma_ns.store(new.to_bits(), Ordering::Relaxed);
        s.stamp.store(now, Ordering::Relaxed);
    }

    fn slots_of(&self, c: &Choice) -> Option<Arc<Slots>> {
        let s = self.slots.load_full();
        (s.generation == c.set.generation && c.index < s.slots.len()).then_some(s)
    }
}

impl Default for Local {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::super::health::{now_ms, EndpointState, Outcome};
    use super::*;
    use crate::config::Outlier;

    fn set(eps: &[(&str, u32, bool)]) -> Arc<EndpointSet> {
        Arc::new(EndpointSet {
            generation: 7,
            endpoints: eps
                .iter()
                .enumerate()
                .map(|(i, (a, w, local))| Endpoint {
                    state: EndpointState::new("t-balance", a),
                    authority: a.parse().expect("authority"),
                    host: None,
                    configured: i,
                    weight: *w,
                    region: None,
                    local: *local,
                })
                .collect(),
        })
    }

    fn counts(
        l: &Local,
        s: &Arc<EndpointSet>,
        b: Balance,
        n: usize,
        ex: &[EndpointId],
    ) -> Vec<usize> {
        let mut c = vec![0; s.endpoints.len()];
        for _ in 0..n {
            let ch = l.pick(s, b, ex, now_ms()).expect("a choice");
            c[ch.index] += 1;
        }
        c
    }

    #[test]
    fn smooth_round_robin_gives_each_its_weight_interleaved() {
        let s = set(&[
            ("127.0.0.1:1", 1, true),
            ("127.0.0.1:2", 2, true),
            ("127.0.0.1:3", 3, true),
        ]);
        let l = Local::new();
        assert_eq!(
            counts(&l, &s, Balance::RoundRobin, 600, &[]),
            vec![100, 200, 300]
        );
        // smooth: the heaviest never gets more than two in a row with weights 1:2:3
        let seq: Vec<usize> = (0..6)
            .map(|_| {
                l.pick(&s, Balance::RoundRobin, &[], now_ms())
                    .expect("c")
                    .index
            })
            .collect();
        assert_eq!(seq, vec![2, 1, 0, 2, 1, 2]);
    }

    #[test]
    fn local_region_first_then_the_others_and_exclusions() {
        let s = set(&[("127.0.0.1:1", 1, true), ("127.0.0.1:2", 1, false)]);
        let l = Local::new();
        assert_eq!(counts(&l, &s, Balance::RoundRobin, 10, &[]), vec![10, 0]);
        let o = Outlier {
            consecutive_failures: 1,
            ejection: Duration::from_secs(60),
            max_ejection: Duration::from_secs(60),
        };
        // excluded (a retry): the other region serves
        let id = s.endpoints[0].state.id;
        assert_eq!(counts(&l, &s, Balance::PeakEwma, 10, &[id]), vec![0, 10]);
        s.endpoints[0]
            .state
            .record(Outcome::Connect, None, None, &o);
        assert_eq!(counts(&l, &s, Balance::RoundRobin, 10, &[]), vec![0, 10]);
        s.endpoints[1]
            .state
            .record(Outcome::Connect, None, None, &o);
        assert!(l.pick(&s, Balance::RoundRobin, &[], now_ms()).is_none());
    }

    #[test]
    fn peak_ewma_prefers_the_fast_and_the_idle() {
        let s = set(&[("127.0.0.1:1", 1, true), ("127.0.0.1:2", 1, true)]);
        let l = Local::new();
        let pick = |i: usize| Choice {
            set: s.clone(),
            index: i,
        };
        l.pick(&s, Balance::PeakEwma, &[], now_ms());
        l.start(&pick(0));
        l.finish(&pick(0), Some(Duration::from_millis(50)));
        l.start(&pick(1));
        l.finish(&pick(1), Some(Duration::from_millis(1)));
        assert_eq!(counts(&l, &s, Balance::PeakEwma, 50, &[]), vec![0, 50]);
        // many in flight on the fast one make the slow one cheaper
        for _ in 0..100 {
            l.start(&pick(1));
        }
        assert_eq!(counts(&l, &s, Balance::PeakEwma, 10, &[]), vec![10, 0]);
    }
}
