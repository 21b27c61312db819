//! Where access-log batches go, and how: a regular file is written as is; a pipe, terminal or
//! socket without ever blocking, in whole-line pieces small enough for the kernel to keep
//! each one in one piece (`PIPE_BUF`) although every worker writes to it.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::METRICS;

/// Writes of at most this many bytes to a pipe are atomic: lines of two workers never mix.
const PIPE_BUF: usize = 4096;

pub struct Sink {
    file: File,
    mode: Mode,
    /// the last second (since the epoch) a write failure was reported on stderr
    reported: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// a regular file: the page cache takes it
    Regular,
    /// a pipe, FIFO or terminal opened with `O_NONBLOCK`
    NonBlocking,
    /// a socket (stdout under systemd): `send(MSG_DONTWAIT)`
    Socket,
}

impl Sink {
    /// `log.access = "path"`: appended to, created if needed. A FIFO is opened without
    /// blocking (there must be a reader) and written like a pipe.
    pub fn file(path: &Path) -> std::io::Result<Sink> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let mode = mode_of(&file)?;
        Ok(Sink::new(file, mode))
    }

    /// Standard output. A pipe or terminal is reopened as a file description of our own, so
    /// that making it non-blocking does not change the one the parent process shares.
    pub fn stdout() -> std::io::Result<Sink> {
        let fd = std::io::stdout().as_fd().try_clone_to_owned()?;
        let file = File::from(fd);
        let sink = match mode_of(&file)? {
            Mode::NonBlocking => match std::fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NONBLOCK)
                .open("/proc/self/fd/1")
            {
                Ok(own) => Sink::new(own, Mode::NonBlocking),
                Err(_) => {
                    // no /proc: the shared description becomes non-blocking
                    set_nonblocking(&file)?;
                    Sink::new(file, Mode::NonBlocking)
                }
            },
            mode => Sink::new(file, mode),
        };
        Ok(sink)
    }

    fn new(file: File, mode: Mode) -> Sink {
        Sink {
            file,
            mode,
            reported: AtomicU64::new(0),
        }
    }

    /// Writes whole lines from the front of `buf`; returns how many bytes are done with:
    /// written, or dropped (and counted) because the destination failed. What it returns less
    /// than `buf.len()` the destination could not take now: try again later.
    pub fn write_lines(&self, buf: &[u8]) -> usize {
        match self.mode {
            Mode::Regular => {
                let mut done = 0;
                while done < buf.len() {
                    match (&self.file).write(&buf[done..]) {
                        Ok(0) => return done + self.dropped(&buf[done..], "wrote nothing"),
                        Ok(n) => done += n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => return done + self.dropped(&buf[done..], &e.to_string()),
                    }
                }
                done
            }
            Mode::NonBlocking | Mode::Socket => {
                let mut done = 0;
                while done < buf.len() {
                    let piece = whole_lines(&buf[done..], PIPE_BUF);
                    match self.write_nonblocking(piece) {
                        Ok(n) if n == piece.len() => done += n,
                        // a socket took part of it: the rest goes next time
                        Ok(n) => return done + n,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => return done,
                        Err(e) => return done + self.dropped(&buf[done..], &e.to_string()),
                    }
                }
                done
            }
        }
    }

    fn write_nonblocking(&self, piece: &[u8]) -> std::io::Result<usize> {
        if self.mode != Mode::Socket {
            return (&self.file).write(piece);
        }
        // SAFETY: the pointer and length come from a live slice; the fd is ours while `self` is
        let n = unsafe {
            libc::send(
                self.file.as_raw_fd(),
                piece.as_ptr().cast(),
                piece.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Counts the lines of `lost` as dropped, says why on stderr at most once a second.
    fn dropped(&self, lost: &[u8], why: &str) -> usize {
        let lines = lost.iter().filter(|&&b| b == b'\n').count().max(1);
        METRICS.access_log_dropped.inc_by(lines as u64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.reported.swap(now, Ordering::Relaxed) != now {
            eprintln!("cc-gateway: access log write failed, {lines} line(s) dropped: {why}");
        }
        lost.len()
    }
}

/// The longest prefix of `buf` made of whole lines and at most `max` bytes; a single line
/// longer than `max` on its own.
fn whole_lines(buf: &[u8], max: usize) -> &[u8] {
    if buf.len() <= max {
        return buf;
    }
    match buf[..max].iter().rposition(|&b| b == b'\n') {
        Some(i) => &buf[..=i],
        None => match buf.iter().position(|&b| b == b'\n') {
            Some(i) => &buf[..=i],
            None => buf,
        },
    }
}

fn mode_of(file: &File) -> std::io::Result<Mode> {
    let t = file.metadata()?.file_type();
    Ok(if t.is_file() {
        Mode::Regular
    } else if t.is_socket() {
        Mode::Socket
    } else {
        Mode::NonBlocking
    })
}

fn set_nonblocking(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on an fd we own, with integer arguments only
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_whole_lines_within_the_bound() {
        assert_eq!(whole_lines(b"a\nbb\n", 10), b"a\nbb\n");
        assert_eq!(whole_lines(b"a\nbb\nccc\n", 6), b"a\nbb\n");
        assert_eq!(whole_lines(b"aaaaaaaa\nb\n", 4), b"aaaaaaaa\n");
    }

    #[test]
    fn a_pipe_nobody_reads_takes_what_fits_then_nothing_without_blocking() {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two ints; we own both fds from here on
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (r, w) = unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        set_nonblocking(&w).expect("nonblocking");
        let sink = Sink::new(w, Mode::NonBlocking);
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        let batch: Vec<u8> = line.repeat(1000); // 100 kB: more than a pipe holds (64 KiB)
        let taken = sink.write_lines(&batch);
        assert!(taken > 0 && taken < batch.len(), "took {taken}");
        assert_eq!(taken % 100, 0, "only whole lines: {taken}");
        assert_eq!(
            sink.write_lines(&batch[taken..]),
            0,
            "a full pipe takes nothing"
        );
        drop(r);
    }
}
