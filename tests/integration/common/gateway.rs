//! The real `cc-gateway` process: spawn, wait for the ready line, drain output, kill on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::client::{Req, Resp};
use super::wait::{wait_until, DEADLINE};

pub const BIN: &str = env!("CARGO_BIN_EXE_cc-gateway");

/// How long the gateway may take to print its ready line (the machine is shared with builds).
const READY_LINE_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Gateway {
    child: Child,
    /// The first data-plane listen address.
    pub addr: SocketAddr,
    /// Every data-plane listen address, in config order.
    pub listen: Vec<SocketAddr>,
    /// The admin listener.
    pub admin: SocketAddr,
    pub config: PathBuf,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

/// A `cc-gateway` command with a clean environment for logging.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

/// `cc-gateway check --config path` with `env`, run to completion.
pub fn run_check(path: &Path, env: &[(&str, &str)]) -> std::process::Output {
    command()
        .args(["check", "--config", path.to_str().expect("utf-8 path")])
        .envs(env.iter().copied())
        .output()
        .expect("running cc-gateway check")
}

/// A finished CLI run for assertion messages: exit code, stdout, stderr.
pub fn describe_output(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn drain<R: Read + Send + 'static>(
    reader: R,
    buf: Arc<Mutex<String>>,
    lines: Option<mpsc::UnboundedSender<String>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&line).into_owned();
                    buf.lock().expect("output buffer lock").push_str(&s);
                    if let Some(tx) = &lines {
                        let _ = tx.send(s);
                    }
                }
            }
        }
    });
}

/// The listen and admin addresses of a `cc-gateway ready` line.
fn parse_ready(line: &str) -> Option<(Vec<SocketAddr>, SocketAddr)> {
    let at = line.find("cc-gateway ready ")?;
    let rest = &line[at + "cc-gateway ready ".len()..];
    let mut listen = None;
    let mut admin = None;
    for field in rest.split_whitespace() {
        if let Some(v) = field.strip_prefix("listen=") {
            listen = Some(
                v.split(',')
                    .map(|a| a.parse::<SocketAddr>().ok())
                    .collect::<Option<Vec<_>>>()?,
            );
        } else if let Some(v) = field.strip_prefix("admin=") {
            admin = Some(v.parse::<SocketAddr>().ok()?);
        }
    }
    Some((listen?, admin?))
}

impl Gateway {
    /// Spawns `cc-gateway run --config FILE` and waits for its ready line (not for keys: see
    /// [`Gateway::wait_ready`]).
    pub async fn spawn(config: &Path) -> Gateway {
        let args = vec![
            std::ffi::OsString::from("run"),
            "--config".into(),
            config.as_os_str().to_owned(),
        ];
        Gateway::spawn_with(args, config).await
    }

    /// Spawns `cc-gateway ARGS...` (any subcommand that prints the ready line, e.g. `dev`);
    /// `config` is only shown in failure messages.
    pub async fn spawn_with(args: Vec<std::ffi::OsString>, config: &Path) -> Gateway {
        Gateway::spawn_with_env(args, config, &[]).await
    }

    /// Spawns `cc-gateway run --config FILE` with extra environment variables, waits for the
    /// ready line and for `/readyz` == 200.
    pub async fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Gateway {
        let args = vec![
            std::ffi::OsString::from("run"),
            "--config".into(),
            config.as_os_str().to_owned(),
        ];
        let gw = Gateway::spawn_with_env(args, config, env).await;
        gw.wait_ready().await;
        gw
    }

    /// Like [`Gateway::spawn_with`], with extra environment variables for the process.
    pub async fn spawn_with_env(
        args: Vec<std::ffi::OsString>,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Gateway {
        let mut child = command()
            .args(&args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {BIN} {args:?}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        drain(
            child.stderr.take().expect("child stderr is piped"),
            stderr.clone(),
            Some(tx),
        );
        drain(
            child.stdout.take().expect("child stdout is piped"),
            stdout.clone(),
            None,
        );
        let found = tokio::time::timeout(READY_LINE_TIMEOUT, async {
            while let Some(line) = rx.recv().await {
                if let Some(found) = parse_ready(&line) {
                    return Some(found);
                }
            }
            None
        })
        .await;
        let (listen, admin) = match found {
            Ok(Some(found)) => found,
            other => {
                let why = match other {
                    Err(_) => format!("no ready line within {READY_LINE_TIMEOUT:?}"),
                    _ => format!(
                        "stderr closed before the ready line (exit status: {:?})",
                        child.wait()
                    ),
                };
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "cc-gateway did not start: {why}\nconfig {}:\n{}\n--- stderr ---\n{}\n--- stdout ---\n{}",
                    config.display(),
                    std::fs::read_to_string(config).unwrap_or_default(),
                    stderr.lock().expect("stderr lock"),
                    stdout.lock().expect("stdout lock"),
                );
            }
        };
        assert!(!listen.is_empty(), "ready line has no listen address");
        Gateway {
            child,
            addr: listen[0],
            listen,
            admin,
            config: config.to_path_buf(),
            stderr,
            stdout,
        }
    }

    /// Spawns and waits until `/readyz` answers 200 (every issuer's keys loaded once).
    pub async fn start(config: &Path) -> Gateway {
        let gw = Gateway::spawn(config).await;
        gw.wait_ready().await;
        gw
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_until("admin GET /readyz == 200", DEADLINE, || async {
            let r = self.admin_get("/readyz").await;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("status {} body {}", r.status, r.text()))
            }
        })
        .await;
    }

    /// Everything the gateway wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Everything the gateway wrote on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("stdout lock").clone()
    }

    /// The gateway's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> Resp {
        Req::get(path).send(self.admin).await
    }

    /// `POST path` (empty body) on the admin listener.
    pub async fn admin_post(&self, path: &str) -> Resp {
        Req::post(path, Vec::new()).send(self.admin).await
    }

    /// The `/metrics` text (asserts 200).
    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// Sends a request to the first data-plane listener.
    pub async fn send(&self, req: Req) -> Resp {
        req.send(self.addr).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- cc-gateway stderr ({}) ---\n{}\n--- end of cc-gateway stderr ---",
                self.config.display(),
                self.stderr()
            );
        }
    }
}

#[test]
fn ready_line_parses() {
    let (l, a) = parse_ready(
        "2024 INFO cc-gateway ready listen=127.0.0.1:1,127.0.0.1:2 admin=127.0.0.1:3\n",
    )
    .expect("parses");
    assert_eq!(l.len(), 2);
    assert_eq!(a.port(), 3);
    assert!(parse_ready("cc-gateway starting").is_none());
}
