//! `[request_log]`: the queryable per-request log (SQLite or PostgreSQL). Off unless `store`
//! names one. A PostgreSQL URL may carry a password: it is kept in a [`StoreUrl`] whose
//! `Display`/`Debug` redact it, so `check`, error messages and logs never print it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;

use super::raw::RawRequestLog;
use super::secret::Literal;
use super::{Auth, TokenHeader, VResult, Validator};

#[derive(Debug, Clone, PartialEq)]
pub struct RequestLog {
    pub store: RequestLogStore,
    /// rows older than this are deleted (None: kept until `max_size` pushes them out)
    pub retention: Option<Duration>,
    /// SQLite: beyond this many bytes of live pages, the oldest rows go first
    pub max_size: Option<u64>,
    /// the `fields` column: name → where its value comes from, in name order
    pub fields: Vec<(String, FieldSource)>,
    /// rows waiting for the writer; beyond it rows are dropped (`queue_full`)
    pub queue_size: usize,
    /// rows per INSERT
    pub batch_size: usize,
    /// a partial batch is written after this long
    pub flush_interval: Duration,
    /// rows held while the store is unreachable; beyond it the oldest are dropped (`spool_full`)
    pub spool_size: usize,
    /// how long SIGTERM waits for the queue and spool to be written
    pub flush_timeout: Duration,
    /// the `node` column (default: the host name)
    pub node: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequestLogStore {
    Sqlite(PathBuf),
    Postgres(StoreUrl),
}

impl fmt::Display for RequestLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestLogStore::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            RequestLogStore::Postgres(u) => u.fmt(f),
        }
    }
}

/// A connection URL that may hold a password: printed with the password as `***`.
#[derive(Clone, PartialEq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// The URL itself, for connecting only.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// `scheme://user:secret@host/db?password=secret` → `scheme://user:***@host/db?password=***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => return "***".into(),
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldSource {
    /// a claim of the verified token (strings as is, other JSON values as JSON)
    Claim(String),
    /// a request header
    Header(HeaderName),
}

/// Headers that carry credentials: never copied into the log, whatever `fields` says.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-gitlab-token",
    "cookie",
];

impl Validator {
    pub(super) fn request_log(
        &self,
        r: Option<RawRequestLog>,
        auth: &Auth,
    ) -> VResult<Option<RequestLog>> {
        let Some(r) = r else { return Ok(None) };
        let p = "request_log.store";
        let store = match r.store.as_deref().map(str::trim) {
            None | Some("off") => return Ok(None),
            Some(s) => {
                // a PostgreSQL URL may carry a password: the shared `env:`/`file:` syntax keeps
                // it out of the config; messages then name the source, not the value
                let secret = if s.starts_with("env:") || s.starts_with("file:") {
                    Some(self.secret(p, s, Literal::Allowed)?)
                } else {
                    None
                };
                let s = secret.as_ref().map_or(s, |v| v.expose()).to_string();
                let shown = |url: &str| match &secret {
                    Some(from) => from.to_string(),
                    None => redact_url(url),
                };
                if let Some(path) = s.strip_prefix("sqlite://") {
                    if path.is_empty() {
                        return Err(self.err(p, "sqlite:// needs a file path"));
                    }
                    RequestLogStore::Sqlite(self.path(path))
                } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
                    let url = StoreUrl(s);
                    let pg = url
                        .secret()
                        .parse::<postgres::Config>()
                        .map_err(|e| self.err(p, format!("{}: {e}", shown(url.secret()))))?;
                    if pg.get_ssl_mode() == postgres::config::SslMode::Require {
                        return Err(self.err(
                            p,
                            format!(
                                "{}: sslmode=require: TLS to PostgreSQL is not supported yet",
                                shown(url.secret())
                            ),
                        ));
                    }
                    RequestLogStore::Postgres(url)
                } else {
                    return Err(self.err(
                        p,
                        format!(
                            "{}: expected \"off\", \"sqlite://PATH\", \"postgres://…\" or one of them through \"env:NAME\" / \"file:PATH\"",
                            shown(&s)
                        ),
                    ));
                }
            }
        };
        let retention = match r.retention.as_deref() {
            Some("off") => None,
            v => Some(self.positive_duration(
                "request_log.retention",
                &v.map(str::to_string),
                Duration::from_secs(30 * 86_400),
            )?),
        };
        let max_size = r
            .max_size
            .as_deref()
            .map(|s| {
                parse_size(s).ok_or_else(|| {
                    self.err(
                        "request_log.max_size",
                        format!("{s:?}: expected a size such as \"512MiB\" or \"10GiB\""),
                    )
                })
            })
            .transpose()?;
        let mut fields = Vec::new();
        for (name, src) in r.fields.unwrap_or_default() {
            let fp = format!("request_log.fields.{name}");
            self.name(&fp, &name)?;
            let source = if let Some(c) = src.strip_prefix("claim:") {
                FieldSource::Claim(c.trim().to_string())
            } else if let Some(h) = src.strip_prefix("header:") {
                let h = HeaderName::from_bytes(h.trim().as_bytes())
                    .map_err(|_| self.err(&fp, format!("{h:?} is not a valid header name")))?;
                let configured = auth.token_headers.iter().any(|t| match t {
                    TokenHeader::Authorization => h == http::header::AUTHORIZATION,
                    TokenHeader::Plain(n) => *n == h,
                });
                if configured || SECRET_HEADERS.contains(&h.as_str()) {
                    return Err(self.err(
                        &fp,
                        format!("{h} carries a token: it is never written to the request log"),
                    ));
                }
                FieldSource::Header(h)
            } else {
                return Err(self.err(
                    &fp,
                    format!("{src:?}: expected \"claim:NAME\" or \"header:NAME\""),
                ));
            };
            fields.push((name, source));
        }
        Ok(Some(RequestLog {
            store,
            retention,
            max_size,
            fields,
            queue_size: self.count(
                "request_log.queue_size",
                r.queue_size,
                65_536,
                1,
                10_000_000,
            )?,
            batch_size: self.count("request_log.batch_size", r.batch_size, 500, 1, 2_000)?,
            flush_interval: self.positive_duration(
                "request_log.flush_interval",
                &r.flush_interval,
                Duration::from_millis(200),
            )?,
            spool_size: self.count(
                "request_log.spool_size",
                r.spool_size,
                100_000,
                0,
                100_000_000,
            )?,
            flush_timeout: self.duration(
                "request_log.flush_timeout",
                &r.flush_timeout,
                Duration::from_secs(10),
            )?,
            node: r.node.unwrap_or_else(hostname),
        }))
    }
}

impl RequestLog {
    /// The `check` line: the store (password redacted), retention, size bound, fields.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.fields.iter().map(|(n, _)| n.as_str()).collect();
        format!(
            "request_log: store = \"{}\", retention = {}, max_size = {}, fields [{}], node {:?}",
            self.store,
            self.retention
                .map_or("off".into(), |r| humantime::format_duration(r).to_string()),
            self.max_size
                .map_or("none".into(), |b| format!("{b} bytes")),
            names.join(", "),
            self.node
        )
    }
}

/// `10GiB`, `512 MB`, `4096` (bytes).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        "tb" => 1_000_000_000_000,
        "tib" | "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&b| b > 0)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we read only up to the first NUL
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, GOOD};
    use super::*;

    fn with(section: &str) -> String {
        format!("{GOOD}\n[request_log]\n{section}\n")
    }

    #[test]
    fn off_by_default_and_when_said() {
        assert!(parse(GOOD).expect("valid").request_log.is_none());
        assert!(parse(&with("store = \"off\""))
            .expect("valid")
            .request_log
            .is_none());
    }

    #[test]
    fn sqlite_with_fields() {
        let c = parse(&with(
            "store = \"sqlite://req.db\"\nretention = \"7d\"\nmax_size = \"10GiB\"\nfields = { instance = \"header:X-Gitlab-Instance-Id\", user = \"claim:user_id\" }",
        ))
        .expect("valid");
        let l = c.request_log.expect("on");
        assert_eq!(l.store, RequestLogStore::Sqlite(PathBuf::from("req.db")));
        assert_eq!(l.max_size, Some(10 << 30));
        assert_eq!(l.retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(l.fields.len(), 2);
    }

    #[test]
    fn token_headers_are_refused() {
        for h in [
            "Authorization",
            "X-Gitlab-Token",
            "x-custom-token",
            "Cookie",
        ] {
            let cfg = with(&format!(
                "store = \"sqlite://r.db\"\nfields = {{ t = \"header:{h}\" }}"
            ))
            .replace(
                "[server]",
                "[auth]\ntoken_headers = [\"X-Custom-Token\", \"Authorization\"]\n[server]",
            );
            let e = parse(&cfg).unwrap_err();
            assert_eq!(e.path, "request_log.fields.t", "{h}: {e}");
        }
    }

    #[test]
    fn postgres_password_is_redacted() {
        let c = parse(&with("store = \"postgres://gw:hunter2@db.example/logs\"")).expect("valid");
        let l = c.request_log.clone().expect("on");
        let shown = format!("{} {:?} {}", l.store, l, c.summary());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("postgres://gw:***@db.example/logs"),
            "{shown}"
        );
        assert_eq!(
            redact_url("postgresql://h/db?user=a&password=x"),
            "postgresql://h/db?user=a&password=***"
        );
        let e = parse(&with("store = \"mysql://u:hunter2@h/db\"")).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn store_through_env_or_file_names_its_key_never_the_password() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pg-url");
        std::fs::write(&file, "postgres://gw:hunter2@db.example/logs\n").expect("write");
        let c = parse(&with(&format!("store = \"file:{}\"", file.display()))).expect("valid");
        let l = c.request_log.clone().expect("on");
        assert_eq!(l.store.to_string(), "postgres://gw:***@db.example/logs");
        let shown = format!("{:?} {}", l, c.summary());
        assert!(!shown.contains("hunter2"), "{shown}");
        // a variable no test sets (setting one would race other threads' getenv)
        let e = parse(&with("store = \"env:CC_GW_TEST_SURELY_UNSET_REQUEST_LOG\"")).unwrap_err();
        assert_eq!(e.path, "request_log.store", "{e}");
        assert!(
            e.problem.contains(
                "environment variable \"CC_GW_TEST_SURELY_UNSET_REQUEST_LOG\" is not set"
            ),
            "{e}"
        );
        let e = parse(&with("store = \"file:/nonexistent/pg-url\"")).unwrap_err();
        assert_eq!(e.path, "request_log.store", "{e}");
        // a bad URL read through a secret is named by its source, not shown even redacted
        std::fs::write(&file, "mysql://gw:hunter2@h/db\n").expect("write");
        let e = parse(&with(&format!("store = \"file:{}\"", file.display()))).unwrap_err();
        assert_eq!(e.path, "request_log.store", "{e}");
        assert!(e.problem.starts_with("file:"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64KiB"), Some(65_536));
        assert_eq!(parse_size("1 GB"), Some(1_000_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("0"), None);
    }
}
