//! Log shipping's integration point: a file access log moved away by logrotate while requests
//! keep coming loses no line and breaks none — every request is one whole line, in the file
//! that was current when it was written (the moved one until the reopen, the new one after).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::common::metrics::has_series;
use crate::common::wait::DEADLINE;
use crate::common::*;

/// The `rot-` request ids in `files`, with how often each appears; an error on a line that is
/// not whole JSON.
fn logged(files: &[PathBuf]) -> Result<HashMap<String, usize>, String> {
    let mut counts = HashMap::new();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| format!("a broken line in {} ({e}): {line}", f.display()))?;
            if let Some(id) = v["request_id"].as_str().filter(|id| id.starts_with("rot-")) {
                *counts.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    Ok(counts)
}

#[tokio::test]
async fn a_file_access_log_survives_rotation_under_load_without_losing_a_line() {
    const CONNS: usize = 8;
    const ROTATIONS: usize = 6;
    let fx = Fixture::start().await;
    let log = fx.access_log.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = fx.gw.addr;
    let clients: Vec<_> = (0..CONNS)
        .map(|c| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut conn = H1Conn::connect(addr).await;
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let r = conn
                        .send(
                            Req::get("/public/rotate")
                                .header("X-Request-Id", &format!("rot-{c}-{sent}")),
                        )
                        .await;
                    assert_eq!(r.status, 200, "{}", r.describe());
                    sent += 1;
                }
                sent
            })
        })
        .collect();

    let mut files = Vec::new();
    for n in 1..=ROTATIONS {
        // the current file has taken lines of the running load: rotate it now, mid-stream
        let current = log.clone();
        wait_until("load lines in the current file", DEADLINE, || {
            let got = logged(std::slice::from_ref(&current)).map(|c| c.len());
            async move {
                match got {
                    Ok(n) if n >= 50 => Ok(()),
                    Ok(n) => Err(format!("{n} lines")),
                    Err(e) => Err(e),
                }
            }
        })
        .await;
        let moved = log.with_extension(format!("log.{n}"));
        std::fs::rename(&log, &moved).expect("rotate");
        files.push(moved);
        // as logrotate's postrotate would: SIGHUP, or the admin API's reload
        if n % 2 == 0 {
            let st = std::process::Command::new("kill")
                .args(["-HUP", &fx.gw.pid().to_string()])
                .status()
                .expect("kill");
            assert!(st.success());
        } else {
            let r = fx.gw.admin_post("/reload").await;
            assert_eq!(r.status, 200, "{}", r.describe());
        }
    }
    // the last reopen created a fresh file, which takes lines too
    let current = log.clone();
    wait_until("load lines in the newest file", DEADLINE, || {
        let got = logged(std::slice::from_ref(&current)).map(|c| c.len());
        async move {
            match got {
                Ok(n) if n > 0 => Ok(()),
                Ok(_) => Err("none yet".to_string()),
                Err(e) => Err(e),
            }
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for c in clients {
        sent += c.await.expect("client task");
    }
    files.push(log);

    let counts = wait_until("a line for every request answered", DEADLINE, || {
        let got = logged(&files);
        async move {
            let counts = got?;
            if counts.len() == sent {
                Ok(counts)
            } else {
                Err(format!("{} of {sent} requests logged", counts.len()))
            }
        }
    })
    .await;
    let twice: Vec<_> = counts.iter().filter(|(_, &n)| n != 1).collect();
    assert!(twice.is_empty(), "logged more than once: {twice:?}");
    for f in &files {
        assert!(
            logged(std::slice::from_ref(f)).is_ok_and(|c| !c.is_empty()),
            "{} took no line of the load",
            f.display()
        );
    }
    let m = fx.gw.metrics().await;
    assert!(has_series(&m, "cc_gateway_access_log_dropped_total", &[]));
    assert_eq!(metric(&m, "cc_gateway_access_log_dropped_total", &[]), 0.0);
}
