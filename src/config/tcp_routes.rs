//! `[[tcp_routes]]`: L4 routes. Each listens on its own addresses and carries the bytes of every
//! accepted connection to one target, optionally terminating TLS first (with `[server.tls]`'s
//! certificates; SNI picks the route when several TLS routes share an address).

use std::net::SocketAddr;
use std::time::Duration;

use super::raw::RawTcpRoute;
use super::{ClientAuth, ClientCertRule, Server, Upstream, VResult, Validator};

/// One validated `[[tcp_routes]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpRoute {
    pub name: String,
    pub listen: Vec<SocketAddr>,
    pub target: TcpTarget,
    /// terminate TLS with `[server.tls]`'s certificates before carrying the bytes
    pub tls: bool,
    /// lower-case SNI names this route answers on a shared TLS address (empty: any name, or none)
    pub server_names: Vec<String>,
    pub client_cert: Option<ClientCertRule>,
    /// the connection is closed after this long with no byte either way
    pub idle_timeout: Duration,
    /// open connections of this route across all workers; more are refused (`limit`)
    pub max_connections: usize,
    /// send a PROXY protocol v2 header to the target before the client's bytes
    pub proxy_protocol: bool,
    pub connect_timeout: Duration,
}

/// Where a TCP route's connections go.
#[derive(Debug, Clone, PartialEq)]
pub enum TcpTarget {
    /// `host:port`, resolved when each connection is made (DNS changes apply at once)
    Address { host: String, port: u16 },
    /// an `[[upstreams]]` entry (index into `Config::upstreams`): its endpoints round-robin
    Upstream(usize),
    /// `tunnel:<tunnel>/<service>`: a service an agent of `[[tunnels]]` entry `tunnel` exposes
    Tunnel { tunnel: usize, service: String },
}

const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `host:port` as written (`[v6]:port` for IPv6), or `None`.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    // an IPv6 address must be bracketed: `::1:5432` is ambiguous
    let (host, bracketed) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(h) => (h, true),
        None => (host, false),
    };
    let ok = !host.is_empty()
        && !host.contains(char::is_whitespace)
        && !host.contains('/')
        && if bracketed {
            host.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.contains(':')
        };
    ok.then(|| (host.to_string(), port))
}

impl Validator {
    pub(super) fn tcp_routes(
        &self,
        raw: Vec<RawTcpRoute>,
        upstreams: &[Upstream],
        tunnels: &[super::Tunnel],
        server: &Server,
    ) -> VResult<Vec<TcpRoute>> {
        let mut out: Vec<TcpRoute> = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let at = |k: &str| format!("tcp_routes[{i}].{k}");
            let route = self.tcp_route(i, r, upstreams, tunnels, server)?;
            if out.iter().any(|o| o.name == route.name) {
                return Err(self.err(at("name"), format!("{:?} is defined twice", route.name)));
            }
            out.push(route);
        }
        self.tcp_listen_sharing(&out, server)?;
        Ok(out)
    }

    /// A TCP target as `[[tcp_routes]] target` and `[[routes]] connect` take it:
    /// `tunnel:<tunnel>/<service>`, an `[[upstreams]]` name, else `"host:port"`.
    pub(super) fn tcp_target(
        &self,
        key: &str,
        target: &str,
        upstreams: &[Upstream],
        tunnels: &[super::Tunnel],
    ) -> VResult<TcpTarget> {
        if let Some(rest) = target.strip_prefix("tunnel:") {
            let (name, service) = rest.split_once('/').ok_or_else(|| {
                self.err(
                    key,
                    format!("{target:?}: expected \"tunnel:<tunnel>/<service>\""),
                )
            })?;
            let tunnel = tunnels.iter().position(|t| t.name == name).ok_or_else(|| {
                self.err(
                    key,
                    format!("{target:?}: no [[tunnels]] entry is named {name:?}"),
                )
            })?;
            self.tunnel_service(key, service)?;
            return Ok(TcpTarget::Tunnel {
                tunnel,
                service: service.to_string(),
            });
        }
        if let Some(u) = upstreams.iter().position(|u| u.name == target) {
            return Ok(TcpTarget::Upstream(u));
        }
        let (host, port) = split_host_port(target).ok_or_else(|| {
            self.err(
                key,
                format!("{target:?} is neither \"host:port\" nor an [[upstreams]] name"),
            )
        })?;
        Ok(TcpTarget::Address { host, port })
    }

    fn tcp_route(
        &self,
        i: usize,
        r: RawTcpRoute,
        upstreams: &[Upstream],
        tunnels: &[super::Tunnel],
        server: &Server,
    ) -> VResult<TcpRoute> {
        let at = |k: &str| format!("tcp_routes[{i}].{k}");
        let name = r.name.ok_or_else(|| self.err(at("name"), "is required"))?;
        self.name(&at("name"), &name)?;
        let listen = r
            .listen
            .ok_or_else(|| self.err(at("listen"), "is required"))?;
        if listen.is_empty() {
            return Err(self.err(at("listen"), "needs at least one address"));
        }
        let listen = listen
            .iter()
            .enumerate()
            .map(|(j, a)| self.addr(&format!("tcp_routes[{i}].listen[{j}]"), a))
            .collect::<VResult<Vec<_>>>()?;
        let target = r
            .target
            .ok_or_else(|| self.err(at("target"), "is required"))?;
        let target = self.tcp_target(&at("target"), &target, upstreams, tunnels)?;
        let tls = r.tls.unwrap_or(false);
        if tls && server.tls.is_none() {
            return Err(self.err(
                at("tls"),
                "needs [server.tls]: its certificates terminate TLS on this route",
            ));
        }
        let server_names = self.server_names(
            &format!("tcp_routes[{i}].server_names"),
            r.server_names.unwrap_or_default(),
        )?;
        if !tls && !server_names.is_empty() {
            return Err(self.err(at("server_names"), "needs tls = true (SNI is a TLS field)"));
        }
        let client_cert = r
            .client_cert
            .map(|c| self.client_cert_rule(&format!("tcp_routes[{i}]"), c))
            .transpose()?;
        if client_cert.is_some() {
            if !tls {
                return Err(self.err(at("client_cert"), "needs tls = true"));
            }
            let on = server
                .tls
                .as_ref()
                .is_some_and(|t| t.client_auth != ClientAuth::Off);
            if !on {
                return Err(self.err(
                    at("client_cert"),
                    "needs [server.tls] with client_auth = \"optional\" or \"require\"",
                ));
            }
        }
        let idle_timeout =
            self.positive_duration(&at("idle_timeout"), &r.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
        let connect_timeout = self.positive_duration(
            &at("connect_timeout"),
            &r.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let max_connections = self.count(
            &at("max_connections"),
            r.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            1,
            10_000_000,
        )?;
        Ok(TcpRoute {
            name,
            listen,
            target,
            tls,
            server_names,
            client_cert,
            idle_timeout,
            max_connections,
            proxy_protocol: r.proxy_protocol.unwrap_or(false),
            connect_timeout,
        })
    }

    /// Routes may share a listen address only when all are TLS and SNI tells them apart (at
    /// most one without `server_names`: the default); no HTTP listener may use it.
    fn tcp_listen_sharing(&self, routes: &[TcpRoute], server: &Server) -> VResult<()> {
        let http: Vec<SocketAddr> = server
            .listen
            .iter()
            .chain(server.tls.iter().flat_map(|t| t.listen.iter()))
            .chain(server.admin_listen.iter())
            .copied()
            .collect();
        for (i, r) in routes.iter().enumerate() {
            for (j, a) in r.listen.iter().enumerate() {
                let path = format!("tcp_routes[{i}].listen[{j}]");
                if a.port() != 0 && http.contains(a) {
                    return Err(self.err(path, format!("{a} is an HTTP or admin listener")));
                }
                for (k, o) in routes.iter().enumerate().take(i) {
                    // port 0 is never shared: each route gets a port of its own
                    if a.port() == 0 || !o.listen.contains(a) {
                        continue;
                    }
                    if !(r.tls && o.tls) {
                        return Err(self.err(
                            path,
                            format!("{a} is also tcp_routes[{k}]'s: only TLS routes (told apart by server_names) may share an address"),
                        ));
                    }
                    let clash = if r.server_names.is_empty() || o.server_names.is_empty() {
                        r.server_names.is_empty() && o.server_names.is_empty()
                    } else {
                        r.server_names.iter().any(|n| o.server_names.contains(n))
                    };
                    if clash {
                        return Err(self.err(
                            format!("tcp_routes[{i}].server_names"),
                            format!("tcp_routes[{k}] on {a} answers the same server names"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::*;

    const BASE: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
[[upstreams]]
name = "db"
endpoints = ["127.0.0.1:5432"]
"#;

    fn with(extra: &str) -> Result<super::super::Config, super::super::ConfigError> {
        parse(&format!("{BASE}{extra}"))
    }

    #[test]
    fn a_plain_route_and_its_defaults() {
        let c = with(
            "[[tcp_routes]]\nname = \"pg\"\nlisten = [\"127.0.0.1:5433\"]\ntarget = \"db.internal:5432\"\n",
        )
        .expect("valid");
        let r = &c.tcp_routes[0];
        assert_eq!(
            r.target,
            TcpTarget::Address {
                host: "db.internal".into(),
                port: 5432
            }
        );
        assert_eq!(r.idle_timeout, Duration::from_secs(3600));
        assert_eq!(r.max_connections, 10_000);
        assert!(!r.tls && !r.proxy_protocol);
        let c = with(
            "[[tcp_routes]]\nname = \"pg\"\nlisten = [\"127.0.0.1:5433\"]\ntarget = \"db\"\nmax_connections = 2\nidle_timeout = \"5s\"\n",
        )
        .expect("valid");
        assert_eq!(c.tcp_routes[0].target, TcpTarget::Upstream(0));
        assert_eq!(c.tcp_routes[0].max_connections, 2);
    }

    #[test]
    fn refusals_name_their_key() {
        let cases = [
            (
                "target = \"tunnel:onprem/pg\"",
                "tcp_routes[0].target",
                "no [[tunnels]] entry is named \"onprem\"",
            ),
            ("target = \"nowhere\"", "tcp_routes[0].target", "neither"),
            (
                "target = \"h:1\"\ntls = true",
                "tcp_routes[0].tls",
                "[server.tls]",
            ),
            (
                "target = \"h:1\"\nserver_names = [\"a.example\"]",
                "tcp_routes[0].server_names",
                "tls = true",
            ),
            (
                "target = \"h:1\"\nclient_cert = { uris = [\"spiffe://td/a\"] }",
                "tcp_routes[0].client_cert",
                "tls = true",
            ),
            (
                "target = \"h:1\"\nmax_connections = 0",
                "tcp_routes[0].max_connections",
                "out of range",
            ),
            ("target = \"h:1\"\nbogus = 1", "tcp_routes[0]", "bogus"),
        ];
        for (extra, path, problem) in cases {
            let e = with(&format!(
                "[[tcp_routes]]\nname = \"pg\"\nlisten = [\"127.0.0.1:5433\"]\n{extra}\n"
            ))
            .expect_err(extra);
            assert!(e.path.starts_with(path), "{extra}: {e}");
            assert!(e.to_string().contains(problem), "{extra}: {e}");
        }
    }

    #[test]
    fn plain_routes_cannot_share_an_address() {
        let two = "[[tcp_routes]]\nname = \"a\"\nlisten = [\"127.0.0.1:5433\"]\ntarget = \"h:1\"\n[[tcp_routes]]\nname = \"b\"\nlisten = [\"127.0.0.1:5433\"]\ntarget = \"h:2\"\n";
        let e = with(two).expect_err("shared");
        assert_eq!(e.path, "tcp_routes[1].listen[0]");
        let http =
            "[[tcp_routes]]\nname = \"a\"\nlisten = [\"127.0.0.1:8080\"]\ntarget = \"h:1\"\n";
        assert!(with(http).is_err());
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("a.b:1"), Some(("a.b".into(), 1)));
        assert_eq!(split_host_port("[::1]:5432"), Some(("::1".into(), 5432)));
        assert_eq!(split_host_port("a.b"), None);
        assert_eq!(split_host_port("a.b:0"), None);
        assert_eq!(split_host_port("::1:5432"), None);
    }
}
