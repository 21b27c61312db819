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

mod sink;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    pub time: String,
    pub request_id: &'a str,
    pub client_ip: String,
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
        let Some(sink) = &self.sink else { return };
        BUFFER.with(|b| {
            let Ok(mut b) = b.try_borrow_mut() else {
                // re-entered from inside a flush: cannot happen, but never panic for a log line
                METRICS.access_log_dropped.inc();
                return;
            };
            b.push(sink, r);
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
    fn push(&mut self, sink: &Arc<Sink>, r: &impl Serialize) {
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
        if serde_json::to_writer(&mut self.bytes, r).is_err() {
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
