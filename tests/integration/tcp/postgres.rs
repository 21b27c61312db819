//! A real PostgreSQL behind an L4 route whose target is an `[[upstreams]]` name: `psql` runs
//! DDL, SQL-level prepared statements and `COPY` both ways; `pgbench -M prepared` runs the
//! extended protocol's prepared statements over several connections.

use crate::common::metric;
use crate::common::postgres::Postgres;

use super::*;

#[tokio::test]
async fn psql_and_pgbench_reach_postgres_through_an_l4_route() {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .expect("postgres started");
    let routes = format!(
        "[[upstreams]]\nname = \"db\"\nendpoints = [{}]\n\n[[tcp_routes]]\nname = \"pg\"\nlisten = [\"127.0.0.1:0\"]\ntarget = \"db\"\n",
        q(&pg.addr().to_string())
    );
    let (gw, dir) = gateway("", &routes).await;
    let via = tcp_addr(&gw, "pg");
    let pg = std::sync::Arc::new(pg);

    let p = pg.clone();
    let out = tokio::task::spawn_blocking(move || {
        p.psql(
            via,
            &[],
            "CREATE TABLE t (id int PRIMARY KEY, name text);\n\
             COPY t FROM STDIN;\n1\tone\n2\ttwo\n3\tthree\n\\.\n\
             PREPARE by_id(int) AS SELECT name FROM t WHERE id = $1;\n\
             EXECUTE by_id(2);\n\
             EXECUTE by_id(3);\n\
             COPY (SELECT id, name FROM t ORDER BY id) TO STDOUT;\n\
             SELECT count(*) FROM t;\n",
        )
    })
    .await
    .expect("psql ran");
    assert_eq!(out, "two\nthree\n1\tone\n2\ttwo\n3\tthree\n3\n");

    // the extended protocol's prepared statements, 4 connections at once
    let p = pg.clone();
    let bench = tokio::task::spawn_blocking(move || {
        let pgbench = |args: &[&str]| {
            let o = std::process::Command::new(p.bin().join("pgbench"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &via.port().to_string(),
                    "-U",
                    p.user,
                ])
                .args(args)
                .arg("postgres")
                .env("PGSSLMODE", "disable")
                .output()
                .expect("running pgbench");
            assert!(
                o.status.success(),
                "pgbench {args:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        pgbench(&["-i", "-q", "-s", "1"]);
        pgbench(&["-M", "prepared", "-S", "-c", "4", "-j", "2", "-t", "200"])
    })
    .await
    .expect("pgbench ran");
    assert!(
        bench.contains("number of transactions actually processed: 800/800"),
        "{bench}"
    );
    assert!(
        bench.contains("number of failed transactions: 0"),
        "{bench}"
    );
    // every connection of psql and pgbench was carried and closed, and logged once
    wait_gauge(&gw, "cc_gateway_tcp_connections", &[("route", "pg")], 0.0).await;
    let m = gw.metrics().await;
    let carried = metric(
        &m,
        "cc_gateway_tcp_connections_total",
        &[("route", "pg"), ("result", "ok")],
    );
    assert!(
        carried >= 6.0,
        "{carried} connections: psql, pgbench -i, pgbench's 4 and more"
    );
    let lines = tcp_log_lines(&dir, carried as usize).await;
    assert_eq!(lines.len(), carried as usize);
    for l in &lines {
        assert_eq!(l["result"], "ok", "{l}");
        assert_eq!(l["target"], pg.addr().to_string(), "{l}");
        assert!(l["reason"].is_null(), "{l}");
    }
}
