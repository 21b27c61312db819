//! Access log: one JSON line per request, written by a dedicated thread so the request path
//! never blocks on I/O. Workers hand over a formatted line through a bounded channel; when
//! the writer falls behind, lines are dropped and counted (`access_log_dropped_total`) rather
//! than slowing requests down.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use serde::Serialize;

use crate::config::AccessLog;
use crate::metrics::METRICS;

const QUEUE: usize = 64 * 1024;

#[derive(Clone)]
pub struct AccessLogger {
    tx: Option<SyncSender<Vec<u8>>>,
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
    pub upstream: Option<&'a str>,
    pub upstream_status: Option<u16>,
    pub sub: Option<&'a str>,
    pub iss: Option<&'a str>,
    pub realm: Option<&'a str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub reason: Option<&'a str>,
    /// the response body did not complete (client went away, upstream broke)
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
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
        AccessLogger { tx: None }
    }

    pub fn start(target: &AccessLog) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            AccessLog::Off => return Ok(Self::off()),
            AccessLog::Stdout => Box::new(std::io::stdout()),
            AccessLog::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("cc-access-log".into())
            .spawn(move || writer(rx, out))?;
        Ok(AccessLogger { tx: Some(tx) })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, r: &Record<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, r).is_err() {
            return;
        }
        line.push(b'\n');
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                METRICS.access_log_dropped.inc()
            }
        }
    }
}

fn writer(rx: Receiver<Vec<u8>>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    // block for the first line, then drain what is queued, then flush: one write per burst
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(&line);
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(&more);
        }
        if let Err(e) = out.flush() {
            eprintln!("cc-gateway: access log write failed: {e}");
        }
    }
}
