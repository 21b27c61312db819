//! Redis-only budget behaviour (`redis-server` spawned on an ephemeral loopback port, stopped by
//! PID): several gateway processes share one budget; an outage applies `on_store_error` and the
//! gateway recovers by itself when Redis is back; requests decided in shared batches; TLS; one
//! connection per worker at startup; the password in the URL used and never shown. The contract
//! every store keeps (exactness, keys, tiers, admin API) runs on Redis in the sibling modules.

use std::path::Path;

use http::Method;

use crate::common::budgets::{admin, shared_rate, used};
use crate::common::redis::RedisServer;
use crate::common::wait::DEADLINE;
use crate::common::*;

/// `shared_rate(burst)` on the Redis at `url`, answering `on_error` when Redis cannot.
fn budgets(url: &str, burst: u32, on_error: &str) -> String {
    shared_rate(burst).replacen(
        "[budgets]\n",
        &format!(
            "[budgets]\nstore = \"{url}\"\non_store_error = \"{on_error}\"\nstore_timeout = \"200ms\"\n"
        ),
        1,
    )
}

/// A gateway whose budgets are `rules` on the Redis at `url`, denying when Redis cannot answer.
async fn fixture_with_rules(url: &str, rules: &str) -> Fixture {
    Fixture::with(Opts {
        budgets: format!(
            "\n[budgets]\nstore = \"{url}\"\non_store_error = \"deny\"\nstore_timeout = \"500ms\"\n\n{rules}"
        ),
        ..Opts::default()
    })
    .await
}

/// A gateway with the `shared` rate rule (burst `burst`) on the Redis at `url`.
async fn fixture(url: &str, burst: u32, on_error: &str) -> Fixture {
    Fixture::with(Opts {
        budgets: budgets(url, burst, on_error),
        ..Opts::default()
    })
    .await
}

#[tokio::test]
async fn two_gateways_on_one_redis_enforce_one_budget() {
    let redis = RedisServer::start().await;
    let fx = fixture(&redis.url(), 50, "deny").await;
    let other = Gateway::start(&fx.config_path).await;
    let t = fx.token();
    let (mut a, mut b) = (
        H1Conn::connect(fx.gw.addr).await,
        H1Conn::connect(other.addr).await,
    );
    let mut admitted = 0;
    for i in 0..80 {
        let conn = if i % 2 == 0 { &mut a } else { &mut b };
        let r = conn.send(Fixture::ai_req(&t)).await;
        match r.status {
            200 => admitted += 1,
            429 => assert_eq!(r.reason(), "shared"),
            _ => panic!("unexpected {}", r.describe()),
        }
    }
    assert_eq!(admitted, 50, "two nodes, one budget");
}

#[tokio::test]
async fn redis_outage_allow_keeps_serving_and_enforcement_resumes() {
    let mut redis = RedisServer::start().await;
    let port = redis.port;
    let fx = fixture(&redis.url(), 3, "allow").await;
    let t = fx.token();
    let statuses: Vec<u16> = {
        let mut c = H1Conn::connect(fx.gw.addr).await;
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(c.send(Fixture::ai_req(&t)).await.status);
        }
        v
    };
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429, 429],
        "enforced before the outage"
    );

    redis.stop();
    let before = metric(
        &fx.metrics().await,
        "cc_gateway_budget_store_errors_total",
        &[("store", "redis")],
    );
    for _ in 0..5 {
        let r = fx.send(Fixture::ai_req(&t)).await;
        assert_eq!(
            r.status,
            200,
            "on_store_error = allow must keep serving: {}",
            r.describe()
        );
    }
    let after = metric(
        &fx.metrics().await,
        "cc_gateway_budget_store_errors_total",
        &[("store", "redis")],
    );
    assert!(
        after >= before + 5.0,
        "store errors not counted: {before} -> {after}"
    );

    // Redis back (empty): without restarting the gateway, the budget is enforced again
    let _redis = RedisServer::start_on(port).await;
    wait_until(
        "enforcement to resume after Redis restarted",
        DEADLINE,
        || {
            let (fx, t) = (&fx, &t);
            async move {
                let r = fx.send(Fixture::ai_req(t)).await;
                if r.status == 429 {
                    Ok(())
                } else {
                    Err(format!("status {}", r.status))
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn redis_outage_deny_answers_503() {
    let mut redis = RedisServer::start().await;
    let fx = fixture(&redis.url(), 10, "deny").await;
    let t = fx.token();
    fx.expect_ok(Fixture::ai_req(&t)).await;
    redis.stop();
    let r = fx.send(Fixture::ai_req(&t)).await;
    assert_error(&r, 503, "budget_store_unavailable");
    // the admin API says the store is down, not "unknown rule" or "nothing to reset"
    for method in [Method::GET, Method::DELETE] {
        let r = admin(&fx.gw, method.clone(), "/budgets/shared/anything", None).await;
        assert_eq!(
            r.status,
            503,
            "{method} during the outage: {}",
            r.describe()
        );
        assert_eq!(
            r.json()["reason"],
            "budget_store_unavailable",
            "{}",
            r.describe()
        );
    }
}

/// Fires one request per `users` entry at once, each on its own connection (so one worker
/// batches many into one script call); returns (user, status) pairs.
async fn fire(fx: &Fixture, t: &str, users: &[&str]) -> Vec<(String, u16)> {
    let mut conns = Vec::new();
    for _ in users {
        conns.push(H1Conn::connect(fx.gw.addr).await);
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(users)
        .map(|(mut c, u)| {
            let (t, u) = (t.to_string(), u.to_string());
            tokio::spawn(async move {
                let r = c.send(Fixture::ai_req(&t).header("X-User", &u)).await;
                (u, r.status)
            })
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("client task"));
    }
    out
}

/// Two rules per request, concurrent requests decided in shared batches: a request refused by
/// either rule consumes nothing from the other, and neither rule over-admits.
#[tokio::test]
async fn redis_rules_are_all_or_nothing_within_batches() {
    let redis = RedisServer::start().await;
    let fx = fixture_with_rules(
        &redis.url(),
        "[[budgets.rules]]\nname = \"instance\"\nkey = [\"claim:sub\"]\nquota = \"30/1h\"\n\n\
         [[budgets.rules]]\nname = \"user\"\nkey = [\"header:X-User\"]\nquota = \"20/1h\"\n",
    )
    .await;
    let t = fx.token();
    let users: Vec<&str> = (0..64)
        .map(|i| if i % 2 == 0 { "u1" } else { "u2" })
        .collect();
    let out = fire(&fx, &t, &users).await;
    let admitted = |u: &str| out.iter().filter(|(x, s)| x == u && *s == 200).count() as i64;
    assert!(out.iter().all(|(_, s)| *s == 200 || *s == 429), "{out:?}");
    assert_eq!(admitted("u1") + admitted("u2"), 30, "{out:?}");
    assert!(admitted("u1") <= 20 && admitted("u2") <= 20, "{out:?}");
    // what Redis holds is what was admitted: refusals consumed nothing anywhere
    assert_eq!(used(&fx.gw, "instance", SUB).await, 30);
    assert_eq!(used(&fx.gw, "user", "u1").await, admitted("u1"));
    assert_eq!(used(&fx.gw, "user", "u2").await, admitted("u2"));
}

/// A test CA and a server certificate for 127.0.0.1 signed by it, as PEM files in `dir`:
/// (ca.pem, server.pem, server-key.pem).
fn tls_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cc-gateway test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let files = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    );
    std::fs::write(&files.0, ca_cert.pem()).expect("write CA");
    std::fs::write(&files.1, cert.pem()).expect("write cert");
    std::fs::write(&files.2, key.serialize_pem()).expect("write key");
    files
}

/// `rediss://`: the gateway verifies Redis's certificate (here against a CA given by
/// SSL_CERT_FILE, as an operator would for a private CA) and enforces the budget over TLS; a
/// Redis whose certificate it cannot verify is a store error, never a silent plaintext fallback.
#[tokio::test]
async fn redis_over_tls_verifies_the_server_and_enforces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = tls_files(dir.path());
    let redis = RedisServer::start_tls(&cert, &key).await;
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let fx = fixture(&url, 5, "deny").await;
    let t = fx.token();

    // without the CA the server cannot be verified: deny applies
    let r = fx.send(Fixture::ai_req(&t)).await;
    assert_error(&r, 503, "budget_store_unavailable");

    let ca = ca.display().to_string();
    let trusting = Gateway::start_with_env(&fx.config_path, &[("SSL_CERT_FILE", &ca)]).await;
    let mut conn = H1Conn::connect(trusting.addr).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(conn.send(Fixture::ai_req(&t)).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
}

/// `connected_clients` of the Redis on `port`, not counting the connection asking.
async fn redis_clients(port: u16) -> Result<usize, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$7\r\nclients\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got..]).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("Redis closed the connection".into());
        }
        got += n;
        let text = String::from_utf8_lossy(&buf[..got]);
        if let Some(line) = text.lines().find(|l| l.starts_with("connected_clients:")) {
            if text.ends_with("\r\n") {
                let n: usize = line["connected_clients:".len()..]
                    .trim()
                    .parse()
                    .map_err(|e| format!("{line}: {e}"))?;
                return Ok(n - 1);
            }
        }
    }
}

/// Each worker connects to Redis when it starts, so the first requests do not pay for
/// connecting (and are not refused by a tight `store_timeout` while they would).
#[tokio::test]
async fn redis_connections_are_made_at_startup() {
    let redis = RedisServer::start().await;
    let port = redis.port;
    let _fx = fixture(&redis.url(), 5, "deny").await;
    // no request has been sent: one connection per worker thread (2 in the fixture)
    wait_until(
        "a Redis connection from each worker",
        DEADLINE,
        || async move {
            match redis_clients(port).await? {
                2 => Ok(()),
                n => Err(format!("{n} clients")),
            }
        },
    )
    .await;
}

/// A Redis with a password: the gateway authenticates with the URL's password and never shows
/// it (admin API, logs, `check`).
#[tokio::test]
async fn redis_password_is_used_and_never_shown() {
    const PASSWORD: &str = "s3cret-pass-4711";
    let port = dead_addr().port();
    let redis = RedisServer::start_with(
        port,
        &["--port", &port.to_string(), "--requirepass", PASSWORD],
    )
    .await;
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let fx = fixture(&url, 3, "deny").await;
    let t = fx.token();
    let mut conn = H1Conn::connect(fx.gw.addr).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(conn.send(Fixture::ai_req(&t)).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let described = Req::get("/budgets").send(fx.gw.admin).await;
    assert_eq!(described.status, 200);
    assert!(!described.text().contains(PASSWORD), "{}", described.text());
    assert!(described.text().contains("***"), "{}", described.text());
    let check = run_check(&fx.config_path, &[]);
    let out = describe_output(&check);
    assert!(check.status.success(), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
    assert!(!fx.gw.stderr().contains(PASSWORD));
}
