//! GOAWAY and the retry contract: a stream above a GOAWAY's last-stream-id provably never
//! reached the application, so it is retried even for a POST with a body; a stream the
//! GOAWAY covers may have been processed, so a POST on it is never sent again. The refused
//! try wrote the body out: the retry resends what was kept of it, and only a whole body.
//!
//! The upstream is HTTP/2 (h2c, prior knowledge) written frame by frame over a raw socket:
//! the `h2` server crate decides itself when its GOAWAY goes out and with which
//! last-stream-id, and these tests need to choose both.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{config, log_line, pool, retries};
use crate::common::h2frame::*;
use crate::common::{Gateway, Req};

const NO_ERROR: u32 = 0x0;
const INTERNAL_ERROR: u32 = 0x2;

/// What a connection does with the first request stream it reads in full.
#[derive(Clone, Copy)]
enum Plan {
    /// GOAWAY(last_stream_id = 0, NO_ERROR), then close: the stream was not processed
    Refuse,
    /// GOAWAY(last_stream_id = the stream, `code`), then close unanswered: the stream may
    /// have been processed (it was delivered)
    CloseAfter(u32),
    /// 200 "h2" (HEADERS with HPACK static index 8, `:status: 200`, then DATA)
    Answer,
}

/// An h2c upstream whose n-th connection follows the n-th plan (`Answer` after the list).
/// Counts every request stream read in full, and those delivered (at or below the
/// last-stream-id the connection gave, or answered) with their body lengths.
struct RawH2 {
    addr: SocketAddr,
    streams: Arc<AtomicUsize>,
    delivered: Arc<Mutex<Vec<usize>>>,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Drop for RawH2 {
    fn drop(&mut self) {
        self.accept.abort();
        for t in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl RawH2 {
    async fn start(plans: &[Plan]) -> RawH2 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let streams = Arc::new(AtomicUsize::new(0));
        let delivered: Arc<Mutex<Vec<usize>>> = Arc::default();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let plans = plans.to_vec();
        let (st, dl, cs) = (streams.clone(), delivered.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            let mut n = 0;
            while let Ok((s, _)) = l.accept().await {
                let plan = plans.get(n).copied().unwrap_or(Plan::Answer);
                n += 1;
                let (st, dl) = (st.clone(), dl.clone());
                let t = tokio::spawn(async move { serve(s, plan, st, dl).await });
                cs.lock().unwrap_or_else(|e| e.into_inner()).push(t);
            }
        });
        RawH2 {
            addr,
            streams,
            delivered,
            accept,
            conns,
        }
    }

    fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }

    /// The body length of every delivered request, in order.
    fn delivered(&self) -> Vec<usize> {
        self.delivered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn serve(
    mut s: TcpStream,
    plan: Plan,
    streams: Arc<AtomicUsize>,
    delivered: Arc<Mutex<Vec<usize>>>,
) {
    let mut preface = [0u8; PREFACE.len()];
    if s.read_exact(&mut preface).await.is_err() || preface != PREFACE {
        return;
    }
    if s.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
        return;
    }
    // the body length of each open request stream
    let mut open: Vec<(u32, usize)> = Vec::new();
    while let Some(f) = read_frame(&mut s).await {
        let (kind, flags, id, payload) = (f.kind(), f.flags(), f.stream(), f.payload);
        let done = match kind {
            SETTINGS if flags & ACK == 0 => {
                if s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.is_err() {
                    return;
                }
                false
            }
            HEADERS => {
                open.push((id, 0));
                flags & END_STREAM != 0
            }
            DATA => {
                if let Some(o) = open.iter_mut().find(|(s, _)| *s == id) {
                    o.1 += payload.len();
                }
                flags & END_STREAM != 0
            }
            // WINDOW_UPDATE, PING, SETTINGS ACK: nothing to do
            _ => false,
        };
        if !done {
            continue;
        }
        let Some(at) = open.iter().position(|(s, _)| *s == id) else {
            continue;
        };
        let (id, len) = open.remove(at);
        streams.fetch_add(1, Ordering::SeqCst);
        let goaway = |last: u32, code: u32| {
            let mut p = last.to_be_bytes().to_vec();
            p.extend_from_slice(&code.to_be_bytes());
            frame(GOAWAY, 0, 0, &p)
        };
        match plan {
            Plan::Answer => {
                delivered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(len);
                let mut out = frame(HEADERS, END_HEADERS, id, &[0x88]);
                out.extend(frame(DATA, END_STREAM, id, b"h2"));
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
            Plan::Refuse => return close(s, &goaway(0, NO_ERROR)).await,
            Plan::CloseAfter(code) => {
                delivered
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(len);
                return close(s, &goaway(id, code)).await;
            }
        }
    }
}

/// Sends `last` and closes gracefully: a FIN, then reading until the client closes too
/// (closing with unread bytes would send a reset, which could overtake the GOAWAY).
async fn close(mut s: TcpStream, last: &[u8]) {
    if s.write_all(last).await.is_err() || s.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
}

#[tokio::test]
async fn a_post_above_a_goaways_last_stream_id_is_retried_once() {
    let dir = tempfile::tempdir().unwrap();
    let up = RawH2::start(&[Plan::Refuse]).await;
    // no `retries` table: the defaults (two tries, on `connect` and `refused`)
    let cfg = config(
        dir.path(),
        "",
        &pool(&[up.addr.to_string()], "protocol = \"h2c\""),
    );
    let gw = Gateway::start(&cfg).await;
    // the first connection reads the whole POST (its body went out), then says it processed
    // no stream: the retry, on a new connection, must carry the body again
    let r = gw
        .send(Req::post("/p", "payload").header("X-Request-Id", "goaway-refused"))
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.text(), "h2");
    assert_eq!(up.streams(), 2, "read on both connections");
    assert_eq!(
        up.delivered(),
        vec![7],
        "delivered once, with its whole body"
    );
    let line = log_line(dir.path(), "goaway-refused").await;
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["endpoint"], up.addr.to_string(), "{line}");
    let m = gw.metrics().await;
    assert_eq!(retries(&m, "refused"), 1.0, "{m}");
    assert_eq!(retries(&m, "connect"), 0.0);
}

#[tokio::test]
async fn a_refused_post_whose_body_passed_body_limit_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let up = RawH2::start(&[Plan::Refuse]).await;
    // the refused try sent 2 KiB; only 1 KiB is kept, so there is no whole body to resend
    let cfg = config(
        dir.path(),
        r#"retries = { body_limit = "1KiB" }"#,
        &pool(&[up.addr.to_string()], "protocol = \"h2c\""),
    );
    let gw = Gateway::start(&cfg).await;
    let r = gw
        .send(Req::post("/p", vec![b'x'; 2048]).header("X-Request-Id", "goaway-big"))
        .await;
    assert_eq!(r.status, 502, "{}", r.describe());
    assert_eq!(up.streams(), 1, "one try");
    assert_eq!(
        up.delivered(),
        Vec::<usize>::new(),
        "and it was not processed"
    );
    assert_eq!(log_line(dir.path(), "goaway-big").await["attempts"], 1);
    assert_eq!(retries(&gw.metrics().await, "refused"), 0.0);
}

/// A POST on a stream the GOAWAY (with `code`) covers, the connection then closed unanswered.
async fn post_covered_by_a_goaway(code: u32) {
    let dir = tempfile::tempdir().unwrap();
    let up = RawH2::start(&[Plan::CloseAfter(code)]).await;
    // the most permissive table: still no second delivery of a POST
    let cfg = config(
        dir.path(),
        r#"retries = { attempts = 3, backoff = "1ms", on = ["connect", "refused", "502", "503", "504", "timeout"] }"#,
        &pool(&[up.addr.to_string()], "protocol = \"h2c\""),
    );
    let gw = Gateway::start(&cfg).await;
    let id = format!("goaway-covered-{code}");
    let r = gw
        .send(Req::post("/p", "payload").header("X-Request-Id", &id))
        .await;
    assert_eq!(r.status, 502, "code {code}: {}", r.describe());
    assert_eq!(up.streams(), 1, "code {code}");
    assert_eq!(
        up.delivered(),
        vec![7],
        "code {code}: delivered exactly once"
    );
    let line = log_line(dir.path(), &id).await;
    assert_eq!(line["attempts"], 1, "code {code}: {line}");
    let m = gw.metrics().await;
    for cause in ["connect", "refused", "timeout", "502"] {
        assert_eq!(retries(&m, cause), 0.0, "code {code}: {cause}");
    }
}

#[tokio::test]
async fn a_post_a_graceful_goaway_covers_is_not_sent_again() {
    post_covered_by_a_goaway(NO_ERROR).await;
}

#[tokio::test]
async fn a_post_an_error_goaway_covers_is_not_sent_again() {
    post_covered_by_a_goaway(INTERNAL_ERROR).await;
}
