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

/// The listening sockets of one address taken over from the process this one replaces (binary
/// upgrade): one per worker of that process, all in one `SO_REUSEPORT` group.
pub struct Inherited {
    pub addr: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Why inherited sockets do not fit this process's config.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("{key} lists {wanted:?} but the running gateway listens on {held:?}: a binary upgrade keeps the listen addresses (restart to change them)")]
    Addresses {
        key: &'static str,
        wanted: Vec<SocketAddr>,
        held: Vec<SocketAddr>,
    },
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// Does a configured address name an inherited one? (Port 0 names whatever port was bound.)
pub fn same_address(configured: SocketAddr, held: SocketAddr) -> bool {
    configured == held || (configured.port() == 0 && configured.ip() == held.ip())
}

/// Spreads the inherited sockets of `addrs` over `workers` workers. The sockets are used as
/// they are — never closed, since closing one would reset the connections queued in it: with
/// fewer workers than before, a worker accepts on several sockets of an address; with more,
/// the extra workers bind new sockets into the same `SO_REUSEPORT` group.
pub fn adopt_all(
    key: &'static str,
    addrs: &[SocketAddr],
    held: Vec<Inherited>,
    workers: usize,
) -> Result<(Vec<Vec<std::net::TcpListener>>, Vec<SocketAddr>), AdoptError> {
    let fits = addrs.len() == held.len()
        && addrs
            .iter()
            .zip(&held)
            .all(|(&a, h)| same_address(a, h.addr));
    if !fits {
        return Err(AdoptError::Addresses {
            key,
            wanted: addrs.to_vec(),
            held: held.iter().map(|h| h.addr).collect(),
        });
    }
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for Inherited { addr, sockets } in held {
        let n = sockets.len();
        for (i, s) in sockets.into_iter().enumerate() {
            per_worker[i % workers].push(s);
        }
        for w in per_worker.iter_mut().skip(n) {
            w.push(bind_one(addr, true)?);
        }
        bound.push(addr);
    }
    Ok((per_worker, bound))
}

/// Like [`bind_workers`], with the sockets taken over from the process being replaced:
/// `plain` and `tls` are the addresses configured now, `held_*` what that process listened on.
pub fn adopt_workers(
    plain: &[SocketAddr],
    held_plain: Vec<Inherited>,
    tls: Option<(&[SocketAddr], std::sync::Arc<crate::tls::server::TlsServer>)>,
    held_tls: Vec<Inherited>,
    workers: usize,
) -> Result<WorkerSockets, AdoptError> {
    let (plain_socks, plain_bound) = adopt_all("server.listen", plain, held_plain, workers)?;
    let mut out: Vec<Vec<Listening>> = plain_socks
        .into_iter()
        .map(|v| {
            v.into_iter()
                .map(|socket| Listening { socket, tls: None })
                .collect()
        })
        .collect();
    let (tls_addrs, server) = match tls {
        Some((a, s)) => (a, Some(s)),
        None => (&[][..], None),
    };
    let (socks, tls_bound) = adopt_all("server.tls.listen", tls_addrs, held_tls, workers)?;
    for (w, v) in out.iter_mut().zip(socks) {
        w.extend(v.into_iter().map(|socket| Listening {
            socket,
            tls: server.clone(),
        }));
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

/// Closes a listener without resetting what the kernel queued on it: new handshakes are
/// stopped first ([`refuse_new_handshakes`]; one completing between the last accept and the
/// close would be reset, and its client could not tell whether its request was read — a
/// dropped SYN is retried a second later and finds another listener, or none: refused, nothing
/// sent), then every queued connection is accepted and handed to `serve`.
pub fn close_serving_queue(
    listener: tokio::net::TcpListener,
    mut serve: impl FnMut(tokio::net::TcpStream, SocketAddr),
) {
    refuse_new_handshakes(&listener);
    let Ok(listener) = listener.into_std() else {
        return;
    };
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let stream = stream
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(stream));
                match stream {
                    Ok(s) => serve(s, peer),
                    Err(e) => tracing::debug!(error = %e, "cannot register a connection"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // WouldBlock: the queue is empty
            Err(_) => break,
        }
    }
}

/// Drops every packet that would reach this listening socket from now on (a one-instruction
/// classic BPF filter, `ret #0`): no new handshake completes on it, while the connections
/// already in its accept queue stay there to be accepted.
pub fn refuse_new_handshakes(listener: &tokio::net::TcpListener) {
    const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let drop_all = [socket2::SockFilter::new(BPF_RET_K, 0, 0, 0)];
    if let Err(e) = socket2::SockRef::from(listener).attach_filter(&drop_all) {
        // a kernel without socket filters: the close alone, as before
        tracing::debug!(error = %e, "cannot stop new handshakes before closing a listener");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection the kernel completed before the filter is still accepted; a handshake
    /// begun after it never completes (the client would retry its SYN, then be refused).
    #[tokio::test]
    async fn a_closing_listener_keeps_its_queue_and_completes_no_new_handshake() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let queued = tokio::net::TcpStream::connect(addr).await.unwrap();
        refuse_new_handshakes(&l);
        let late = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        assert!(
            late.is_err(),
            "a handshake completed after the filter: {late:?}"
        );
        let (_s, peer) = l.accept().await.unwrap();
        assert_eq!(peer, queued.local_addr().unwrap());
        let l = l.into_std().unwrap();
        let next = l.accept().map(|(_, p)| p);
        assert_eq!(
            next.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "nothing else in the queue"
        );
    }

    fn held(addr: SocketAddr, n: usize) -> (Inherited, SocketAddr) {
        let (mut socks, bound) = bind_all(&[addr], n).expect("bind");
        let sockets = socks.iter_mut().map(|w| w.remove(0)).collect();
        (
            Inherited {
                addr: bound[0],
                sockets,
            },
            bound[0],
        )
    }

    #[test]
    fn inherited_sockets_are_all_kept_whatever_the_worker_count() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        // fewer workers: one accepts on two sockets, none is dropped
        let (h, bound) = held(any, 3);
        let ws = adopt_workers(&[any], vec![h], None, Vec::new(), 2).expect("adopted");
        let counts: Vec<usize> = ws.per_worker.iter().map(Vec::len).collect();
        assert_eq!(counts, vec![2, 1]);
        assert_eq!(ws.plain, vec![bound]);
        // more workers: the extra one binds into the same group
        let (h, bound) = held(any, 1);
        let ws = adopt_workers(&[bound], vec![h], None, Vec::new(), 3).expect("adopted");
        for w in &ws.per_worker {
            assert_eq!(w.len(), 1);
            assert_eq!(w[0].socket.local_addr().expect("addr"), bound);
        }
    }

    #[test]
    fn other_listen_addresses_are_refused() {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (h, _) = held(any, 1);
        let other: SocketAddr = "127.0.0.2:0".parse().expect("addr");
        let e = adopt_workers(&[other], vec![h], None, Vec::new(), 1)
            .err()
            .expect("refused");
        assert!(e.to_string().starts_with("server.listen lists"), "{e}");
        let (h, _) = held(any, 1);
        assert!(adopt_workers(&[any, other], vec![h], None, Vec::new(), 1).is_err());
    }
}
