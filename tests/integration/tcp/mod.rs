//! L4 routes (`[[tcp_routes]]`) through the real binary: bytes and half-close both ways, 100 MB
//! checksummed, back pressure on a slow reader, `max_connections`, PROXY v2 toward the target,
//! idle timeout, unreachable targets, SNI between TLS routes, client-certificate rules, and a
//! real PostgreSQL reached by `psql` and `pgbench`.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::{TcpListener, TcpStream};

use crate::common::fixture::q;
use crate::common::Gateway;

mod connect;
mod lifecycle;
mod plain;
mod postgres;
mod tls;
mod tunnel;

/// A gateway with `routes` (and `server_extra` in `[server]`), access log in the temp dir.
pub async fn gateway(server_extra: &str, routes: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(&dir, server_extra, routes);
    (Gateway::spawn(&path).await, dir)
}

pub fn write(dir: &tempfile::TempDir, server_extra: &str, routes: &str) -> PathBuf {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n{server_extra}\n\n[log]\naccess = {}\n\n{routes}\n",
        q(&dir.path().join("access.log").display().to_string())
    );
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, text).expect("writing config");
    path
}

/// Route `name`'s (first) listen address, from the ready line's `tcp=` field.
pub fn tcp_addr(gw: &Gateway, name: &str) -> SocketAddr {
    let err = gw.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("cc-gateway ready "))
        .unwrap_or_else(|| panic!("no ready line in {err}"));
    let field = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("tcp="))
        .unwrap_or_else(|| panic!("no tcp= in {line}"));
    field
        .split(',')
        .find_map(|e| e.strip_prefix(&format!("{name}@")))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {name}@ in {line}"))
}

/// The access log's TCP lines (JSON), once `n` of them are there.
pub async fn tcp_log_lines(dir: &tempfile::TempDir, n: usize) -> Vec<serde_json::Value> {
    tcp_log_lines_in(dir.path(), n).await
}

/// [`tcp_log_lines`] of `dir/access.log`.
pub async fn tcp_log_lines_in(dir: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let path = dir.join("access.log");
    crate::common::wait_until(
        &format!("{n} tcp lines in the access log"),
        crate::common::wait::DEADLINE,
        || async {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["kind"] == "tcp")
                .collect();
            if lines.len() >= n {
                Ok(lines)
            } else {
                Err(text)
            }
        },
    )
    .await
}

/// A target that writes without end to whoever connects, and reports how much it wrote once a
/// write cannot start for a second (the path to a client that reads nothing is full).
pub async fn firehose() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<usize>) {
    use tokio::io::AsyncWriteExt;
    let (tx, stalled) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let addr = target(move |mut s| {
        let tx = tx.clone();
        async move {
            let chunk = vec![9u8; 64 * 1024];
            let mut written = 0usize;
            loop {
                let write = s.write(&chunk);
                match tokio::time::timeout(std::time::Duration::from_secs(1), write).await {
                    Ok(Ok(n)) => written += n,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        let _ = tx.send(written);
                        return;
                    }
                }
            }
        }
    })
    .await;
    (addr, stalled)
}

/// Reads the first byte from `idle` (the stream flows), then waits for the firehose behind it
/// to stall and asserts that little was in flight and the gateway's memory stayed flat.
pub async fn assert_bounded_while_unread(
    gw_pid: u32,
    idle: &mut TcpStream,
    stalled: &mut tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    use tokio::io::AsyncReadExt;
    let before = plain::vm_rss_kib(gw_pid);
    let mut first = [0u8; 1];
    idle.read_exact(&mut first).await.expect("the first byte");
    let written = tokio::time::timeout(std::time::Duration::from_secs(60), stalled.recv())
        .await
        .expect("the target stalls")
        .expect("report");
    // socket buffers on every hop plus bounded in-process buffers: far below what was offered
    assert!(
        written < 64 * 1024 * 1024,
        "the target wrote {written} bytes to a client that reads nothing"
    );
    let grown = plain::vm_rss_kib(gw_pid).saturating_sub(before);
    assert!(grown < 32 * 1024, "the gateway grew by {grown} KiB");
}

/// A target server on a loopback port: every accepted connection goes to `handle`, in its own
/// task.
pub async fn target<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = l.local_addr().expect("target addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handle(s));
        }
    });
    addr
}

/// A target that echoes every byte back and closes when the client does.
pub async fn echo_target() -> SocketAddr {
    target(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// Waits until a gauge is exactly `expected` (`wait_metric` is for counters: it stops at the
/// first value at or above).
pub async fn wait_gauge(gw: &Gateway, name: &str, labels: &[(&str, &str)], expected: f64) {
    crate::common::wait_until(
        &format!("{name}{labels:?} == {expected}"),
        crate::common::wait::DEADLINE,
        || async {
            let v = crate::common::metric(&gw.metrics().await, name, labels);
            if v == expected {
                Ok(())
            } else {
                Err(format!("value {v}"))
            }
        },
    )
    .await
}

/// A `cc-gateway` helper process (`connect`, `tunnel`), killed on drop; its stderr collected.
pub struct Helper {
    child: std::process::Child,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Helper {
    /// Starts `cc-gateway args…` and waits for its first stdout line.
    pub async fn start(args: &[&str]) -> (Helper, String) {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = crate::common::gateway::command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning a cc-gateway helper");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&l);
                s.push('\n');
            }
        });
        let out = child.stdout.take().expect("stdout");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let first = tokio::time::timeout(crate::common::wait::DEADLINE, rx.recv())
            .await
            .expect("the first line within the deadline")
            .unwrap_or_else(|| {
                panic!(
                    "cc-gateway {args:?} exited: {}",
                    stderr.lock().unwrap_or_else(|p| p.into_inner())
                )
            });
        (Helper { child, stderr }, first)
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Kills it now and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill();
    }
}
