//! Micro-benchmark of token verification without the cache (what every request pays when
//! `token_cache_size = 0`, and every first request of a token otherwise): `cargo bench --bench
//! verify`. Reports CPU µs per verification (this thread's CPU time, so a busy machine
//! stretches wall time but not the figure) for the whole `verify_uncached`, and for its parts
//! measured in the same run: decoding (base64 + JSON) and the RS256 signature alone. Not a
//! test: nothing here asserts on time.

use std::hint::black_box;
use std::path::Path;

use cc_gateway::auth::jwk::parse_jwks;
use cc_gateway::auth::{jwt, Verifier};
use cc_gateway::config::Config;
use cc_gateway::token::{mint, SigningKey};
use serde_json::json;

const ITER: u32 = 20_000;

fn thread_cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn per_op_us(mut f: impl FnMut(u32)) -> f64 {
    for i in 0..ITER / 10 {
        f(i); // warm-up
    }
    let t0 = thread_cpu_ns();
    for i in 0..ITER {
        f(i);
    }
    (thread_cpu_ns() - t0) as f64 / ITER as f64 / 1000.0
}

fn main() {
    let iss = "https://gitlab.example.test";
    let cfg = Config::parse(
        &format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
[auth]
token_cache_size = 0
[[issuers]]
name = "bench"
issuer = "{iss}"
jwks_file = "/dev/null"
[[routes]]
name = "ai"
path_prefix = "/ai/"
upstream = "ai"
audience = "gitlab-ai-gateway"
[[upstreams]]
name = "ai"
endpoints = ["127.0.0.1:1"]
"#
        ),
        Path::new("bench.toml"),
    )
    .unwrap_or_else(|e| panic!("bench config: {e}"));
    let key = SigningKey::generate("RS256").unwrap_or_else(|e| panic!("keygen: {e}"));
    let jwks = json!({ "keys": [key.public_jwk("bench")] }).to_string();
    let verifier = Verifier::new(&cfg);
    let set = parse_jwks(jwks.as_bytes(), &cfg.issuers[0].algorithms, None)
        .unwrap_or_else(|e| panic!("jwks: {e}"));
    verifier.install_keys(0, set);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // the shape of a Cloud Connector service token (the anchors harness's tokens)
    let tokens: Vec<String> = (0..100)
        .map(|i| {
            let claims = json!({
                "iss": iss, "aud": "gitlab-ai-gateway",
                "sub": format!("6b1b7c1e-3f0a-4c55-9c7e-0000000000{i:02}"),
                "iat": now, "nbf": now, "exp": now + 3600,
                "jti": format!("0f7d2a9c-8c8e-4f7a-bb1b-0000000000{i:02}"),
                "gitlab_realm": "saas", "scopes": ["code_suggestions"],
            });
            mint(&key, "RS256", Some("bench"), &claims).unwrap_or_else(|e| panic!("mint: {e}"))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let full = per_op_us(|i| {
        let t = &tokens[i as usize % tokens.len()];
        black_box(rt.block_on(verifier.verify_uncached(t)).is_ok());
    });
    let decode = per_op_us(|i| {
        let t = &tokens[i as usize % tokens.len()];
        black_box(jwt::decode(t).is_ok());
    });
    let parsed = jwt::decode(&tokens[0]).unwrap_or_else(|e| panic!("decode: {e}"));
    let public = key.public_jwk("bench");
    let set = parse_jwks(
        json!({ "keys": [public] }).to_string().as_bytes(),
        &cfg.issuers[0].algorithms,
        None,
    )
    .unwrap_or_else(|e| panic!("jwks: {e}"));
    let k = set
        .by_kid("bench")
        .next()
        .unwrap_or_else(|| panic!("no key"));
    let v = k
        .verifier(cfg.issuers[0].algorithms[0])
        .unwrap_or_else(|| panic!("no verifier"));
    let rsa = per_op_us(|_| {
        black_box(
            v.verify_sig(parsed.signing_input.as_bytes(), &parsed.signature)
                .is_ok(),
        );
    });
    println!("verify_uncached: {full:.2} µs CPU per token (RS256, 2048-bit)");
    println!("  of which decode (base64 + JSON): {decode:.2} µs");
    println!("  of which RS256 signature alone:  {rsa:.2} µs");
    println!(
        "  rest (issuer, key lookup, claims, the verified record): {:.2} µs",
        full - decode - rsa
    );
}
