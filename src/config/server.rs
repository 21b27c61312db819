//! `[server]`: listeners, threads, header limits and timeouts, the admin token, trusted proxies.

use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{RawServer, RawSize};
use super::secret::Literal;
use super::{ServerTls, VResult, Validator};
use crate::forward::ipnet::IpNet;

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub threads: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub admin_token: Option<AdminToken>,
    /// peers whose `X-Forwarded-*` are believed (load balancers in front of the gateway)
    pub trusted_proxies: Vec<IpNet>,
    /// `[server.tls]`: TLS listeners and certificates (`None`: plaintext only)
    pub tls: Option<ServerTls>,
    /// every connection starts with a PROXY protocol header from a `trusted_proxies` peer
    pub proxy_protocol: bool,
    /// HTTP/2 PING toward clients after this long without a frame (None: off), so NATs and
    /// load balancers in front keep quiet long-lived streams
    pub http2_keepalive_interval: Option<Duration>,
    /// a PING unanswered for this long closes the connection
    pub http2_keepalive_timeout: Duration,
    /// at SIGTERM, how long `/readyz` says 503 while the listeners still accept, so load
    /// balancers stop sending before any connection is refused
    pub drain_delay: Duration,
    /// the Unix socket a `run --upgrade` process takes the listeners over from (None: no
    /// binary upgrade)
    pub upgrade_socket: Option<std::path::PathBuf>,
    /// this gateway's region: its upstream endpoints without a region are in it, and are
    /// preferred while any is healthy
    pub region: Option<String>,
    /// `max_request_body`: the most request body bytes a route accepts unless it sets its own
    /// (None: unlimited, the default — long gRPC and upload streams must not be cut by surprise)
    pub max_request_body: Option<u64>,
    /// `max_connections`: open client connections the process serves at once (None:
    /// unlimited). Split evenly over the workers; a worker at its share stops accepting until
    /// one of its connections closes (new ones wait in the kernel's queue).
    pub max_connections: Option<usize>,
}

/// The admin bearer token, read from the environment or a file at load time (a `Secret`, see
/// `secret.rs`; kept as its value here because the admin listener compares it on every call).
#[derive(Clone, PartialEq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl Validator {
    pub(super) fn server(&self, r: RawServer) -> VResult<Server> {
        let tls = r.tls.map(|t| self.server_tls(t)).transpose()?;
        let listen = match r.listen {
            None => vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            // a TLS-only gateway serves no plaintext
            Some(v) if v.is_empty() && tls.is_some() => Vec::new(),
            Some(v) if v.is_empty() => {
                return Err(self.err("server.listen", "needs at least one address"))
            }
            Some(v) => v
                .iter()
                .enumerate()
                .map(|(i, s)| self.addr(&format!("server.listen[{i}]"), s))
                .collect::<VResult<Vec<_>>>()?,
        };
        let admin_listen = match r.admin_listen.as_deref() {
            None => Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
            Some("off") | Some("") => None,
            Some(s) => Some(self.addr("server.admin_listen", s)?),
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(Server {
            listen,
            admin_listen,
            threads: self.count("server.threads", r.threads, cores, 1, 1024)?,
            max_header_bytes: self.count(
                "server.max_header_bytes",
                r.max_header_bytes,
                128 * 1024,
                8192,
                16 << 20,
            )?,
            // on by default: idle or slow-loris clients must not hold connections forever
            header_read_timeout: match &r.header_read_timeout {
                None => Some(Duration::from_secs(30)),
                Some(s) if s == "off" => None,
                v => {
                    Some(self.positive_duration("server.header_read_timeout", v, Duration::ZERO)?)
                }
            },
            shutdown_timeout: self.duration(
                "server.shutdown_timeout",
                &r.shutdown_timeout,
                Duration::from_secs(10),
            )?,
            admin_token: self.admin_token(&r.admin_token, admin_listen)?,
            trusted_proxies: r
                .trusted_proxies
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    IpNet::parse(s).ok_or_else(|| {
                        self.err(
                            format!("server.trusted_proxies[{i}]"),
                            format!("{s:?} is not an address or CIDR block (e.g. \"10.0.0.0/8\")"),
                        )
                    })
                })
                .collect::<VResult<Vec<_>>>()?,
            tls,
            proxy_protocol: r.proxy_protocol.unwrap_or(false),
            max_connections: match r.max_connections {
                None => None,
                v => Some(self.count("server.max_connections", v, 0, 1, 100_000_000)?),
            },
            http2_keepalive_interval: match &r.http2_keepalive_interval {
                Some(s) if s.trim() == "off" => None,
                v => Some(self.positive_duration(
                    "server.http2_keepalive_interval",
                    v,
                    Duration::from_secs(20),
                )?),
            },
            http2_keepalive_timeout: self.positive_duration(
                "server.http2_keepalive_timeout",
                &r.http2_keepalive_timeout,
                Duration::from_secs(20),
            )?,
            drain_delay: self.duration(
                "server.drain_delay",
                &r.drain_delay,
                Duration::from_secs(5),
            )?,
            upgrade_socket: match r.upgrade_socket.as_deref().map(str::trim) {
                None => None,
                Some("") => return Err(self.err("server.upgrade_socket", "must be a path")),
                Some(p) => Some(self.path(p)),
            },
            region: r
                .region
                .map(|g| self.name("server.region", &g).map(|()| g))
                .transpose()?,
            max_request_body: self.body_limit(
                "server.max_request_body",
                r.max_request_body.as_ref(),
                None,
            )?,
        })
        .and_then(|s| {
            if s.proxy_protocol && s.trusted_proxies.is_empty() {
                // every connection would be refused
                return Err(self.err(
                    "server.proxy_protocol",
                    "needs server.trusted_proxies: the load balancers allowed to send the header",
                ));
            }
            Ok(s)
        })
    }

    /// A request body limit: a size (0 admits only empty bodies), or `"unlimited"`; absent,
    /// `default`.
    pub(super) fn body_limit(
        &self,
        path: &str,
        v: Option<&RawSize>,
        default: Option<u64>,
    ) -> VResult<Option<u64>> {
        match v {
            None => Ok(default),
            Some(RawSize::Text(t)) if t.trim().eq_ignore_ascii_case("unlimited") => Ok(None),
            Some(s) => self.size(path, s, 1 << 40).map(Some),
        }
    }

    fn admin_token(
        &self,
        v: &Option<String>,
        admin: Option<SocketAddr>,
    ) -> VResult<Option<AdminToken>> {
        let p = "server.admin_token";
        let token = match v.as_deref() {
            None => None,
            Some(s) => {
                let secret = self.secret(p, s, Literal::Refused("use \"env:NAME\" or \"file:PATH\" (a token written in the config would leak with it)"))?;
                if secret.expose().len() < 16 {
                    return Err(self.err(p, "the token must be at least 16 characters"));
                }
                Some(AdminToken(secret.expose().to_string()))
            }
        };
        if token.is_none() && admin.is_some_and(|a| !a.ip().is_loopback()) {
            return Err(self.err(p, "required when admin_listen is not a loopback address"));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};
    use super::*;

    fn with_server(extra: &str) -> String {
        GOOD.replace("threads = 2", &format!("threads = 2\n{extra}"))
    }

    #[test]
    fn defaults() {
        let s = parse(GOOD).expect("valid").server;
        assert_eq!(
            s.admin_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9091)))
        );
        assert_eq!(s.header_read_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(s.admin_token, None);
        assert!(s.trusted_proxies.is_empty());
        assert_eq!(s.http2_keepalive_interval, Some(Duration::from_secs(20)));
        assert_eq!(s.http2_keepalive_timeout, Duration::from_secs(20));
        assert_eq!(s.drain_delay, Duration::from_secs(5));
        assert_eq!(s.upgrade_socket, None);
    }

    #[test]
    fn drain_delay_and_upgrade_socket() {
        let s = parse(&with_server(
            "drain_delay = \"0s\"\nupgrade_socket = \"/run/cc-gateway/upgrade.sock\"",
        ))
        .expect("valid")
        .server;
        assert_eq!(s.drain_delay, Duration::ZERO, "zero: close at once");
        assert_eq!(
            s.upgrade_socket.as_deref(),
            Some(std::path::Path::new("/run/cc-gateway/upgrade.sock"))
        );
        let e = parse(&with_server("drain_delay = \"soon\"")).unwrap_err();
        assert_eq!(e.path, "server.drain_delay", "{e}");
        let e = parse(&with_server("upgrade_socket = \"\"")).unwrap_err();
        assert_eq!(e.path, "server.upgrade_socket", "{e}");
    }

    #[test]
    fn max_request_body_is_a_default_routes_inherit_or_override() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.server.max_request_body, None, "unlimited unless set");
        assert_eq!(c.routes[0].max_request_body, None);
        let text = with_server("max_request_body = \"10MiB\"");
        let c = parse(&text).expect("valid");
        assert_eq!(c.server.max_request_body, Some(10 << 20));
        assert_eq!(c.routes[0].max_request_body, Some(10 << 20), "inherited");
        for (route, want) in [
            ("max_request_body = 0", Some(0)),
            ("max_request_body = \"2GiB\"", Some(2 << 30)),
            ("max_request_body = \" 64 KiB \"", Some(64 << 10)),
            ("max_request_body = \"unlimited\"", None),
        ] {
            let t = text.replace(
                "path_prefix = \"/ai/\"",
                &format!("path_prefix = \"/ai/\"\n{route}"),
            );
            let c = parse(&t).unwrap_or_else(|e| panic!("{route}: {e}"));
            assert_eq!(c.routes[0].max_request_body, want, "{route}");
        }
        for (v, path) in [
            ("max_request_body = -1", "server.max_request_body"),
            ("max_request_body = \"lots\"", "server.max_request_body"),
            ("max_request_body = \"2TiB\"", "server.max_request_body"),
            ("max_request_body = \"2048GiB\"", "server.max_request_body"),
        ] {
            let e = parse(&with_server(v)).unwrap_err();
            assert_eq!(e.path, path, "{v}: {e}");
        }
        let e = parse(&GOOD.replace(
            "path_prefix = \"/ai/\"",
            "path_prefix = \"/ai/\"\nmax_request_body = \"64 potatoes\"",
        ))
        .unwrap_err();
        assert_eq!(e.path, "routes[0].max_request_body", "{e}");
        assert!(
            e.problem.starts_with("\"64 potatoes\": expected a size"),
            "{e}"
        );
    }

    #[test]
    fn http2_keepalive() {
        let s = parse(&with_server(
            "http2_keepalive_interval = \"off\"\nhttp2_keepalive_timeout = \"5s\"",
        ))
        .expect("valid")
        .server;
        assert_eq!(s.http2_keepalive_interval, None);
        assert_eq!(s.http2_keepalive_timeout, Duration::from_secs(5));
        let e = parse(&with_server("http2_keepalive_interval = \"0s\"")).unwrap_err();
        assert_eq!(e.path, "server.http2_keepalive_interval", "{e}");
        let e = parse(&with_server("http2_keepalive_timeout = \"off\"")).unwrap_err();
        assert_eq!(e.path, "server.http2_keepalive_timeout", "{e}");
    }

    #[test]
    fn admin_token_comes_from_env_or_file_never_the_config() {
        let e = parse(&with_server("admin_token = \"0123456789abcdef0123\"")).unwrap_err();
        assert_eq!(e.path, "server.admin_token", "{e}");
        let e = parse(&with_server("admin_listen = \"0.0.0.0:9091\"")).unwrap_err();
        assert_eq!(e.path, "server.admin_token", "{e}");
        assert!(e.problem.contains("required"), "{e}");
        let dir = tempfile::tempdir().expect("temp dir");
        let short = dir.path().join("short");
        std::fs::write(&short, "short\n").expect("writing token");
        let e = parse(&with_server(&format!(
            "admin_token = \"file:{}\"",
            short.display()
        )))
        .unwrap_err();
        assert!(e.problem.contains("at least 16"), "{e}");
        let good = dir.path().join("good");
        std::fs::write(&good, "0123456789abcdef0123\n").expect("writing token");
        let s = parse(&with_server(&format!(
            "admin_listen = \"0.0.0.0:9091\"\nadmin_token = \"file:{}\"",
            good.display()
        )))
        .expect("valid")
        .server;
        assert_eq!(
            s.admin_token,
            Some(AdminToken("0123456789abcdef0123".into())),
            "read and trimmed"
        );
        assert_eq!(
            format!("{:?}", s.admin_token),
            "Some(AdminToken(<redacted>))"
        );
    }

    #[test]
    fn trusted_proxies_and_timeouts() {
        let s = parse(&with_server(
            "trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nheader_read_timeout = \"off\"",
        ))
        .expect("valid")
        .server;
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(s.header_read_timeout, None);
        let e = parse(&with_server(
            "trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]",
        ))
        .unwrap_err();
        assert_eq!(e.path, "server.trusted_proxies[1]", "{e}");
        let e = parse(&with_server("header_read_timeout = \"0s\"")).unwrap_err();
        assert_eq!(e.path, "server.header_read_timeout", "{e}");
        let e = parse(&GOOD.replace("listen = [\"127.0.0.1:8080\"]", "listen = []")).unwrap_err();
        assert_eq!(e.path, "server.listen", "{e}");
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies() {
        assert!(!parse(GOOD).expect("valid").server.proxy_protocol);
        let e = parse(&with_server("proxy_protocol = true")).unwrap_err();
        assert_eq!(e.path, "server.proxy_protocol", "{e}");
        let s = parse(&with_server(
            "proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]",
        ))
        .expect("valid")
        .server;
        assert!(s.proxy_protocol);
    }

    #[test]
    fn max_connections_is_unlimited_or_a_positive_count() {
        assert_eq!(parse(GOOD).expect("valid").server.max_connections, None);
        let s = parse(&with_server("max_connections = 50000"))
            .expect("valid")
            .server;
        assert_eq!(s.max_connections, Some(50_000));
        for bad in ["0", "-1", "\"lots\""] {
            let e = parse(&with_server(&format!("max_connections = {bad}"))).unwrap_err();
            assert!(e.to_string().contains("max_connections"), "{bad}: {e}");
        }
    }
}
