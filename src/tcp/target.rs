//! The connection to a TCP route's target: `host:port` resolved now (so DNS changes apply to
//! the next connection), or an `[[upstreams]]` entry's endpoints round-robin; each address
//! tried in turn within `connect_timeout`. With `proxy_protocol`, a PROXY v2 header goes first.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::{split_host_port, Config, TcpTarget, Upstream};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("connecting to {0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("upstream {0} has no endpoint")]
    NoEndpoint(String),
    #[error("sending the PROXY header to {0}: {1}")]
    Proxy(String, std::io::Error),
}

/// The `host:port` endpoints of an upstream. The one place this module reads `Upstream`: its
/// endpoint type is its own concern.
fn endpoints(u: &Upstream) -> Vec<String> {
    u.endpoints.iter().map(|e| e.addr.clone()).collect()
}

/// What to dial for `target` now: a `host:port` as written (for the log); `next` turns the
/// round-robin over an upstream's endpoints.
pub fn pick(
    target: &TcpTarget,
    config: &Config,
    next: &AtomicUsize,
) -> Result<String, ConnectError> {
    match target {
        TcpTarget::Address { host, port } => Ok(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }),
        TcpTarget::Upstream(i) => {
            let u = config
                .upstreams
                .get(*i)
                .ok_or_else(|| ConnectError::NoEndpoint(format!("#{i}")))?;
            let eps = endpoints(u);
            if eps.is_empty() {
                return Err(ConnectError::NoEndpoint(u.name.clone()));
            }
            let n = next.fetch_add(1, Ordering::Relaxed);
            Ok(eps[n % eps.len()].clone())
        }
        TcpTarget::Tunnel { tunnel, service } => Ok(format!(
            "tunnel:{}/{service}",
            config.tunnels.get(*tunnel).map_or("?", |t| t.name.as_str())
        )),
    }
}

/// Why a target could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Tunnel(#[from] crate::tunnel::OpenError),
}

/// Opens `target` (whose `pick` was `dial`): a TCP connection, or a stream through a tunnel's
/// agent; with `proxy`, the PROXY v2 header goes first either way.
pub async fn open(
    target: &TcpTarget,
    dial: &str,
    config: &Config,
    timeout: Duration,
    proxy: Option<(SocketAddr, SocketAddr)>,
) -> Result<Box<dyn super::Io>, OpenError> {
    let TcpTarget::Tunnel { tunnel, service } = target else {
        return Ok(Box::new(connect(dial, timeout, proxy).await?));
    };
    let name = config.tunnels.get(*tunnel).map_or("", |t| t.name.as_str());
    let mut stream = crate::tunnel::open(name, service).await?;
    if let Some((client, local)) = proxy {
        let header =
            proxy_v2(client, local).map_err(|e| ConnectError::Proxy(dial.to_string(), e))?;
        stream
            .write_all(&header)
            .await
            .map_err(|e| ConnectError::Proxy(dial.to_string(), e))?;
    }
    Ok(Box::new(stream))
}

/// Connects to `target` (`host:port`) within `timeout`; sends the PROXY v2 header for
/// `client` → `local` when `proxy` is set.
pub async fn connect(
    target: &str,
    timeout: Duration,
    proxy: Option<(SocketAddr, SocketAddr)>,
) -> Result<TcpStream, ConnectError> {
    let dial = async {
        let (host, port) =
            split_host_port(target).ok_or_else(|| ConnectError::NoAddress(target.to_string()))?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| ConnectError::Resolve(target.to_string(), e))?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect(a).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => ConnectError::Connect(target.to_string(), e),
            None => ConnectError::NoAddress(target.to_string()),
        })
    };
    let mut stream = tokio::time::timeout(timeout, dial)
        .await
        .map_err(|_| ConnectError::Timeout(target.to_string(), timeout))??;
    let _ = stream.set_nodelay(true);
    super::keepalive(&stream);
    if let Some((client, local)) = proxy {
        let header =
            proxy_v2(client, local).map_err(|e| ConnectError::Proxy(target.to_string(), e))?;
        stream
            .write_all(&header)
            .await
            .map_err(|e| ConnectError::Proxy(target.to_string(), e))?;
    }
    Ok(stream)
}

/// A PROXY protocol v2 header: `client` connected to the gateway at `local`. Mixed families
/// (an IPv4 client on an IPv6 listener) are sent as IPv6, v4-mapped.
fn proxy_v2(client: SocketAddr, local: SocketAddr) -> std::io::Result<Vec<u8>> {
    use ppp::v2::{Builder, Command, Protocol, Version};
    let (client, local) = match (client, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            (client, local)
        }
        _ => (v6(client), v6(local)),
    };
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (client, local),
    )
    .build()
}

fn v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_header_names_the_client() {
        let client: SocketAddr = "127.0.0.9:4000".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:5433".parse().expect("addr");
        let h = proxy_v2(client, local).expect("header");
        let parsed = ppp::v2::Header::try_from(&h[..]).expect("parses");
        assert_eq!(parsed.command, ppp::v2::Command::Proxy);
        match parsed.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                assert_eq!(SocketAddr::from((a.source_address, a.source_port)), client);
                assert_eq!(
                    SocketAddr::from((a.destination_address, a.destination_port)),
                    local
                );
            }
            other => panic!("{other:?}"),
        }
        let mixed = proxy_v2(client, "[::1]:5433".parse().expect("addr")).expect("header");
        assert!(matches!(
            ppp::v2::Header::try_from(&mixed[..])
                .expect("parses")
                .addresses,
            ppp::v2::Addresses::IPv6(_)
        ));
    }
}
