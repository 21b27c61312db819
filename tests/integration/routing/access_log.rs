//! The access log: one JSON line per request with its fields, and no token anywhere in the
//! gateway's output.

use serde_json::{json, Value};

use crate::common::wait::DEADLINE;
use crate::common::*;

/// The access log's lines as JSON (none when the file does not exist yet).
pub(super) fn read_log_lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The byte-count field of an access-log line whose name mentions `dir` ("in" or "out").
fn bytes_field<'a>(line: &'a Value, dir: &str) -> Option<&'a Value> {
    line.as_object()?
        .iter()
        .find(|(k, _)| k.contains("bytes") && k.contains(dir))
        .map(|(_, v)| v)
}

#[tokio::test]
async fn access_log_json_lines_and_no_token_anywhere() {
    let fx = Fixture::with(Opts {
        log_level: "debug".into(),
        ..Opts::default()
    })
    .await;
    let good = fx.token();
    let via_auth = fx.token();
    let expired = fx.token_with(|c| c["exp"] = json!(now() - 3600));
    let body = r#"{"prompt_version":1,"current_file":{}}"#;

    let ok = fx
        .send(
            Req::post("/ai/v2/completions", body)
                .token(&good)
                .header("X-Request-Id", "log-ok-1"),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.describe());
    let ok2 = fx
        .send(
            Req::get("/ai/v1/x")
                .header("Authorization", &format!("Bearer {via_auth}"))
                .header("X-Request-Id", "log-ok-2"),
        )
        .await;
    assert_eq!(ok2.status, 200, "{}", ok2.describe());
    let bad = fx
        .send(Fixture::ai_req(&expired).header("X-Request-Id", "log-401"))
        .await;
    assert_error(&bad, 401, "expired");

    let lines = wait_until("3 access log lines", DEADLINE, || async {
        let lines = read_log_lines(&fx.access_log);
        if lines.len() >= 3 {
            Ok(lines)
        } else {
            Err(format!(
                "{} lines in {}",
                lines.len(),
                fx.access_log.display()
            ))
        }
    })
    .await;
    let find = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access log line for request {id}: {lines:#?}"))
            .clone()
    };
    let l = find("log-ok-1");
    for field in [
        "request_id",
        "method",
        "path",
        "route",
        "status",
        "duration_ms",
        "upstream",
        "upstream_status",
        "sub",
        "iss",
        "realm",
        "reason",
    ] {
        assert!(
            l.get(field).is_some(),
            "access log line lacks {field:?}: {l}"
        );
    }
    assert!(
        ["time", "timestamp", "ts"]
            .iter()
            .any(|k| l.get(*k).is_some()),
        "access log line has no time: {l}"
    );
    assert_eq!(l["method"], "POST", "{l}");
    assert_eq!(l["path"], "/ai/v2/completions", "{l}");
    assert_eq!(l["route"], "ai", "{l}");
    assert_eq!(l["status"], 200, "{l}");
    assert!(l["duration_ms"].is_number(), "{l}");
    assert_eq!(l["upstream"], "echo", "{l}");
    assert_eq!(l["upstream_status"], 200, "{l}");
    assert_eq!(l["sub"], SUB, "{l}");
    assert_eq!(l["iss"], fx.iss.as_str(), "{l}");
    assert_eq!(l["realm"], REALM, "{l}");
    assert!(l["reason"].is_null(), "reason on a success: {l}");
    let bytes_in = bytes_field(&l, "in").unwrap_or_else(|| panic!("no bytes-in field: {l}"));
    let bytes_out = bytes_field(&l, "out").unwrap_or_else(|| panic!("no bytes-out field: {l}"));
    assert!(
        bytes_in.as_u64().is_some_and(|n| n >= body.len() as u64),
        "bytes in {bytes_in} < body {}: {l}",
        body.len()
    );
    assert!(
        bytes_out
            .as_u64()
            .is_some_and(|n| n >= ok.body.len() as u64),
        "bytes out {bytes_out}: {l}"
    );

    let l = find("log-401");
    assert_eq!(l["status"], 401, "{l}");
    assert_eq!(l["reason"], "expired", "{l}");
    assert_eq!(l["route"], "ai", "{l}");
    assert!(
        l["upstream_status"].is_null(),
        "no upstream was called: {l}"
    );

    let l = find("log-ok-2");
    assert_eq!(l["method"], "GET", "{l}");
    assert_eq!(l["status"], 200, "{l}");

    let log_text = std::fs::read_to_string(&fx.access_log).expect("access log");
    let stderr = fx.gw.stderr();
    let stdout = fx.gw.stdout();
    for (what, t) in [
        ("X-Gitlab-Token", &good),
        ("Authorization", &via_auth),
        ("expired", &expired),
    ] {
        let sig = segments(t).2;
        for (place, text) in [
            ("access log", &log_text),
            ("stderr", &stderr),
            ("stdout", &stdout),
        ] {
            assert!(
                !text.contains(t.as_str()),
                "{what} token found in the {place}"
            );
            assert!(
                !text.contains(&sig),
                "{what} token signature found in the {place}"
            );
        }
    }
    assert!(
        !log_text.contains("Bearer "),
        "Authorization value in the access log"
    );
}
