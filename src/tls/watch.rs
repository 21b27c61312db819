//! Certificate rotation without a reload: the control plane polls the certificate, key and
//! client CA files once a second and rebuilds the TLS config when any of them changed.
//!
//! A file's stamp is the device, inode, size and modification time of what its path resolves
//! to (symlinks followed), so each way certificates get replaced is seen: a rewrite in place
//! (mtime, size), a rename over the old file (inode), and the Kubernetes secret mount's swap
//! of its `..data` symlink to a new directory (the resolved inode). Polling, not inotify: a
//! watch on a file is lost when the file is renamed away, and a watch on the directory misses
//! a symlink swap two levels up; a stat per file per second costs nothing.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::server::TlsServer;
use crate::config::ServerTls;

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    File {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: i64,
        mtime_ns: i64,
    },
    /// unreadable or absent: a change back to a file is a change
    Missing,
}

fn stamp(p: &PathBuf) -> Stamp {
    match std::fs::metadata(p) {
        Ok(m) => Stamp::File {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: m.mtime(),
            mtime_ns: m.mtime_nsec(),
        },
        Err(_) => Stamp::Missing,
    }
}

fn files(s: &ServerTls) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = s
        .certificates
        .iter()
        .flat_map(|c| [c.cert.clone(), c.key.clone()])
        .collect();
    v.extend(s.client_ca.clone());
    v
}

fn stamps(s: &ServerTls) -> Vec<(PathBuf, Stamp)> {
    files(s)
        .into_iter()
        .map(|p| {
            let st = stamp(&p);
            (p, st)
        })
        .collect()
}

/// Runs on the control plane until aborted: every `every`, re-reads the files if any changed
/// (stamps are taken before reading, so a change during the read is seen next time) and
/// refreshes the expiry gauge. A refused build is retried only when the files change again.
pub async fn run(server: Arc<TlsServer>, every: Duration) {
    let mut seen = stamps(&server.settings());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let settings = server.settings();
        let now = stamps(&settings);
        if now != seen {
            seen = now;
            // the error is counted and logged inside; the running config stays
            let _ = server.reload(&settings, "file change");
        }
        server.update_expiry();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_rename_and_symlink_swap_change_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let f = d.join("cert.pem");
        std::fs::write(&f, "one").unwrap();
        let s0 = stamp(&f);
        std::fs::write(&f, "three").unwrap();
        let s1 = stamp(&f);
        assert_ne!(s0, s1, "rewrite");
        let tmp = d.join("new.pem");
        std::fs::write(&tmp, "three").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_ne!(stamp(&f), s1, "rename");

        // Kubernetes: cert.pem -> ..data/cert.pem, ..data -> ..v1 swapped to ..v2
        for v in ["..v1", "..v2"] {
            std::fs::create_dir(d.join(v)).unwrap();
            std::fs::write(d.join(v).join("k.pem"), "same size").unwrap();
        }
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/k.pem", d.join("k.pem")).unwrap();
        let before = stamp(&d.join("k.pem"));
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_ne!(stamp(&d.join("k.pem")), before, "symlink swap");
        assert_eq!(stamp(&d.join("absent")), Stamp::Missing);
    }
}
