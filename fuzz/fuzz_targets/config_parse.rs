//! Any config text is either accepted or refused with a message; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = cc_gateway::config::Config::parse(s, std::path::Path::new("fuzz.toml"));
    }
});
