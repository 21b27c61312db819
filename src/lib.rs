//! cc-gateway: a thread-per-core edge gateway that verifies service-token JWTs and routes by
//! path. See `docs/architecture.md` for the map; the request pipeline reads top to bottom in
//! [`pipeline::handle`].

pub mod accesslog;
pub mod admin;
pub mod auth;
pub mod budget;
pub mod config;
pub mod dev;
pub mod engine;
pub mod forward;
pub mod gateway;
pub mod grpc;
pub mod keysync;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod reload;
pub mod requestlog;
pub mod respond;
pub mod routing;
pub mod server;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod tunnel;
pub mod upgrade;
pub mod usage;
