//! Test harness: the gateway process, in-test servers, HTTP clients, token crafting, metrics.
#![allow(dead_code)]

pub mod budgets;
pub mod cli;
pub mod client;
pub mod fixture;
pub mod gateway;
pub mod h2frame;
pub mod llm;
pub mod metrics;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod routing;
pub mod servers;
pub mod tokens;
pub mod wait;

#[allow(unused_imports)]
pub use client::{raw_request, H1Conn, RawResp, Req, Resp};
pub use fixture::{assert_error, Fixture, Opts, AUD, KID, REALM, SUB};
pub use gateway::{describe_output, run_check, Gateway};
pub use metrics::metric;
pub use servers::{dead_addr, Echo, Jwks, Sse};
pub use tokens::*;
pub use wait::{wait_metric, wait_until};
