//! Operator-facing behaviour: token forwarding policy, Host for HTTP/2 clients, signals.

use crate::common::servers::echoed_header;
use crate::common::wait::DEADLINE;
use crate::common::*;

#[tokio::test]
async fn forward_token_false_keeps_the_token_from_the_upstream() {
    let fx = Fixture::with(Opts {
        auth_extra: "forward_token = false".into(),
        ..Opts::default()
    })
    .await;
    let t = fx.token();
    let v = fx.expect_ok(Fixture::ai_req(&t)).await;
    assert!(
        echoed_header(&v, "x-gitlab-token").is_empty(),
        "token forwarded: {v}"
    );
    // the Bearer form is dropped too, and the identity still arrives
    let v = fx
        .expect_ok(Req::get("/ai/v2/completions").header("Authorization", &format!("Bearer {t}")))
        .await;
    assert!(
        echoed_header(&v, "authorization").is_empty(),
        "token forwarded: {v}"
    );
    assert_eq!(echoed_header(&v, "x-cc-subject"), vec![SUB]);
}

#[tokio::test]
async fn forward_token_default_forwards_it_unchanged() {
    let fx = Fixture::start().await;
    let t = fx.token();
    let v = fx.expect_ok(Fixture::ai_req(&t)).await;
    assert_eq!(echoed_header(&v, "x-gitlab-token"), vec![t.as_str()]);
}

#[tokio::test]
async fn http2_clients_authority_reaches_the_upstream_as_host() {
    let fx = Fixture::start().await;
    let r = Req::get("/public/x").send_h2(fx.gw.addr).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json();
    let host = echoed_header(&v, "host");
    assert_eq!(
        host,
        vec![fx.gw.addr.to_string()],
        "upstream saw Host {host:?}: {v}"
    );
    assert_eq!(
        echoed_header(&v, "x-forwarded-host"),
        vec![fx.gw.addr.to_string()]
    );
}

const NEW_ROUTE: &str = "\n[[routes]]\nname = \"added\"\npath_prefix = \"/added/\"\nupstream = \"echo\"\nauth = \"public\"\n";

#[tokio::test]
async fn reload_applies_a_good_config_and_refuses_a_broken_one() {
    let fx = Fixture::start().await;
    let original = std::fs::read_to_string(&fx.config_path).expect("config");
    let t = fx.token();
    fx.expect_ok(Fixture::ai_req(&t)).await;
    let r = fx.send(Req::get("/added/x")).await;
    assert_error(&r, 404, "no_route");

    // a good config: the new route serves; keys and cached tokens carry over
    std::fs::write(&fx.config_path, format!("{original}{NEW_ROUTE}")).expect("write");
    let before = fx.metrics().await;
    let r = fx.gw.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.json()["result"], "ok");
    assert_eq!(
        fx.gw.admin_get("/readyz").await.status,
        200,
        "keys were lost at reload"
    );
    let v = fx.expect_ok(Req::get("/added/x")).await;
    assert_eq!(v["path"], "/added/x");
    fx.expect_ok(Fixture::ai_req(&t)).await;
    let after = fx.metrics().await;
    let hits = |m: &str| metric(m, "cc_gateway_token_cache_hits_total", &[]);
    assert_eq!(
        hits(&after),
        hits(&before) + 1.0,
        "the token cache was not kept"
    );

    // a broken config: refused with file and key path; the running config stays
    std::fs::write(&fx.config_path, format!("{original}{NEW_ROUTE}\n[[upstreams]]\nname = \"x\"\nendpoints = [\"127.0.0.1:1\"]\nbogus = 1\n")).expect("write");
    let r = fx.gw.admin_post("/reload").await;
    assert_eq!(r.status, 422, "{}", r.describe());
    let err = r.json()["error"].as_str().unwrap_or("").to_string();
    assert!(
        err.contains(&fx.config_path.display().to_string()),
        "no file in {err:?}"
    );
    assert!(err.contains("upstreams[1].bogus"), "no key path in {err:?}");
    fx.expect_ok(Req::get("/added/x")).await;
    fx.expect_ok(Fixture::ai_req(&t)).await;
    let m = fx.metrics().await;
    assert_eq!(
        metric(
            &m,
            "cc_gateway_config_reloads_total",
            &[("result", "error")]
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "cc_gateway_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}

#[tokio::test]
async fn sighup_reloads_and_does_not_stop_the_gateway() {
    let mut fx = Fixture::start().await;
    let original = std::fs::read_to_string(&fx.config_path).expect("config");
    std::fs::write(&fx.config_path, format!("{original}{NEW_ROUTE}")).expect("write");
    let st = std::process::Command::new("kill")
        .args(["-HUP", &fx.gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    wait_metric(
        &fx.gw,
        "cc_gateway_config_reloads_total",
        &[("result", "ok")],
        1.0,
    )
    .await;
    assert!(
        fx.gw.is_running(),
        "SIGHUP killed the gateway: {}",
        fx.gw.stderr()
    );
    fx.expect_ok(Req::get("/added/x")).await;
    let t = fx.token();
    fx.expect_ok(Fixture::ai_req(&t)).await;
}

#[tokio::test]
async fn a_request_abandoned_by_its_client_is_counted_as_499() {
    use tokio::io::AsyncWriteExt;
    let slow = crate::common::servers::Slow::start().await;
    let extra = format!(
        "\n[[routes]]\nname = \"slow\"\npath_prefix = \"/slow/\"\nupstream = \"slow\"\nauth = \"public\"\n\n[[upstreams]]\nname = \"slow\"\nendpoints = [\"{}\"]\nread_timeout = \"60s\"\n",
        slow.addr
    );
    let fx = Fixture::with(Opts {
        extra,
        ..Opts::default()
    })
    .await;
    let before = metric(
        &fx.metrics().await,
        "cc_gateway_requests_total",
        &[("route", "slow"), ("status", "499")],
    );
    let mut c = tokio::net::TcpStream::connect(fx.gw.addr)
        .await
        .expect("connect");
    c.write_all(b"GET /slow/x HTTP/1.1\r\nHost: gw\r\nX-Request-Id: abandoned-1\r\n\r\n")
        .await
        .expect("write");
    wait_until("the gateway to reach the slow upstream", DEADLINE, || {
        let n = slow.accepted();
        async move {
            if n >= 1 {
                Ok(())
            } else {
                Err(format!("{n} connections"))
            }
        }
    })
    .await;
    drop(c); // the client gives up long before the upstream's 60 s
    wait_metric(
        &fx.gw,
        "cc_gateway_requests_total",
        &[("route", "slow"), ("status", "499")],
        before + 1.0,
    )
    .await;
    let log = fx.access_log.clone();
    wait_until(
        "the access log line of the abandoned request",
        DEADLINE,
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                let line = text
                    .lines()
                    .find(|l| l.contains("abandoned-1"))
                    .ok_or("no line yet".to_string())?;
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
                if v["status"] == 499 && v["reason"] == "client_closed" {
                    // no byte of a response went out: no time to a first one
                    assert!(v.get("ttfb_ms").is_none(), "{line}");
                    Ok(())
                } else {
                    Err(line.to_string())
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn reload_reopens_the_access_log_for_logrotate() {
    let fx = Fixture::start().await;
    fx.expect_ok(Req::get("/public/before").header("X-Request-Id", "before-rotation"))
        .await;
    let log = fx.access_log.clone();
    wait_until("the first line", DEADLINE, || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        async move {
            if t.contains("before-rotation") {
                Ok(())
            } else {
                Err(t)
            }
        }
    })
    .await;
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    let r = fx.gw.admin_post("/reload").await;
    assert_eq!(r.status, 200, "{}", r.describe());
    fx.expect_ok(Req::get("/public/after").header("X-Request-Id", "after-rotation"))
        .await;
    wait_until("the new line in a fresh file", DEADLINE, || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        async move {
            if t.contains("after-rotation") {
                Ok(())
            } else {
                Err(format!("new file: {t:?}"))
            }
        }
    })
    .await;
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert!(
        old.contains("before-rotation") && !old.contains("after-rotation"),
        "{old}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_believed() {
    let fx = Fixture::with(Opts {
        server_extra: "trusted_proxies = [\"127.0.0.1/32\"]".into(),
        ..Opts::default()
    })
    .await;
    let v = fx
        .expect_ok(
            Req::get("/public/x")
                .header("X-Forwarded-For", "198.51.100.1, 203.0.113.7")
                .header("X-Forwarded-Proto", "https")
                .header("X-Request-Id", "via-proxy"),
        )
        .await;
    assert_eq!(
        echoed_header(&v, "x-forwarded-for"),
        vec!["198.51.100.1, 203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(echoed_header(&v, "x-forwarded-proto"), vec!["https"]);
    let log = fx.access_log.clone();
    wait_until("the access log line", DEADLINE, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move {
            let line = text
                .lines()
                .find(|l| l.contains("via-proxy"))
                .ok_or("no line yet".to_string())?;
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
            // the rightmost address not itself a trusted proxy; the left one is only a claim
            if v["client_ip"] == "203.0.113.7" {
                Ok(())
            } else {
                Err(line.to_string())
            }
        }
    })
    .await;
}

#[tokio::test]
async fn an_untrusted_peer_cannot_spoof_forwarded_headers() {
    let fx = Fixture::with(Opts {
        server_extra: "trusted_proxies = [\"10.0.0.0/8\"]".into(),
        ..Opts::default()
    })
    .await;
    let v = fx
        .expect_ok(
            Req::get("/public/x")
                .header("X-Forwarded-For", "203.0.113.7")
                .header("X-Forwarded-Proto", "https"),
        )
        .await;
    assert_eq!(echoed_header(&v, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(echoed_header(&v, "x-forwarded-proto"), vec!["http"]);
}

#[tokio::test]
async fn restart_needed_compares_with_what_is_bound_not_with_the_last_file() {
    let fx = Fixture::start().await;
    let original = std::fs::read_to_string(&fx.config_path).expect("config");
    let started = "listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n";
    assert!(
        original.contains(started),
        "fixture config changed: {original}"
    );
    let reload = |text: String| {
        let fx = &fx;
        async move {
            std::fs::write(&fx.config_path, text).expect("write");
            let r = fx.gw.admin_post("/reload").await;
            assert_eq!(r.status, 200, "{}", r.describe());
            r.json()["restart_needed"].clone()
        }
    };

    // a changed listener, thread count and connection limit are not applied: a restart is
    // needed
    let changed = original.replace(
        started,
        "listen = [\"127.0.0.1:0\", \"[::1]:0\"]\nadmin_listen = \"127.0.0.1:0\"\nthreads = 3\nmax_connections = 100\n",
    );
    let needed = serde_json::json!(["server.listen", "server.threads", "server.max_connections"]);
    assert_eq!(reload(changed.clone()).await, needed);
    // reloading the same changed file again: still not what is bound
    assert_eq!(reload(changed).await, needed);
    // reverted: the file matches what the process serves with again, nothing to restart for
    assert_eq!(reload(original).await, serde_json::json!([]));
    fx.expect_ok(Req::get("/public/x")).await;
}

#[tokio::test]
async fn a_reload_applies_log_level_and_says_log_format_needs_a_restart() {
    let fx = Fixture::with(Opts {
        log_level: "error".into(),
        ..Opts::default()
    })
    .await;
    let original = std::fs::read_to_string(&fx.config_path).expect("config");
    let level_line = "level = \"error\"";
    assert!(
        original.contains(level_line),
        "fixture config changed: {original}"
    );
    let reload = |text: String| {
        let fx = &fx;
        async move {
            std::fs::write(&fx.config_path, text).expect("write");
            let r = fx.gw.admin_post("/reload").await;
            assert_eq!(r.status, 200, "{}", r.describe());
            r.json()
        }
    };
    let reloaded_lines = |fx: &Fixture| fx.gw.stderr().matches("configuration reloaded").count();

    // at "error" the info line of a reload is not written
    reload(original.clone()).await;
    // raised to "info": this reload's own line is (the level applies before it is logged)
    let r = reload(original.replace(level_line, "level = \"info\"")).await;
    assert_eq!(r["restart_needed"], serde_json::json!([]));
    wait_until(
        "the info line of the reload at level info",
        DEADLINE,
        || {
            let n = reloaded_lines(&fx);
            async move {
                if n == 1 {
                    Ok(())
                } else {
                    Err(format!("{n} lines"))
                }
            }
        },
    )
    .await;
    // back to "error": silent again; a changed format only applies after a restart
    let r = reload(original.replace(level_line, "level = \"error\"\nformat = \"json\"")).await;
    assert_eq!(r["restart_needed"], serde_json::json!(["log.format"]));
    // raised once more: its line is the second — the reload at "error" wrote none
    reload(original.replace(level_line, "level = \"info\"")).await;
    wait_until("the second info line", DEADLINE, || {
        let text = fx.gw.stderr();
        async move {
            match text.matches("configuration reloaded").count() {
                2 => Ok(()),
                n => Err(format!("{n} lines: {text}")),
            }
        }
    })
    .await;
    fx.expect_ok(Req::get("/public/x")).await;
}
