//! The PROXY protocol framing never panics, never waits on bytes it already has, never takes a
//! byte past the header, and decides the same however the bytes arrive: the input is read
//! once whole and once cut into pieces (sizes from the first byte), and both reads must agree.
#![no_main]
use cc_gateway::engine::proxy_protocol::{read_from_memory, V1_MAX, V2_MAX_BODY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let whole = read_from_memory(bytes, &[]);
    // piece sizes 1..=8 cycling from the seed: CRLFs and v2 length fields split every way
    let cuts: Vec<usize> = (0..bytes.len()).map(|i| 1 + (seed as usize + i) % 8).collect();
    let pieces = read_from_memory(bytes, &cuts);
    assert_eq!(whole.0.is_ok(), pieces.0.is_ok(), "{bytes:?}");
    if let (Ok(a), Ok(b)) = (&whole.0, &pieces.0) {
        assert_eq!(a, b);
        assert_eq!(whole.1, pieces.1, "header length");
        let head = &bytes[..whole.1];
        if head.starts_with(b"PROXY ") {
            assert!(head.ends_with(b"\r\n") && head.len() <= V1_MAX);
        } else {
            assert!(head.starts_with(b"\r\n\r\n\0\r\nQUIT\n") && head.len() <= 16 + V2_MAX_BODY);
        }
    }
});
