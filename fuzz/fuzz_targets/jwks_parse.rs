//! JWKS documents from the network never panic the parser.
#![no_main]
use cc_gateway::auth::alg::Alg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cc_gateway::auth::jwk::parse_jwks(data, &Alg::ALL, None);
});
