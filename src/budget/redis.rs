//! The Redis budget store: several gateway nodes enforce one budget. Each decision is one
//! server-side script over all of a request's rules (evaluate all, write only if all admit),
//! timed by Redis's own clock so nodes agree; keys expire by themselves. Each worker thread has
//! its own auto-reconnecting multiplexed connection (commands are pipelined on it), so a Redis
//! outage costs a bounded wait (`store_timeout`) and `on_store_error`, and service recovers by
//! itself when Redis is back.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Eval, Outcome, Probe};

/// KEYS: the rules' keys. ARGV[1]: 1 to commit, 0 to only look. Then per key: kind (0 rate,
/// 1 quota), count, period (ms), burst, cost. Times in µs from Redis's TIME. Returns
/// {all_admitted, then per key: admitted, remaining, reset µs, retry-after µs}.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local commit = tonumber(ARGV[1])
local out = {1}
local writes = {}
for i, key in ipairs(KEYS) do
  local b = 1 + (i - 1) * 5
  local kind = tonumber(ARGV[b + 1])
  local count = tonumber(ARGV[b + 2])
  local period = tonumber(ARGV[b + 3]) * 1000
  local burst = tonumber(ARGV[b + 4])
  local cost = tonumber(ARGV[b + 5])
  if kind == 0 then
    local step = math.max(1, math.floor(period / count))
    local window = step * burst
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local new_tat = tat + step * cost
    local ahead = new_tat - now
    if ahead > window then
      out[1] = 0
      local used = math.ceil((tat - now) / step)
      table.insert(out, 0); table.insert(out, math.max(0, burst - used)); table.insert(out, tat - now); table.insert(out, ahead - window)
    else
      table.insert(out, 1); table.insert(out, math.floor((window - ahead) / step)); table.insert(out, ahead); table.insert(out, 0)
      writes[#writes + 1] = {key, string.format('%.0f', new_tat), math.ceil(ahead / 1000) + 1000}
    end
  else
    local start = now - (now % period)
    local used = 0
    local v = redis.call('GET', key)
    if v then
      local s, u = string.match(v, '^(%d+):(%d+)$')
      if s and tonumber(s) == start then used = tonumber(u) end
    end
    local reset = start + period - now
    if used + cost > count then
      out[1] = 0
      table.insert(out, 0); table.insert(out, math.max(0, count - used)); table.insert(out, reset); table.insert(out, reset)
    else
      table.insert(out, 1); table.insert(out, count - used - cost); table.insert(out, reset); table.insert(out, 0)
      writes[#writes + 1] = {key, string.format('%.0f', start) .. ':' .. (used + cost), math.ceil(reset / 1000) + 1000}
    end
  end
end
if out[1] == 1 and commit == 1 then
  for _, w in ipairs(writes) do redis.call('SET', w[1], w[2], 'PX', w[3]) end
end
return out
"#;

const PREFIX: &str = "ccgw:";

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// (store id, this thread's connection, when the last connect attempt failed)
    static CONN: RefCell<(u64, Option<ConnectionManager>, Option<Instant>)> = const { RefCell::new((0, None, None)) };
}

pub struct RedisStore {
    id: u64,
    client: redis::Client,
    script: redis::Script,
    timeout: Duration,
}

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, redis::RedisError> {
        Ok(RedisStore {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client: redis::Client::open(url)?,
            script: redis::Script::new(SCRIPT),
            timeout,
        })
    }

    /// This thread's connection, connecting when there is none (at most every 500 ms while
    /// Redis is unreachable, so an outage does not turn into a connect storm).
    async fn conn(&self) -> Option<ConnectionManager> {
        let cached = CONN.with(|c| {
            let c = c.borrow();
            if c.0 == self.id {
                (c.1.clone(), c.2)
            } else {
                (None, None)
            }
        });
        match cached {
            (Some(conn), _) => return Some(conn),
            (None, Some(failed)) if failed.elapsed() < Duration::from_millis(500) => return None,
            _ => {}
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(self.timeout.max(Duration::from_millis(250))))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connect = ConnectionManager::new_with_config(self.client.clone(), cfg);
        let result =
            tokio::time::timeout(self.timeout.max(Duration::from_millis(250)), connect).await;
        let conn = match result {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "budget store: cannot connect to Redis");
                None
            }
            Err(_) => None,
        };
        CONN.with(|c| {
            *c.borrow_mut() = (self.id, conn.clone(), conn.is_none().then(Instant::now));
        });
        conn
    }

    async fn run(&self, probes: &[Probe], commit: bool) -> Option<Outcome> {
        let mut conn = self.conn().await?;
        let mut inv = self.script.prepare_invoke();
        inv.arg(commit as i64);
        for p in probes {
            inv.key(format!("{PREFIX}{}", p.key));
            inv.arg(if p.rate { 0 } else { 1 })
                .arg(p.limit.count)
                .arg(p.limit.period.as_millis() as u64)
                .arg(p.burst)
                .arg(p.cost);
        }
        let r: Vec<i64> =
            match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "budget store: Redis error");
                    return None;
                }
                Err(_) => return None,
            };
        if r.len() != 1 + 4 * probes.len() {
            return None;
        }
        let evals = r[1..]
            .chunks(4)
            .map(|c| Eval {
                admitted: c[0] == 1,
                remaining: c[1].max(0) as u64,
                reset_ns: c[2] * 1000,
                retry_after_ns: c[3] * 1000,
            })
            .collect();
        Some(Outcome {
            admitted: r[0] == 1,
            evals,
        })
    }

    pub async fn decide(&self, probes: &[Probe]) -> Option<Outcome> {
        self.run(probes, true).await
    }

    pub async fn peek(&self, probe: &Probe) -> Option<Eval> {
        let p = Probe {
            cost: 0,
            ..probe.clone()
        };
        self.run(std::slice::from_ref(&p), false)
            .await
            .and_then(|o| o.evals.into_iter().next())
    }

    pub async fn reset(&self, key: &str) -> Option<bool> {
        let mut conn = self.conn().await?;
        let n: i64 = tokio::time::timeout(
            self.timeout.max(Duration::from_millis(250)),
            redis::cmd("DEL")
                .arg(format!("{PREFIX}{key}"))
                .query_async(&mut conn),
        )
        .await
        .ok()?
        .ok()?;
        Some(n > 0)
    }
}
