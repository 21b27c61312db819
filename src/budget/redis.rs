//! The Redis budget store: several gateway nodes enforce one budget. Decisions are made by one
//! server-side script, timed by Redis's own clock so nodes agree; keys expire by themselves.
//!
//! Each worker thread batches its decisions: the requests that arrive while the previous batch
//! is on the wire go out together as one script call (evaluated one after the other, each
//! all-or-nothing over its own rules). Redis 7 spends most of a small script's cost on the call
//! itself and on each `redis.call` (≈ 2–3 µs each, measured here), so one call per batch and one
//! GET/SET per distinct key per batch cut Redis's CPU per decision by more than half, and the
//! gateway pays one write and one read per batch. An idle worker sends a lone decision at once,
//! so batching adds no wait at low load.
//!
//! A Redis outage costs each request at most `store_timeout` (queueing included), then
//! `on_store_error`; connections reconnect by themselves, so service recovers with Redis.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};

use super::{Eval, Outcome, Probe};

/// KEYS: every decision's rule keys, in order. ARGV: commit (1, or 0 to only look), the number
/// of decisions, the number of limit specs, each spec as kind (0 rate, 1 quota), count,
/// period (ms), burst, cost; then per decision its number of rules and each rule's spec (1-based).
/// Times in µs from Redis's TIME. Returns per rule: remaining, reset µs, retry-after µs (0 when
/// the rule admits). Each key is read at most once and written at most once per call; specs are
/// sent once per call (most rules share them), and the reply is small — Redis spends much of a
/// script's time turning ARGV and the reply between RESP and Lua.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local commit = ARGV[1] == '1'
local nspecs = tonumber(ARGV[3])
local sk, sstep, swin, sburst, scount, speriod, scost = {}, {}, {}, {}, {}, {}, {}
for i = 1, nspecs do
  local b = 3 + (i - 1) * 5
  local kind, count, period = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]) * 1000
  local burst, cost = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  sk[i], scount[i], speriod[i], sburst[i], scost[i] = kind, count, period, burst, cost
  local step = math.max(1, math.floor(period / count))
  sstep[i], swin[i] = step, step * burst
end
local kk, ka, kb = {}, {}, {}
local ttl, order, no = {}, {}, 0
local pk, pa, pb, pt = {}, {}, {}, {}
local out, o, k = {}, 0, 1
local a = 4 + nspecs * 5
for d = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[a]); a = a + 1
  local ok, np = true, 0
  for r = 1, n do
    local key = KEYS[k]; k = k + 1
    local s = tonumber(ARGV[a]); a = a + 1
    local kind, cost = sk[s], scost[s]
    local ck = kk[key]
    if ck == nil then
      local v = redis.call('GET', key)
      ck = -1
      if v then
        local st, u = string.match(v, '^(%d+):(%d+)$')
        if st then ck, ka[key], kb[key] = 1, tonumber(st), tonumber(u)
        elseif tonumber(v) then ck, ka[key] = 0, tonumber(v) end
      end
      kk[key] = ck
    end
    if kind == 0 then
      local step, window = sstep[s], swin[s]
      local tat = now
      if ck == 0 and ka[key] > now then tat = ka[key] end
      local ahead = tat + step * cost - now
      if ahead > window then
        ok = false
        out[o + 1] = math.max(0, sburst[s] - math.ceil((tat - now) / step)); out[o + 2] = tat - now; out[o + 3] = ahead - window
      else
        out[o + 1] = math.floor((window - ahead) / step); out[o + 2] = ahead; out[o + 3] = 0
        np = np + 1; pk[np], pa[np], pb[np], pt[np] = key, tat + step * cost, -1, math.ceil(ahead / 1000) + 1000
      end
    else
      local count, period = scount[s], speriod[s]
      local start = now - (now % period)
      local used = 0
      if ck == 1 and ka[key] == start then used = kb[key] end
      local reset = start + period - now
      if used + cost > count then
        ok = false
        out[o + 1] = math.max(0, count - used); out[o + 2] = reset; out[o + 3] = reset
      else
        out[o + 1] = count - used - cost; out[o + 2] = reset; out[o + 3] = 0
        np = np + 1; pk[np], pa[np], pb[np], pt[np] = key, start, used + cost, math.ceil(reset / 1000) + 1000
      end
    end
    o = o + 3
  end
  if ok and commit then
    for i = 1, np do
      local key = pk[i]
      if ttl[key] == nil then no = no + 1; order[no] = key end
      if pb[i] < 0 then kk[key], ka[key] = 0, pa[i] else kk[key], ka[key], kb[key] = 1, pa[i], pb[i] end
      ttl[key] = pt[i]
    end
  end
end
for i = 1, no do
  local key = order[i]
  local v = string.format('%.0f', ka[key])
  if kk[key] == 1 then v = v .. ':' .. string.format('%.0f', kb[key]) end
  redis.call('SET', key, v, 'PX', ttl[key])
end
return out
"#;

const PREFIX: &str = "ccgw:";
/// Decisions per script call; the rest wait for the next call.
const MAX_BATCH: usize = 64;
/// While Redis is unreachable, connect at most this often (an outage is not a connect storm).
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why Redis gave no decision (cloned to every request of a failed batch).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisFailure {
    #[error("cannot connect: {0}")]
    Connect(Arc<redis::RedisError>),
    #[error("cannot connect: no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// the last attempt failed less than `RECONNECT_EVERY` ago
    #[error("{0} (next attempt at most {RECONNECT_EVERY:?} after the last)")]
    Backoff(Box<RedisFailure>),
    #[error("no answer within {0:?} (store_timeout)")]
    Timeout(Duration),
    #[error("{0}")]
    Command(Arc<redis::RedisError>),
    #[error("the script answered {got} values for {expected}")]
    Reply { got: usize, expected: usize },
    /// the worker's batch driver ended (its runtime is shutting down)
    #[error("this worker's batch driver has stopped")]
    DriverGone,
    #[error("no Tokio runtime on this thread to run the batch driver")]
    NoRuntime,
}

/// One decision waiting for its batch.
struct Job {
    probes: Vec<Probe>,
    reply: oneshot::Sender<Result<Outcome, RedisFailure>>,
}

thread_local! {
    /// This worker's batch queue: (store id, sender to its driver task).
    static QUEUE: RefCell<Option<(u64, mpsc::UnboundedSender<Job>)>> = const { RefCell::new(None) };
    /// The admin API's connection (it is not batched): (store id, connection).
    static ADMIN_CONN: RefCell<(u64, Conn)> = const { RefCell::new((0, Conn { conn: None, failed: None })) };
}

/// What a batch driver needs, shared by every worker's driver.
struct Shared {
    client: redis::Client,
    script: redis::Script,
    timeout: Duration,
}

pub struct RedisStore {
    id: u64,
    shared: Arc<Shared>,
}

/// A connection that is made on first use and remade after failures, rate-limited.
#[derive(Default, Clone)]
struct Conn {
    conn: Option<ConnectionManager>,
    /// the last attempt's failure, and when (the cause of every refusal until the next one)
    failed: Option<(Instant, RedisFailure)>,
}

impl Shared {
    fn connect_timeout(&self) -> Duration {
        self.timeout.max(Duration::from_millis(250))
    }

    async fn connect(&self, slot: &mut Conn) -> Result<ConnectionManager, RedisFailure> {
        if let Some(c) = &slot.conn {
            return Ok(c.clone());
        }
        if let Some((at, why)) = &slot.failed {
            if at.elapsed() < RECONNECT_EVERY {
                return Err(RedisFailure::Backoff(Box::new(why.clone())));
            }
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout()))
            .set_response_timeout(Some(self.connect_timeout()))
            .set_number_of_retries(2)
            .set_max_delay(RECONNECT_EVERY);
        let connect = ConnectionManager::new_with_config(self.client.clone(), cfg);
        let made = match tokio::time::timeout(self.connect_timeout(), connect).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(RedisFailure::Connect(Arc::new(e))),
            Err(_) => Err(RedisFailure::ConnectTimeout(self.connect_timeout())),
        };
        slot.conn = made.as_ref().ok().cloned();
        slot.failed = made.as_ref().err().map(|e| (Instant::now(), e.clone()));
        made
    }

    /// One script call deciding `decisions` — each a request's probes — (or, without `commit`,
    /// only looking).
    async fn call(
        &self,
        conn: &mut ConnectionManager,
        decisions: &[&[Probe]],
        commit: bool,
    ) -> Result<Vec<Outcome>, RedisFailure> {
        // the distinct limit specs of the batch (usually one per rule), then references to them
        let mut specs: Vec<Spec> = Vec::new();
        let mut refs: Vec<usize> = Vec::new();
        for p in decisions.iter().flat_map(|d| d.iter()) {
            let spec = Spec::of(p);
            refs.push(match specs.iter().position(|s| *s == spec) {
                Some(i) => i + 1,
                None => {
                    specs.push(spec);
                    specs.len()
                }
            });
        }
        let mut inv = self.script.prepare_invoke();
        inv.arg(commit as u8).arg(decisions.len()).arg(specs.len());
        for s in &specs {
            inv.arg(s.0).arg(s.1).arg(s.2).arg(s.3).arg(s.4);
        }
        let mut refs = refs.into_iter();
        for probes in decisions {
            inv.arg(probes.len());
            for p in probes.iter() {
                inv.key(p.key.as_str());
                inv.arg(refs.next().unwrap_or(1));
            }
        }
        let reply: Vec<i64> = match tokio::time::timeout(self.timeout, inv.invoke_async(conn)).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(RedisFailure::Command(Arc::new(e))),
            Err(_) => return Err(RedisFailure::Timeout(self.timeout)),
        };
        split(&reply, decisions)
    }
}

/// A limit as the script takes it: kind (0 rate, 1 quota), count, period (ms), burst, cost.
#[derive(PartialEq)]
struct Spec(u8, u64, u64, u64, u64);

impl Spec {
    fn of(p: &Probe) -> Spec {
        if p.tokens {
            // a token quota's check: admitted while used < count, i.e. used + 0 <= count - 1,
            // committing nothing (`split` adds the 1 back to what remains)
            return Spec(
                1,
                p.limit.count.saturating_sub(1),
                p.limit.period.as_millis() as u64,
                p.burst,
                0,
            );
        }
        Spec(
            if p.rate { 0 } else { 1 },
            p.limit.count,
            p.limit.period.as_millis() as u64,
            p.burst,
            p.cost,
        )
    }
}

/// Cuts a batch's reply into each decision's outcome; an error if it does not fit the batch.
fn split(reply: &[i64], decisions: &[&[Probe]]) -> Result<Vec<Outcome>, RedisFailure> {
    let misfit = || RedisFailure::Reply {
        got: reply.len(),
        expected: 3 * decisions.iter().map(|d| d.len()).sum::<usize>(),
    };
    let mut rest = reply;
    let mut outcomes = Vec::with_capacity(decisions.len());
    for probes in decisions {
        let n = 3 * probes.len();
        if rest.len() < n {
            return Err(misfit());
        }
        let (mine, tail) = rest.split_at(n);
        rest = tail;
        let evals: Vec<Eval> = mine
            .chunks_exact(3)
            .zip(probes.iter())
            .map(|(c, p)| {
                // a refusal always has something to wait for; an admission never
                let admitted = c[2] == 0;
                let remaining = c[0].max(0) as u64;
                Eval {
                    admitted,
                    // a token check was judged against count - 1 (see `Spec::of`)
                    remaining: remaining + u64::from(p.tokens && admitted),
                    reset_ns: c[1].saturating_mul(1000),
                    retry_after_ns: c[2].saturating_mul(1000),
                }
            })
            .collect();
        outcomes.push(Outcome {
            admitted: evals.iter().all(|e| e.admitted),
            evals,
        });
    }
    match rest.is_empty() {
        true => Ok(outcomes),
        false => Err(misfit()),
    }
}

/// A worker's batch driver: one script call in flight; whatever queued meanwhile is the next
/// batch. Ends when the store is dropped or replaced (its queue's sender goes away).
async fn drive(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut slot = Conn::default();
    // connect before the first decision needs it (a failure here has no request to answer:
    // it is logged here, once)
    if let Err(e) = shared.connect(&mut slot).await {
        super::failure_log::log_failure("redis", "connect", &e);
    }
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // requests that gave up (timeout, client gone) are not decided: they consume nothing
        batch.retain(|j| !j.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let outcomes = match shared.connect(&mut slot).await {
            Ok(mut conn) => {
                let decisions: Vec<&[Probe]> = batch.iter().map(|j| j.probes.as_slice()).collect();
                shared.call(&mut conn, &decisions, true).await
            }
            Err(e) => Err(e),
        };
        // each request's failure is logged by its own decision (rate-limited there)
        match outcomes {
            Ok(outcomes) => {
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, redis::RedisError> {
        Ok(RedisStore {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shared: Arc::new(Shared {
                client: redis::Client::open(url)?,
                script: redis::Script::new(SCRIPT),
                timeout,
            }),
        })
    }

    /// This worker's batch queue, its driver started (on this thread's runtime) if there is
    /// none for this store yet or it has ended.
    fn queue(&self) -> Result<mpsc::UnboundedSender<Job>, RedisFailure> {
        QUEUE.with(|q| {
            let mut q = q.borrow_mut();
            if let Some((id, tx)) = q.as_ref() {
                if *id == self.id && !tx.is_closed() {
                    return Ok(tx.clone());
                }
            }
            let runtime =
                tokio::runtime::Handle::try_current().map_err(|_| RedisFailure::NoRuntime)?;
            let (tx, rx) = mpsc::unbounded_channel();
            runtime.spawn(drive(self.shared.clone(), rx));
            *q = Some((self.id, tx.clone()));
            Ok(tx)
        })
    }

    /// Starts this worker's driver, which connects at once.
    pub fn warm(&self) -> Result<(), RedisFailure> {
        self.queue().map(drop)
    }

    /// Queues a decision on this worker's driver and waits for it, at most `store_timeout` in
    /// all.
    async fn submit(&self, probes: Vec<Probe>) -> Result<Outcome, RedisFailure> {
        let (reply, answer) = oneshot::channel();
        self.queue()?
            .send(Job { probes, reply })
            .map_err(|_| RedisFailure::DriverGone)?;
        match tokio::time::timeout(self.shared.timeout, answer).await {
            Ok(Ok(decided)) => decided,
            Ok(Err(_)) => Err(RedisFailure::DriverGone),
            Err(_) => Err(RedisFailure::Timeout(self.shared.timeout)),
        }
    }

    fn stored(probes: &[Probe], cost: Option<u64>) -> Vec<Probe> {
        probes
            .iter()
            .map(|p| Probe {
                key: format!("{PREFIX}{}", p.key),
                cost: cost.unwrap_or(p.cost),
                ..p.clone()
            })
            .collect()
    }

    pub async fn decide(&self, probes: &[Probe]) -> Result<Outcome, RedisFailure> {
        self.submit(Self::stored(probes, None)).await
    }

    /// Adds `n` to each quota key's current window whatever its limit (a token quota's charge
    /// after the response): the same script, as a quota no charge can exceed.
    pub async fn charge(&self, probes: &[Probe], n: u64) -> Result<(), RedisFailure> {
        let probes = probes
            .iter()
            .map(|p| Probe {
                key: format!("{PREFIX}{}", p.key),
                rate: false,
                tokens: false,
                // Lua numbers are doubles: 2^52 stays exact, and no window holds that many
                limit: crate::config::Limit {
                    count: 1 << 52,
                    period: p.limit.period,
                },
                cost: n.min(1 << 52),
                ..p.clone()
            })
            .collect();
        self.submit(probes).await.map(|_| ())
    }

    /// The admin API's connection (the admin listener has its own runtime, no batch driver).
    async fn admin_conn(&self) -> Result<ConnectionManager, RedisFailure> {
        // a copy: no borrow of the thread-local across the await
        let mut slot = ADMIN_CONN.with(|c| {
            let c = c.borrow();
            match c.0 == self.id {
                true => c.1.clone(),
                false => Conn::default(),
            }
        });
        let conn = self.shared.connect(&mut slot).await;
        ADMIN_CONN.with(|c| *c.borrow_mut() = (self.id, slot));
        conn
    }

    pub async fn peek(&self, probe: &Probe) -> Result<Eval, RedisFailure> {
        let mut conn = self.admin_conn().await?;
        let probes = Self::stored(std::slice::from_ref(probe), Some(0));
        let outcome = self.shared.call(&mut conn, &[&probes], false).await?;
        // `split` answered one outcome of one eval for the one probe
        outcome
            .into_iter()
            .next()
            .and_then(|o| o.evals.into_iter().next())
            .ok_or(RedisFailure::Reply {
                got: 0,
                expected: 3,
            })
    }

    pub async fn reset(&self, key: &str) -> Result<bool, RedisFailure> {
        let mut conn = self.admin_conn().await?;
        let timeout = self.shared.connect_timeout();
        let n: i64 = tokio::time::timeout(
            timeout,
            redis::cmd("DEL")
                .arg(format!("{PREFIX}{key}"))
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| RedisFailure::Timeout(timeout))?
        .map_err(|e| RedisFailure::Command(Arc::new(e)))?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limit;

    fn probe(key: &str) -> Probe {
        Probe {
            key: key.into(),
            rate: true,
            limit: Limit {
                count: 10,
                period: Duration::from_secs(1),
            },
            burst: 5,
            cost: 1,
            tokens: false,
        }
    }

    /// A batch of two requests (two rules, then one) cut out of one reply.
    #[test]
    fn a_batch_reply_is_cut_into_each_requests_outcome() {
        let (a, b) = ([probe("r|a"), probe("s|a")], [probe("r|b")]);
        let reply = [4, 100_000, 0, 0, 900_000, 700_000, 3, 200_000, 0];
        let out = split(&reply, &[&a, &b]).expect("the reply fits");
        assert_eq!(out.len(), 2);
        assert!(!out[0].admitted, "one refusing rule refuses the request");
        assert_eq!(out[0].evals[1].retry_after_ns, 700_000_000);
        assert_eq!(out[0].evals[0].reset_ns, 100_000_000, "µs to ns");
        assert!(out[1].admitted);
        assert_eq!(out[1].evals[0].remaining, 3);
    }

    #[test]
    fn a_reply_that_does_not_fit_the_batch_is_an_error_naming_both_sizes() {
        let (a, b) = ([probe("r|a")], [probe("r|b")]);
        for reply in [&[1, 2, 0][..], &[1, 2, 0, 1, 2, 0, 9][..]] {
            match split(reply, &[&a, &b]) {
                Err(RedisFailure::Reply { got, expected }) => {
                    assert_eq!((got, expected), (reply.len(), 6))
                }
                Err(e) => panic!("another failure: {e}"),
                Ok(_) => panic!("a reply of {} values accepted for 6", reply.len()),
            }
        }
    }
}
