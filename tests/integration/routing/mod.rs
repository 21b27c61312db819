//! Routing and proxying: prefixes, methods, public routes, forwarded and identity headers,
//! request ids, streaming (SSE), WebSocket, h2c, HTTP/1.0 backends, upstream failures, the
//! access log.

mod access_log;
mod access_log_delivery;
mod access_log_rotation;
mod body_limit;
mod head;
mod headers;
mod paths;
mod protocol;
mod streaming;
mod upstream_failures;
