//! Black-box integration tests for cc-gateway.
//!
//! Every test spawns the real `cc-gateway` binary with its own config in its own temp dir and talks to
//! it over real loopback sockets; upstreams and JWKS servers are real servers on ephemeral ports
//! inside the test. Tests are independent and safe to run in parallel.
//!
//! Run: `cargo test --test integration -- --test-threads=2`

mod common;

mod admin;
mod ai;
mod auth;
mod budgets;
mod canary;
mod check;
mod cli;
mod deploy;
mod examples;
mod fuzz;
mod grpc;
mod grpc_refusals;
mod jwks;
mod lifecycle;
mod operations;
mod pools;
mod request_log;
mod retries;
mod routing;
mod secrets;
mod streams;
mod structure;
mod tcp;
mod telemetry;
mod tls;
mod upgrades;
mod upstream_tls;
