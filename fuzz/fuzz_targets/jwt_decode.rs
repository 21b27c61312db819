//! The token parser and the header extraction never panic, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(j) = cc_gateway::auth::jwt::decode(s) {
            assert!(s.starts_with(j.signing_input));
        }
    }
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v);
        let from = [cc_gateway::config::TokenHeader::Authorization];
        let _ = cc_gateway::auth::token_from(&h, &from, 8192);
    }
});
