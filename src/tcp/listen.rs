//! L4 listening sockets and accept loops. Every worker binds each distinct `tcp_routes` listen
//! address once (`SO_REUSEPORT`, as the HTTP listeners: `engine::listener`), so the kernel
//! spreads connections over the workers; a binary upgrade hands these sockets over too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::Shared;
use crate::config::Config;
use crate::engine::listener::{self, AdoptError, BindError, Inherited};
use crate::engine::worker::Stop;
use crate::gateway::Gateway;
use crate::metrics::TCP_METRICS;
use crate::tls::server::TlsServer;

/// One worker's socket for one configured address.
struct Socket {
    socket: std::net::TcpListener,
    /// the address as configured (port 0 stays 0): routes name their sockets by it
    configured: SocketAddr,
}

/// Every worker's L4 sockets, bound or taken over, not yet accepting.
pub struct TcpSockets {
    per_worker: Vec<Vec<Socket>>,
    /// each distinct configured address and the address bound for it (port 0 resolved)
    bound: Vec<(SocketAddr, SocketAddr)>,
}

/// The distinct listen addresses of all routes, in config order.
fn addresses(config: &Config) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in config.tcp_routes.iter().flat_map(|r| &r.listen) {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

/// Binds every worker's sockets for `config`'s L4 routes.
pub fn bind(config: &Config, workers: usize) -> Result<TcpSockets, BindError> {
    let addrs = addresses(config);
    let (socks, bound) = listener::bind_all(&addrs, workers)?;
    Ok(TcpSockets::new(socks, &addrs, bound))
}

/// Takes over the L4 sockets `held` by the process this one replaces.
pub fn adopt(
    config: &Config,
    held: Vec<Inherited>,
    workers: usize,
) -> Result<TcpSockets, AdoptError> {
    let addrs = addresses(config);
    let (socks, bound) = listener::adopt_all("tcp_routes[].listen", &addrs, held, workers)?;
    Ok(TcpSockets::new(socks, &addrs, bound))
}

impl TcpSockets {
    fn new(
        socks: Vec<Vec<std::net::TcpListener>>,
        configured: &[SocketAddr],
        bound: Vec<SocketAddr>,
    ) -> TcpSockets {
        let pairs: Vec<(SocketAddr, SocketAddr)> = configured
            .iter()
            .copied()
            .zip(bound.iter().copied())
            .collect();
        // a worker may hold several sockets of one address (an upgrade to fewer workers):
        // each is matched to its address by what it is bound to
        let per_worker = socks
            .into_iter()
            .map(|w| {
                w.into_iter()
                    .filter_map(|socket| {
                        let at = socket.local_addr().ok()?;
                        let (configured, _) = pairs.iter().find(|(_, b)| *b == at)?;
                        Some(Socket {
                            socket,
                            configured: *configured,
                        })
                    })
                    .collect()
            })
            .collect();
        TcpSockets {
            per_worker,
            bound: pairs,
        }
    }

    /// Every socket, to duplicate for a later binary upgrade.
    pub fn sockets(&self) -> impl Iterator<Item = &std::net::TcpListener> {
        self.per_worker.iter().flatten().map(|s| &s.socket)
    }

    /// `route@address` for each route and listen address (ports 0 resolved): the ready line's
    /// `tcp=` field.
    pub fn describe(&self, config: &Config) -> Vec<String> {
        let mut out = Vec::new();
        for r in &config.tcp_routes {
            for a in &r.listen {
                if let Some((_, b)) = self.bound.iter().find(|(c, _)| c == a) {
                    out.push(format!("{}@{b}", r.name));
                }
            }
        }
        out
    }
}

/// The running L4 side: each worker takes its sockets at start; `stop` closes them all.
pub struct TcpService {
    shared: Arc<Shared>,
    sockets: Mutex<Vec<Option<Vec<Socket>>>>,
    stop: watch::Sender<Stop>,
}

impl TcpService {
    pub fn new(
        sockets: TcpSockets,
        gateway: Arc<ArcSwap<Gateway>>,
        tls: Option<Arc<TlsServer>>,
    ) -> Arc<TcpService> {
        // every refusal's series from startup, for alerts
        for r in &gateway.load().config.tcp_routes {
            for why in super::conn::Refusal::ALL {
                TCP_METRICS
                    .connections
                    .with_label_values(&[&r.name, why.reason()]);
            }
            TCP_METRICS.connections.with_label_values(&[&r.name, "ok"]);
            TCP_METRICS.open.with_label_values(&[&r.name]);
        }
        let (stop, _) = watch::channel(Stop::Serving);
        Arc::new(TcpService {
            shared: Arc::new(Shared {
                gateway,
                tls,
                routes: Mutex::new(Default::default()),
            }),
            sockets: Mutex::new(sockets.per_worker.into_iter().map(Some).collect()),
            stop,
        })
    }

    /// Starts worker `i`'s accept loops on the current runtime (the worker's own: called on its
    /// thread before it serves). Each connection then lives on this worker.
    pub fn start_worker(&self, i: usize) {
        let mine = {
            let mut all = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
            all.get_mut(i).and_then(Option::take).unwrap_or_default()
        };
        for Socket { socket, configured } in mine {
            let listener = match tokio::net::TcpListener::from_std(socket) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot register an L4 listener");
                    continue;
                }
            };
            tokio::spawn(accept_loop(
                listener,
                configured,
                self.shared.clone(),
                self.stop.subscribe(),
            ));
        }
    }

    /// Stops accepting: the sockets close (`Stop::Close`) or stay with the successor
    /// (`Stop::HandOver`, which holds duplicates). Open connections go on until the worker
    /// ends.
    pub fn stop(&self, how: Stop) {
        let _ = self.stop.send(how);
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    configured: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Stop>,
) {
    let local = listener.local_addr().unwrap_or(configured);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s != Stop::Serving) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                super::keepalive(&stream);
                tokio::spawn(super::conn::serve(
                    shared.clone(),
                    stream,
                    peer,
                    local,
                    configured,
                ));
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning
                tracing::warn!(error = %e, "L4 accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
