//! L4 routes (`[[tcp_routes]]`): raw TCP carried through the gateway, byte for byte.
//!
//! Thread-per-core like the HTTP engine: every worker binds each L4 listen address once
//! (`SO_REUSEPORT`, [`listen`]), accepts on it, and runs each connection in a task on that same
//! worker ([`conn`]): route (by address, then SNI on TLS routes), refusals (`limit`,
//! `client_cert`, `tls`, `connect_failed`, `no_route`), the connection to the target
//! ([`target`], with an optional PROXY v2 header), then the copy both ways with bounded buffers,
//! half-close propagated and an idle timeout ([`copy`]). The route table is read from the
//! running gateway per connection, so a reload applies to the next connection; the per-route
//! open-connection counters live here, across workers and reloads.

pub mod client;
mod conn;
pub mod connect;
pub(crate) mod copy;
mod listen;
mod target;
pub mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::gateway::Gateway;
use crate::tls::server::TlsServer;

pub use listen::{adopt, bind, TcpService, TcpSockets};
pub use target::OpenError;

/// A byte stream of any kind (TCP, TLS, a tunnel's stream), boxed where one type must carry
/// them all.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// What every worker's L4 connections share.
struct Shared {
    /// the running gateway: its config's `tcp_routes` and its access log
    gateway: Arc<ArcSwap<Gateway>>,
    /// `[server.tls]`'s certificates, for `tls = true` routes
    tls: Option<Arc<TlsServer>>,
    /// per route name: kept across reloads so `max_connections` counts what is open
    routes: Mutex<HashMap<String, Arc<RouteState>>>,
}

/// A route's state shared by all workers.
#[derive(Default)]
struct RouteState {
    /// open connections, across workers
    open: AtomicUsize,
    /// the next `[[upstreams]]` endpoint (round-robin)
    next: AtomicUsize,
}

impl Shared {
    fn route(&self, name: &str) -> Arc<RouteState> {
        // replaced whole under the lock: a panic elsewhere cannot leave it torn
        let mut map = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }
}

/// What a socket is for: the address as configured (port 0 stays 0), which routes name it by;
/// a port-0 address is never shared (each route gets its own port), so it also names its route.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Key {
    configured: SocketAddr,
    owner: Option<String>,
}

impl Key {
    /// Does `route` listen on this socket?
    fn serves(&self, route: &crate::config::TcpRoute) -> bool {
        route.listen.contains(&self.configured)
            && self.owner.as_ref().is_none_or(|o| *o == route.name)
    }
}

/// An open-connection slot of a route: taken if under `max_connections`, given back on drop.
struct Slot(Arc<RouteState>);

impl Slot {
    fn take(state: Arc<RouteState>, max: usize) -> Option<Slot> {
        let before = state.open.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            state.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(state))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// TCP keepalive on both connections (the HTTP listeners' settings): a quiet database
/// session is not dropped by NATs in between, and a vanished peer is found.
fn keepalive(stream: &tokio::net::TcpStream) {
    crate::engine::worker::tcp_keepalive(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let st = Arc::new(RouteState::default());
        let a = Slot::take(st.clone(), 2).expect("first");
        let _b = Slot::take(st.clone(), 2).expect("second");
        assert!(Slot::take(st.clone(), 2).is_none());
        assert_eq!(st.open.load(Ordering::Acquire), 2);
        drop(a);
        assert!(Slot::take(st.clone(), 2).is_some());
    }
}
