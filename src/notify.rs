//! systemd's readiness protocol (`Type=notify`): one datagram per state change to the Unix
//! socket named by `$NOTIFY_SOCKET` (see sd_notify(3)). Written by hand rather than with the
//! `sd-notify` crate: the protocol is one `sendto` of `KEY=VALUE` lines, std has every piece
//! (including Linux abstract socket names), and it keeps a dependency out of the tree.
//! Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;

const VAR: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=VALUE` assignments). Failures are logged, never
/// fatal: the gateway serves whether or not a supervisor listens.
pub fn send(state: &str) {
    let Some(path) = std::env::var_os(VAR) else {
        return;
    };
    if let Err(e) = send_to(&path, state) {
        tracing::warn!(socket = ?path, error = %e, "cannot notify the service manager");
    }
}

fn send_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    match bytes.first() {
        // "@name": a socket in Linux's abstract namespace
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        Some(b'/') => {
            sock.send_to(state.as_bytes(), path)?;
        }
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not an absolute path or an abstract name",
            ))
        }
    }
    Ok(())
}

/// The listeners are bound and serving. A process that took over from another (`run
/// --upgrade`) says it is the service's main process now: systemd, with `NotifyAccess=all`,
/// follows it instead of the one about to exit.
pub fn ready(upgraded: bool) {
    if upgraded {
        send(&format!("MAINPID={}\nREADY=1", std::process::id()));
    } else {
        send("READY=1");
    }
}

/// A reload begins; `ready` (READY=1) ends it, whatever its outcome.
pub fn reloading() {
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

pub fn reloaded() {
    send("READY=1");
}

/// Shutdown has begun (the drain).
pub fn stopping() {
    send("STOPPING=1");
}

/// CLOCK_MONOTONIC in microseconds, as `Type=notify-reload` wants it beside RELOADING=1.
fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec() as u64) * 1_000_000 + (t.tv_nsec() as u64) / 1_000,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_per_state_to_a_path_or_an_abstract_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).expect("binding the notify socket");
        send_to(path.as_os_str(), "READY=1").expect("sent");
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("cc-gateway-test-{}", std::process::id());
        let abs = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let rx = UnixDatagram::bind_addr(&abs).expect("binding the abstract socket");
        send_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").expect("sent");
        let n = rx.recv(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert!(send_to(std::ffi::OsStr::new("relative"), "READY=1").is_err());
        assert!(monotonic_usec() > 0);
    }
}
