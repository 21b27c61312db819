//! The access log's delivery: every worker writes its own batches, so a burst over many
//! connections must still give each request exactly one whole line, and a destination that
//! stops taking lines (a pipe nobody reads) must cost dropped, counted lines — never a
//! request.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::common::wait::DEADLINE;
use crate::common::*;

#[tokio::test]
async fn a_concurrent_burst_logs_every_request_once_in_whole_lines() {
    let fx = Fixture::start().await;
    const CONNS: usize = 16;
    const PER_CONN: usize = 40;
    let addr = fx.gw.addr;
    let tasks: Vec<_> = (0..CONNS)
        .map(|c| {
            tokio::spawn(async move {
                let mut conn = H1Conn::connect(addr).await;
                for i in 0..PER_CONN {
                    let r = conn
                        .send(
                            Req::get("/public/burst")
                                .header("X-Request-Id", &format!("burst-{c}-{i}")),
                        )
                        .await;
                    assert_eq!(r.status, 200, "{}", r.describe());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let log = fx.access_log.clone();
    let counts = wait_until("a line for each of the burst's requests", DEADLINE, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for line in text.lines() {
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| format!("a line that is not whole JSON ({e}): {line}"))?;
                if let Some(id) = v["request_id"]
                    .as_str()
                    .filter(|id| id.starts_with("burst-"))
                {
                    *counts.entry(id.to_string()).or_default() += 1;
                }
            }
            if counts.len() == CONNS * PER_CONN {
                Ok(counts)
            } else {
                Err(format!(
                    "{} of {} requests logged",
                    counts.len(),
                    CONNS * PER_CONN
                ))
            }
        }
    })
    .await;
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "logged more than once: {twice:?}");
}

#[tokio::test]
async fn a_stalled_stdout_pipe_costs_counted_lines_never_a_request() {
    // the standard fixture's config, with the access log on stdout — a pipe this test holds
    // but does not read until the end
    let fx = Fixture::start().await;
    let text = std::fs::read_to_string(&fx.config_path).expect("fixture config");
    let access_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("access = "))
        .expect("an access line in the fixture config");
    let config = fx.dir.path().join("stdout-log.toml");
    std::fs::write(&config, text.replace(access_line, "access = \"stdout\"")).expect("config");

    let mut child = crate::common::gateway::command()
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the gateway");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let _kill = KillOnDrop(child);
    let (addr, admin) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines
                .next()
                .expect("stderr ended before the ready line")
                .expect("stderr");
            if let Some(rest) = line.split("cc-gateway ready ").nth(1) {
                let field = |name: &str| {
                    rest.split_whitespace()
                        .find_map(|f| f.strip_prefix(name))
                        .map(|v| {
                            v.split(',')
                                .next()
                                .unwrap_or(v)
                                .parse::<std::net::SocketAddr>()
                                .expect("address")
                        })
                        .expect("field in the ready line")
                };
                // keep draining stderr so that its pipe never blocks the gateway
                std::thread::spawn(move || for _ in lines.by_ref() {});
                return (field("listen="), field("admin="));
            }
        }
    })
    .await
    .expect("ready line");

    // a pipe holds 64 KiB and each worker keeps at most 256 KiB: 3000 lines of ~400 bytes
    // overflow both workers' buffers whatever the split between them
    const REQUESTS: usize = 3000;
    let tasks: Vec<_> = (0..8)
        .map(|c| {
            tokio::spawn(async move {
                let mut conn = H1Conn::connect(addr).await;
                for i in 0..REQUESTS / 8 {
                    let r = conn
                        .send(
                            Req::get("/public/stalled")
                                .header("X-Request-Id", &format!("stalled-{c}-{i}")),
                        )
                        .await;
                    assert_eq!(r.status, 200, "request {c}-{i}: {}", r.describe());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await
            .expect("every request answered while the log's pipe is full");
    }
    let dropped_metric = move || async move {
        let m = Req::get("/metrics").send(admin).await.text();
        metric(&m, "cc_gateway_access_log_dropped_total", &[])
    };
    let dropped = wait_until("dropped lines counted", DEADLINE, || async {
        let n = dropped_metric().await;
        if n > 0.0 {
            Ok(n)
        } else {
            Err(format!("dropped = {n}"))
        }
    })
    .await;
    assert!(
        dropped < REQUESTS as f64,
        "dropped {dropped} of {REQUESTS}: the pipe took some"
    );

    // the reader comes back: what the workers kept is delivered, new lines flow again, and
    // every request is a line read or a line counted as dropped — exactly
    let read = Arc::new(AtomicUsize::new(0));
    let after = Arc::new(AtomicUsize::new(0));
    let torn = Arc::new(Mutex::new(None::<String>));
    {
        let (read, after, torn) = (read.clone(), after.clone(), torn.clone());
        std::thread::spawn(move || {
            for line in BufRead::lines(BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v)
                        if v["request_id"]
                            .as_str()
                            .is_some_and(|id| id.starts_with("after-")) =>
                    {
                        after.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {
                        read.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => *torn.lock().expect("lock") = Some(format!("{e}: {line}")),
                }
            }
        });
    }
    let mut sent_after = 0usize;
    wait_until(
        "a line of a request made after the reader came back",
        DEADLINE,
        || {
            sent_after += 1;
            let id = format!("after-{sent_after}");
            let after = after.clone();
            async move {
                let r = Req::get("/public/after")
                    .header("X-Request-Id", &id)
                    .send(addr)
                    .await;
                assert_eq!(r.status, 200, "{}", r.describe());
                match after.load(Ordering::SeqCst) {
                    0 => Err("none yet".to_string()),
                    n => Ok(n),
                }
            }
        },
    )
    .await;
    wait_until(
        "every request read or counted as dropped",
        DEADLINE,
        || async {
            let dropped = dropped_metric().await as usize;
            let (read, after) = (read.load(Ordering::SeqCst), after.load(Ordering::SeqCst));
            if read + after + dropped == REQUESTS + sent_after {
                Ok(())
            } else {
                Err(format!(
                "{read} read + {after} after + {dropped} dropped != {REQUESTS} + {sent_after} sent"
            ))
            }
        },
    )
    .await;
    assert_eq!(*torn.lock().expect("lock"), None, "a torn line");
}

/// The gateway process, killed and reaped when the test ends (also when it fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
