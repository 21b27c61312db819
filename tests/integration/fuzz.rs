//! Property tests of the token parser through the running gateway: arbitrary input never gets
//! through, never crashes the process, and is always answered with a known 401 reason.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

use crate::common::*;

const REASONS: &[&str] = &[
    "missing_token",
    "malformed_token",
    "token_too_large",
    "unsupported_algorithm",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "unknown_issuer",
    "audience_mismatch",
];

/// A current-thread runtime for the async parts of a property.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A property runner for `cases` cases that persists no failures to disk.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Strategy: token-shaped strings (segments of base64url-ish text, or of real base64 of arbitrary
/// bytes and of JSON headers with assorted algs), plus plain junk.
fn token_strategy() -> impl Strategy<Value = String> {
    let seg = "[A-Za-z0-9_\\-]{0,60}";
    let junk = "[ -~]{0,120}".prop_map(|s| s.trim().to_string());
    let segs = prop::collection::vec(seg, 1..7).prop_map(|v| v.join("."));
    let bytes3 = (
        prop::collection::vec(any::<u8>(), 0..80),
        prop::collection::vec(any::<u8>(), 0..200),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(a, b, c)| format!("{}.{}.{}", b64(&a), b64(&b), b64(&c)));
    let alg = prop::sample::select(vec![
        "RS256", "none", "HS256", "ES256", "EdDSA", "PS512", "", "RS1", "rs256",
    ]);
    let kid = prop::option::of("[a-z0-9\\-]{0,20}");
    let with_header = (
        alg,
        kid,
        prop::collection::vec(any::<u8>(), 0..200),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(alg, kid, p, s)| {
            let h = match kid {
                Some(k) => json!({"alg": alg, "kid": k}),
                None => json!({"alg": alg}),
            };
            format!("{}.{}.{}", b64_json(&h), b64(&p), b64(&s))
        });
    prop_oneof![junk, segs, bytes3, with_header]
}

#[test]
fn arbitrary_tokens_are_refused_with_a_known_reason() {
    let rt = runtime();
    let fx = rt.block_on(Fixture::start());
    runner(128)
        .run(&token_strategy(), |token| {
            let r = rt.block_on(fx.send(Fixture::ai_req(&token)));
            prop_assert_eq!(r.status, 401, "token {:?}: {}", token, r.describe());
            let reason = r.reason();
            prop_assert!(
                REASONS.contains(&reason.as_str()),
                "token {:?}: reason {:?}",
                token,
                reason
            );
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fx.echo.count(), 0, "a fuzzed token reached the upstream");
    rt.block_on(fx.expect_ok(Fixture::ai_req(&fx.token())));
}

#[test]
fn any_single_change_to_the_signed_part_is_refused() {
    let rt = runtime();
    let fx = rt.block_on(Fixture::start());
    let good = fx.token();
    let signed_len = good.rfind('.').expect("two dots");
    let strategy = (
        0..signed_len,
        prop::sample::select(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".to_vec(),
        ),
    );
    runner(96)
        .run(&strategy, |(pos, ch)| {
            let mut bytes = good.clone().into_bytes();
            if bytes[pos] == b'.' || bytes[pos] == ch {
                return Ok(());
            }
            bytes[pos] = ch;
            let t = String::from_utf8(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let r = rt.block_on(fx.send(Fixture::ai_req(&t)));
            prop_assert_eq!(r.status, 401, "mutated token {:?}: {}", t, r.describe());
            let reason = r.reason();
            prop_assert!(REASONS.contains(&reason.as_str()), "reason {:?}", reason);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fx.echo.count(), 0, "a mutated token reached the upstream");
    rt.block_on(fx.expect_ok(Fixture::ai_req(&good)));
}
