//! `[[upstreams]]`: the backends routes forward to, their endpoints, timeouts, pools, protocol
//! (HTTP/1.1, HTTP/2 over TLS or cleartext) and TLS.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::pools::{Balance, Endpoint, HealthCheck, Outlier};
use super::raw::{RawUpstream, RawUpstreamTls};
use super::secret::{Literal, Secret};
use super::{VResult, Validator};

/// How requests are carried to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (over TLS when `tls` is set)
    Http1,
    /// HTTP/2 over TLS, ALPN `h2` required
    H2,
    /// HTTP/2 over cleartext TCP, by prior knowledge
    H2c,
    /// over TLS, whatever ALPN picks: `h2` or `http/1.1`
    Auto,
}

/// `tls = { … }`: TLS to the upstream, always verified. Without `ca` the system roots are
/// trusted; without `sni` the endpoint's host is the server name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    pub sni: Option<String>,
    pub ca: Option<PathBuf>,
    /// the client certificate chain and its key, for an upstream that demands mTLS
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub balance: Balance,
    /// upstream names tried in order when no endpoint of this one can serve (validated:
    /// known, not this one, no cycle)
    pub fallback: Vec<String>,
    pub outlier: Outlier,
    pub health_check: Option<HealthCheck>,
    /// hostname endpoints are resolved again at least this often
    pub resolve_interval: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    pub protocol: UpstreamProtocol,
    pub tls: Option<UpstreamTls>,
    /// HTTP/2 PING while requests are open and the connection has been quiet this long
    pub http2_keepalive_interval: Duration,
    /// a PING unanswered this long closes the connection
    pub http2_keepalive_timeout: Duration,
    /// `headers = { … }`: set on every request to this upstream (replacing a client's)
    pub headers: Vec<UpstreamHeader>,
}

/// One `headers` entry: the value ready for the request path (marked sensitive, so hyper's
/// HTTP/2 encoder never indexes it), and where it came from (what `Debug` shows).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamHeader {
    pub name: http::HeaderName,
    pub value: http::HeaderValue,
    pub source: Secret,
}

impl Upstream {
    /// `a:1, b:2`, as `check` prints it
    pub fn endpoint_list(&self) -> String {
        let addrs: Vec<&str> = self.endpoints.iter().map(|e| e.addr.as_str()).collect();
        addrs.join(", ")
    }
}

/// The default PING interval toward upstreams: 5 minutes, never less. Default gRPC servers
/// (grpc-go, C-core) count a PING that comes less than 5 minutes after the previous one, while
/// they send nothing, as a strike and end the connection with `GOAWAY too_many_pings` after
/// the third — exactly what a silent agent stream does. hyper schedules the next PING from the
/// last frame read, which includes the previous PONG, so PINGs are always more than this far
/// apart at the server. NATs are kept open by TCP keepalive (30 s) instead; the client side
/// (`server.http2_keepalive_interval`, 20 s) is unaffected: client libraries answer PINGs.
const UPSTREAM_HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(300);

/// For `check`: each TLS upstream's files (CA bundle or the system roots, client certificate
/// and key, and that the key belongs to the certificate) build a client config, as the first
/// connection will. Returns the key path and the problem.
pub(super) fn check_tls_files(upstreams: &[Upstream]) -> Result<(), (String, String)> {
    for (i, u) in upstreams.iter().enumerate() {
        let Some(t) = &u.tls else { continue };
        let files = crate::tls::client::ClientTlsFiles {
            ca: t.ca.as_ref().map(|p| absolute(p)),
            client_cert: t
                .client_cert
                .as_ref()
                .map(|(c, k)| (absolute(c), absolute(k))),
            alpn: Vec::new(),
        };
        crate::tls::client::build(&files)
            .map_err(|e| (format!("upstreams[{i}].tls"), e.to_string()))?;
    }
    Ok(())
}

/// Paths in `check`'s messages are absolute: it often runs from another directory.
fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Validator {
    /// `headers`: names a request may carry toward an upstream (not hop-by-hop, not `Host`,
    /// which routing owns), values plain or `env:`/`file:` secrets.
    fn upstream_headers(
        &self,
        at: &str,
        raw: &std::collections::BTreeMap<String, String>,
    ) -> VResult<Vec<UpstreamHeader>> {
        const OWNED: &[&str] = &[
            "host",
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "content-length",
        ];
        let mut out = Vec::new();
        for (name, value) in raw {
            let key = format!("{at}.{name}");
            let n = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| self.err(&key, "not a valid header name"))?;
            if OWNED.contains(&n.as_str()) {
                return Err(self.err(&key, "set by the gateway itself (hop-by-hop or Host)"));
            }
            let source = self.secret(&key, value, Literal::Allowed)?;
            let mut v = http::HeaderValue::from_str(source.expose())
                .map_err(|_| self.err(&key, "the value is not a valid header value"))?;
            v.set_sensitive(true);
            out.push(UpstreamHeader {
                name: n,
                value: v,
                source,
            });
        }
        Ok(out)
    }

    pub(super) fn upstreams(&self, raws: Vec<RawUpstream>) -> VResult<Vec<Upstream>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in raws.into_iter().enumerate() {
            let p = format!("upstreams[{i}]");
            self.name(&format!("{p}.name"), &r.name)?;
            if !seen.insert(r.name.clone()) {
                return Err(self.err(
                    format!("{p}.name"),
                    format!("duplicate upstream name {:?}", r.name),
                ));
            }
            if r.endpoints.is_empty() {
                return Err(self.err(format!("{p}.endpoints"), "needs at least one \"host:port\""));
            }
            let mut endpoints = Vec::new();
            for (j, e) in r.endpoints.iter().enumerate() {
                endpoints.push(self.pool_endpoint(&format!("{p}.endpoints[{j}]"), e)?);
            }
            let tls = match r.tls {
                Some(t) => Some(self.upstream_tls(&format!("{p}.tls"), t)?),
                None => None,
            };
            let protocol = self.upstream_protocol(&p, r.protocol.as_deref(), tls.is_some())?;
            let balance = self.balance(&p, r.balance.as_deref())?;
            let headers = self.upstream_headers(&format!("{p}.headers"), &r.headers)?;
            out.push(Upstream {
                headers,
                balance,
                fallback: r.fallback.unwrap_or_default(),
                outlier: self.outlier(&format!("{p}.outlier"), r.outlier.unwrap_or_default())?,
                health_check: r
                    .health_check
                    .map(|h| self.health_check(&format!("{p}.health_check"), h))
                    .transpose()?,
                resolve_interval: self.positive_duration(
                    &format!("{p}.resolve_interval"),
                    &r.resolve_interval,
                    Duration::from_secs(30),
                )?,
                name: r.name,
                protocol,
                tls,
                http2_keepalive_interval: self.positive_duration(
                    &format!("{p}.http2_keepalive_interval"),
                    &r.http2_keepalive_interval,
                    UPSTREAM_HTTP2_KEEPALIVE_INTERVAL,
                )?,
                http2_keepalive_timeout: self.positive_duration(
                    &format!("{p}.http2_keepalive_timeout"),
                    &r.http2_keepalive_timeout,
                    Duration::from_secs(20),
                )?,
                endpoints,
                connect_timeout: self.positive_duration(
                    &format!("{p}.connect_timeout"),
                    &r.connect_timeout,
                    Duration::from_secs(2),
                )?,
                read_timeout: self.positive_duration(
                    &format!("{p}.read_timeout"),
                    &r.read_timeout,
                    Duration::from_secs(60),
                )?,
                pool_idle_timeout: self.positive_duration(
                    &format!("{p}.pool_idle_timeout"),
                    &r.pool_idle_timeout,
                    Duration::from_secs(60),
                )?,
                pool_max_idle: self.count(
                    &format!("{p}.pool_max_idle"),
                    r.pool_max_idle,
                    1024,
                    0,
                    1 << 20,
                )?,
            });
        }
        let chains: Vec<(&str, &[String])> = out
            .iter()
            .map(|u| (u.name.as_str(), &u.fallback[..]))
            .collect();
        self.fallbacks(&chains)?;
        Ok(out)
    }

    fn upstream_protocol(
        &self,
        p: &str,
        protocol: Option<&str>,
        tls: bool,
    ) -> VResult<UpstreamProtocol> {
        let path = format!("{p}.protocol");
        let protocol = match protocol.unwrap_or("http1") {
            "http1" => UpstreamProtocol::Http1,
            "h2" => UpstreamProtocol::H2,
            "h2c" => UpstreamProtocol::H2c,
            "auto" => UpstreamProtocol::Auto,
            other => {
                return Err(self.err(
                    path,
                    format!("{other:?}: expected \"http1\", \"h2\", \"h2c\" or \"auto\""),
                ))
            }
        };
        match (protocol, tls) {
            (UpstreamProtocol::H2 | UpstreamProtocol::Auto, false) => Err(self.err(
                path,
                "needs TLS (ALPN): add tls = {} (or use \"h2c\" for cleartext HTTP/2)",
            )),
            (UpstreamProtocol::H2c, true) => Err(self.err(
                path,
                "\"h2c\" is cleartext HTTP/2: use \"h2\" or \"auto\" with tls",
            )),
            _ => Ok(protocol),
        }
    }

    fn upstream_tls(&self, p: &str, t: RawUpstreamTls) -> VResult<UpstreamTls> {
        let sni = match t.sni {
            Some(s) => {
                // the name the certificate must carry: a DNS name or an IP address
                if rustls::pki_types::ServerName::try_from(s.as_str()).is_err() {
                    return Err(self.err(
                        format!("{p}.sni"),
                        format!("{s:?} is not a DNS name or IP address"),
                    ));
                }
                Some(s)
            }
            None => None,
        };
        let file = |key: &str, v: &Option<String>| -> VResult<Option<PathBuf>> {
            match v.as_deref() {
                Some("") => Err(self.err(format!("{p}.{key}"), "must not be empty")),
                Some(f) => Ok(Some(self.path(f))),
                None => Ok(None),
            }
        };
        let ca = file("ca", &t.ca)?;
        let client_cert = match (
            file("client_cert", &t.client_cert)?,
            file("client_key", &t.client_key)?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.err(format!("{p}.client_key"), "needed with client_cert"))
            }
            (None, Some(_)) => {
                return Err(self.err(format!("{p}.client_cert"), "needed with client_key"))
            }
        };
        Ok(UpstreamTls {
            sni,
            ca,
            client_cert,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};
    use super::*;

    #[test]
    fn endpoints_are_host_port_without_scheme() {
        let u = &parse(GOOD).expect("valid").upstreams[0];
        assert_eq!(u.endpoints[0].addr, "127.0.0.1:5052");
        assert_eq!(u.endpoints[0].weight, 1);
        assert_eq!(u.balance, Balance::RoundRobin);
        assert_eq!(u.outlier.consecutive_failures, 5);
        assert_eq!(u.resolve_interval, Duration::from_secs(30));
        assert_eq!(u.connect_timeout, Duration::from_secs(2));
        let cases = [
            ("[\"http://127.0.0.1:5052\"]", "without a scheme"),
            ("[\"127.0.0.1\"]", "has no port"),
            ("[]", "at least one"),
        ];
        for (endpoints, problem) in cases {
            let text = GOOD.replace("[\"127.0.0.1:5052\"]", endpoints);
            let e = parse(&text).unwrap_err();
            assert!(
                e.path.starts_with("upstreams[0].endpoints"),
                "{endpoints}: {e}"
            );
            assert!(e.problem.contains(problem), "{endpoints}: {e}");
        }
    }

    #[test]
    fn duplicate_names_and_zero_timeouts_are_refused() {
        let dup = format!("{GOOD}\n[[upstreams]]\nname = \"up\"\nendpoints = [\"127.0.0.1:1\"]\n");
        assert_eq!(parse(&dup).unwrap_err().path, "upstreams[1].name");
        let zero = GOOD.replace("name = \"up\"", "name = \"up\"\nread_timeout = \"0s\"");
        assert_eq!(parse(&zero).unwrap_err().path, "upstreams[0].read_timeout");
    }

    fn with(keys: &str) -> String {
        GOOD.replace("name = \"up\"", &format!("name = \"up\"\n{keys}"))
    }

    #[test]
    fn protocol_and_tls_defaults() {
        let u = &parse(GOOD).expect("valid").upstreams[0];
        assert_eq!(u.protocol, UpstreamProtocol::Http1);
        assert_eq!(u.tls, None);
        // PINGs no closer than a default gRPC server's 5-minute policy allows
        assert_eq!(u.http2_keepalive_interval, Duration::from_secs(300));
        assert_eq!(u.http2_keepalive_timeout, Duration::from_secs(20));
        let u = parse(&with("tls = {}\nprotocol = \"auto\""))
            .expect("valid")
            .upstreams[0]
            .clone();
        assert_eq!(u.protocol, UpstreamProtocol::Auto);
        assert_eq!(u.tls, Some(UpstreamTls::default()));
        let u = parse(&with(
            "tls = { sni = \"b.internal\", ca = \"/ca.pem\", client_cert = \"/c.pem\", client_key = \"/k.pem\" }",
        ))
        .expect("valid")
        .upstreams[0]
            .clone();
        let t = u.tls.expect("tls");
        assert_eq!(t.sni.as_deref(), Some("b.internal"));
        assert_eq!(t.ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(
            t.client_cert,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        assert_eq!(
            parse(&with("protocol = \"h2c\"")).expect("valid").upstreams[0].protocol,
            UpstreamProtocol::H2c
        );
    }

    #[test]
    fn protocol_and_tls_mistakes_are_refused() {
        let cases = [
            ("protocol = \"h3\"", "upstreams[0].protocol"),
            ("protocol = \"h2\"", "upstreams[0].protocol"),
            ("protocol = \"auto\"", "upstreams[0].protocol"),
            ("protocol = \"h2c\"\ntls = {}", "upstreams[0].protocol"),
            ("tls = { sni = \"not a name\" }", "upstreams[0].tls.sni"),
            (
                "tls = { client_cert = \"/c.pem\" }",
                "upstreams[0].tls.client_key",
            ),
            (
                "tls = { client_key = \"/k.pem\" }",
                "upstreams[0].tls.client_cert",
            ),
            ("tls = { ca = \"\" }", "upstreams[0].tls.ca"),
            ("tls = { insecure = true }", "upstreams[0].tls"),
            (
                "http2_keepalive_interval = \"0s\"",
                "upstreams[0].http2_keepalive_interval",
            ),
        ];
        for (keys, path) in cases {
            let e = parse(&with(keys)).unwrap_err();
            assert!(e.path.starts_with(path), "{keys}: {e}");
        }
    }
}
