//! Zero-downtime binary upgrade: the running gateway hands its listening sockets to a new
//! process over `server.upgrade_socket`, a Unix socket (mode 0600) it listens on.
//!
//! The new process (`run --upgrade`) connects and receives every listening socket of every
//! worker (SCM_RIGHTS, through `nix`: a safe, maintained wrapper over `sendmsg`/`recvmsg`).
//! It uses the very same sockets — binding new ones and closing the old would reset what is
//! queued in them (`SO_REUSEPORT` gives every socket its own queue) — starts, and once it
//! serves says `ready`. Only then does the old process close its copies of the sockets (their
//! queues live on in the new process), drain and exit. A new process that dies before `ready`
//! closes the connection: the old one logs it and goes on serving as if nothing happened.
//!
//! Wire format, lockstep over a stream socket: frames of a 4-byte big-endian length and JSON.
//! Old → new: `Offer` frames (each with its sockets' descriptors attached) until `done`; the
//! new answers each with `{"next": true}`, and finally `{"ready": true}`. One frame in flight
//! at a time keeps each frame's descriptors on that frame.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use crate::engine::listener::Inherited;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("server.upgrade_socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("server.upgrade_socket {0}: another gateway is listening on it (start this one with --upgrade to take over from it)")]
    InUse(PathBuf),
    #[error("upgrade: {0}")]
    Io(#[from] std::io::Error),
    #[error("upgrade: passing descriptors: {0}")]
    Sys(#[from] nix::Error),
    #[error("upgrade: the other process sent {0}")]
    Protocol(String),
    #[error("upgrade: the other process closed the connection")]
    Closed,
}

/// What one listening socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Plain,
    Tls,
    Admin,
    /// an L4 route's (`[[tcp_routes]]`)
    Tcp,
}

/// A listening socket the running process can hand over: its own descriptor (a duplicate of
/// the one its worker accepts on) and what it is.
pub struct Passable {
    pub fd: OwnedFd,
    pub addr: SocketAddr,
    pub kind: Kind,
}

#[derive(Serialize, Deserialize)]
struct Described {
    addr: SocketAddr,
    kind: Kind,
}

#[derive(Serialize, Deserialize)]
struct Offer {
    /// described in the order of the attached descriptors
    sockets: Vec<Described>,
    done: bool,
    pid: u32,
}

#[derive(Serialize, Deserialize, Default)]
struct Reply {
    #[serde(default)]
    next: bool,
    #[serde(default)]
    ready: bool,
}

/// SCM_MAX_FD is 253; stay under it with room to spare.
const FDS_PER_FRAME: usize = 128;
/// A frame larger than this is not ours.
const MAX_FRAME: usize = 1 << 20;

/// The running gateway's side: the listening Unix socket and the sockets it hands over.
pub struct Handoff {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// the inode bound at `path`: at exit the path is removed only if it is still ours (a
    /// successor renames its own socket over it)
    ino: u64,
    sockets: Vec<Passable>,
}

impl Handoff {
    /// Listens on `path` (mode 0600 before it is visible: bound under a temporary name, then
    /// renamed over `path`). `successor`: this process took over from the one listening there.
    pub fn bind(
        path: &Path,
        sockets: Vec<Passable>,
        successor: bool,
    ) -> Result<Handoff, UpgradeError> {
        let err = |source| UpgradeError::Socket {
            path: path.to_path_buf(),
            source,
        };
        if !successor && UnixStream::connect(path).is_ok() {
            return Err(UpgradeError::InUse(path.to_path_buf()));
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(err)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path))
            .and_then(|()| std::fs::metadata(path));
        let meta = match placed {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(err(e));
            }
        };
        std_listener.set_nonblocking(true).map_err(err)?;
        let listener = tokio::net::UnixListener::from_std(std_listener).map_err(err)?;
        Ok(Handoff {
            listener,
            path: path.to_path_buf(),
            ino: meta.ino(),
            sockets,
        })
    }

    /// Waits for a new process, hands it every socket, and returns once it says it serves.
    /// An error is one failed attempt: the caller keeps serving and calls again.
    pub async fn offer(&self) -> Result<u32, UpgradeError> {
        let (conn, _) = self.listener.accept().await?;
        // the exchange is a handful of small frames in lockstep: blocking IO on a
        // short-lived thread keeps it simple and off the control runtime
        let conn = conn.into_std()?;
        conn.set_nonblocking(false)?;
        // the thread owns duplicates: were this future dropped (shutdown mid-exchange), the
        // `Handoff`'s descriptors could close under it
        let fds = self
            .sockets
            .iter()
            .map(|p| {
                Ok((
                    p.fd.try_clone()?,
                    Described {
                        addr: p.addr,
                        kind: p.kind,
                    },
                ))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let pid = tokio::task::spawn_blocking(move || send_sockets(conn, fds))
            .await
            .map_err(|e| UpgradeError::Io(std::io::Error::other(e)))??;
        Ok(pid)
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The old process's half of the exchange; returns the new process's pid once it is ready.
fn send_sockets(mut conn: UnixStream, fds: Vec<(OwnedFd, Described)>) -> Result<u32, UpgradeError> {
    let mut frames: Vec<&[(OwnedFd, Described)]> = fds.chunks(FDS_PER_FRAME).collect();
    if frames.is_empty() {
        // no socket at all still makes one (empty, final) offer
        frames.push(&[]);
    }
    let last = frames.len() - 1;
    for (i, chunk) in frames.into_iter().enumerate() {
        let offer = Offer {
            sockets: chunk
                .iter()
                .map(|(_, d)| Described {
                    addr: d.addr,
                    kind: d.kind,
                })
                .collect(),
            done: i == last,
            pid: std::process::id(),
        };
        let raw: Vec<RawFd> = chunk.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        write_frame(&conn, &serde_json::to_vec(&offer).map_err(json_err)?, &raw)?;
        if offer.done {
            break;
        }
        let reply: Reply = read_json(&mut conn)?.0;
        if !reply.next {
            return Err(UpgradeError::Protocol("no acknowledgement".into()));
        }
    }
    // the new process starts now: keys, workers; it says `ready` or dies (end of stream)
    let reply: Reply = read_json(&mut conn)?.0;
    if !reply.ready {
        return Err(UpgradeError::Protocol("no ready".into()));
    }
    Ok(peer_pid(&conn))
}

fn peer_pid(conn: &UnixStream) -> u32 {
    nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.pid() as u32)
        .unwrap_or(0)
}

/// What a new process took over: the listening sockets by kind and address (in the old
/// process's config order), and the connection on which it says `ready`.
pub struct TakenOver {
    pub plain: Vec<Inherited>,
    pub tls: Vec<Inherited>,
    pub tcp: Vec<Inherited>,
    pub admin: Option<(SocketAddr, TcpListener)>,
    /// the old process's pid
    pub from: u32,
    conn: UnixStream,
}

impl TakenOver {
    /// Tells the old process that this one serves: it stops accepting, drains and exits.
    pub fn ready(mut self) -> Result<(), UpgradeError> {
        let reply = Reply {
            ready: true,
            ..Reply::default()
        };
        write_frame(
            &self.conn,
            &serde_json::to_vec(&reply).map_err(json_err)?,
            &[],
        )?;
        self.conn.flush()?;
        Ok(())
    }
}

/// The new process's half: connects to the running gateway at `path` and receives its
/// listening sockets. Blocking (it runs before anything else does).
pub fn take_over(path: &Path) -> Result<TakenOver, UpgradeError> {
    let mut conn = UnixStream::connect(path).map_err(|source| UpgradeError::Socket {
        path: path.to_path_buf(),
        source,
    })?;
    let mut taken = TakenOver {
        plain: Vec::new(),
        tls: Vec::new(),
        tcp: Vec::new(),
        admin: None,
        from: 0,
        conn: conn.try_clone()?,
    };
    loop {
        let (offer, fds): (Offer, Vec<OwnedFd>) = read_json(&mut conn)?;
        if offer.sockets.len() != fds.len() {
            return Err(UpgradeError::Protocol(format!(
                "{} sockets described, {} attached",
                offer.sockets.len(),
                fds.len()
            )));
        }
        taken.from = offer.pid;
        for (d, fd) in offer.sockets.into_iter().zip(fds) {
            let socket = TcpListener::from(fd);
            socket.set_nonblocking(true)?;
            let group = match d.kind {
                Kind::Admin => {
                    taken.admin = Some((d.addr, socket));
                    continue;
                }
                Kind::Plain => &mut taken.plain,
                Kind::Tls => &mut taken.tls,
                Kind::Tcp => &mut taken.tcp,
            };
            match group.iter_mut().find(|g| g.addr == d.addr) {
                Some(g) => g.sockets.push(socket),
                None => group.push(Inherited {
                    addr: d.addr,
                    sockets: vec![socket],
                }),
            }
        }
        if offer.done {
            return Ok(taken);
        }
        let next = Reply {
            next: true,
            ..Reply::default()
        };
        write_frame(&conn, &serde_json::to_vec(&next).map_err(json_err)?, &[])?;
    }
}

fn json_err(e: serde_json::Error) -> UpgradeError {
    UpgradeError::Protocol(format!("malformed JSON ({e})"))
}

/// One frame, `fds` attached to its first byte.
fn write_frame(conn: &UnixStream, payload: &[u8], fds: &[RawFd]) -> Result<(), UpgradeError> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let mut sent = sendmsg::<()>(
        conn.as_fd().as_raw_fd(),
        &[IoSlice::new(&frame)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    // the descriptors went with the first byte; the rest is plain data
    while sent < frame.len() {
        sent += (&*conn).write(&frame[sent..])?;
    }
    Ok(())
}

/// Reads one frame as JSON, with the descriptors that came with it.
fn read_json<T: serde::de::DeserializeOwned>(
    conn: &mut UnixStream,
) -> Result<(T, Vec<OwnedFd>), UpgradeError> {
    let mut buf = vec![0u8; 4096];
    let mut have = 0usize;
    let mut fds = Vec::new();
    let mut cmsg = nix::cmsg_space!([RawFd; FDS_PER_FRAME]);
    // the first read takes the descriptors (they ride on the frame's first byte)
    loop {
        let mut iov = [IoSliceMut::new(&mut buf[have..])];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel has just installed these descriptors in this process
                // for this message; nothing else refers to them, so each is owned once here
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(UpgradeError::Protocol("too many descriptors".into()));
        }
        let n = msg.bytes;
        if n == 0 {
            return Err(UpgradeError::Closed);
        }
        have += n;
        if have >= 4 {
            break;
        }
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(UpgradeError::Protocol(format!("a frame of {len} bytes")));
    }
    if buf.len() < 4 + len {
        buf.resize(4 + len, 0);
    }
    if have < 4 + len {
        conn.read_exact(&mut buf[have..4 + len])
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => UpgradeError::Closed,
                _ => UpgradeError::Io(e),
            })?;
    } else if have > 4 + len {
        return Err(UpgradeError::Protocol("more than one frame at once".into()));
    }
    let value = serde_json::from_slice(&buf[4..4 + len]).map_err(json_err)?;
    Ok((value, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_cross_in_frames_and_stay_the_same_sockets() {
        // more sockets than one frame carries
        let listeners: Vec<TcpListener> = (0..FDS_PER_FRAME + 3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let fds: Vec<(OwnedFd, Described)> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    OwnedFd::from(l.try_clone().expect("dup")),
                    Described {
                        addr: l.local_addr().expect("addr"),
                        kind: if i == 0 { Kind::Admin } else { Kind::Plain },
                    },
                )
            })
            .collect();
        let (a, b) = UnixStream::pair().expect("pair");
        let old = std::thread::spawn(move || send_sockets(a, fds));
        let mut conn = b;
        let mut received = Vec::new();
        loop {
            let (offer, fds): (Offer, Vec<OwnedFd>) = read_json(&mut conn).expect("offer");
            assert_eq!(offer.sockets.len(), fds.len());
            received.extend(offer.sockets.into_iter().zip(fds));
            if offer.done {
                break;
            }
            write_frame(&conn, br#"{"next":true}"#, &[]).expect("ack");
        }
        write_frame(&conn, br#"{"ready":true}"#, &[]).expect("ready");
        assert_eq!(
            old.join().expect("old side").expect("handed over"),
            std::process::id()
        );
        assert_eq!(received.len(), listeners.len());
        for ((d, fd), l) in received.into_iter().zip(&listeners) {
            let got = TcpListener::from(fd);
            assert_eq!(
                got.local_addr().expect("addr"),
                l.local_addr().expect("addr")
            );
            assert_eq!(d.addr, l.local_addr().expect("addr"));
        }
    }

    #[test]
    fn a_process_that_dies_before_ready_is_an_error_not_a_hang() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let fds = vec![(
            OwnedFd::from(l.try_clone().expect("dup")),
            Described {
                addr: l.local_addr().expect("addr"),
                kind: Kind::Plain,
            },
        )];
        let (a, mut b) = UnixStream::pair().expect("pair");
        let old = std::thread::spawn(move || send_sockets(a, fds));
        let (offer, _fds): (Offer, Vec<OwnedFd>) = read_json(&mut b).expect("offer");
        assert!(offer.done);
        drop(b);
        assert!(matches!(
            old.join().expect("old side"),
            Err(UpgradeError::Closed)
        ));
    }
}
