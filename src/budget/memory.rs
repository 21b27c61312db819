//! The in-memory budget store: sharded maps behind short mutexes (never held across an
//! await). A decision over several rules locks their shards in index order, evaluates every
//! rule, and commits only if all admit — a rejected request consumes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use prometheus::IntCounter;

use super::{Eval, Outcome, Probe, StoreError};
use crate::config::Limit;

const SHARDS: usize = 64;
/// A full shard sweeps its idle keys at most this often (ns): a shard full of live keys must not
/// cost a scan per new key.
const SWEEP_EVERY: i64 = 1_000_000_000;
/// Entries looked at to choose one to evict when a shard is full of live keys.
const EVICTION_SAMPLE: usize = 8;

#[derive(Clone, Copy, Debug)]
enum Cell {
    /// GCRA theoretical arrival time, ns since the Unix epoch
    Tat(i64),
    /// fixed window: its start (ns) and the units used in it
    Window { start: i64, used: u64 },
}

/// A key's state and the limit last applied to it (tiers and overrides depend on the token,
/// which the admin API does not have).
#[derive(Clone, Copy, Debug)]
struct Entry {
    cell: Cell,
    limit: Limit,
    /// changed since the last flush to a persistent store
    dirty: bool,
}

/// One key's state as persisted: (key, kind 0 = rate / 1 = quota, tat or window start (ns),
/// units used, limit count, limit period in seconds).
pub type Row = (String, i64, i64, i64, i64, i64);

pub struct MemoryStore {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    /// keys reset or evicted since the last flush (only kept when persisted)
    removed: Mutex<Vec<String>>,
    persisted: AtomicBool,
    /// keys per shard at most (`budgets.max_keys` / shards); changes with a reload
    cap: AtomicUsize,
    /// per shard: when it last swept its idle keys (ns)
    swept: Vec<AtomicI64>,
    evicted: IntCounter,
}

#[cfg(test)]
impl Default for MemoryStore {
    fn default() -> Self {
        let detached = IntCounter::new("evicted", "evicted").unwrap_or_else(|_| unreachable!());
        MemoryStore::new(1_000_000, detached)
    }
}

fn shard_of(key: &str) -> usize {
    // FNV-1a: cheap and stable; keys are escaped/hashed already
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % SHARDS as u64) as usize
}

impl MemoryStore {
    /// A store holding at most about `max_keys` keys; `evicted` counts live keys dropped.
    pub fn new(max_keys: usize, evicted: IntCounter) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            removed: Mutex::new(Vec::new()),
            persisted: AtomicBool::new(false),
            cap: AtomicUsize::new(Self::per_shard(max_keys)),
            swept: (0..SHARDS).map(|_| AtomicI64::new(0)).collect(),
            evicted,
        }
    }

    fn per_shard(max_keys: usize) -> usize {
        max_keys.div_ceil(SHARDS).max(1)
    }

    /// A reloaded `budgets.max_keys` (counters stay).
    pub fn set_max_keys(&self, max_keys: usize) {
        self.cap.store(Self::per_shard(max_keys), Relaxed);
    }

    /// Removed keys are remembered for the persistent store to delete.
    pub fn persist_removals(&self) {
        self.persisted.store(true, Relaxed);
    }

    fn note_removed(&self, key: String) {
        if self.persisted.load(Relaxed) {
            if let Ok(mut r) = self.removed.lock() {
                r.push(key);
            }
        }
    }

    /// Makes room for one more key in shard `i` (whose lock the caller holds): idle keys are
    /// swept (at most once a second), and if the shard is still full, the sampled key that
    /// would expire first is evicted — its budget starts afresh, which is counted.
    fn make_room(&self, i: usize, map: &mut HashMap<String, Entry>, now: i64) {
        let cap = self.cap.load(Relaxed);
        if map.len() < cap {
            return;
        }
        if now - self.swept[i].load(Relaxed) >= SWEEP_EVERY {
            self.swept[i].store(now, Relaxed);
            let mut idle = Vec::new();
            map.retain(|k, e| {
                let live = expiry(e) > now;
                if !live {
                    idle.push(k.clone());
                }
                live
            });
            idle.into_iter().for_each(|k| self.note_removed(k));
        }
        while map.len() >= cap {
            let victim = map
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|(_, e)| expiry(e))
                .map(|(k, _)| k.clone());
            let Some(k) = victim else { break };
            map.remove(&k);
            self.evicted.inc();
            self.note_removed(k);
        }
    }

    fn lock(&self, i: usize) -> Result<MutexGuard<'_, HashMap<String, Entry>>, StoreError> {
        self.shards[i].lock().map_err(|_| StoreError::Poisoned)
    }

    /// Decides `probes` at `now` (ns); commits only when every probe admits.
    pub fn decide(&self, probes: &[Probe], now: i64) -> Result<Outcome, StoreError> {
        if let [p] = probes {
            return self.decide_one(p, now);
        }
        let idx: Vec<usize> = probes.iter().map(|p| shard_of(&p.key)).collect();
        let mut order = idx.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards = Vec::with_capacity(order.len());
        for &i in &order {
            guards.push((i, self.lock(i)?));
        }
        let slot = |shard: usize| order.binary_search(&shard).unwrap_or(0);
        let mut evals = Vec::with_capacity(probes.len());
        for (p, &s) in probes.iter().zip(&idx) {
            let cell = guards[slot(s)].1.get(&p.key).map(|e| e.cell);
            evals.push(evaluate(p, cell, now));
        }
        let admitted = evals.iter().all(|(e, _)| e.admitted);
        if admitted {
            for ((p, (_, cell)), &shard) in probes.iter().zip(&evals).zip(&idx) {
                let map = &mut guards[slot(shard)].1;
                let entry = Entry {
                    cell: *cell,
                    limit: p.limit,
                    dirty: true,
                };
                // the common case (a known key) updates in place: no allocation under the lock
                if let Some(e) = map.get_mut(&p.key) {
                    *e = entry;
                    continue;
                }
                self.make_room(shard, map, now);
                map.insert(p.key.clone(), entry);
            }
        }
        Ok(Outcome {
            admitted,
            evals: evals.into_iter().map(|(e, _)| e).collect(),
        })
    }

    /// The common case, one rule: one lock, one lookup for a known key, no scratch vectors.
    fn decide_one(&self, p: &Probe, now: i64) -> Result<Outcome, StoreError> {
        let shard = shard_of(&p.key);
        let mut map = self.lock(shard)?;
        let entry = map.get_mut(p.key.as_str());
        let (eval, cell) = evaluate(p, entry.as_ref().map(|e| e.cell), now);
        if eval.admitted {
            let new = Entry {
                cell,
                limit: p.limit,
                dirty: true,
            };
            match entry {
                Some(e) => *e = new,
                None => {
                    self.make_room(shard, &mut map, now);
                    map.insert(p.key.clone(), new);
                }
            }
        }
        Ok(Outcome {
            admitted: eval.admitted,
            evals: vec![eval],
        })
    }

    /// Adds `n` units to each quota key's current window, whatever the limit (a token quota's
    /// charge after the response: the request that crosses the limit has been served).
    pub fn charge(&self, probes: &[Probe], n: u64, now: i64) -> Result<(), StoreError> {
        for p in probes {
            let period = (p.limit.period.as_nanos().min(i64::MAX as u128) as i64).max(1);
            let start = now - now.rem_euclid(period);
            let shard = shard_of(&p.key);
            let mut map = self.lock(shard)?;
            let used = match map.get(&p.key).map(|e| e.cell) {
                Some(Cell::Window { start: s, used }) if s == start => used,
                _ => 0,
            };
            let entry = Entry {
                cell: Cell::Window {
                    start,
                    used: used.saturating_add(n),
                },
                limit: p.limit,
                dirty: true,
            };
            if let Some(e) = map.get_mut(&p.key) {
                *e = entry;
                continue;
            }
            self.make_room(shard, &mut map, now);
            map.insert(p.key.clone(), entry);
        }
        Ok(())
    }

    /// The state of one key without consuming anything (admin API), judged by the limit last
    /// applied to it (else `probe`'s); returns that limit too.
    pub fn peek(&self, probe: &Probe, now: i64) -> Result<(Eval, Limit), StoreError> {
        let map = self.lock(shard_of(&probe.key))?;
        let entry = map.get(&probe.key).copied();
        let limit = entry.map(|e| e.limit).unwrap_or(probe.limit);
        let p = Probe {
            cost: 0,
            limit,
            ..probe.clone()
        };
        Ok((evaluate(&p, entry.map(|e| e.cell), now).0, limit))
    }

    /// Forgets `key`; whether it was held.
    pub fn reset(&self, key: &str) -> Result<bool, StoreError> {
        let existed = self.lock(shard_of(key))?.remove(key).is_some();
        self.note_removed(key.to_string());
        Ok(existed)
    }

    /// Restores persisted state (at startup), dropping what has expired by `now`.
    pub fn load(&self, rows: Vec<Row>, now: i64) {
        for (key, kind, a, used, count, period) in rows {
            let cell = if kind == 0 {
                Cell::Tat(a)
            } else {
                Cell::Window {
                    start: a,
                    used: used.max(0) as u64,
                }
            };
            if count <= 0 || period <= 0 {
                continue;
            }
            let entry = Entry {
                cell,
                limit: Limit {
                    count: count as u64,
                    period: std::time::Duration::from_secs(period as u64),
                },
                dirty: false,
            };
            if expiry(&entry) <= now {
                continue;
            }
            let shard = shard_of(&key);
            if let Ok(mut m) = self.lock(shard) {
                self.make_room(shard, &mut m, now);
                m.insert(key, entry);
            }
        }
    }

    /// Takes what changed since the last call: rows to write and keys to delete.
    pub fn drain_changes(&self) -> (Vec<Row>, Vec<String>) {
        let mut rows = Vec::new();
        for i in 0..SHARDS {
            let Ok(mut m) = self.lock(i) else { continue };
            for (k, e) in m.iter_mut().filter(|(_, e)| e.dirty) {
                e.dirty = false;
                let (kind, a, used) = match e.cell {
                    Cell::Tat(t) => (0, t, 0),
                    Cell::Window { start, used } => (1, start, used as i64),
                };
                rows.push((
                    k.clone(),
                    kind,
                    a,
                    used,
                    e.limit.count as i64,
                    e.limit.period.as_secs() as i64,
                ));
            }
        }
        let removed = self
            .removed
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        (rows, removed)
    }

    /// Marks keys changed again (their write failed).
    pub fn mark_dirty(&self, keys: impl Iterator<Item = String>) {
        for k in keys {
            if let Ok(mut m) = self.lock(shard_of(&k)) {
                if let Some(e) = m.get_mut(&k) {
                    e.dirty = true;
                }
            }
        }
    }
}

/// When a key holds nothing any more (ns): a rate fully recovered, a quota window over.
fn expiry(e: &Entry) -> i64 {
    match e.cell {
        Cell::Tat(t) => t,
        Cell::Window { start, .. } => {
            start.saturating_add(e.limit.period.as_nanos().min(i64::MAX as u128) as i64)
        }
    }
}

/// The decision for one probe and the cell to store if the request is admitted.
fn evaluate(p: &Probe, cell: Option<Cell>, now: i64) -> (Eval, Cell) {
    let period = p.limit.period.as_nanos() as i64;
    let count = p.limit.count as i64;
    let cost = p.cost as i64;
    if p.rate {
        // GCRA: one unit every `t` ns; up to `burst` units at once
        let t = (period / count).max(1);
        let window = t.saturating_mul(p.burst as i64);
        let tat = match cell {
            Some(Cell::Tat(x)) => x.max(now),
            _ => now,
        };
        let new_tat = tat.saturating_add(t.saturating_mul(cost));
        let ahead = new_tat - now;
        if ahead > window {
            let used = (tat - now + t - 1) / t;
            let eval = Eval {
                admitted: false,
                remaining: (p.burst as i64 - used).max(0) as u64,
                reset_ns: tat - now,
                retry_after_ns: ahead - window,
            };
            return (eval, Cell::Tat(tat));
        }
        let eval = Eval {
            admitted: true,
            remaining: ((window - ahead) / t) as u64,
            reset_ns: ahead,
            retry_after_ns: 0,
        };
        (eval, Cell::Tat(new_tat))
    } else {
        // fixed window aligned to multiples of the period since the epoch (UTC days for 1d)
        let start = now - now.rem_euclid(period);
        let used = match cell {
            Some(Cell::Window { start: s, used }) if s == start => used as i64,
            _ => 0,
        };
        let end = start + period;
        // a token quota is charged after the response: admitted while under the limit (the
        // request that crosses it completes), charged nothing now
        let cost = if p.tokens { 0 } else { cost };
        let over = if p.tokens {
            used >= count
        } else {
            used + cost > count
        };
        if over {
            let eval = Eval {
                admitted: false,
                remaining: (count - used).max(0) as u64,
                reset_ns: end - now,
                retry_after_ns: end - now,
            };
            return (
                eval,
                Cell::Window {
                    start,
                    used: used as u64,
                },
            );
        }
        let eval = Eval {
            admitted: true,
            remaining: (count - used - cost) as u64,
            reset_ns: end - now,
            retry_after_ns: 0,
        };
        (
            eval,
            Cell::Window {
                start,
                used: (used + cost) as u64,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn probe(key: &str, rate: bool, count: u64, secs: u64, burst: u64) -> Probe {
        Probe {
            key: key.into(),
            rate,
            limit: Limit {
                count,
                period: Duration::from_secs(secs),
            },
            burst,
            cost: 1,
            tokens: false,
        }
    }

    /// A token quota admits while under its limit and takes nothing at the decision; the
    /// charge after the response may cross the limit, and then the next request is refused
    /// until the window ends.
    #[test]
    fn a_token_quota_is_checked_before_and_charged_after() {
        let s = MemoryStore::default();
        let day = 86_400;
        let p = Probe {
            tokens: true,
            ..probe("t|alice", false, 1000, day, 1)
        };
        let now = 1_000 * 1_000_000_000;
        for _ in 0..3 {
            let o = s.decide(std::slice::from_ref(&p), now).expect("decided");
            assert!(o.admitted);
            assert_eq!(o.evals[0].remaining, 1000, "a check takes nothing");
        }
        s.charge(std::slice::from_ref(&p), 999, now)
            .expect("charged");
        let o = s.decide(std::slice::from_ref(&p), now).expect("decided");
        assert!(o.admitted, "one token left");
        assert_eq!(o.evals[0].remaining, 1);
        // the response that crosses the limit is charged in full
        s.charge(std::slice::from_ref(&p), 500, now)
            .expect("charged");
        let o = s.decide(std::slice::from_ref(&p), now).expect("decided");
        assert!(!o.admitted);
        assert_eq!(o.evals[0].remaining, 0);
        assert!(o.evals[0].retry_after_ns > 0);
        let (e, _) = s.peek(&p, now).expect("peek");
        assert_eq!(e.remaining, 0);
        // the next window starts afresh
        let later = now + day as i64 * 1_000_000_000;
        assert!(s.decide(&[p], later).expect("decided").admitted);
    }

    fn keys(s: &MemoryStore) -> usize {
        (0..SHARDS)
            .filter_map(|i| s.lock(i).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Live keys beyond max_keys: the store stays bounded and counts what it evicted.
    #[test]
    fn live_keys_are_bounded_and_evictions_counted() {
        let evicted = IntCounter::new("e", "e").unwrap();
        let s = MemoryStore::new(1024, evicted.clone());
        let now = 1_000_000_000_000;
        for i in 0..5000 {
            let p = probe(&format!("q|user-{i}"), false, 100, 86_400, 1);
            assert!(s.decide(std::slice::from_ref(&p), now).unwrap().admitted);
        }
        let held = keys(&s);
        assert!(held <= 1024, "{held} keys held");
        assert_eq!(evicted.get() as usize, 5000 - held);
    }

    /// Idle keys (recovered rates, past windows) make room before any live key is evicted.
    #[test]
    fn idle_keys_are_swept_before_live_ones_are_evicted() {
        let evicted = IntCounter::new("e", "e").unwrap();
        let s = MemoryStore::new(1024, evicted.clone());
        let now = 1_000_000_000_000;
        // fill every shard (some overflow: those evictions are not this test's business)
        for i in 0..2000 {
            let p = probe(&format!("r|a-{i}"), true, 1, 1, 1); // recovers within 1 s
            assert!(s.decide(std::slice::from_ref(&p), now).unwrap().admitted);
        }
        let before = evicted.get();
        let full = keys(&s);
        // later every old key is idle: a few hundred new keys (fewer than a shard holds, per
        // shard) land in full shards, which sweep instead of evicting
        let later = now + 2_000_000_000;
        for i in 0..300 {
            let p = probe(&format!("r|b-{i}"), true, 1, 1, 1);
            assert!(s.decide(std::slice::from_ref(&p), later).unwrap().admitted);
        }
        assert_eq!(evicted.get(), before, "only idle keys made room");
        assert!(keys(&s) < full, "idle keys were swept");
    }

    #[test]
    fn gcra_burst_then_rate() {
        let s = MemoryStore::default();
        let p = probe("k", true, 60, 60, 5); // 1/s, burst 5
        let now = 1_000_000_000_000;
        let admitted = (0..10)
            .filter(|_| s.decide(std::slice::from_ref(&p), now).unwrap().admitted)
            .count();
        assert_eq!(admitted, 5);
        let o = s.decide(std::slice::from_ref(&p), now).unwrap();
        assert_eq!(
            o.evals[0].retry_after_ns, 1_000_000_000,
            "exactly one emission interval"
        );
        assert!(
            s.decide(std::slice::from_ref(&p), now + 1_000_000_000)
                .unwrap()
                .admitted
        );
        assert!(
            !s.decide(std::slice::from_ref(&p), now + 1_000_000_000)
                .unwrap()
                .admitted
        );
    }

    #[test]
    fn quota_window_and_all_or_nothing() {
        let s = MemoryStore::default();
        let tight = probe("tight", false, 2, 3600, 1);
        let loose = probe("loose", false, 100, 3600, 1);
        let now = 7_200_000_000_000; // a window start
        let both = [tight.clone(), loose.clone()];
        assert!(s.decide(&both, now).unwrap().admitted);
        assert!(s.decide(&both, now).unwrap().admitted);
        let o = s.decide(&both, now).unwrap();
        assert!(!o.admitted);
        assert_eq!(o.evals[0].retry_after_ns, 3_600_000_000_000);
        assert_eq!(
            s.peek(&loose, now).unwrap().0.remaining,
            98,
            "the rejected request consumed nothing"
        );
        assert!(
            s.decide(&both, now + 3_600_000_000_000).unwrap().admitted,
            "next window"
        );
    }
}
