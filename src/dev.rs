//! `cc-gateway dev`: a zero-config try-out. Generates a signing key, serves it as a local
//! OIDC issuer (discovery + JWKS) next to a demo backend (JSON echo and an SSE completion),
//! writes a real config for them and runs the gateway on it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::config::Config;
use crate::token::{self, SigningKey};

pub struct DevOptions {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Token(#[from] token::TokenError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
}

type DemoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub fn run(opts: DevOptions) -> Result<(), DevError> {
    // the key first: generating it is the slow part, and until the gateway's signal handlers
    // are in place a Ctrl-C kills the process before the directory guard can remove anything
    let key = SigningKey::generate("RS256")?;
    let jwk = key.public_jwk("dev");
    let kid = token::thumbprint(&jwk);
    let mut jwk = key.public_jwk(&kid);
    jwk["alg"] = json!("RS256");
    let dir = match opts.dir {
        Some(dir) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            DevDir::kept(dir)
        }
        None => DevDir::create_temp()?,
    };
    let key_path = dir.path.join("dev-signing-key.pem");
    write_private(&key_path, &key.to_pkcs8_pem())?;

    // the demo backend doubles as the dev issuer
    let backend = std::net::TcpListener::bind("127.0.0.1:0")?;
    backend.set_nonblocking(true)?;
    let backend_addr = backend.local_addr()?;
    let issuer = format!("http://{backend_addr}");
    let jwks = json!({ "keys": [jwk] });
    let iss = issuer.clone();
    std::thread::Builder::new()
        .name("cc-dev-backend".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return eprintln!("cc-gateway dev: backend runtime: {e}"),
            };
            rt.block_on(demo_backend(backend, iss, jwks));
        })?;

    let config_path = dir.path.join("gateway.toml");
    std::fs::write(
        &config_path,
        dev_config(&opts.listen, &opts.admin, &issuer, &backend_addr),
    )?;
    let config = Config::load(&config_path)?;

    let now = crate::auth::verify::unix_now();
    let claims = json!({
        "iss": issuer, "aud": "gitlab-ai-gateway", "sub": "8f6e4253-58ce-42b9-869c-97f5c2287ad2",
        "iat": now, "nbf": now, "exp": now + 12 * 3600, "jti": crate::forward::new_request_id().to_str().unwrap_or(""),
        "gitlab_realm": "self-managed", "scopes": ["code_suggestions", "duo_chat"],
    });
    let tok = token::mint(&key, "RS256", Some(&kid), &claims)?;
    let dir_shown = dir.path.display().to_string();
    let files_note = if dir.remove_on_drop {
        "removed on exit; pass --dir to keep them"
    } else {
        "kept on exit"
    };
    let cfg_shown = shell_quote(&config_path.display().to_string());
    let key_shown = shell_quote(&key_path.display().to_string());
    // a fresh clone has no `cc-gateway` on the PATH: print the binary that is running, so the
    // commands can be pasted as they are (from any directory)
    let exe = std::env::current_exe()
        .map(|p| shell_quote(&p.display().to_string()))
        .unwrap_or_else(|_| "cc-gateway".into());
    let print_banner = move |b: &crate::server::Bound| {
        let gw = b
            .listen
            .first()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        let admin = b
            .admin
            .map(|a| format!("http://{a}"))
            .unwrap_or_else(|| "(off)".into());
        println!(
            r#"
cc-gateway dev — a gateway on {gw} in front of a demo AI backend, trusting a local dev issuer.
Files: {dir}  (gateway.toml, dev-signing-key.pem; {files_note})

A token (valid 12 h) for instance 8f6e4253-…, scopes code_suggestions + duo_chat:

  export TOKEN='{tok}'

Try it:

  curl -sS -H "X-Gitlab-Token: $TOKEN" -H 'Content-Type: application/json' \
       -d '{{"prompt_version":1,"current_file":{{"file_name":"main.py","content_above_cursor":"def hello"}}}}' \
       {gw}/ai/v2/completions

  curl -N -H "Authorization: Bearer $TOKEN" {gw}/ai/v2/completions/stream     # SSE, event by event
  curl -sS {gw}/ai/v2/completions                                             # 401 missing_token
  {exe} token inspect --config {cfg} "$TOKEN"    # why 401?
  {exe} token mint --key {key} --kid={kid} --iss {issuer} --aud gitlab-ai-gateway --sub me --scopes duo_chat --ttl 1h

Metrics: {admin}/metrics   Health: {admin}/readyz   Access log: stdout
Stop: Ctrl-C
"#,
            dir = dir_shown,
            exe = exe,
            cfg = cfg_shown,
            key = key_shown,
        );
    };
    crate::server::run_with(config, print_banner)?;
    // `dir` is dropped here, after the gateway has drained (SIGTERM and Ctrl-C included)
    drop(dir);
    Ok(())
}

/// The directory holding the dev key and config. One that `dev` made up is removed when the
/// run ends (error returns included): each run generates a fresh key, so nothing in it is
/// worth keeping, and a private key should not outlive its use in a shared temp dir.
struct DevDir {
    path: PathBuf,
    remove_on_drop: bool,
}

impl DevDir {
    /// A directory the user named (`--dir`): theirs to keep.
    fn kept(path: PathBuf) -> DevDir {
        DevDir {
            path,
            remove_on_drop: false,
        }
    }

    /// A fresh `cc-gateway-dev-*` directory in the temp dir, owner-only. Created exclusively (not
    /// `create_dir_all`): in a shared /tmp a name someone else made first is not ours to use.
    fn create_temp() -> Result<DevDir, std::io::Error> {
        let base = std::env::temp_dir();
        let mut tries = 0;
        loop {
            let path = base.join(format!(
                "cc-gateway-dev-{}-{:08x}",
                std::process::id(),
                fastrand::u32(..)
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    return Ok(DevDir {
                        path,
                        remove_on_drop: true,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for DevDir {
    fn drop(&mut self) {
        if self.remove_on_drop {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                eprintln!("cc-gateway dev: removing {}: {e}", self.path.display());
            }
        }
    }
}

/// Writes a private key readable by the owner only, also when the file already existed (a
/// reused `--dir`): the mode given to `open` applies only to a file it creates.
fn write_private(path: &Path, pem: &str) -> Result<(), std::io::Error> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(pem.as_bytes())
}

/// `s` as one shell word: as it is when that is safe, else single-quoted.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:,=@%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn dev_config(
    listen: &SocketAddr,
    admin: &SocketAddr,
    issuer: &str,
    backend: &SocketAddr,
) -> String {
    format!(
        r#"# written by `cc-gateway dev`
[server]
listen = ["{listen}"]
admin_listen = "{admin}"
threads = 2

[auth]
token_headers = ["X-Gitlab-Token", "Authorization"]
identity_header_prefix = "X-Cc-"

[log]
access = "stdout"
level = "info"

[[issuers]]
name = "dev"
issuer = "{issuer}"
discovery = true
algorithms = ["RS256"]
refresh_interval = "10m"
bind_headers = {{ "X-Gitlab-Instance-Id" = "sub", "X-Gitlab-Realm" = "gitlab_realm" }}

[[routes]]
name = "ai"
path_prefix = "/ai/"
strip_prefix = true
upstream = "demo"
audience = "gitlab-ai-gateway"
scopes = ["code_suggestions", "duo_chat"]

[[routes]]
name = "demo-public"
path_prefix = "/public/"
strip_prefix = true
upstream = "demo"
auth = "public"

[[upstreams]]
name = "demo"
endpoints = ["{backend}"]
connect_timeout = "1s"
read_timeout = "30s"
"#
    )
}

async fn demo_backend(listener: std::net::TcpListener, issuer: String, jwks: Value) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let issuer: &'static str = Box::leak(issuer.into_boxed_str());
    let jwks: &'static Value = Box::leak(Box::new(jwks));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(move |req| demo(req, issuer, jwks));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn full(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<DemoBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

async fn demo(
    req: Request<Incoming>,
    issuer: &'static str,
    jwks: &'static Value,
) -> Result<Response<DemoBody>, Infallible> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/.well-known/openid-configuration" => {
            let doc =
                json!({"issuer": issuer, "jwks_uri": format!("{issuer}/oauth/discovery/keys")});
            return Ok(full(StatusCode::OK, "application/json", doc.to_string()));
        }
        "/oauth/discovery/keys" => {
            return Ok(full(StatusCode::OK, "application/json", jwks.to_string()))
        }
        _ => {}
    }
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let identity = json!({
        "subject": header("x-cc-subject"), "issuer": header("x-cc-issuer"),
        "scopes": header("x-cc-scopes"), "realm": header("x-cc-realm"),
        "request_id": header("x-request-id"), "forwarded_for": header("x-forwarded-for"),
    });
    let method = req.method().to_string();
    let wants_stream = path.ends_with("/stream")
        || header("accept").is_some_and(|a| a.contains("text/event-stream"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if wants_stream {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let words = [
                "def",
                " hello",
                "(name):",
                "\n    return",
                " f\"Hello, {name}!\"",
            ];
            for (i, w) in words.iter().enumerate() {
                let ev = json!({"index": i, "text": w});
                if tx
                    .send(Ok(Frame::data(Bytes::from(format!(
                        "event: completion\ndata: {ev}\n\n"
                    )))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(
                    b"event: done\ndata: {}\n\n",
                ))))
                .await;
        });
        let mut r = Response::new(ChannelBody(rx).boxed());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        return Ok(r);
    }
    let echo = json!({
        "backend": "cc-gateway demo", "method": method, "path": path,
        "received_bytes": body.len(), "identity": identity,
        "completion": {"text": "def hello(name):\n    return f\"Hello, {name}!\"", "model": "demo"},
    });
    Ok(full(
        StatusCode::OK,
        "application/json",
        format!("{echo:#}\n"),
    ))
}

/// An mpsc receiver of frames as a response body.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx)
    }
}
