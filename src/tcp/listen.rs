//! L4 listening sockets and accept loops. Every worker binds each distinct `tcp_routes` listen
//! address once (`SO_REUSEPORT`, as the HTTP listeners: `engine::listener`), so the kernel
//! spreads connections over the workers; a binary upgrade hands these sockets over too.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{Key, Shared};
use crate::config::Config;
use crate::engine::listener::{self, AdoptError, BindError, Inherited};
use crate::engine::worker::Stop;
use crate::gateway::Gateway;
use crate::metrics::TCP_METRICS;
use crate::tls::server::TlsServer;

/// One worker's socket for one configured address.
struct Socket {
    socket: std::net::TcpListener,
    key: Key,
}

/// Every worker's L4 sockets, bound or taken over, not yet accepting.
pub struct TcpSockets {
    per_worker: Vec<Vec<Socket>>,
    /// each socket's key and the address bound for it (port 0 resolved)
    bound: Vec<(Key, SocketAddr)>,
}

/// The sockets `config`'s routes need, in config order: one per distinct address, and one per
/// route for each port-0 address.
fn keys(config: &Config) -> Vec<Key> {
    let mut out: Vec<Key> = Vec::new();
    for r in &config.tcp_routes {
        for a in &r.listen {
            let key = Key {
                configured: *a,
                owner: (a.port() == 0).then(|| r.name.clone()),
            };
            if !out.contains(&key) {
                out.push(key);
            }
        }
    }
    out
}

/// The addresses to bind, one per socket.
fn addresses(keys: &[Key]) -> Vec<SocketAddr> {
    keys.iter().map(|k| k.configured).collect()
}

/// Binds every worker's sockets for `config`'s L4 routes.
pub fn bind(config: &Config, workers: usize) -> Result<TcpSockets, BindError> {
    let keys = keys(config);
    let (socks, bound) = listener::bind_all(&addresses(&keys), workers)?;
    Ok(TcpSockets::new(socks, keys, bound))
}

/// Takes over the L4 sockets `held` by the process this one replaces.
pub fn adopt(
    config: &Config,
    held: Vec<Inherited>,
    workers: usize,
) -> Result<TcpSockets, AdoptError> {
    let keys = keys(config);
    let (socks, bound) =
        listener::adopt_all("tcp_routes[].listen", &addresses(&keys), held, workers)?;
    Ok(TcpSockets::new(socks, keys, bound))
}

impl TcpSockets {
    fn new(
        socks: Vec<Vec<std::net::TcpListener>>,
        keys: Vec<Key>,
        bound: Vec<SocketAddr>,
    ) -> TcpSockets {
        let pairs: Vec<(Key, SocketAddr)> = keys.into_iter().zip(bound).collect();
        // a worker may hold several sockets of one address (an upgrade to fewer workers):
        // each is matched to its address by what it is bound to
        let per_worker = socks
            .into_iter()
            .map(|w| {
                w.into_iter()
                    .filter_map(|socket| {
                        let at = socket.local_addr().ok()?;
                        let (key, _) = pairs.iter().find(|(_, b)| *b == at)?;
                        Some(Socket {
                            socket,
                            key: key.clone(),
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
                let mine = |k: &Key| k.configured == *a && k.serves(r);
                if let Some((_, b)) = self.bound.iter().find(|(k, _)| mine(k)) {
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
        super::connect::register_series(&gateway.load().config);
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
        for Socket { socket, key } in mine {
            let listener = match tokio::net::TcpListener::from_std(socket) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot register an L4 listener");
                    continue;
                }
            };
            tokio::spawn(accept_loop(
                listener,
                key.clone(),
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
    key: Key,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Stop>,
) {
    let local = listener.local_addr().unwrap_or(key.configured);
    let key = Arc::new(key);
    // the loop's own hold: the worker's drain waits for it too, so the connections still
    // queued at the close are accepted (and held) before the drain can end
    let loop_hold = crate::engine::drain::hold();
    let serve = |stream: tokio::net::TcpStream, peer| {
        let _ = stream.set_nodelay(true);
        super::keepalive(&stream);
        // the worker's drain waits for the connection (up to shutdown_timeout)
        let hold = crate::engine::drain::hold().or_else(|| loop_hold.clone());
        let serve = super::conn::serve(shared.clone(), stream, peer, local, key.clone());
        tokio::spawn(async move {
            let _hold = hold;
            serve.await
        });
    };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s != Stop::Serving) => break,
        };
        match accepted {
            Ok((stream, peer)) => serve(stream, peer),
            Err(e) => {
                // EMFILE and the like: back off instead of spinning
                tracing::warn!(error = %e, "L4 accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    if *stop.borrow() != Stop::Close {
        return;
    }
    // closing would reset what the kernel queued: carried like the others
    crate::engine::listener::close_serving_queue(listener, serve);
}
