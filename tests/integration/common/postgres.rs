//! A real PostgreSQL for tests (the L4 route's `psql`/`pgbench` tests and the request log's
//! store): `initdb` into a temp dir, `postgres` on a free loopback port with its Unix socket in
//! that dir, stopped by PID on drop; `stop` and `start_again` take it down and bring it back on
//! the same port and data for outage tests. Debian's packages
//! (`/usr/lib/postgresql/<version>/bin`, installed by scripts/prereqs.sh). PostgreSQL refuses
//! to run as root: as root, the data dir is given to `nobody` and the server runs as it
//! (`setpriv`, which execs in place, so the PID is the server's own).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long `initdb` plus startup may take on a busy machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Postgres {
    pub port: u16,
    /// the superuser (trust auth on loopback)
    pub user: &'static str,
    bin: PathBuf,
    /// the running server; `None` between `stop` and `start_again`
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// The newest installed server's `bin` directory.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (/usr/lib/postgresql): run scripts/prereqs.sh")
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .expect("no /usr/lib/postgresql/<version>/bin/initdb: run scripts/prereqs.sh")
}

fn is_root() -> bool {
    // std has no geteuid; /proc has the effective uid (second field of `Uid:`)
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `program args…`, as `nobody` when this process is root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Postgres {
    /// initdb + start; returns once the server accepts connections.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        if is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod temp dir");
            let st = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown of the PostgreSQL dir failed");
        }
        let out = as_server_user(&bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .env("LC_ALL", "C")
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: free_port(),
            user: "postgres",
            bin,
            child: None,
            dir,
        };
        pg.start_again();
        pg
    }

    /// Starts the server on the existing data dir and port (after `stop`); returns once it
    /// accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres is already running");
        let mut child = as_server_user(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "logging_collector=off",
            ])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting postgres");
        // its log says when it accepts connections; read on a thread, bounded by a timeout
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut log = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.push_str(&line);
                log.push('\n');
                if line.contains("ready to accept connections") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(Err(log));
            }
        });
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(log)) => panic!("postgres exited before it was ready:\n{log}"),
            Err(_) => {
                let _ = child.kill();
                panic!("postgres not ready within {START_TIMEOUT:?}")
            }
        }
        self.child = Some(child);
    }

    /// Fast shutdown (SIGINT), waited for: once it returns, the port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// A client URL for the superuser's `postgres` database over TCP.
    pub fn url(&self) -> String {
        format!("postgres://{}@127.0.0.1:{}/postgres", self.user, self.port)
    }

    /// `psql` against `host:port` (the server itself, or the gateway in front of it), with
    /// `-v ON_ERROR_STOP=1 -X -q -A -t` and `args`, `stdin` fed in.
    pub fn psql(&self, addr: std::net::SocketAddr, args: &[&str], stdin: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-U", self.user, "-d", "postgres"])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t"])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "20")
            .env("PGSSLMODE", "disable")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running psql");
        let mut input = child.stdin.take().expect("piped stdin");
        let text = stdin.to_string();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(text.as_bytes());
        });
        let out = child.wait_with_output().expect("psql output");
        let _ = writer.join();
        assert!(
            out.status.success(),
            "psql {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's `bin` directory (`pgbench`, `psql`).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // waited for so the temp dir can go
        self.stop();
    }
}
