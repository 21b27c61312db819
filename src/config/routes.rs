//! `[[routes]]`: path prefixes to upstreams, with each route's token requirements.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::Method;

use super::raw::RawRoute;
use super::{Canary, ClientCertRule, Issuer, TcpTarget, Upstream, VResult, Validator};

mod retries;
pub use retries::{Retries, RetryOn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    Required,
    Public,
}

/// What a route carries. `Ai` routes have their responses' token usage read as they stream
/// past (access log fields, `cc_gateway_ai_*` metrics, `[[prices]]` cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteKind {
    /// ordinary HTTP (the default): nothing looks into bodies
    #[default]
    Http,
    Ai,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    pub strip_prefix: bool,
    /// index into `Config::upstreams`: the route's upstream, or of a split the heaviest (where
    /// a request without a canary key goes). Not read on a `connect` route (0 there, or its
    /// target's upstream): it has no upstream.
    pub upstream: usize,
    /// `upstream = [{ name, weight }, …]`: the split and how a request's share is chosen
    pub canary: Option<Canary>,
    pub audience: Option<String>,
    pub scopes: Vec<String>,
    pub auth: RouteAuth,
    pub methods: Option<Vec<Method>>,
    /// indices into `Config::issuers` whose tokens this route accepts (None = all)
    pub issuers: Option<Vec<usize>>,
    /// budget units a request on this route costs (overrides each rule's `cost`)
    pub cost: Option<u64>,
    /// the client certificate identities this route admits (`None`: no certificate needed)
    pub client_cert: Option<ClientCertRule>,
    /// upgrades and long-lived streams (`upgrades`, `idle_timeout`, `timeout`)
    pub streams: RouteStreams,
    /// `retries`: when a failed try is repeated (default: once on `connect` and `refused`)
    pub retries: Retries,
    /// `kind = "ai"`: usage is read from responses
    pub kind: RouteKind,
    /// `connect = …`: a WebSocket upgrade on this route becomes a byte stream to this target
    /// (TCP over WebSocket) instead of a request to an upstream
    pub connect: Option<TcpTarget>,
    /// the most request body bytes accepted (its own `max_request_body`, else the server's;
    /// None: unlimited): a longer declared length is refused before the upstream, a longer
    /// stream is cut — `413 request_body_too_large` either way
    pub max_request_body: Option<u64>,
}

/// How a route treats protocol upgrades and long-lived responses.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStreams {
    /// upgrade protocols (lowercase, without version) tunnelled to the upstream; any other
    /// `Upgrade` is stripped and the request proxied as an ordinary one
    pub upgrades: Vec<String>,
    /// a streamed response or tunnel with no bytes either way for this long is ended
    /// (None: never)
    pub idle_timeout: Option<Duration>,
    /// the whole exchange, from the request's arrival to the response's last byte
    /// (None: unbounded, the default, so hour-long streams live)
    pub timeout: Option<Duration>,
}

impl Default for RouteStreams {
    fn default() -> Self {
        RouteStreams {
            upgrades: vec!["websocket".into()],
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            timeout: None,
        }
    }
}

/// An hour: long enough for agent sessions with quiet gaps, short enough that an abandoned
/// stream does not hold a connection forever.
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Validator {
    pub(super) fn routes(
        &self,
        raws: Vec<RawRoute>,
        upstreams: &[Upstream],
        issuers: &[Issuer],
        tunnels: &[super::Tunnel],
        server: &super::Server,
    ) -> VResult<Vec<Route>> {
        let ups: HashMap<&str, usize> = upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let iss: HashMap<&str, usize> = issuers
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let mut names = HashSet::new();
        let mut prefixes: HashMap<(String, Option<Vec<Method>>), String> = HashMap::new();
        let mut out = Vec::new();
        for (i, r) in raws.into_iter().enumerate() {
            let p = format!("routes[{i}]");
            self.name(&format!("{p}.name"), &r.name)?;
            if r.name.starts_with('_') {
                // `_none` labels unrouted requests in metrics
                return Err(self.err(format!("{p}.name"), "names starting with '_' are reserved"));
            }
            if !names.insert(r.name.clone()) {
                return Err(self.err(
                    format!("{p}.name"),
                    format!("duplicate route name {:?}", r.name),
                ));
            }
            if !r.path_prefix.starts_with('/') {
                return Err(self.err(
                    format!("{p}.path_prefix"),
                    format!("{:?} must start with \"/\"", r.path_prefix),
                ));
            }
            if r.path_prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'?' || b == b'#' || !b.is_ascii_graphic())
            {
                return Err(self.err(
                    format!("{p}.path_prefix"),
                    format!(
                        "{:?} must be a plain path (no spaces, '?' or '#')",
                        r.path_prefix
                    ),
                ));
            }
            let auth = match r.auth.as_deref() {
                None | Some("required") => RouteAuth::Required,
                Some("public") => RouteAuth::Public,
                Some(a) => {
                    return Err(self.err(
                        format!("{p}.auth"),
                        format!("{a:?}: expected \"required\" or \"public\""),
                    ))
                }
            };
            let kind = match r.kind.as_deref() {
                None | Some("http") => RouteKind::Http,
                Some("ai") => RouteKind::Ai,
                Some(k) => {
                    return Err(self.err(
                        format!("{p}.kind"),
                        format!("{k:?}: expected \"http\" (the default) or \"ai\""),
                    ))
                }
            };
            let methods = match &r.methods {
                None => None,
                Some(v) if v.is_empty() => {
                    return Err(self.err(
                        format!("{p}.methods"),
                        "empty: omit it to allow every method",
                    ))
                }
                Some(v) => Some(
                    v.iter()
                        .enumerate()
                        .map(|(j, m)| {
                            let up = m.to_ascii_uppercase();
                            Method::from_bytes(up.as_bytes()).map_err(|_| {
                                self.err(
                                    format!("{p}.methods[{j}]"),
                                    format!("{m:?} is not an HTTP method"),
                                )
                            })
                        })
                        .collect::<VResult<Vec<_>>>()?,
                ),
            };
            let route_issuers = match &r.issuers {
                None => None,
                Some(v) if v.is_empty() => {
                    return Err(self.err(
                        format!("{p}.issuers"),
                        "empty: omit it to accept every issuer",
                    ))
                }
                Some(v) => Some(
                    v.iter()
                        .enumerate()
                        .map(|(j, n)| {
                            iss.get(n.as_str()).copied().ok_or_else(|| {
                                self.err(
                                    format!("{p}.issuers[{j}]"),
                                    format!("unknown issuer {n:?}"),
                                )
                            })
                        })
                        .collect::<VResult<Vec<_>>>()?,
                ),
            };
            let connect = match r.connect.as_deref() {
                None => None,
                Some(t) => Some(self.tcp_target(&format!("{p}.connect"), t, upstreams, tunnels)?),
            };
            let (upstream, canary) = match &connect {
                None => self.route_upstream(&p, r.upstream.as_ref(), r.canary, auth, &ups)?,
                Some(target) => {
                    self.connect_route(&p, &r.upstream, &r.canary, kind)?;
                    match target {
                        TcpTarget::Upstream(u) => (*u, None),
                        TcpTarget::Address { .. } | TcpTarget::Tunnel { .. } => (0, None),
                    }
                }
            };
            if auth == RouteAuth::Required && issuers.is_empty() {
                return Err(self.err(format!("{p}.auth"), "requires tokens but no [[issuers]] are configured (set auth = \"public\" or add an issuer)"));
            }
            let client_cert = r
                .client_cert
                .map(|c| self.client_cert_rule(&p, c))
                .transpose()?;
            let mut sorted_methods = methods.clone();
            if let Some(m) = &mut sorted_methods {
                m.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            }
            if let Some(other) =
                prefixes.insert((r.path_prefix.clone(), sorted_methods), r.name.clone())
            {
                return Err(self.err(
                    format!("{p}.path_prefix"),
                    format!("{:?} is already routed by {other:?}", r.path_prefix),
                ));
            }
            out.push(Route {
                name: r.name,
                path_prefix: r.path_prefix,
                strip_prefix: r.strip_prefix.unwrap_or(false),
                upstream,
                canary,
                audience: r.audience.filter(|a| !a.is_empty()),
                scopes: r.scopes.unwrap_or_default(),
                auth,
                methods,
                issuers: route_issuers,
                client_cert,
                cost: r
                    .cost
                    .map(|c| {
                        self.count(&format!("{p}.cost"), Some(c), 1, 1, 1_000_000_000)
                            .map(|c| c as u64)
                    })
                    .transpose()?,
                streams: self.route_streams(&p, r.upgrades, r.idle_timeout, r.timeout)?,
                retries: self.retries(&p, r.retries)?,
                max_request_body: self.body_limit(
                    &format!("{p}.max_request_body"),
                    r.max_request_body.as_ref(),
                    server.max_request_body,
                )?,
                kind,
                connect,
            });
        }
        Ok(out)
    }

    /// A `connect` route carries bytes, not requests: the keys that shape requests to an
    /// upstream have nothing to apply to.
    fn connect_route(
        &self,
        p: &str,
        upstream: &Option<toml::Value>,
        canary: &Option<super::raw::RawCanary>,
        kind: RouteKind,
    ) -> VResult<()> {
        let why = "a connect route carries a byte stream to its connect target, not requests to an upstream";
        if upstream.is_some() {
            return Err(self.err(format!("{p}.upstream"), why));
        }
        if canary.is_some() {
            return Err(self.err(format!("{p}.canary"), why));
        }
        if kind == RouteKind::Ai {
            return Err(self.err(format!("{p}.kind"), why));
        }
        Ok(())
    }

    fn route_streams(
        &self,
        p: &str,
        upgrades: Option<Vec<String>>,
        idle_timeout: Option<String>,
        timeout: Option<String>,
    ) -> VResult<RouteStreams> {
        let d = RouteStreams::default();
        let upgrades = match upgrades {
            None => d.upgrades,
            Some(v) => v
                .iter()
                .enumerate()
                .map(|(j, u)| {
                    let key = format!("{p}.upgrades[{j}]");
                    let token = !u.is_empty()
                        && u.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    if !token {
                        return Err(self.err(key, format!("{u:?} is not a protocol name")));
                    }
                    let lower = u.to_ascii_lowercase();
                    if lower == "h2c" {
                        // an h2c tunnel would carry any number of requests past routing and auth
                        return Err(self.err(key, "h2c is never tunnelled: clients reach HTTP/2 by prior knowledge (or TLS ALPN)"));
                    }
                    Ok(lower)
                })
                .collect::<VResult<Vec<_>>>()?,
        };
        let optional = |key: &str, v: Option<String>, default: Option<Duration>| match v {
            None => Ok(default),
            Some(s) if s.trim() == "off" => Ok(None),
            v => self
                .positive_duration(&format!("{p}.{key}"), &v, Duration::ZERO)
                .map(Some),
        };
        Ok(RouteStreams {
            upgrades,
            idle_timeout: optional("idle_timeout", idle_timeout, d.idle_timeout)?,
            timeout: optional("timeout", timeout, d.timeout)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{parse, GOOD};
    use super::RouteKind;

    #[test]
    fn duplicate_route_names_refused() {
        let dup = format!(
            "{GOOD}\n[[routes]]\nname = \"ai\"\npath_prefix = \"/x/\"\nupstream = \"up\"\n"
        );
        let e = parse(&dup).unwrap_err();
        assert_eq!(e.path, "routes[1].name");
    }

    fn with_route(keys: &str) -> String {
        GOOD.replace(
            "strip_prefix = true",
            &format!("strip_prefix = true\n{keys}"),
        )
    }

    #[test]
    fn route_kind() {
        assert_eq!(parse(GOOD).expect("valid").routes[0].kind, RouteKind::Http);
        let c = parse(&with_route("kind = \"ai\"")).expect("valid");
        assert_eq!(c.routes[0].kind, RouteKind::Ai);
        let e = parse(&with_route("kind = \"llm\"")).unwrap_err();
        assert_eq!(e.path, "routes[0].kind");
    }

    #[test]
    fn connect_routes() {
        let connect = |keys: &str| GOOD.replace("upstream = \"up\"\n", &format!("{keys}\n"));
        let c = parse(&connect("connect = \"db.internal:5432\"")).expect("valid");
        assert_eq!(
            c.routes[0].connect,
            Some(super::TcpTarget::Address {
                host: "db.internal".into(),
                port: 5432
            })
        );
        let c = parse(&connect("connect = \"up\"")).expect("valid");
        assert_eq!(c.routes[0].connect, Some(super::TcpTarget::Upstream(0)));
        assert_eq!(parse(GOOD).expect("valid").routes[0].connect, None);
        for (keys, path) in [
            ("connect = \"db\"", "routes[0].connect"),
            (
                "connect = \"db:5432\"\nupstream = \"up\"",
                "routes[0].upstream",
            ),
            ("connect = \"db:5432\"\nkind = \"ai\"", "routes[0].kind"),
        ] {
            let e = parse(&connect(keys)).unwrap_err();
            assert_eq!(e.path, path, "{keys}: {e}");
        }
    }

    #[test]
    fn stream_defaults() {
        let s = &parse(GOOD).expect("valid").routes[0].streams;
        assert_eq!(s.upgrades, vec!["websocket".to_string()]);
        assert_eq!(s.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(s.timeout, None);
    }

    #[test]
    fn stream_keys() {
        let c = parse(&with_route(
            "upgrades = []\nidle_timeout = \"90s\"\ntimeout = \"2h\"",
        ))
        .expect("valid");
        let s = &c.routes[0].streams;
        assert!(s.upgrades.is_empty());
        assert_eq!(s.idle_timeout, Some(Duration::from_secs(90)));
        assert_eq!(s.timeout, Some(Duration::from_secs(7200)));
        let s = &parse(&with_route(
            "upgrades = [\"WebSocket\"]\nidle_timeout = \"off\"",
        ))
        .expect("valid")
        .routes[0]
            .streams;
        assert_eq!(s.upgrades, vec!["websocket".to_string()]);
        assert_eq!(s.idle_timeout, None);
        for (keys, path) in [
            ("upgrades = [\"h2c\"]", "routes[0].upgrades[0]"),
            ("upgrades = [\"web socket\"]", "routes[0].upgrades[0]"),
            ("idle_timeout = \"0s\"", "routes[0].idle_timeout"),
            ("timeout = \"soon\"", "routes[0].timeout"),
        ] {
            let e = parse(&with_route(keys)).unwrap_err();
            assert_eq!(e.path, path, "{keys}: {e}");
        }
    }
}
