//! The standard setup most tests use: one issuer ("test") whose JWKS is served by an in-test
//! server, an echo upstream, a protected route `/ai/` (strip_prefix, audience, scopes, bind
//! headers) and a public route `/public/`, and a running gateway that has loaded its keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

use super::client::{Req, Resp};
use super::gateway::Gateway;
use super::servers::{Echo, Jwks};
use super::tokens::{new_key, now, random_id, shared_rsa_key, sign, SigningKey};
use super::wait::wait_metric;

pub const AUD: &str = "gitlab-ai-gateway";
pub const SUB: &str = "8f6e4253-58ce-42b9-869c-97f5c2287ad2";
pub const REALM: &str = "saas";
pub const KID: &str = "test-key-1";

pub struct Opts {
    /// `auth.token_cache_size`.
    pub token_cache_size: usize,
    /// The issuer's `algorithms`.
    pub algorithms: Vec<String>,
    /// Algorithm of the issuer's signing key (`"RS256"` uses a key shared across tests).
    pub key_alg: String,
    /// TOML appended at the end (more `[[issuers]]`, `[[routes]]`, `[[upstreams]]`).
    pub extra: String,
    /// `log.level`.
    pub log_level: String,
    /// `read_timeout` of the echo upstream.
    pub read_timeout: String,
    /// Wait for `/readyz` == 200 before returning.
    pub wait_ready: bool,
    /// Replaces the issuer's `jwks_uri = ...` line (e.g. `discovery = true`, `jwks_file = "..."`).
    pub key_source: Option<String>,
    /// More keys for the `[auth]` table (e.g. `forward_token = false`).
    pub auth_extra: String,
    /// More keys for the `[server]` table (e.g. `admin_token = "file:..."`).
    pub server_extra: String,
    /// `server.threads` (2).
    pub threads: usize,
    /// TOML appended after the standard sections and before `extra` (`[budgets]`, `[[budgets.rules]]`).
    pub budgets: String,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            token_cache_size: 1000,
            algorithms: vec!["RS256".into()],
            key_alg: "RS256".into(),
            extra: String::new(),
            log_level: "info".into(),
            read_timeout: "10s".into(),
            wait_ready: true,
            key_source: None,
            auth_extra: String::new(),
            server_extra: String::new(),
            threads: 2,
            budgets: String::new(),
        }
    }
}

pub struct Fixture {
    pub key: SigningKey,
    pub alg: String,
    pub kid: String,
    pub jwks: Jwks,
    pub echo: Echo,
    /// The issuer string (`iss`), `http://127.0.0.1:PORT` of the JWKS server.
    pub iss: String,
    pub access_log: PathBuf,
    pub config_path: PathBuf,
    pub gw: Gateway,
    pub dir: TempDir,
}

/// Quoted TOML string.
pub fn q(s: &str) -> String {
    toml_str(s)
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `v` as a TOML array of strings.
fn toml_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", ")
    )
}

/// The standard config text.
pub fn standard_config(
    dir: &Path,
    iss: &str,
    key_source: &str,
    echo_addr: SocketAddr,
    opts: &Opts,
) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
threads = {threads}
{server_extra}

[auth]
token_headers = ["X-Gitlab-Token", "Authorization"]
identity_header_prefix = "X-Cc-"
token_cache_size = {cache}
{auth_extra}

[log]
access = {access}
level = {level}

[[issuers]]
name = "test"
issuer = {iss}
{key_source}
algorithms = {algs}
refresh_interval = "1h"
leeway = "30s"
bind_headers = {{ "X-Gitlab-Instance-Id" = "sub", "X-Gitlab-Realm" = "gitlab_realm" }}

[[routes]]
name = "ai"
path_prefix = "/ai/"
strip_prefix = true
upstream = "echo"
audience = "{AUD}"
scopes = ["code_suggestions", "duo_chat"]

[[routes]]
name = "public"
path_prefix = "/public/"
strip_prefix = false
upstream = "echo"
auth = "public"

[[upstreams]]
name = "echo"
endpoints = [{echo_addr}]
connect_timeout = "2s"
read_timeout = {read_timeout}
{budgets}
{extra}
"#,
        cache = opts.token_cache_size,
        access = toml_str(&dir.join("access.log").display().to_string()),
        level = toml_str(&opts.log_level),
        iss = toml_str(iss),
        algs = toml_list(&opts.algorithms),
        echo_addr = toml_str(&echo_addr.to_string()),
        read_timeout = toml_str(&opts.read_timeout),
        extra = opts.extra,
        auth_extra = opts.auth_extra,
        server_extra = opts.server_extra,
        threads = opts.threads,
        budgets = opts.budgets,
    )
}

/// Writes `text` as `gw.toml` in `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("gw.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

impl Fixture {
    /// The standard fixture with default [`Opts`].
    pub async fn start() -> Fixture {
        Fixture::with(Opts::default()).await
    }

    /// The standard fixture as `opts` says: servers started, config written, gateway running.
    pub async fn with(opts: Opts) -> Fixture {
        let dir = tempfile::tempdir().expect("creating temp dir");
        let key = if opts.key_alg == "RS256" {
            shared_rsa_key()
        } else {
            new_key(&opts.key_alg)
        };
        let kid = KID.to_string();
        let jwks = Jwks::start(vec![key.public_jwk(&kid)]).await;
        let echo = Echo::start("echo").await;
        let iss = jwks.base_url();
        let key_source = opts
            .key_source
            .clone()
            .unwrap_or_else(|| format!("jwks_uri = {}", toml_str(&jwks.jwks_uri())));
        let text = standard_config(dir.path(), &iss, &key_source, echo.addr, &opts);
        let config_path = write_config(dir.path(), &text);
        let gw = if opts.wait_ready {
            Gateway::start(&config_path).await
        } else {
            Gateway::spawn(&config_path).await
        };
        Fixture {
            key,
            alg: opts.key_alg.clone(),
            kid,
            jwks,
            echo,
            iss,
            access_log: dir.path().join("access.log"),
            config_path,
            gw,
            dir,
        }
    }

    /// Claims that pass every check of route `ai`.
    pub fn claims(&self) -> Value {
        let t = now();
        json!({
            "jti": random_id(),
            "iss": self.iss,
            "aud": AUD,
            "sub": SUB,
            "iat": t,
            "nbf": t - 5,
            "exp": t + 3600,
            "gitlab_realm": REALM,
            "scopes": ["code_suggestions", "duo_chat"],
        })
    }

    /// A fresh valid token (unique `jti`, so never in the token cache yet).
    pub fn token(&self) -> String {
        self.token_with(|_| {})
    }

    /// A token signed with the issuer key after `edit` changed the valid claims.
    pub fn token_with(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut c = self.claims();
        edit(&mut c);
        sign(&self.key, &self.alg, Some(&self.kid), &c)
    }

    /// Sends `req` to the gateway's data-plane listener.
    pub async fn send(&self, req: Req) -> Resp {
        self.gw.send(req).await
    }

    /// `POST /ai/v2/completions` with `X-Gitlab-Token: token`.
    pub fn ai_req(token: &str) -> Req {
        Req::post("/ai/v2/completions", r#"{"prompt_version":1}"#).token(token)
    }

    /// The gateway's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.gw.metrics().await
    }

    /// Sends `req`, asserts it is refused with `status`/`reason` (JSON body, WWW-Authenticate,
    /// X-Request-Id), that `auth_failures_total{reason}` grew by exactly one, and that the
    /// upstream never saw it.
    pub async fn expect_refused(&self, req: Req, status: u16, reason: &str) -> Resp {
        let before_text = self.metrics().await;
        let before = super::metrics::metric(
            &before_text,
            "cc_gateway_auth_failures_total",
            &[("reason", reason)],
        );
        let upstream_before = self.echo.count();
        let r = self.send(req).await;
        assert_error(&r, status, reason);
        wait_metric(
            &self.gw,
            "cc_gateway_auth_failures_total",
            &[("reason", reason)],
            before + 1.0,
        )
        .await;
        assert_eq!(
            self.echo.count(),
            upstream_before,
            "a request refused with {reason} reached the upstream"
        );
        r
    }

    /// Sends `req` and asserts 200 from the echo upstream; returns the echo JSON.
    pub async fn expect_ok(&self, req: Req) -> Value {
        let r = self.send(req).await;
        assert_eq!(
            r.status,
            200,
            "expected 200 from upstream, got {}",
            r.describe()
        );
        let v = r.json();
        assert_eq!(
            v["server"],
            "echo",
            "not the echo upstream's answer: {}",
            r.describe()
        );
        v
    }
}

/// Asserts an error response: status, JSON `reason`, non-empty `error`, `request_id` equal to the
/// `X-Request-Id` header, and the RFC 6750 challenge for 401/403.
pub fn assert_error(r: &Resp, status: u16, reason: &str) {
    assert_eq!(
        r.status,
        status,
        "expected {status} {reason}, got {}",
        r.describe()
    );
    let body = r.json();
    assert_eq!(
        body["reason"].as_str(),
        Some(reason),
        "wrong reason: {}",
        r.describe()
    );
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "missing `error` text: {}",
        r.describe()
    );
    let rid = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id on error response: {}", r.describe()));
    assert!(!rid.is_empty(), "empty X-Request-Id");
    assert_eq!(
        body["request_id"].as_str(),
        Some(rid.as_str()),
        "body request_id differs from the X-Request-Id header: {}",
        r.describe()
    );
    let ct = r.header("content-type").unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "error content-type {ct:?}: {}",
        r.describe()
    );
    match status {
        401 => {
            let www = r
                .header("www-authenticate")
                .unwrap_or_else(|| panic!("401 without WWW-Authenticate: {}", r.describe()));
            assert!(
                www.starts_with("Bearer"),
                "WWW-Authenticate is not a Bearer challenge: {www}"
            );
            if reason == "missing_token" {
                // RFC 6750 3.1 allows omitting the error code when no credentials were sent.
                if www.contains("error=") {
                    assert!(
                        www.contains("error=\"invalid_token\""),
                        "WWW-Authenticate: {www}"
                    );
                }
            } else {
                assert!(
                    www.contains("error=\"invalid_token\""),
                    "WWW-Authenticate lacks error=\"invalid_token\": {www}"
                );
                assert!(
                    www.contains("error_description="),
                    "WWW-Authenticate lacks error_description: {www}"
                );
            }
        }
        403 => {
            let www = r
                .header("www-authenticate")
                .unwrap_or_else(|| panic!("403 without WWW-Authenticate: {}", r.describe()));
            assert!(www.starts_with("Bearer"), "WWW-Authenticate: {www}");
            assert!(
                www.contains("error=\"insufficient_scope\""),
                "WWW-Authenticate lacks error=\"insufficient_scope\": {www}"
            );
            assert!(
                www.contains("error_description="),
                "WWW-Authenticate lacks error_description: {www}"
            );
        }
        _ => {}
    }
}
