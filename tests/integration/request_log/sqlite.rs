//! The request log on SQLite: every kind of request, a full queue, SIGTERM with rows not yet
//! written, retention by age and by size, and what `check` refuses or redacts.

use std::path::Path;

use super::*;
use crate::common::wait::{wait_until, DEADLINE};

fn db_rows(path: &Path) -> i64 {
    let c = rusqlite::Connection::open(path).expect("open the log");
    c.query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
        .expect("count")
}

/// The pages in use (what `max_size` bounds; the WAL holds them until a checkpoint).
fn live_bytes(path: &Path) -> i64 {
    let c = rusqlite::Connection::open(path).expect("open the log");
    let p = |name: &str| -> i64 {
        c.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .expect("pragma")
    };
    (p("page_count") - p("freelist_count")) * p("page_size")
}

/// Holds SQLite's write lock (readers go on): the gateway's writer cannot write meanwhile.
fn lock_writes(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).expect("open the log");
    c.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    c
}

/// The writer creates the file and table at startup (its first retention sweep).
async fn wait_table(path: &Path) {
    wait_until("the requests table", DEADLINE, || async {
        let ok = rusqlite::Connection::open(path)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM requests", [], |r| r.get::<_, i64>(0)))
            .is_ok();
        if ok {
            Ok(())
        } else {
            Err("no table yet".to_string())
        }
    })
    .await;
}

/// Waits until the log has written `n` rows in all.
async fn wait_rows_written(gw: &Gateway, n: f64) {
    wait_metric(gw, "cc_gateway_request_log_rows_written_total", &[], n).await;
}

/// Writes `text` as the fixture's config and reloads; the reload must be accepted.
async fn reload_with(fx: &Fixture, text: &str) {
    std::fs::write(&fx.config_path, text).expect("write");
    let r = fx.gw.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

fn sum(metrics: &str, name: &str) -> f64 {
    metric(metrics, name, &[])
}

#[tokio::test]
async fn every_kind_of_request_is_a_row_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = fixture(&sqlite_store(dir.path(), ""), 1).await;
    every_kind_of_request_is_a_row(&fx).await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_exactly_without_blocking_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("requests.db");
    let fx = fixture(
        &sqlite_store(dir.path(), "queue_size = 5\nbatch_size = 1\nspool_size = 0"),
        1000,
    )
    .await;
    wait_table(&db).await;
    let lock = lock_writes(&db);
    const N: usize = 40;
    for _ in 0..N {
        // each request completes while nothing can be written: none waits for the log
        let r = fx.send(Req::get("/public/x")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(db_rows(&db), 0, "written through the lock?");
    let m = fx.metrics().await;
    assert!(
        metric(
            &m,
            "cc_gateway_request_log_dropped_total",
            &[("cause", "queue_full")]
        ) >= 1.0,
        "a 5-row queue took {N} rows without a drop:\n{m}"
    );
    drop(lock);
    // every row is either written or counted as dropped, exactly once
    let (written, dropped) = wait_until("rows written + dropped == N", DEADLINE, || async {
        let m = fx.metrics().await;
        let w = sum(&m, "cc_gateway_request_log_rows_written_total");
        let d = sum(&m, "cc_gateway_request_log_dropped_total");
        if w + d >= N as f64 && metric(&m, "cc_gateway_request_log_queue_depth", &[]) == 0.0 {
            Ok((w, d))
        } else {
            Err(format!("written {w} dropped {d}"))
        }
    })
    .await;
    assert_eq!(
        written + dropped,
        N as f64,
        "written {written} dropped {dropped}"
    );
    assert_eq!(db_rows(&db) as f64, written);
}

#[tokio::test]
async fn sigterm_writes_every_queued_row_before_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("requests.db");
    let mut fx = fixture(&sqlite_store(dir.path(), "flush_timeout = \"20s\""), 1000).await;
    wait_table(&db).await;
    let lock = lock_writes(&db);
    const N: usize = 100;
    for _ in 0..N {
        assert_eq!(fx.send(Req::get("/public/x")).await.status, 200);
    }
    assert_eq!(db_rows(&db), 0);
    let st = std::process::Command::new("kill")
        .args(["-TERM", &fx.gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    drop(lock);
    wait_until("the gateway to exit", Duration::from_secs(30), || {
        let running = fx.gw.is_running();
        async move {
            if running {
                Err("running".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
    assert_eq!(db_rows(&db), N as i64, "{}", fx.gw.stderr());
}

#[tokio::test]
async fn retention_deletes_rows_older_than_retention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = fixture(&sqlite_store(dir.path(), "retention = \"1s\""), 1000).await;
    for _ in 0..5 {
        assert_eq!(fx.send(Req::get("/public/x")).await.status, 200);
    }
    wait_rows_written(&fx.gw, 5.0).await;
    wait_until("the rows to age out", DEADLINE, || async {
        let n = cli_json(&fx.config_path, &[]).await.len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} rows"))
        }
    })
    .await;
}

#[tokio::test]
async fn max_size_deletes_the_oldest_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("requests.db");
    let fx = fixture(
        &sqlite_store(dir.path(), "retention = \"off\"\nmax_size = \"64KiB\""),
        1000,
    )
    .await;
    let mut ids = Vec::new();
    const N: usize = 400;
    let pad = "p".repeat(200);
    for _ in 0..N {
        let r = fx.send(Req::get(&format!("/public/{pad}"))).await;
        assert_eq!(r.status, 200);
        ids.push(r.header("x-request-id").expect("id"));
    }
    wait_rows_written(&fx.gw, N as f64).await;
    let newest = row(&fx.gw, &ids[N - 1]).await;
    assert_eq!(newest["status"], 200);
    let before = live_bytes(&db);
    wait_until("the oldest rows to go", DEADLINE, || async {
        let n = db_rows(&db);
        if (n as usize) < N {
            Ok(())
        } else {
            Err(format!("{n} rows"))
        }
    })
    .await;
    // the rows kept fit in max_size at the average row size
    let kept = db_rows(&db);
    assert!(kept > 0, "every row went");
    assert!(
        (kept as f64) * (before as f64 / N as f64) <= 64.0 * 1024.0,
        "{kept} rows of ~{} bytes kept",
        before / N as i64
    );
    // the space they left is reused: more rows do not grow the file past what it was
    for _ in 0..N {
        assert_eq!(
            fx.send(Req::get(&format!("/public/{pad}"))).await.status,
            200
        );
    }
    wait_rows_written(&fx.gw, 2.0 * N as f64).await;
    wait_until("the log to stay bounded", DEADLINE, || async {
        let n = db_rows(&db) as usize;
        let size = live_bytes(&db);
        if n < N && size <= before {
            Ok(())
        } else {
            Err(format!("{n} rows, {size} bytes (was {before})"))
        }
    })
    .await;
    let first = fx.gw.admin_get(&format!("/logs/{}", ids[0])).await;
    assert_eq!(
        first.status,
        404,
        "the oldest row survived: {}",
        first.text()
    );
}

#[test]
fn check_refuses_token_headers_in_fields_and_redacts_a_postgres_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = crate::common::cli::good_config(dir.path());
    for h in ["Authorization", "X-Gitlab-Token", "proxy-authorization"] {
        let p = dir.path().join("bad.toml");
        std::fs::write(
            &p,
            format!("{base}\n[request_log]\nstore = \"sqlite://r.db\"\nfields = {{ t = \"header:{h}\" }}\n"),
        )
        .expect("write");
        let out = run_check(&p, &[]);
        assert!(!out.status.success(), "{h}: {}", describe_output(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("request_log.fields.t"),
            "{}",
            describe_output(&out)
        );
    }
    let p = dir.path().join("pg.toml");
    std::fs::write(
        &p,
        format!("{base}\n[request_log]\nstore = \"postgres://gw:hunter2@127.0.0.1:1/logs\"\n"),
    )
    .expect("write");
    let out = run_check(&p, &[]);
    let all = describe_output(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("postgres://gw:***@127.0.0.1:1/logs"), "{all}");
    let p = dir.path().join("env.toml");
    std::fs::write(
        &p,
        format!("{base}\n[request_log]\nstore = \"env:RL_URL\"\n"),
    )
    .expect("write");
    let out = run_check(&p, &[("RL_URL", "postgresql://u:s3cret@127.0.0.1:1/db")]);
    let all = describe_output(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        !all.contains("s3cret") && all.contains("postgresql://u:***@"),
        "{all}"
    );
    let out = run_check(&p, &[]);
    assert!(!out.status.success(), "{}", describe_output(&out));
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_log_and_moves_to_a_changed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_db, new_db) = (dir.path().join("requests.db"), dir.path().join("moved.db"));
    let fx = fixture(&sqlite_store(dir.path(), ""), 1000).await;
    let fx = &fx;
    let send = |n: usize| async move {
        for _ in 0..n {
            assert_eq!(fx.send(Req::get("/public/x")).await.status, 200);
        }
    };
    send(3).await;
    let text = std::fs::read_to_string(&fx.config_path).expect("config");
    // an unrelated change: the same writer goes on
    let unrelated = text.replace("threads = 2", "threads = 2\nshutdown_timeout = \"9s\"");
    reload_with(fx, &unrelated).await;
    send(2).await;
    wait_rows_written(&fx.gw, 5.0).await;
    assert_eq!(db_rows(&old_db), 5);
    // a new store: new rows go there, the old writer finished what it had
    let moved = text.replace(&old_db.display().to_string(), &new_db.display().to_string());
    assert_ne!(moved, text);
    reload_with(fx, &moved).await;
    send(4).await;
    wait_rows_written(&fx.gw, 9.0).await;
    assert_eq!(db_rows(&old_db), 5);
    assert_eq!(db_rows(&new_db), 4);
}
