//! The `traceparent` parser never panics, and what it accepts formats back to a value it
//! accepts again with the same meaning.
#![no_main]
use cc_gateway::telemetry::traceparent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(tp) = traceparent::parse(data) {
        let again = traceparent::format(&tp.trace_id, &tp.parent_id, tp.sampled);
        assert_eq!(traceparent::parse(again.as_bytes()), Some(tp));
        // version 00 is accepted only in its exact form
        if data.starts_with(b"00") {
            assert_eq!(data.len(), 55);
        }
    }
});
