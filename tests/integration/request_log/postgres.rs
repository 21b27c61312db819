//! The request log on a real PostgreSQL server (`common::postgres`, one per test), with the
//! request-log tests' own client helpers on top: `with` runs a closure on a blocking client,
//! `count` reads one number.

use std::ops::{Deref, DerefMut};

use super::query::{
    feedback_is_recorded_and_validated, filters_and_stats_answer_known_data, seed_sql,
};
use super::*;
use crate::common::postgres::Postgres;
use crate::common::wait::{wait_until, DEADLINE};

pub struct Pg(Postgres);

impl Deref for Pg {
    type Target = Postgres;
    fn deref(&self) -> &Postgres {
        &self.0
    }
}

impl DerefMut for Pg {
    fn deref_mut(&mut self) -> &mut Postgres {
        &mut self.0
    }
}

impl Pg {
    pub fn start() -> Pg {
        Pg(Postgres::start())
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
    let mut pg = Pg::start();
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
    pg.stop();
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
    pg.start_again();
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
