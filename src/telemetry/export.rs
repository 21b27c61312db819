//! The export thread: sealed trace records arrive through a bounded queue, are encoded here
//! (`encode`: spans straight to protobuf bytes, so the workers build nothing) and leave in
//! batches as OTLP/HTTP protobuf POSTs. Workers only ever `try_send` (a full queue drops the
//! trace and counts its spans), so a slow or absent collector costs memory up to the bound and
//! never latency.
//!
//! The HTTP client is our own hyper client on a current-thread runtime that this thread alone
//! drives: the OTLP exporter's hyper client, run from a batch processor's plain thread, is
//! known to deadlock waiting on a runtime nobody polls; here the runtime and the thread are
//! one.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::encode::{Clock, Encoder};
use super::otlp::Frame;
use super::span::Trace;
use crate::config::Telemetry;
use crate::metrics::METRICS;

/// Traces (one request's record each) waiting for the export thread.
const QUEUE_TRACES: usize = 4096;
/// An export is sent when this many spans are waiting …
const MAX_BATCH_SPANS: usize = 512;
/// … or when the oldest waiting span is this old.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How long one export may take before its spans are given up (and counted).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The workers' side: a queue and a way to ask for a flush.
pub(super) struct Exporter {
    tx: SyncSender<Box<Trace>>,
    flush: Arc<FlushState>,
}

/// Flush requests and completions, counted so a waiter knows its own was served.
#[derive(Default)]
struct FlushState {
    counts: Mutex<(u64, u64)>,
    done: Condvar,
}

impl Exporter {
    /// Starts the export thread; it ends (after a last export) when the exporter is dropped.
    pub(super) fn start(cfg: &Telemetry) -> std::io::Result<Exporter> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_TRACES);
        let flush = Arc::new(FlushState::default());
        let resource = std::iter::once(("service.name", cfg.service_name.as_str()))
            .chain(cfg.resource.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let target = Target {
            endpoint: cfg.endpoint.clone(),
            headers: cfg
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.0.clone()))
                .collect(),
            frame: Frame::new(resource),
        };
        let state = flush.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || run(rx, target, state))?;
        Ok(Exporter { tx, flush })
    }

    /// Queues one sealed trace; never blocks.
    pub(super) fn send(&self, trace: Box<Trace>) {
        let (cause, t) = match self.tx.try_send(trace) {
            Ok(()) => return,
            Err(TrySendError::Full(t)) => ("queue_full", t),
            Err(TrySendError::Disconnected(t)) => ("export_failed", t),
        };
        METRICS
            .spans_dropped
            .with_label_values(&[cause])
            .inc_by(t.span_count());
    }

    /// Exports what is queued now and waits for it, at most `timeout` (shutdown). False when
    /// the export did not finish in time.
    pub(super) fn flush(&self, timeout: Duration) -> bool {
        let Ok(mut c) = self.flush.counts.lock() else {
            return false;
        };
        c.0 += 1;
        let want = c.0;
        let deadline = Instant::now() + timeout;
        while c.1 < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!("trace export did not finish before shutdown");
                return false;
            }
            c = match self.flush.done.wait_timeout(c, left) {
                Ok((c, _)) => c,
                Err(_) => return false,
            };
        }
        true
    }
}

struct Target {
    endpoint: http::Uri,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// the resource and scope every export carries
    frame: Frame,
}

/// How often the thread takes what the queue holds (and looks at flush requests).
const TICK: Duration = Duration::from_millis(50);

fn run(rx: Receiver<Box<Trace>>, target: Target, flush: Arc<FlushState>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "trace export disabled: no runtime for its client");
            return;
        }
    };
    let client = client();
    let mut failing = false;
    let mut encoder = Encoder::default();
    // the batch's spans, encoded, and how many
    let mut batch: Vec<u8> = Vec::new();
    let mut spans = 0u64;
    let mut oldest: Option<Instant> = None;
    loop {
        // polled, never woken: a worker's `try_send` then never finds a sleeping receiver to
        // wake — a futex wake and a context switch per request would cost more than the spans
        std::thread::sleep(TICK);
        let mut closed = false;
        let clock = Clock::now();
        loop {
            match rx.try_recv() {
                Ok(trace) => {
                    oldest.get_or_insert_with(Instant::now);
                    spans += encoder.trace(&trace, &clock, &mut batch);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let (requested, served) = flush.counts.lock().map_or((0, 0), |c| *c);
        let flushing = requested > served;
        let due = oldest.is_some_and(|t| t.elapsed() >= BATCH_DELAY);
        if spans > 0 && (flushing || closed || due || spans >= MAX_BATCH_SPANS as u64) {
            let body = target.frame.body(&batch);
            batch.clear();
            oldest = None;
            failing = rt.block_on(export(
                &client,
                &target,
                body,
                std::mem::take(&mut spans),
                failing,
            ));
        }
        if flushing {
            if let Ok(mut c) = flush.counts.lock() {
                c.1 = requested;
            }
            flush.done.notify_all();
        }
        if closed {
            return;
        }
    }
}

type OtlpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> OtlpClient {
    let https = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(b) => b.https_or_http().enable_http1().build(),
        Err(e) => {
            tracing::warn!(error = %e, "no system CA certificates: an https OTLP endpoint will fail");
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .build()
        }
    };
    Client::builder(TokioExecutor::new()).build(https)
}

/// One POST; returns whether it failed. Only the first failure of a run is a warning (a
/// collector that is down would otherwise log twice a second).
async fn export(
    client: &OtlpClient,
    target: &Target,
    body: Vec<u8>,
    n: u64,
    failing: bool,
) -> bool {
    let mut req = http::Request::post(target.endpoint.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)));
    if let Ok(r) = &mut req {
        for (name, value) in &target.headers {
            r.headers_mut().insert(name.clone(), value.clone());
        }
    }
    let outcome = match req {
        Ok(req) => match tokio::time::timeout(EXPORT_TIMEOUT, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("collector answered {}", resp.status())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
        },
        Err(e) => Err(e.to_string()),
    };
    match outcome {
        Ok(()) => {
            METRICS.spans_exported.inc_by(n);
            if failing {
                tracing::info!(endpoint = %target.endpoint, "trace export works again");
            }
            false
        }
        Err(e) => {
            METRICS
                .spans_dropped
                .with_label_values(&["export_failed"])
                .inc_by(n);
            if failing {
                tracing::debug!(endpoint = %target.endpoint, error = %e, spans = n, "trace export failed; spans dropped");
            } else {
                tracing::warn!(endpoint = %target.endpoint, error = %e, spans = n, "trace export failed; spans dropped (counted in cc_gateway_spans_dropped_total)");
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A collector that accepts and never answers holds the export thread in its first POST;
    /// the queue fills, and every further trace is dropped and counted at once.
    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = Telemetry {
            endpoint: format!("http://{}/v1/traces", stuck.local_addr().unwrap())
                .parse()
                .unwrap(),
            headers: Vec::new(),
            sample_ratio: 1.0,
            keep_errors: false,
            slow_threshold: Duration::from_secs(1),
            service_name: "t".into(),
            resource: BTreeMap::new(),
        };
        let exporter = Exporter::start(&cfg).unwrap();
        let dropped = || {
            METRICS
                .spans_dropped
                .with_label_values(&["queue_full"])
                .get()
        };
        // one trace, exported after the batch delay: the export thread is in its POST (which
        // never gets an answer) once the collector holds the connection and the request
        exporter.send(super::super::span::sealed_for_test());
        let (mut conn, _) = stuck.accept().unwrap();
        let mut head = [0u8; 4];
        std::io::Read::read_exact(&mut conn, &mut head).unwrap();
        assert_eq!(&head, b"POST");
        let before = dropped();
        let n = 20_000;
        for _ in 0..n {
            exporter.send(super::super::span::sealed_for_test());
        }
        // a sender that waited for room would have queued them all (and never got here while
        // the export is stuck): exactly one queueful was taken, the rest dropped and counted
        assert!(
            dropped() - before >= (n - QUEUE_TRACES) as u64,
            "{} dropped",
            dropped() - before
        );
        // and a flush with a stuck collector gives up at its deadline, saying so
        assert!(!exporter.flush(Duration::from_millis(100)));
    }
}
