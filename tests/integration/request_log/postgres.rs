//! The request log on a real PostgreSQL server, started per test with `initdb` + `pg_ctl` in a
//! temp dir on a free loopback port (as `nobody` when the tests run as root: initdb refuses
//! root), stopped by `pg_ctl` when the test ends. `scripts/prereqs.sh` installs Debian's
//! `postgresql` when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::query::{
    feedback_is_recorded_and_validated, filters_and_stats_answer_known_data, seed_sql,
};
use super::*;
use crate::common::wait::{wait_until, DEADLINE};

pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_nobody: bool,
}

/// The newest `/usr/lib/postgresql/N/bin`, else the directory of `initdb` on PATH.
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    if let Some((_, b)) = dirs.pop() {
        return b;
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .expect("sh");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "PostgreSQL's initdb/pg_ctl are needed for the request log tests: run scripts/prereqs.sh (Debian: apt-get install postgresql)"
    );
    std::fs::canonicalize(&p)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("initdb's directory")
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions
    unsafe { libc::getuid() == 0 }
}

impl Pg {
    pub fn start() -> Pg {
        let dir = tempfile::tempdir().expect("tempdir");
        let as_nobody = is_root();
        if as_nobody {
            let out = Command::new("id")
                .args(["-u", "nobody"])
                .output()
                .expect("id");
            let uid: u32 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("nobody's uid");
            std::os::unix::fs::chown(dir.path(), Some(uid), None).expect("chown the temp dir");
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let pg = Pg {
            dir,
            bin: pg_bin(),
            port,
            as_nobody,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.ctl_start();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("running a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            describe_output(&out)
        );
    }

    pub fn ctl_start(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-o", &opts, "-w", "start"],
        );
    }

    pub fn ctl_stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `f` with a client (off the async runtime: the blocking client has its own).
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ::postgres::Client) -> T + Send + 'static,
    ) -> T {
        let url = self.url();
        tokio::task::spawn_blocking(move || {
            let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls)
                .expect("connect to the test PostgreSQL");
            f(&mut c)
        })
        .await
        .expect("postgres task")
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        self.with(move |c| {
            c.query_one(sql, &[])
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(-1)
        })
        .await
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("runuser");
            c.args(["-u", "nobody", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn pg_store(pg: &Pg, more: &str) -> String {
    format!(
        "store = \"{}\"\nflush_interval = \"20ms\"\nfields = {{ instance = \"header:X-Gitlab-Instance-Id\", realm_claim = \"claim:gitlab_realm\", odd = \"claim:odd\" }}\n{more}",
        pg.url()
    )
}

#[tokio::test]
async fn every_kind_of_request_filters_stats_and_feedback_on_postgres() {
    let pg = Pg::start();
    let fx = fixture(&pg_store(&pg, ""), 1).await;
    every_kind_of_request_is_a_row(&fx).await;
    pg.with(|c| {
        for s in seed_sql() {
            c.execute(&s, &[]).expect("seed");
        }
    })
    .await;
    filters_and_stats_answer_known_data(&fx).await;
    feedback_is_recorded_and_validated(&fx).await;
    // a claim with a NUL character (PostgreSQL stores none): written, with U+FFFD in its place
    let odd = fx
        .send(Fixture::ai_req(
            &fx.token_with(|c| c["odd"] = "a\u{0}b".into()),
        ))
        .await;
    let r = row(&fx.gw, &odd.header("x-request-id").expect("id")).await;
    assert_eq!(r["fields"]["odd"], "a\u{fffd}b", "{r}");
    // the schema is versioned: one migration applied, once
    assert_eq!(pg.count("SELECT COUNT(*) FROM schema_migrations").await, 1);
}

#[tokio::test]
async fn two_gateways_share_one_log_without_loss_or_duplicates_through_a_restart() {
    let pg = Pg::start();
    let a = fixture(&pg_store(&pg, "node = \"gw-a\""), 1000).await;
    let b = fixture(&pg_store(&pg, "node = \"gw-b\""), 1000).await;
    let send = |n: usize| {
        let (a, b) = (&a, &b);
        async move {
            for _ in 0..n {
                assert_eq!(a.send(Req::get("/public/x")).await.status, 200);
                assert_eq!(b.send(Req::get("/public/y")).await.status, 200);
            }
        }
    };
    send(30).await;
    wait_until("60 rows before the restart", DEADLINE, || async {
        match pg.count("SELECT COUNT(*) FROM requests").await {
            60 => Ok(()),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
    pg.ctl_stop();
    // requests go on while the log is down: their rows are spooled, not lost, not blocking
    send(40).await;
    for fx in [&a, &b] {
        wait_until("a failed write to be spooled", DEADLINE, || async {
            let m = fx.metrics().await;
            let e = metric(&m, "cc_gateway_request_log_store_errors_total", &[]);
            let s = metric(&m, "cc_gateway_request_log_spooled_rows", &[]);
            if e >= 1.0 && s >= 1.0 {
                Ok(())
            } else {
                Err(format!("errors {e} spooled {s}"))
            }
        })
        .await;
    }
    pg.ctl_start();
    send(30).await;
    wait_until(
        "200 rows after the restart",
        Duration::from_secs(30),
        || async {
            match pg.count("SELECT COUNT(*) FROM requests").await {
                200 => Ok(()),
                n => Err(format!("{n} rows")),
            }
        },
    )
    .await;
    assert_eq!(
        pg.count("SELECT COUNT(DISTINCT request_id) FROM requests")
            .await,
        200
    );
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM requests WHERE node = 'gw-a' AND route = 'public'")
            .await,
        100
    );
    assert_eq!(
        pg.count("SELECT COUNT(*) FROM requests WHERE node = 'gw-b' AND route = 'public'")
            .await,
        100
    );
    for fx in [&a, &b] {
        let m = fx.metrics().await;
        assert_eq!(
            metric(&m, "cc_gateway_request_log_dropped_total", &[]),
            0.0,
            "{m}"
        );
    }
}
