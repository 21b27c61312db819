//! The engine: how sockets are driven. Thread-per-core — `threads` OS threads, each with its
//! own current-thread tokio runtime, its own `SO_REUSEPORT` listener per address and its own
//! upstream pools — so a request never crosses threads. The request pipeline sees only
//! [`Handler`]; it does not know how connections are accepted or served.

pub mod body;
pub mod drain;
mod first_request;
pub mod listener;
pub mod proxy_protocol;
mod timer;
pub mod upstream;
pub mod worker;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

pub use body::Body;

/// Where a request came from. Built once per connection; each request gets a clone (an `Arc`
/// clone at most).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// accepted on a TLS listener
    pub tls: bool,
    /// the client certificate verified in the handshake, if the client sent one
    pub client_cert: Option<Arc<crate::tls::peer::ClientCert>>,
}

/// What the engine calls for each request. One instance per worker thread.
pub trait Handler: Send + Sync + 'static {
    /// Called once on each worker thread, inside its runtime, before it accepts connections:
    /// the place to start per-worker background work (connections to warm, say).
    fn started(&self) {}

    /// May `peer` send a PROXY protocol header (`server.proxy_protocol`)? Asked per
    /// connection, so a reload's `trusted_proxies` apply to the next one.
    fn trusts_proxy(&self, _peer: IpAddr) -> bool {
        false
    }

    fn handle(
        self: std::sync::Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + 'static;
}
