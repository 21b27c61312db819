//! Access log: one JSON line per request, in the thread-per-core style of nginx's
//! `access_log … buffer= flush=`. Each worker serializes its lines into a buffer of its own and
//! writes the batch itself — one `write` per 64 KiB or per flush interval — so no extra thread
//! competes with the workers for the cores and no line crosses a channel.
//!
//! A destination that stalls (a pipe nobody reads) never blocks a worker: pipes, terminals and
//! sockets are written without blocking, what does not fit waits in the buffer up to a bound,
//! and lines beyond it are dropped and counted (`access_log_dropped_total`). A regular file is
//! written directly (the kernel's page cache absorbs it, as for nginx); a failing write (disk
//! full) drops its lines and counts them.

mod json;
mod sink;

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::AccessLog;
use crate::metrics::METRICS;
use sink::Sink;

/// A worker writes its buffer when it holds this much …
const FLUSH_BYTES: usize = 64 * 1024;
/// … or when its oldest line is this old (the worker's flusher task, or the next line).
const FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// What a worker keeps while its destination takes nothing; newer lines are dropped.
const MAX_PENDING: usize = 256 * 1024;

#[derive(Clone)]
pub struct AccessLogger {
    sink: Option<Arc<Sink>>,
}

/// One request. Never contains the token or `Authorization`.
#[derive(Serialize)]
pub struct Record<'a> {
    pub time: Stamp,
    pub request_id: &'a str,
    pub client_ip: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub route: Option<&'a str>,
    pub status: u16,
    pub duration_ms: f64,
    /// until the first byte of the response body went to the client (an AI stream's first
    /// token); a complete response without a body: its duration; none if no byte went
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttfb_ms: Option<f64>,
    pub upstream: Option<&'a str>,
    pub upstream_status: Option<u16>,
    /// tries sent upstream (0: none; more than 1: the route's `retries` repeated it)
    pub attempts: u32,
    /// the endpoint (address:port) of the last try
    pub endpoint: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub iss: Option<&'a str>,
    pub realm: Option<&'a str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub reason: Option<&'a str>,
    /// the response body did not complete (client went away, upstream broke)
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// the request's trace (only when one exists: exported, or carried on upstream)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    /// AI usage (routes with `kind = "ai"` only; absent from every other line)
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiFields<'a>>,
}

/// A UTC time with milliseconds as the log lines carry it, RFC 3339
/// (`2026-12-03T18:40:12.345Z`). The date and time of day are formatted once per second per
/// thread, not per line.
#[derive(Clone, Copy)]
pub struct Stamp([u8; 24]);

thread_local! {
    /// the second last formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS.`
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

impl Stamp {
    pub fn now() -> Self {
        Self::at(SystemTime::now())
    }

    pub fn at(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let mut prefix = SECOND.get();
        if prefix.0 != secs {
            let whole = UNIX_EPOCH + Duration::from_secs(secs);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            let b = text.as_bytes();
            // `…SSZ` (a year past 9999 would not fit: it never gets here from a clock)
            let mut p = *b"1970-01-01T00:00:00.";
            if b.len() == 20 {
                p[..19].copy_from_slice(&b[..19]);
            }
            prefix = (secs, p);
            SECOND.set(prefix);
        }
        let ms = d.subsec_millis();
        let mut buf = [0u8; 24];
        buf[..20].copy_from_slice(&prefix.1);
        buf[20] = b'0' + (ms / 100) as u8;
        buf[21] = b'0' + (ms / 10 % 10) as u8;
        buf[22] = b'0' + (ms % 10) as u8;
        buf[23] = b'Z';
        Stamp(buf)
    }

    pub fn as_str(&self) -> &str {
        // ASCII by construction
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The usage of an AI route's response. Token counts and cost are absent when the usage is
/// missing (`usage_source = "missing"`): unknown is never logged as 0.
#[derive(Serialize)]
pub struct AiFields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_write_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// `reported` or `missing`
    pub usage_source: &'static str,
    /// absent when no `[[prices]]` entry matches the model
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// the response was an event stream
    pub stream: bool,
}

impl AccessLogger {
    pub fn off() -> Self {
        AccessLogger { sink: None }
    }

    pub fn start(target: &AccessLog) -> std::io::Result<Self> {
        let sink = match target {
            AccessLog::Off => return Ok(Self::off()),
            AccessLog::Stdout => Sink::stdout()?,
            AccessLog::File(p) => Sink::file(p)?,
        };
        Ok(AccessLogger {
            sink: Some(Arc::new(sink)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Appends the line to this thread's buffer; writes the buffer when it is full or old. On a
    /// thread without a flusher (not a worker) the line is written at once.
    pub fn log(&self, r: &impl Serialize) {
        self.push(|out| serde_json::to_writer(out, r).is_ok());
    }

    /// [`log`](Self::log) for a request's line, written without serde (the same bytes).
    pub fn log_request(&self, r: &Record<'_>) {
        self.push(|out| {
            r.write_json(out);
            true
        });
    }

    fn push(&self, write: impl FnOnce(&mut Vec<u8>) -> bool) {
        let Some(sink) = &self.sink else { return };
        BUFFER.with(|b| {
            let Ok(mut b) = b.try_borrow_mut() else {
                // re-entered from inside a flush: cannot happen, but never panic for a log line
                METRICS.access_log_dropped.inc();
                return;
            };
            b.push(sink, write);
        });
    }
}

/// Run on each worker thread (inside its runtime) when it starts: the task that writes what the
/// worker buffered once it is `FLUSH_INTERVAL` old, so a quiet worker's last lines do not wait
/// for the next request. Started whether or not a log is configured now: a reload may add one.
pub fn spawn_flusher() {
    let notify = BUFFER.with(|b| {
        let mut b = b.try_borrow_mut().ok()?;
        if b.flusher.is_some() {
            return None;
        }
        let n = Arc::new(tokio::sync::Notify::new());
        b.flusher = Some(n.clone());
        Some(n)
    });
    let Some(notify) = notify else { return };
    tokio::spawn(async move {
        loop {
            notify.notified().await;
            tokio::time::sleep(FLUSH_INTERVAL).await;
            flush_this_thread();
        }
    });
}

/// Writes what this thread has buffered.
pub fn flush_this_thread() {
    BUFFER.with(|b| {
        if let Ok(mut b) = b.try_borrow_mut() {
            b.flush();
        }
    });
}

thread_local! {
    static BUFFER: RefCell<Buffer> = RefCell::new(Buffer::default());
}

/// A thread's pending lines, all for one destination.
#[derive(Default)]
struct Buffer {
    sink: Option<Arc<Sink>>,
    bytes: Vec<u8>,
    /// when the first pending line was added
    since: Option<Instant>,
    /// wakes this worker's flusher; none on threads that are not workers
    flusher: Option<Arc<tokio::sync::Notify>>,
}

impl Buffer {
    fn push(&mut self, sink: &Arc<Sink>, write: impl FnOnce(&mut Vec<u8>) -> bool) {
        if !self.sink.as_ref().is_some_and(|s| Arc::ptr_eq(s, sink)) {
            // a reload reopened the log: what is pending belongs to the old file
            self.flush();
            self.sink = Some(sink.clone());
        }
        if self.bytes.len() >= MAX_PENDING {
            // the destination has taken nothing for a while: try once more, else drop this line
            self.flush();
            if self.bytes.len() >= MAX_PENDING {
                METRICS.access_log_dropped.inc();
                return;
            }
        }
        let start = self.bytes.len();
        if !write(&mut self.bytes) {
            self.bytes.truncate(start);
            return;
        }
        self.bytes.push(b'\n');
        let now = match self.since {
            Some(t) => t.elapsed() >= FLUSH_INTERVAL,
            None => {
                self.since = Some(Instant::now());
                match &self.flusher {
                    Some(n) => {
                        n.notify_one();
                        false
                    }
                    None => true,
                }
            }
        };
        if now || self.bytes.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let Some(sink) = &self.sink else {
            self.bytes.clear();
            return;
        };
        if self.bytes.is_empty() {
            return;
        }
        let written = sink.write_lines(&self.bytes);
        self.bytes.drain(..written);
        self.since = if self.bytes.is_empty() {
            None
        } else {
            // the rest waits for the destination; the flusher tries again
            if let Some(n) = &self.flusher {
                n.notify_one();
            }
            Some(Instant::now())
        };
    }
}

impl Drop for Buffer {
    /// A worker thread that ends (shutdown) writes what it still holds.
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_rfc3339_millis_across_seconds() {
        // each second twice (the cached prefix, then reused), and a second's last millisecond
        let base = UNIX_EPOCH + Duration::from_millis(1_764_787_199_998);
        for ms in [0, 1, 2, 3, 1_000, 1_001, 86_400_000, 86_400_999, 0] {
            let t = base + Duration::from_millis(ms);
            assert_eq!(
                Stamp::at(t).as_str(),
                humantime::format_rfc3339_millis(t).to_string(),
                "{ms}"
            );
        }
        assert_eq!(Stamp::at(UNIX_EPOCH).as_str(), "1970-01-01T00:00:00.000Z");
    }
}
