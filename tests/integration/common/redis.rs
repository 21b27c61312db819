//! A real `redis-server` for the budget tests: spawned on an ephemeral loopback port with no
//! persistence, stopped (killed and reaped by PID) on `stop` or drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::servers::{dead_addr, release};
use super::wait::{wait_until, DEADLINE};

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// A plaintext Redis on a fresh ephemeral port.
    pub async fn start() -> RedisServer {
        let port = dead_addr().port();
        Self::start_on(port).await
    }

    /// A plaintext Redis on `port` (e.g. the port of one that was stopped, to bring it back).
    pub async fn start_on(port: u16) -> RedisServer {
        Self::start_with(port, &["--port", &port.to_string()]).await
    }

    /// A Redis that speaks only TLS on its port, with `cert`/`key` (PEM files).
    pub async fn start_tls(cert: &Path, key: &Path) -> RedisServer {
        let port = dead_addr().port();
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-auth-clients",
            "no",
        ];
        Self::start_with(port, &args).await
    }

    /// A Redis listening as `listen` says (which must name `port`), with more arguments allowed.
    pub async fn start_with(port: u16, listen: &[&str]) -> RedisServer {
        // the port was reserved by `dead_addr`: free it for redis-server to bind
        release(SocketAddr::from(([127, 0, 0, 1], port)));
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        wait_until(
            "redis-server to accept connections",
            DEADLINE,
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        RedisServer { child, port }
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server and reaps it (an outage, from the gateway's point of view).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
