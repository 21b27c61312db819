//! The `cc-gateway` command line. `anyhow` lives here only: library errors are typed.

mod cli_logs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use cc_gateway::auth::{self, Verifier};
use cc_gateway::config::{Config, LogFormat, RouteAuth};
use cc_gateway::keysync::{self, Fetcher};
use cc_gateway::token::{self, SigningKey};

/// Where `--config` comes from when it is not given: this variable, else [`DEFAULT_CONFIG`].
const CONFIG_ENV: &str = "CC_GATEWAY_CONFIG";
const DEFAULT_CONFIG: &str = "/etc/cc-gateway/gateway.toml";

#[derive(Parser)]
#[command(
    name = "cc-gateway",
    version,
    about = "Edge gateway: verifies service-token JWTs and routes by path"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Run {
        /// the config file
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// take the listening sockets over from the gateway running on `server.upgrade_socket`
        /// (zero-downtime binary upgrade): once this one serves, that one drains and exits
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and print a summary (exit 1 on any problem).
    Check {
        /// the config file
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Zero-config try-out: a dev issuer, a demo backend and the gateway in front of them.
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9091")]
        admin: SocketAddr,
        /// where to write the dev key and config (default: a temp dir)
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Mint and inspect tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Query the request log ([request_log]): rows newest first, or `logs stats`.
    Logs(Box<cli_logs::LogsArgs>),
    /// Expose a gateway `connect` route (TCP over WebSocket) as a local port: each connection
    /// to it opens a WebSocket to the route and carries the bytes, so `psql -h 127.0.0.1 -p PORT`
    /// reaches the database behind the gateway.
    Connect(ConnectArgs),
    /// Run a tunnel agent inside a private network: it dials out to the gateway
    /// (`/_tunnel/<tunnel>`) and serves the streams the gateway opens to the `--expose`d
    /// services; the gateway never connects in.
    Tunnel(TunnelArgs),
}

/// How `connect` and `tunnel` trust the gateway, and prove who they are to it.
#[derive(Args)]
struct GatewayTls {
    /// a PEM CA bundle that signs the gateway's certificate (default: the system roots)
    #[arg(long)]
    ca: Option<PathBuf>,
    /// a client certificate (PEM) for a gateway that asks for one; needs --key
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// the client certificate's private key (PEM)
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

impl GatewayTls {
    fn remote(
        self,
        url: http::Uri,
        token_file: Option<PathBuf>,
    ) -> cc_gateway::tcp::client::Remote {
        cc_gateway::tcp::client::Remote {
            url,
            token_file,
            ca: self.ca,
            client_cert: self.cert.zip(self.key),
        }
    }
}

#[derive(Args)]
struct TunnelArgs {
    /// the gateway's base URL, `wss://gw.example` (or `ws://` for a plaintext listener)
    #[arg(long)]
    gateway: String,
    /// the `[[tunnels]]` entry this agent serves
    #[arg(long)]
    tunnel: String,
    /// a file holding the agent's token (re-read at every reconnect, so it may rotate)
    #[arg(long)]
    token_file: PathBuf,
    /// a service this agent serves, NAME=HOST:PORT inside its network; repeatable
    #[arg(long = "expose", value_name = "NAME=HOST:PORT", required = true)]
    expose: Vec<String>,
    #[command(flatten)]
    tls: GatewayTls,
}

#[derive(Args)]
struct ConnectArgs {
    /// the route's URL, `wss://gw.example/connect/pg` (or `ws://` for a plaintext listener)
    #[arg(long)]
    url: String,
    /// a file holding the token (re-read for each connection, so a rotated token is used at
    /// once); omit for a public route
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// the local address to listen on
    #[arg(long, default_value = "127.0.0.1:5433")]
    listen: SocketAddr,
    #[command(flatten)]
    tls: GatewayTls,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Sign a token with a PEM private key (RSA, EC or Ed25519).
    Mint(MintArgs),
    /// Generate a signing key (PKCS#8 PEM) and its public JWKS (kid = RFC 7638 thumbprint).
    Keygen {
        /// RS256 (RSA 2048), ES256, ES384, ES512 or EdDSA
        #[arg(long, default_value = "RS256")]
        alg: String,
        /// where to write the private key (refused if the file exists, unless --force)
        #[arg(long)]
        key: PathBuf,
        /// where to write the public JWKS (refused if the file exists, unless --force or --add)
        #[arg(long)]
        jwks: PathBuf,
        /// key id (default: the key's thumbprint)
        #[arg(long)]
        kid: Option<String>,
        /// add the new public key to the existing JWKS, keeping the keys in it (the "old + new"
        /// phase of a key rotation)
        #[arg(long)]
        add: bool,
        /// overwrite an existing key file (and JWKS, without --add)
        #[arg(long)]
        force: bool,
    },
    /// Decode a token, verify it against the configured issuers and say why it would pass or
    /// fail (exit 0 valid, 1 invalid).
    Inspect {
        /// the config file
        #[arg(long, short, env = CONFIG_ENV, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// check this route's requirements too (default: every route that needs a token)
        #[arg(long)]
        route: Option<String>,
        /// the token, or `-` to read it from stdin (keeps it out of `ps` and shell history)
        token: String,
    },
}

#[derive(Args)]
struct MintArgs {
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)
    #[arg(long)]
    key: PathBuf,
    /// key id for the header (default: the key's RFC 7638 thumbprint, as `token keygen` uses)
    #[arg(long)]
    kid: Option<String>,
    #[arg(long)]
    iss: String,
    /// audience(s), comma-separated
    #[arg(long)]
    aud: Option<String>,
    #[arg(long)]
    sub: Option<String>,
    /// scopes, comma-separated
    #[arg(long)]
    scopes: Option<String>,
    /// lifetime, e.g. 1h, 3d
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// signing algorithm (default: the key's natural one, RS256 for RSA)
    #[arg(long)]
    alg: Option<String>,
    /// extra claim NAME=VALUE (VALUE as JSON when it parses, else a string); repeatable
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
    /// mint this many distinct tokens (one per line; `sub` gets a `-N` suffix), for load tests
    #[arg(long, default_value_t = 1)]
    count: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cc_gateway::tls::install_provider();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cc-gateway: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once. Library errors follow the thiserror habit of
/// putting their source in their own message (`cannot listen on ADDR: {source}`) *and* returning
/// it from `source()`, so anyhow's `{:#}` would print the same cause two or three times.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Run { config, upgrade } => {
            let cfg = load(&config)?;
            init_tracing(&cfg.log.level, cfg.log.format);
            // an error before the listeners are up means the gateway never started: say only
            // why; "stopped" is for one that was serving
            let mut started = false;
            let start = match upgrade {
                true => cc_gateway::server::Start::Upgrade,
                false => cc_gateway::server::Start::Fresh,
            };
            let result = cc_gateway::server::run_as(cfg, start, |_| started = true);
            match result {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) if started => Err(anyhow::Error::new(e).context("gateway stopped")),
                Err(e) => Err(e.into()),
            }
        }
        Cmd::Check { config } => match Config::load(&config).and_then(Config::check_references) {
            Ok(cfg) => {
                print!("{}", cfg.summary());
                println!("{}: OK", config.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Cmd::Dev { listen, admin, dir } => {
            init_tracing("info", LogFormat::Text);
            cc_gateway::dev::run(cc_gateway::dev::DevOptions { listen, admin, dir })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Logs(a) => cli_logs::run(*a),
        Cmd::Connect(a) => connect(a),
        Cmd::Tunnel(a) => tunnel(a),
        Cmd::Token(TokenCmd::Mint(a)) => {
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for t in mint(a)? {
                writeln!(out, "{t}")?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Token(TokenCmd::Keygen {
            alg,
            key,
            jwks,
            kid,
            add,
            force,
        }) => keygen(&alg, &key, &jwks, kid, add, force),
        Cmd::Token(TokenCmd::Inspect {
            config,
            route,
            token,
        }) => {
            let token = if token == "-" {
                let mut buf = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)
                    .context("reading the token from stdin")?;
                buf
            } else {
                token
            };
            inspect(&config, route.as_deref(), &token)
        }
    }
}

/// `cc-gateway connect`: runs until killed; prints `listening on ADDR` once the port is open.
fn connect(a: ConnectArgs) -> Result<ExitCode> {
    init_tracing("info", LogFormat::Text);
    let url: http::Uri = a
        .url
        .parse()
        .with_context(|| format!("--url {}: not a URL", a.url))?;
    let options = cc_gateway::tcp::client::Options {
        remote: a.tls.remote(url, a.token_file),
        listen: a.listen,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(cc_gateway::tcp::client::run(options, |addr| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {addr}");
        let _ = out.flush();
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// `cc-gateway tunnel`: runs until killed, reconnecting; prints `connected` on stdout each
/// time the gateway accepts it.
fn tunnel(a: TunnelArgs) -> Result<ExitCode> {
    init_tracing("info", LogFormat::Text);
    let mut expose = std::collections::HashMap::new();
    for e in &a.expose {
        let (name, addr) = e
            .split_once('=')
            .filter(|(n, a)| !n.is_empty() && !a.is_empty())
            .with_context(|| format!("--expose {e}: expected NAME=HOST:PORT"))?;
        if cc_gateway::config::split_host_port(addr).is_none() {
            bail!("--expose {e}: {addr:?} is not HOST:PORT");
        }
        if expose.insert(name.to_string(), addr.to_string()).is_some() {
            bail!("--expose {e}: {name:?} is exposed twice");
        }
    }
    let base = a.gateway.trim_end_matches('/');
    let url: http::Uri = format!("{base}/_tunnel/{}", a.tunnel)
        .parse()
        .with_context(|| format!("--gateway {}: not a URL", a.gateway))?;
    let options = cc_gateway::tunnel::agent::AgentOptions {
        remote: a.tls.remote(url, Some(a.token_file)),
        expose,
    };
    // one thread: an agent's work is copying bytes, and the HTTP/2 connection is one anyway
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(cc_gateway::tunnel::agent::run(options, || {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "connected");
        let _ = out.flush();
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// A config error is printed as `file: key.path: problem` by itself.
fn load(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn init_tracing(level: &str, format: LogFormat) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    // RUST_LOG, when set, wins over the file's level, at startup and at every reload
    let from_env = EnvFilter::try_from_default_env().ok();
    let pinned = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    if !pinned {
        cc_gateway::logging::register(Box::new(move |level| {
            let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            handle.reload(f).map_err(|e| e.to_string())
        }));
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let out = fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(out.json()).init(),
        LogFormat::Text => registry.with(out).init(),
    }
}

/// `token keygen`. Nothing is written until every check has passed, so a refused run leaves
/// the key and the JWKS as they were: overwriting either mid-rotation would lock out every token
/// signed with the old key.
fn keygen(
    alg: &str,
    key_path: &Path,
    jwks_path: &Path,
    kid: Option<String>,
    add: bool,
    force: bool,
) -> Result<ExitCode> {
    if !force && key_path.exists() {
        bail!(
            "{} already exists: refusing to overwrite a key (--force replaces it)",
            key_path.display()
        );
    }
    let mut set = if add {
        let text = std::fs::read_to_string(jwks_path).with_context(|| {
            format!(
                "--add: reading the JWKS to add to, {} (without --add a new one is written)",
                jwks_path.display()
            )
        })?;
        let set: Value = serde_json::from_str(&text)
            .with_context(|| format!("--add: {} is not JSON", jwks_path.display()))?;
        if !set["keys"].is_array() {
            bail!(
                "--add: {} is not a JWKS (no \"keys\" array)",
                jwks_path.display()
            );
        }
        set
    } else {
        if !force && jwks_path.exists() {
            bail!(
                "{} already exists: refusing to overwrite it (--add adds the new key to it, --force replaces it)",
                jwks_path.display()
            );
        }
        json!({ "keys": [] })
    };
    let k = SigningKey::generate(alg)?;
    let kid = kid.unwrap_or_else(|| token::thumbprint(&k.public_jwk("")));
    let keys = set["keys"].as_array_mut().context("JWKS keys")?;
    if keys.iter().any(|j| j["kid"].as_str() == Some(kid.as_str())) {
        bail!(
            "{} already has a key with kid {kid:?}: choose another --kid",
            jwks_path.display()
        );
    }
    keys.push(k.public_jwk(&kid));
    let count = keys.len();
    write_private(key_path, &k.to_pkcs8_pem(), force)?;
    write_replacing(jwks_path, &(serde_json::to_string_pretty(&set)? + "\n"))?;
    println!(
        "kid {kid}: private key {}, public JWKS {} ({count} key{})",
        key_path.display(),
        jwks_path.display(),
        if count == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Private keys are written readable by the owner only, also over an existing file (`--force`):
/// the mode given to `open` applies only to a file it creates. Without `overwrite` the file is
/// created exclusively, so a key that appeared since the check is not clobbered either.
fn write_private(path: &Path, pem: &str, overwrite: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(pem.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Replaces `path` whole (a sibling temp file renamed over it): a gateway reading its
/// `jwks_file` meanwhile sees the old set or the new one, never half a file.
fn write_replacing(path: &Path, text: &str) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

fn mint(a: MintArgs) -> Result<Vec<String>> {
    let pem =
        std::fs::read_to_string(&a.key).with_context(|| format!("reading {}", a.key.display()))?;
    let key = SigningKey::from_pem(&pem).with_context(|| format!("{}", a.key.display()))?;
    let alg = a
        .alg
        .unwrap_or_else(|| key.default_alg().name().to_string());
    let ttl = humantime::parse_duration(&a.ttl).with_context(|| format!("--ttl {:?}", a.ttl))?;
    let now = auth::verify::unix_now();
    let mut claims = json!({"iss": a.iss, "iat": now, "nbf": now, "exp": now + ttl.as_secs() as i64,
                            "jti": cc_gateway::forward::new_request_id().to_str().unwrap_or("")});
    if let Some(aud) = a.aud {
        let list: Vec<&str> = aud
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        claims["aud"] = if list.len() == 1 {
            json!(list[0])
        } else {
            json!(list)
        };
    }
    if let Some(sub) = a.sub {
        claims["sub"] = json!(sub);
    }
    if let Some(s) = a.scopes {
        claims["scopes"] = json!(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>());
    }
    for c in a.claims {
        let Some((k, v)) = c.split_once('=') else {
            bail!("--claim {c:?}: expected NAME=VALUE")
        };
        claims[k] = serde_json::from_str::<Value>(v).unwrap_or_else(|_| json!(v));
    }
    // a kid lets the gateway pick the key instead of trying each; the thumbprint is the kid
    // `token keygen` and `dev` publish by default
    let kid = a
        .kid
        .unwrap_or_else(|| token::thumbprint(&key.public_jwk("")));
    if a.count <= 1 {
        return Ok(vec![token::mint(&key, &alg, Some(&kid), &claims)?]);
    }
    let base_sub = claims["sub"].as_str().unwrap_or("sub").to_string();
    (0..a.count)
        .map(|i| {
            claims["sub"] = json!(format!("{base_sub}-{i}"));
            claims["jti"] = json!(cc_gateway::forward::new_request_id().to_str().unwrap_or(""));
            Ok(token::mint(&key, &alg, Some(&kid), &claims)?)
        })
        .collect()
}

fn inspect(config: &Path, only_route: Option<&str>, tok: &str) -> Result<ExitCode> {
    let cfg = load(config)?;
    let tok = tok.trim();
    match auth::jwt::decode(tok) {
        Ok(j) => {
            let h = json!({"alg": j.header.alg, "kid": j.header.kid, "typ": j.header.typ});
            println!("header: {h}");
            println!(
                "claims: {}",
                serde_json::to_string_pretty(&Value::Object(j.claims.clone()))?
            );
            for (name, v) in [
                ("exp", j.claims.get("exp")),
                ("nbf", j.claims.get("nbf")),
                ("iat", j.claims.get("iat")),
            ] {
                if let Some(t) = v.and_then(|v| v.as_i64()) {
                    let when =
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
                    println!("  {name} = {}", humantime::format_rfc3339(when));
                }
            }
        }
        Err(e) => println!("header/claims: cannot decode: {e}"),
    }
    let verifier = Arc::new(Verifier::new(&cfg));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let fetcher = Fetcher::new();
        for idx in 0..verifier.issuers().len() {
            if let Err(e) = keysync::refresh(&verifier, idx, &fetcher).await {
                println!("keys: issuer {}: {e}", verifier.issuers()[idx].cfg.name);
            }
        }
        verifier.verify_uncached(tok).await
    });
    let v = match result {
        Ok(v) => v,
        Err(e) => {
            println!(
                "verdict: {} ({}) — the gateway answers {} with reason {:?}",
                e.reason,
                e.detail,
                e.reason.status().as_u16(),
                e.reason.code()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "signature: ok ({} key {:?} of issuer {})",
        v.alg,
        v.kid.as_deref().unwrap_or("-"),
        verifier.issuers()[v.issuer_index].cfg.name
    );
    let headers = http::HeaderMap::new();
    let mut first_refusal = None;
    let mut any_route_ok = false;
    let mut checked = 0;
    println!("routes:");
    for r in cfg
        .routes
        .iter()
        .filter(|r| r.auth == RouteAuth::Required && only_route.is_none_or(|n| n == r.name))
    {
        checked += 1;
        match auth::authorize(r, &v, &verifier, &headers) {
            Ok(()) => {
                any_route_ok = true;
                println!("  {:<16} ok", r.name);
            }
            Err(e) => {
                println!("  {:<16} {} ({})", r.name, e.reason, e.detail);
                first_refusal.get_or_insert(e);
            }
        }
    }
    if let Some(n) = only_route {
        if checked == 0 {
            bail!("no route named {n:?} that requires a token");
        }
    }
    // the token is genuine, but the gateway would still refuse it wherever it is used
    if let (false, Some(e)) = (any_route_ok, first_refusal) {
        println!(
            "verdict: {} ({}) — the gateway answers {} with reason {:?} (bound headers are checked per request)",
            e.reason,
            e.detail,
            e.reason.status().as_u16(),
            e.reason.code()
        );
        return Ok(ExitCode::FAILURE);
    }
    println!("verdict: valid");
    Ok(ExitCode::SUCCESS)
}
