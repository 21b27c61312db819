//! Configuration: the TOML file is parsed once into [`raw`] structs, then validated into the
//! typed structs below. Everything the request path needs (header names, methods, indices of
//! upstreams) is pre-computed here, so the hot path never touches TOML or re-parses strings.
//!
//! Every problem is reported as `FILE: key.path: problem`.

mod raw;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, Uri};

use crate::auth::alg::Alg;
// forwarding owns the address-block type; re-exported so `config::IpNet` keeps working
pub use crate::forward::ipnet::IpNet;
// the stores own URL redaction; re-exported so `config::redact_url` keeps working
pub use crate::budget::redact::redact_url;
use raw::*;

/// A refused configuration: which file, which key, what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {path}: {problem}")]
pub struct ConfigError {
    pub file: String,
    pub path: String,
    pub problem: String,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// where it was read from (for messages and relative paths)
    pub source: PathBuf,
    pub server: Server,
    pub auth: Auth,
    pub log: Log,
    pub issuers: Vec<Issuer>,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    /// request budgets; `None` when none are configured (the pipeline then skips the step)
    pub budgets: Option<Budgets>,
}

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
}

/// The admin bearer token, read from the environment or a file at load time.
#[derive(Clone, PartialEq)]
pub struct AdminToken(pub String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenHeader {
    /// `Authorization: Bearer <token>` (scheme matched case-insensitively, RFC 9110 §11.1)
    Authorization,
    /// the whole header value is the token
    Plain(HeaderName),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub token_headers: Vec<TokenHeader>,
    /// lower-cased (header names are lower-case in `http`), e.g. `x-cc-`
    pub identity_header_prefix: String,
    pub token_cache_size: usize,
    pub max_token_bytes: usize,
    pub forward_token: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub access: AccessLog,
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `{issuer}/.well-known/openid-configuration` names the `jwks_uri`
    Discovery(Uri),
    JwksUri(Uri),
    JwksFile(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Issuer {
    pub name: String,
    /// must equal the token's `iss`
    pub issuer: String,
    pub source: KeySource,
    pub algorithms: Vec<Alg>,
    pub refresh_interval: Duration,
    pub leeway: Duration,
    /// (header, claim): when the client sends the header, it must equal the claim
    pub bind_headers: Vec<(HeaderName, String)>,
    pub fetch_timeout: Duration,
    /// an unknown `kid` triggers at most one refetch per this interval
    pub unknown_kid_refetch: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    Required,
    Public,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    pub strip_prefix: bool,
    /// index into `Config::upstreams`
    pub upstream: usize,
    pub audience: Option<String>,
    pub scopes: Vec<String>,
    pub auth: RouteAuth,
    pub methods: Option<Vec<Method>>,
    /// indices into `Config::issuers` whose tokens this route accepts (None = all)
    pub issuers: Option<Vec<usize>>,
    /// budget units a request on this route costs (overrides each rule's `cost`)
    pub cost: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Budgets {
    pub store: BudgetStore,
    pub on_store_error: OnStoreError,
    pub store_timeout: Duration,
    pub flush_interval: Duration,
    pub response_headers: bool,
    /// memory and SQLite stores: most keys held at once (idle ones go first)
    pub max_keys: usize,
    pub rules: Vec<BudgetRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BudgetStore {
    Memory,
    /// counters in memory, persisted to this SQLite file every `flush_interval`
    Sqlite(PathBuf),
    /// counters in Redis, shared by every node pointing at it
    Redis(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// GCRA: a sustained rate with a burst
    Rate,
    /// fixed windows aligned to UTC (multiples of the period since the Unix epoch)
    Quota,
}

/// `count` units per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u64,
    pub period: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeyPart {
    Claim(String),
    Header(HeaderName),
    Route,
    ClientIp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub low: f64,
    pub high: f64,
    pub limit: Limit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tiers {
    pub claim: String,
    pub ranges: Vec<Tier>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BudgetRule {
    pub name: String,
    /// indices into `Config::routes` (None = every route)
    pub routes: Option<Vec<usize>>,
    pub key: Vec<KeyPart>,
    pub kind: LimitKind,
    /// the rule's own limit (None: tiers only)
    pub limit: Option<Limit>,
    /// GCRA: how many requests may arrive at once
    pub burst: u64,
    pub cost: u64,
    pub tiers: Option<Tiers>,
    pub overrides: HashMap<String, Limit>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    /// `host:port` authorities
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            path: "(file)".into(),
            problem: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` names the file in messages and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let de = toml::de::Deserializer::parse(text).map_err(|e| syntax_error(&file, text, &e))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let problem = first_line(inner.message());
            // serde_path_to_error's path already ends with an unknown key's own name
            let key = if key.is_empty() || key == "." {
                unknown_field_name(&problem).unwrap_or_else(|| "(top level)".to_string())
            } else {
                key
            };
            ConfigError {
                file: file.clone(),
                path: key,
                problem,
            }
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Validator { file, base }.config(raw, path)
    }

    /// A short human summary (for `cc-gateway check`).
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "server: listen {} (admin {}), {} threads",
            listen.join(", "),
            self.server
                .admin_listen
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            self.server.threads
        );
        let _ = writeln!(s, "issuers ({}):", self.issuers.len());
        for i in &self.issuers {
            let algs: Vec<&str> = i.algorithms.iter().map(|a| a.name()).collect();
            let _ = writeln!(
                s,
                "  {:<16} {}  keys: {}  algs: {}",
                i.name,
                i.issuer,
                i.source,
                algs.join(",")
            );
        }
        let _ = writeln!(s, "routes ({}):", self.routes.len());
        for r in &self.routes {
            let auth = match r.auth {
                RouteAuth::Public => "public".to_string(),
                RouteAuth::Required => format!(
                    "aud={} scopes=[{}]",
                    r.audience.as_deref().unwrap_or("*"),
                    r.scopes.join(",")
                ),
            };
            let _ = writeln!(
                s,
                "  {:<16} {}{} -> {}  {}",
                r.name,
                r.path_prefix,
                if r.strip_prefix { " (strip)" } else { "" },
                self.upstreams[r.upstream].name,
                auth
            );
        }
        let _ = writeln!(s, "upstreams ({}):", self.upstreams.len());
        for u in &self.upstreams {
            let _ = writeln!(s, "  {:<16} {}", u.name, u.endpoints.join(", "));
        }
        if let Some(b) = &self.budgets {
            let _ = writeln!(
                s,
                "budgets ({} rules, store {}, on_store_error {:?}):",
                b.rules.len(),
                match &b.store {
                    BudgetStore::Memory => "memory".to_string(),
                    BudgetStore::Sqlite(p) => format!("sqlite {}", p.display()),
                    BudgetStore::Redis(u) => format!("redis {}", redact_url(u)),
                },
                b.on_store_error
            );
            for r in &b.rules {
                let limit = r
                    .limit
                    .map(|l| format!("{}/{}", l.count, humantime::format_duration(l.period)))
                    .unwrap_or_else(|| "tiers".into());
                let kind = if r.kind == LimitKind::Rate {
                    format!("rate {limit} burst {}", r.burst)
                } else {
                    format!("quota {limit}")
                };
                let _ = writeln!(s, "  {:<16} {kind}", r.name);
            }
        }
        s
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Discovery(u) => write!(f, "discovery via {u}"),
            KeySource::JwksUri(u) => write!(f, "{u}"),
            KeySource::JwksFile(p) => write!(f, "file {}", p.display()),
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// serde says ``unknown field `foo`, expected one of …``: pull out `foo`.
fn unknown_field_name(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn syntax_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let path = match e.span() {
        Some(span) => {
            let upto = &text[..span.start.min(text.len())];
            let line = upto.matches('\n').count() + 1;
            let col = upto.len() - upto.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            format!("line {line}, column {col}")
        }
        None => "(syntax)".into(),
    };
    ConfigError {
        file: file.to_string(),
        path,
        problem: format!("TOML syntax: {}", first_line(e.message())),
    }
}

/// Raw → typed, accumulating the key path for messages.
struct Validator {
    file: String,
    base: PathBuf,
}

type VResult<T> = Result<T, ConfigError>;

impl Validator {
    fn err(&self, path: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            path: path.into(),
            problem: problem.into(),
        }
    }

    fn duration(&self, path: &str, v: &Option<String>, default: Duration) -> VResult<Duration> {
        match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(s.trim()).map_err(|e| {
                self.err(
                    path,
                    format!("invalid duration {s:?}: {e} (e.g. \"30s\", \"5m\", \"1h\")"),
                )
            }),
        }
    }

    fn positive_duration(
        &self,
        path: &str,
        v: &Option<String>,
        default: Duration,
    ) -> VResult<Duration> {
        let d = self.duration(path, v, default)?;
        if d.is_zero() {
            return Err(self.err(path, "must be greater than zero"));
        }
        Ok(d)
    }

    fn count(
        &self,
        path: &str,
        v: Option<i64>,
        default: usize,
        min: i64,
        max: i64,
    ) -> VResult<usize> {
        match v {
            None => Ok(default),
            Some(n) if n < min || n > max => {
                Err(self.err(path, format!("{n} is out of range ({min}..={max})")))
            }
            Some(n) => Ok(n as usize),
        }
    }

    fn addr(&self, path: &str, s: &str) -> VResult<SocketAddr> {
        s.parse::<SocketAddr>().map_err(|_| {
            self.err(
                path,
                format!("{s:?} is not an IP:port address (e.g. \"127.0.0.1:8080\", \"[::]:8080\")"),
            )
        })
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn config(&self, raw: RawConfig, source: &Path) -> VResult<Config> {
        let server = self.server(raw.server)?;
        let auth = self.auth(raw.auth)?;
        let log = self.log(raw.log)?;
        let upstreams = self.upstreams(raw.upstreams)?;
        let issuers = self.issuers(raw.issuers)?;
        let routes = self.routes(raw.routes, &upstreams, &issuers)?;
        let budgets = raw.budgets.map(|b| self.budgets(b, &routes)).transpose()?;
        Ok(Config {
            source: source.to_path_buf(),
            server,
            auth,
            log,
            issuers,
            routes,
            upstreams,
            budgets,
        })
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
                let secret = if let Some(name) = s.strip_prefix("env:") {
                    std::env::var(name).map_err(|_| {
                        self.err(p, format!("environment variable {name:?} is not set"))
                    })?
                } else if let Some(f) = s.strip_prefix("file:") {
                    let path = self.path(f);
                    std::fs::read_to_string(&path)
                        .map_err(|e| self.err(p, format!("cannot read {}: {e}", path.display())))?
                } else {
                    return Err(self.err(p, "use \"env:NAME\" or \"file:PATH\" (a token written in the config would leak with it)"));
                };
                let secret = secret.trim().to_string();
                if secret.len() < 16 {
                    return Err(self.err(p, "the token must be at least 16 characters"));
                }
                Some(AdminToken(secret))
            }
        };
        if token.is_none() && admin.is_some_and(|a| !a.ip().is_loopback()) {
            return Err(self.err(p, "required when admin_listen is not a loopback address"));
        }
        Ok(token)
    }

    /// `N/period`, e.g. `600/1m`, `5000/1d`.
    fn limit(&self, path: &str, s: &str) -> VResult<Limit> {
        let bad = || {
            self.err(
                path,
                format!("{s:?}: expected \"N/period\" such as \"600/1m\" or \"5000/1d\""),
            )
        };
        let (n, per) = s.split_once('/').ok_or_else(bad)?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        let period = humantime::parse_duration(per.trim()).map_err(|_| bad())?;
        if count == 0 || period < Duration::from_secs(1) || period.subsec_nanos() != 0 {
            return Err(self.err(
                path,
                format!("{s:?}: needs at least 1 unit per a whole number of seconds"),
            ));
        }
        Ok(Limit { count, period })
    }

    fn budgets(&self, r: RawBudgets, routes: &[Route]) -> VResult<Budgets> {
        let store = match r.store.as_deref().unwrap_or("memory") {
            "memory" => BudgetStore::Memory,
            s if s.starts_with("sqlite://") => {
                let p = &s["sqlite://".len()..];
                if p.is_empty() {
                    return Err(self.err("budgets.store", "sqlite:// needs a file path, e.g. \"sqlite:///var/lib/cc-gateway/budgets.db\""));
                }
                BudgetStore::Sqlite(self.path(p))
            }
            s if s.starts_with("redis://") || s.starts_with("rediss://") => {
                if redis::Client::open(s).is_err() {
                    return Err(self.err(
                        "budgets.store",
                        format!("{s:?} is not a Redis URL (redis://HOST:PORT/DB)"),
                    ));
                }
                BudgetStore::Redis(s.to_string())
            }
            s => {
                return Err(self.err(
                    "budgets.store",
                    format!(
                        "{s:?}: expected \"memory\", \"sqlite://PATH\" or \"redis://HOST:PORT/DB\""
                    ),
                ))
            }
        };
        let on_store_error = match r.on_store_error.as_deref().unwrap_or("allow") {
            "allow" => OnStoreError::Allow,
            "deny" => OnStoreError::Deny,
            s => {
                return Err(self.err(
                    "budgets.on_store_error",
                    format!("{s:?}: expected \"allow\" or \"deny\""),
                ))
            }
        };
        let mut names = HashSet::new();
        let mut rules = Vec::new();
        for (i, rr) in r.rules.into_iter().enumerate() {
            let p = format!("budgets.rules[{i}]");
            self.name(&format!("{p}.name"), &rr.name)?;
            if !names.insert(rr.name.clone()) {
                return Err(self.err(
                    format!("{p}.name"),
                    format!("duplicate rule name {:?}", rr.name),
                ));
            }
            let route_idx = match &rr.routes {
                None => None,
                Some(v) if v.is_empty() => {
                    return Err(self.err(
                        format!("{p}.routes"),
                        "empty: omit it to apply to every route",
                    ))
                }
                Some(v) => Some(
                    v.iter()
                        .enumerate()
                        .map(|(j, n)| {
                            routes.iter().position(|r| &r.name == n).ok_or_else(|| {
                                self.err(format!("{p}.routes[{j}]"), format!("unknown route {n:?}"))
                            })
                        })
                        .collect::<VResult<Vec<_>>>()?,
                ),
            };
            if rr.key.is_empty() {
                return Err(self.err(
                    format!("{p}.key"),
                    "needs at least one part (claim:<name>, header:<name>, route, client_ip)",
                ));
            }
            let mut key = Vec::new();
            for (j, k) in rr.key.iter().enumerate() {
                let kp = format!("{p}.key[{j}]");
                key.push(match k.as_str() {
                    "route" => KeyPart::Route,
                    "client_ip" => KeyPart::ClientIp,
                    _ => match k.split_once(':') {
                        Some(("claim", c)) if !c.is_empty() => KeyPart::Claim(c.to_string()),
                        Some(("header", h)) => {
                            KeyPart::Header(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                                self.err(&kp, format!("{h:?} is not a header name"))
                            })?)
                        }
                        _ => {
                            return Err(self.err(
                                kp,
                                format!(
                                "{k:?}: expected claim:<name>, header:<name>, route or client_ip"
                            ),
                            ))
                        }
                    },
                });
            }
            let (kind, limit) = match (&rr.rate, &rr.quota) {
                (Some(_), Some(_)) => {
                    return Err(self.err(&p, "has both rate and quota: one rule, one kind of limit"))
                }
                (Some(r), None) => (LimitKind::Rate, Some(self.limit(&format!("{p}.rate"), r)?)),
                (None, Some(q)) => (
                    LimitKind::Quota,
                    Some(self.limit(&format!("{p}.quota"), q)?),
                ),
                (None, None) if rr.tiers.is_some() => (LimitKind::Rate, None),
                (None, None) => {
                    return Err(self.err(&p, "needs rate = \"N/period\" or quota = \"N/period\""))
                }
            };
            if rr.burst.is_some() && kind == LimitKind::Quota {
                return Err(self.err(format!("{p}.burst"), "applies to rate rules only"));
            }
            let burst = self.count(&format!("{p}.burst"), rr.burst, 1, 1, 1_000_000_000)? as u64;
            let cost = self.count(&format!("{p}.cost"), rr.cost, 1, 1, 1_000_000_000)? as u64;
            let tiers = match rr.tiers {
                None => None,
                Some(t) => {
                    let tp = format!("{p}.tiers");
                    if t.claim.is_empty() {
                        return Err(self.err(format!("{tp}.claim"), "must name a numeric claim"));
                    }
                    if t.ranges.is_empty() {
                        return Err(self.err(
                            format!("{tp}.ranges"),
                            "needs at least one [low, high, \"N/period\"]",
                        ));
                    }
                    let mut ranges = Vec::new();
                    for (j, r) in t.ranges.iter().enumerate() {
                        let rp = format!("{tp}.ranges[{j}]");
                        let num = |v: &toml::Value| match v {
                            toml::Value::Integer(i) => Some(*i as f64),
                            toml::Value::Float(f) => Some(*f),
                            toml::Value::String(s) if s == "inf" => Some(f64::INFINITY),
                            _ => None,
                        };
                        let (Some(low), Some(high), Some(toml::Value::String(l))) =
                            (r.first().and_then(num), r.get(1).and_then(num), r.get(2))
                        else {
                            return Err(self.err(
                                rp,
                                "expected [low, high, \"N/period\"] (high may be \"inf\")",
                            ));
                        };
                        if r.len() != 3 || low > high {
                            return Err(
                                self.err(rp, "expected [low, high, \"N/period\"] with low <= high")
                            );
                        }
                        ranges.push(Tier {
                            low,
                            high,
                            limit: self.limit(&rp, l)?,
                        });
                    }
                    Some(Tiers {
                        claim: t.claim,
                        ranges,
                    })
                }
            };
            let mut overrides = HashMap::new();
            for (k, v) in &rr.overrides {
                overrides.insert(k.clone(), self.limit(&format!("{p}.overrides.{k}"), v)?);
            }
            rules.push(BudgetRule {
                name: rr.name,
                routes: route_idx,
                key,
                kind,
                limit,
                burst,
                cost,
                tiers,
                overrides,
            });
        }
        Ok(Budgets {
            store,
            on_store_error,
            store_timeout: self.positive_duration(
                "budgets.store_timeout",
                &r.store_timeout,
                Duration::from_millis(20),
            )?,
            flush_interval: self.positive_duration(
                "budgets.flush_interval",
                &r.flush_interval,
                Duration::from_secs(1),
            )?,
            response_headers: r.response_headers.unwrap_or(true),
            max_keys: match r.max_keys {
                None => 1_000_000,
                Some(n) if (1024..=1_000_000_000).contains(&n) => n as usize,
                Some(n) => {
                    return Err(self.err(
                        "budgets.max_keys",
                        format!("{n}: expected a number of keys from 1024 to 1000000000"),
                    ))
                }
            },
            rules,
        })
    }

    fn server(&self, r: RawServer) -> VResult<Server> {
        let listen = match r.listen {
            None => vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
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
        })
    }

    fn auth(&self, r: RawAuth) -> VResult<Auth> {
        let names = r
            .token_headers
            .unwrap_or_else(|| vec!["X-Gitlab-Token".into(), "Authorization".into()]);
        if names.is_empty() {
            return Err(self.err("auth.token_headers", "needs at least one header"));
        }
        let mut token_headers = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let h = HeaderName::from_bytes(n.trim().as_bytes()).map_err(|_| {
                self.err(
                    format!("auth.token_headers[{i}]"),
                    format!("{n:?} is not a valid header name"),
                )
            })?;
            let th = if h == http::header::AUTHORIZATION {
                TokenHeader::Authorization
            } else {
                TokenHeader::Plain(h)
            };
            if token_headers.contains(&th) {
                return Err(self.err(
                    format!("auth.token_headers[{i}]"),
                    format!("{n:?} is listed twice"),
                ));
            }
            token_headers.push(th);
        }
        let prefix = r.identity_header_prefix.unwrap_or_else(|| "X-Cc-".into());
        if prefix.len() < 2
            || HeaderName::from_bytes(format!("{prefix}subject").as_bytes()).is_err()
        {
            return Err(self.err(
                "auth.identity_header_prefix",
                format!("{prefix:?} is not a usable header name prefix (e.g. \"X-Cc-\")"),
            ));
        }
        Ok(Auth {
            token_headers,
            identity_header_prefix: prefix.to_ascii_lowercase(),
            token_cache_size: self.count(
                "auth.token_cache_size",
                r.token_cache_size,
                100_000,
                0,
                100_000_000,
            )?,
            max_token_bytes: self.count(
                "auth.max_token_bytes",
                r.max_token_bytes,
                8192,
                64,
                1 << 20,
            )?,
            forward_token: r.forward_token.unwrap_or(true),
        })
    }

    fn log(&self, r: RawLog) -> VResult<Log> {
        let access = match r.access.as_deref() {
            None | Some("stdout") => AccessLog::Stdout,
            Some("off") => AccessLog::Off,
            Some("") => {
                return Err(self.err(
                    "log.access",
                    "empty: use \"stdout\", \"off\" or a file path",
                ))
            }
            Some(p) => AccessLog::File(self.path(p)),
        };
        let level = r.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(self.err("log.level", format!("{level:?} is not a level or filter (e.g. \"info\", \"debug\", \"cc_gateway=debug\")")));
        }
        let format = match r.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(f) => {
                return Err(self.err(
                    "log.format",
                    format!("{f:?}: expected \"text\" or \"json\""),
                ))
            }
        };
        Ok(Log {
            access,
            level,
            format,
        })
    }

    fn upstreams(&self, raws: Vec<RawUpstream>) -> VResult<Vec<Upstream>> {
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
                endpoints.push(self.endpoint(&format!("{p}.endpoints[{j}]"), e)?);
            }
            out.push(Upstream {
                name: r.name,
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
        Ok(out)
    }

    fn endpoint(&self, path: &str, e: &str) -> VResult<String> {
        let e = e.trim();
        if e.contains("://") {
            return Err(self.err(
                path,
                format!("{e:?}: give \"host:port\" without a scheme (plain HTTP/1.1 upstreams)"),
            ));
        }
        let auth: http::uri::Authority = e
            .parse()
            .map_err(|_| self.err(path, format!("{e:?} is not \"host:port\"")))?;
        if auth.port_u16().is_none() {
            return Err(self.err(path, format!("{e:?} has no port")));
        }
        Ok(e.to_string())
    }

    fn name(&self, path: &str, n: &str) -> VResult<()> {
        let ok = !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if ok {
            Ok(())
        } else {
            Err(self.err(path, format!("{n:?}: names are 1-64 of [A-Za-z0-9._-]")))
        }
    }

    fn issuers(&self, raws: Vec<RawIssuer>) -> VResult<Vec<Issuer>> {
        let mut names = HashSet::new();
        let mut isses = HashSet::new();
        let mut out = Vec::new();
        for (i, r) in raws.into_iter().enumerate() {
            let p = format!("issuers[{i}]");
            self.name(&format!("{p}.name"), &r.name)?;
            if !names.insert(r.name.clone()) {
                return Err(self.err(
                    format!("{p}.name"),
                    format!("duplicate issuer name {:?}", r.name),
                ));
            }
            if r.issuer.is_empty() {
                return Err(self.err(
                    format!("{p}.issuer"),
                    "must not be empty (it must equal the tokens' iss)",
                ));
            }
            if !isses.insert(r.issuer.clone()) {
                return Err(self.err(
                    format!("{p}.issuer"),
                    format!("{:?} is configured twice", r.issuer),
                ));
            }
            let sources = r.discovery.unwrap_or(false) as u8
                + r.jwks_uri.is_some() as u8
                + r.jwks_file.is_some() as u8;
            if sources != 1 {
                return Err(self.err(
                    p.to_string(),
                    "needs exactly one key source: discovery = true, jwks_uri = \"…\" or jwks_file = \"…\"",
                ));
            }
            let source = if let Some(u) = &r.jwks_uri {
                KeySource::JwksUri(self.http_uri(&format!("{p}.jwks_uri"), u)?)
            } else if let Some(f) = &r.jwks_file {
                KeySource::JwksFile(self.path(f))
            } else {
                let base = r.issuer.trim_end_matches('/');
                let u = format!("{base}/.well-known/openid-configuration");
                KeySource::Discovery(self.http_uri(&format!("{p}.issuer"), &u)?)
            };
            let algorithms = match &r.algorithms {
                None => vec![Alg::RS256],
                Some(v) if v.is_empty() => {
                    return Err(self.err(format!("{p}.algorithms"), "needs at least one algorithm"))
                }
                Some(v) => {
                    let mut algs = Vec::new();
                    for (j, a) in v.iter().enumerate() {
                        let alg = Alg::from_name(a).ok_or_else(|| {
                            let hint = if a == "none" || a.starts_with("HS") {
                                " (refused: \"none\" and HMAC algorithms allow forgery by anyone holding the public key)"
                            } else {
                                ""
                            };
                            self.err(
                                format!("{p}.algorithms[{j}]"),
                                format!("unsupported algorithm {a:?}{hint}; supported: {}", Alg::ALL_NAMES),
                            )
                        })?;
                        if !algs.contains(&alg) {
                            algs.push(alg);
                        }
                    }
                    algs
                }
            };
            let mut bind_headers = Vec::new();
            for (h, claim) in &r.bind_headers {
                let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    self.err(
                        format!("{p}.bind_headers"),
                        format!("{h:?} is not a valid header name"),
                    )
                })?;
                if claim.is_empty() {
                    return Err(self.err(
                        format!("{p}.bind_headers.{h}"),
                        "claim name must not be empty",
                    ));
                }
                bind_headers.push((name, claim.clone()));
            }
            out.push(Issuer {
                name: r.name,
                issuer: r.issuer,
                source,
                algorithms,
                refresh_interval: self.positive_duration(
                    &format!("{p}.refresh_interval"),
                    &r.refresh_interval,
                    Duration::from_secs(3600),
                )?,
                leeway: self.duration(
                    &format!("{p}.leeway"),
                    &r.leeway,
                    Duration::from_secs(30),
                )?,
                bind_headers,
                fetch_timeout: self.positive_duration(
                    &format!("{p}.fetch_timeout"),
                    &r.fetch_timeout,
                    Duration::from_secs(5),
                )?,
                unknown_kid_refetch: self.positive_duration(
                    &format!("{p}.unknown_kid_refetch"),
                    &r.unknown_kid_refetch,
                    Duration::from_secs(30),
                )?,
            });
        }
        Ok(out)
    }

    fn http_uri(&self, path: &str, s: &str) -> VResult<Uri> {
        let u: Uri = s
            .parse()
            .map_err(|_| self.err(path, format!("{s:?} is not a URL")))?;
        match u.scheme_str() {
            Some("http") | Some("https") if u.host().is_some() => Ok(u),
            _ => Err(self.err(path, format!("{s:?}: expected an http:// or https:// URL"))),
        }
    }

    fn routes(
        &self,
        raws: Vec<RawRoute>,
        upstreams: &[Upstream],
        issuers: &[Issuer],
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
            let up_name = r.upstream.as_deref().ok_or_else(|| {
                self.err(
                    format!("{p}.upstream"),
                    "missing: name one of [[upstreams]]",
                )
            })?;
            let upstream = *ups.get(up_name).ok_or_else(|| {
                self.err(
                    format!("{p}.upstream"),
                    format!("unknown upstream {up_name:?}"),
                )
            })?;
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
            if auth == RouteAuth::Required && issuers.is_empty() {
                return Err(self.err(format!("{p}.auth"), "requires tokens but no [[issuers]] are configured (set auth = \"public\" or add an issuer)"));
            }
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
                audience: r.audience.filter(|a| !a.is_empty()),
                scopes: r.scopes.unwrap_or_default(),
                auth,
                methods,
                issuers: route_issuers,
                cost: r
                    .cost
                    .map(|c| {
                        self.count(&format!("{p}.cost"), Some(c), 1, 1, 1_000_000_000)
                            .map(|c| c as u64)
                    })
                    .transpose()?,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("gw.toml"))
    }

    const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:8080"]
threads = 2
[[issuers]]
name = "a"
issuer = "https://gitlab.com"
discovery = true
bind_headers = { "X-Gitlab-Instance-Id" = "sub" }
[[routes]]
name = "ai"
path_prefix = "/ai/"
strip_prefix = true
upstream = "up"
audience = "gitlab-ai-gateway"
scopes = ["code_suggestions"]
[[upstreams]]
name = "up"
endpoints = ["127.0.0.1:5052"]
"#;

    #[test]
    fn good_config_parses() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.server.threads, 2);
        assert_eq!(
            c.issuers[0].source,
            KeySource::Discovery(
                "https://gitlab.com/.well-known/openid-configuration"
                    .parse()
                    .unwrap()
            )
        );
        assert_eq!(c.routes[0].upstream, 0);
        assert_eq!(c.auth.identity_header_prefix, "x-cc-");
        assert_eq!(c.issuers[0].leeway, Duration::from_secs(30));
    }

    #[test]
    fn unknown_key_names_its_path() {
        let e = parse(&GOOD.replace("threads = 2", "threads = 2\nbogus = 1")).unwrap_err();
        assert_eq!(e.path, "server.bogus", "{e}");
        assert!(
            e.to_string()
                .starts_with("gw.toml: server.bogus: unknown field"),
            "{e}"
        );
        let e = parse(&GOOD.replace("strip_prefix = true", "strip_prefix = true\nstrip = 1"))
            .unwrap_err();
        assert_eq!(e.path, "routes[0].strip", "{e}");
    }

    #[test]
    fn bad_values_name_their_path() {
        let cases = [
            ("threads = 2", "threads = 0", "server.threads"),
            (
                "name = \"up\"\nendpoints",
                "name = \"up\"\nread_timeout = \"5 parsecs\"\nendpoints",
                "upstreams[0].read_timeout",
            ),
            (
                "upstream = \"up\"",
                "upstream = \"nope\"",
                "routes[0].upstream",
            ),
            ("discovery = true", "", "issuers[0]"),
            (
                "discovery = true",
                "discovery = true\nalgorithms = [\"HS256\"]",
                "issuers[0].algorithms[0]",
            ),
            (
                "path_prefix = \"/ai/\"",
                "path_prefix = \"ai\"",
                "routes[0].path_prefix",
            ),
            ("threads = 2", "threads = \"two\"", "server.threads"),
        ];
        for (from, to, path) in cases {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert_eq!(e.path, path, "{to}: {e}");
        }
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse("[server]\nlisten = [\n").unwrap_err();
        assert!(e.path.starts_with("line "), "{e}");
    }

    #[test]
    fn duplicate_route_names_refused() {
        let dup = format!(
            "{GOOD}\n[[routes]]\nname = \"ai\"\npath_prefix = \"/x/\"\nupstream = \"up\"\n"
        );
        let e = parse(&dup).unwrap_err();
        assert_eq!(e.path, "routes[1].name");
    }
}
