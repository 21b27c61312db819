//! The access log's own JSON writer gives the bytes serde_json gives, whatever the strings
//! (any UTF-8: quotes, backslashes, control characters, non-ASCII) and numbers.
#![no_main]
use cc_gateway::accesslog::{AiFields, Record, Stamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}');
    let mut next = || parts.next();
    let n = data.len() as u64;
    let f = f64::from_bits(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let ai = data.first().is_some_and(|b| b & 1 == 1).then(|| AiFields {
        model: next(),
        input_tokens: Some(n),
        output_tokens: None,
        cache_read_tokens: Some(u64::MAX - n),
        cache_write_tokens: None,
        reasoning_tokens: Some(0),
        usage_source: "reported",
        cost_usd: Some(f),
        stream: n % 2 == 0,
    });
    let r = Record {
        time: Stamp::at(std::time::UNIX_EPOCH + std::time::Duration::from_millis(n * 7919)),
        request_id: next().unwrap_or(""),
        client_ip: std::net::IpAddr::from([n as u8, 0, 0, 1]),
        method: next().unwrap_or("GET"),
        path: next().unwrap_or(""),
        protocol: "HTTP/1.1",
        route: next(),
        status: n as u16,
        duration_ms: f,
        ttfb_ms: Some(f / 3.0),
        upstream: next(),
        upstream_status: None,
        attempts: n as u32,
        endpoint: next(),
        sub: next(),
        iss: next(),
        realm: next(),
        bytes_in: n,
        bytes_out: n << 3,
        reason: next(),
        incomplete: n % 3 == 0,
        trace_id: next(),
        ai,
    };
    let mut ours = Vec::new();
    r.write_json(&mut ours);
    assert_eq!(ours, serde_json::to_vec(&r).unwrap());
});
