//! Configuration: the TOML file is parsed once into [`raw`] structs, then validated into typed
//! structs, one file per section (`server`, `auth`, `log`, `issuers`, `routes`, `upstreams`,
//! `budgets`). Everything the request path needs (header names, methods, indices of upstreams)
//! is pre-computed here, so the hot path never touches TOML or re-parses strings.
//!
//! This file holds [`Config`], loading, the error type and the value parsers every section
//! shares (durations, counts, addresses, paths, names, limits). A new section gets its own
//! file: its typed structs, an `impl Validator` block with its validation, its unit tests, and
//! one line in `Validator::config`. What `cc-gateway check` adds lives beside: `summary`
//! (what it prints) and `references` (the files it opens, as `nginx -t`).
//!
//! Every problem is reported as `FILE: key.path: problem`.

mod auth;
mod budgets;
mod canary;
mod issuers;
mod log;
mod pools;
mod prices;
mod raw;
mod references;
mod request_log;
mod routes;
mod secret;
mod server;
mod summary;
mod tcp_routes;
mod telemetry;
mod tls;
mod tunnels;
mod upstreams;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use auth::{Auth, IdentityHeaders, TokenHeader};
pub use budgets::{
    BudgetRule, BudgetStore, BudgetUnit, Budgets, KeyPart, LimitKind, OnStoreError, Tier, Tiers,
};
pub use canary::{Canary, Share};
pub use issuers::{Issuer, KeySource};
pub use log::{AccessLog, Log, LogFormat};
pub use pools::{Balance, Endpoint, HealthCheck, Outlier};
pub use prices::{Price, Prices};
pub use request_log::{redact_url, FieldSource, RequestLog, RequestLogStore, StoreUrl};
pub use routes::{Route, RouteAuth, RouteKind, RouteStreams};
pub use secret::{Literal, Secret, SecretSource};
pub use server::{AdminToken, Server};
pub use tcp_routes::{split_host_port, TcpRoute, TcpTarget};
pub use telemetry::{SecretHeader, Telemetry};
pub use tls::{CertificateFiles, ClientAuth, ClientCertRule, ServerTls, TlsVersion, UriPattern};
pub use tunnels::{tunnel_of_host, Tunnel};
pub use upstreams::{Upstream, UpstreamHeader, UpstreamProtocol, UpstreamTls};

pub use routes::{Retries, RetryOn};

use raw::RawConfig;

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
    /// `[[prices]]`: the cost of AI usage on `kind = "ai"` routes
    pub prices: Prices,
    /// `[request_log]`; `None` when off
    pub request_log: Option<RequestLog>,
    /// `[[tcp_routes]]`: L4 routes, each with its own listen addresses
    pub tcp_routes: Vec<TcpRoute>,
    /// `[telemetry]`: OTLP trace export; `None` when absent (no span is ever recorded)
    pub telemetry: Option<Telemetry>,
    /// `[[tunnels]]`: private networks reached through agents that dial out to the gateway
    pub tunnels: Vec<Tunnel>,
}

/// `count` units per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u64,
    pub period: Duration,
}

/// `N/period` as written in the config (`600/1m`, `5000/1day`): one spelling for the `check`
/// summary, `GET /budgets` and the budget state.
impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.period)
        )
    }
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

    fn config(&self, raw: RawConfig, source: &Path) -> VResult<Config> {
        let server = self.server(raw.server)?;
        let auth = self.auth(raw.auth)?;
        let log = self.log(raw.log)?;
        let upstreams = self.upstreams(raw.upstreams)?;
        let issuers = self.issuers(raw.issuers)?;
        let tunnels = self.tunnels(raw.tunnels, &issuers)?;
        self.tunnel_endpoints(&upstreams, &tunnels)?;
        let routes = self.routes(raw.routes, &upstreams, &issuers, &tunnels, &server)?;
        self.client_cert_rules_need_client_auth(&routes, &server)?;
        let budgets = raw.budgets.map(|b| self.budgets(b, &routes)).transpose()?;
        let request_log = self.request_log(raw.request_log, &auth)?;
        let tcp_routes = self.tcp_routes(raw.tcp_routes, &upstreams, &tunnels, &server)?;
        Ok(Config {
            source: source.to_path_buf(),
            server,
            auth,
            log,
            issuers,
            routes,
            upstreams,
            budgets,
            prices: self.prices(raw.prices)?,
            request_log,
            tcp_routes,
            telemetry: self.telemetry(raw.telemetry)?,
            tunnels,
        })
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

    /// Bytes: a number, or a number with a unit — B, KiB, MiB, GiB (KB/MB/GB and K/M/G are
    /// read as the binary units: a limit is a buffer size, nobody means 10^6 there).
    fn size(&self, path: &str, s: &raw::RawSize, max: u64) -> VResult<u64> {
        let (n, shown) = match s {
            raw::RawSize::Bytes(n) => (u64::try_from(*n).ok(), n.to_string()),
            raw::RawSize::Text(t) => {
                let t = t.trim();
                let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                let (num, unit) = t.split_at(split);
                let mult = match unit.trim().to_ascii_lowercase().as_str() {
                    "" | "b" => Some(1u64),
                    "k" | "kb" | "kib" => Some(1 << 10),
                    "m" | "mb" | "mib" => Some(1 << 20),
                    "g" | "gb" | "gib" => Some(1 << 30),
                    _ => None,
                };
                let n = num
                    .parse::<u64>()
                    .ok()
                    .zip(mult)
                    .and_then(|(n, m)| n.checked_mul(m));
                (n, format!("{t:?}"))
            }
        };
        match n {
            None => Err(self.err(
                path,
                format!(
                    "{shown}: expected a size such as \"64KiB\", \"1MiB\" or a number of bytes"
                ),
            )),
            Some(n) if n > max => {
                Err(self.err(path, format!("{n} bytes is more than the {max} allowed")))
            }
            Some(n) => Ok(n),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("gw.toml"))
    }

    pub(super) const GOOD: &str = r#"
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
    fn limits_display_as_written() {
        let l = |count, secs| Limit {
            count,
            period: Duration::from_secs(secs),
        };
        assert_eq!(l(600, 60).to_string(), "600/1m");
        assert_eq!(l(5000, 86_400).to_string(), "5000/1day");
        assert_eq!(l(10, 5400).to_string(), "10/1h 30m");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse("[server]\nlisten = [\n").unwrap_err();
        assert!(e.path.starts_with("line "), "{e}");
    }
}
