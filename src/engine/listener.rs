//! Listening sockets: one `SO_REUSEPORT` socket per worker and address, so the kernel spreads
//! connections over the workers with no shared accept queue.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener, BindError> {
    let go = || -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_tcp_nodelay(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        Ok(s.into())
    };
    go().map_err(|source| BindError { addr, source })
}

/// Binds `workers` sockets for each address; returns them per worker, plus the bound addresses
/// (a port 0 is resolved by the first bind and reused for the others).
pub fn bind_all(
    addrs: &[SocketAddr],
    workers: usize,
) -> Result<(Vec<Vec<std::net::TcpListener>>, Vec<SocketAddr>), BindError> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in addrs {
        let first = bind_one(addr, true)?;
        let actual = first
            .local_addr()
            .map_err(|source| BindError { addr, source })?;
        per_worker[0].push(first);
        for w in per_worker.iter_mut().skip(1) {
            w.push(bind_one(actual, true)?);
        }
        bound.push(actual);
    }
    Ok((per_worker, bound))
}

/// One worker's listening socket, with the TLS it terminates (`None`: plaintext).
pub struct Listening {
    pub socket: std::net::TcpListener,
    pub tls: Option<std::sync::Arc<crate::tls::server::TlsServer>>,
}

/// What [`bind_workers`] bound: each worker's sockets and the addresses (ports 0 resolved).
pub struct WorkerSockets {
    pub per_worker: Vec<Vec<Listening>>,
    pub plain: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
}

/// Binds `workers` sockets for each plaintext address and each TLS address, and returns each
/// worker's sockets, plaintext first.
pub fn bind_workers(
    plain: &[SocketAddr],
    tls: Option<(&[SocketAddr], std::sync::Arc<crate::tls::server::TlsServer>)>,
    workers: usize,
) -> Result<WorkerSockets, BindError> {
    let (plain_socks, plain_bound) = bind_all(plain, workers)?;
    let mut out: Vec<Vec<Listening>> = plain_socks
        .into_iter()
        .map(|v| {
            v.into_iter()
                .map(|socket| Listening { socket, tls: None })
                .collect()
        })
        .collect();
    let mut tls_bound = Vec::new();
    if let Some((addrs, server)) = tls {
        let (socks, bound) = bind_all(addrs, workers)?;
        for (w, v) in out.iter_mut().zip(socks) {
            w.extend(v.into_iter().map(|socket| Listening {
                socket,
                tls: Some(server.clone()),
            }));
        }
        tls_bound = bound;
    }
    Ok(WorkerSockets {
        per_worker: out,
        plain: plain_bound,
        tls: tls_bound,
    })
}

/// A single (non-reuseport) listener, for the admin endpoint.
pub fn bind_single(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    bind_one(addr, false)
}
