//! The running gateway on the control plane ([`Live`]), and configuration reload (SIGHUP or
//! admin `POST /reload`).
//!
//! The file is read and validated first; a config that does not validate is refused with
//! `file: key.path: problem` and the running one stays untouched. A valid one is built by
//! `Gateway::build` (as at startup) and swapped in atomically: each worker gets a new snapshot
//! (requests in flight finish on the old one), unchanged issuers keep their keys, unchanged
//! upstreams keep their pools, the token cache is kept when the issuers did not change.
//! Listener settings (`[server]`) need a restart (or a binary upgrade, `run --upgrade`);
//! `server.drain_delay` is read when shutdown begins, so a reload sets it.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError};
use crate::gateway::{BuildError, Gateway, WorkerHandler};
use crate::keysync::{self, Fetcher};
use crate::metrics::METRICS;
use crate::tls::server::{TlsError, TlsServer};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What a successful reload did.
#[derive(Debug)]
pub struct Reloaded {
    pub generation: u64,
    /// `[server]` keys that differ from what the process is serving with and only apply after
    /// a restart
    pub restart_needed: Vec<&'static str>,
}

/// The running gateway and what a reload replaces.
pub struct Live {
    pub path: PathBuf,
    /// the running gateway: the one source of truth, read by the admin API and the control
    /// plane; each worker holds a snapshot of it (`WorkerHandler`), installed at every swap
    pub current: Arc<ArcSwap<Gateway>>,
    pub workers: Vec<Arc<WorkerHandler>>,
    pub fetcher: Arc<Fetcher>,
    pub generation: u64,
    /// the config the process started with: its `[server]` listeners, threads and connection
    /// settings stay bound until a restart, whatever later files say
    started_with: Arc<Config>,
    refreshers: Vec<tokio::task::AbortHandle>,
    /// the TLS listeners' certificates (when the process started with `[server.tls]`): a
    /// reload re-reads their files
    pub tls: Option<Arc<TlsServer>>,
}

impl Live {
    pub fn new(
        path: PathBuf,
        gw: Arc<Gateway>,
        workers: Vec<Arc<WorkerHandler>>,
        fetcher: Arc<Fetcher>,
        tls: Option<Arc<TlsServer>>,
    ) -> Self {
        Live {
            path,
            started_with: gw.config.clone(),
            current: Arc::new(ArcSwap::new(gw)),
            workers,
            fetcher,
            generation: 1,
            refreshers: Vec::new(),
            tls,
        }
    }

    /// The running gateway.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Starts one key refresher per issuer (replacing any previous ones). Needs a runtime.
    pub fn start_refreshers(&mut self) {
        for r in self.refreshers.drain(..) {
            r.abort();
        }
        let v = self.gateway().verifier.clone();
        for idx in 0..v.issuers().len() {
            let h = tokio::spawn(keysync::run_refresher(v.clone(), idx, self.fetcher.clone()));
            self.refreshers.push(h.abort_handle());
        }
    }

    pub fn reload(&mut self) -> Result<Reloaded, ReloadError> {
        let result = self.try_reload();
        let label = if result.is_ok() { "ok" } else { "error" };
        METRICS.config_reloads.with_label_values(&[label]).inc();
        match &result {
            Ok(r) => {
                tracing::info!(generation = r.generation, restart_needed = ?r.restart_needed, "configuration reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays")
            }
        }
        result
    }

    fn try_reload(&mut self) -> Result<Reloaded, ReloadError> {
        let config = Arc::new(Config::load(&self.path)?);
        let restart_needed = restart_needed(&self.started_with, &config);
        // certificates are re-read on every reload, changed or not; a refusal keeps both the
        // running certificates and the running config
        let tls = match (&self.tls, &config.server.tls) {
            (Some(t), Some(settings)) => Some(t.prepare(settings).inspect_err(|e| {
                TlsServer::refused(e, "reload");
            })?),
            _ => None,
        };
        let previous = self.gateway();
        let gw = Arc::new(Gateway::build(config.clone(), Some(&previous))?);
        if previous.config.log.level != config.log.level {
            // a level the config accepted; the subscriber refusing it keeps the old one
            if let Err(e) = crate::logging::apply_level(&config.log.level) {
                tracing::warn!(error = %e, "log.level not applied; the running level stays");
            }
        }
        for w in &self.workers {
            w.install(gw.clone());
        }
        self.current.store(gw);
        if let (Some(t), Some(p)) = (&self.tls, tls) {
            t.install(p);
            METRICS.tls_reloads.with_label_values(&["ok"]).inc();
        }
        self.start_refreshers();
        self.generation += 1;
        Ok(Reloaded {
            generation: self.generation,
            restart_needed,
        })
    }
}

/// The `[server]` keys of `new` that differ from `started` (what the process is bound to) and
/// that only a restart applies. `admin_token` and `trusted_proxies` apply at once.
fn restart_needed(started: &Config, new_config: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    // L4 routes' settings apply to the next connection; their sockets do not
    let tcp_listen = |c: &Config| {
        let set: std::collections::BTreeSet<_> = c
            .tcp_routes
            .iter()
            .flat_map(|r| r.listen.iter().copied())
            .collect();
        set
    };
    if tcp_listen(started) != tcp_listen(new_config) {
        keys.push("tcp_routes.listen");
    }
    let (bound, new) = (&started.server, &new_config.server);
    if bound.listen != new.listen {
        keys.push("server.listen");
    }
    if bound.admin_listen != new.admin_listen {
        keys.push("server.admin_listen");
    }
    if bound.threads != new.threads {
        keys.push("server.threads");
    }
    if bound.max_header_bytes != new.max_header_bytes
        || bound.header_read_timeout != new.header_read_timeout
    {
        keys.push("server.max_header_bytes/header_read_timeout");
    }
    if bound.shutdown_timeout != new.shutdown_timeout {
        keys.push("server.shutdown_timeout");
    }
    // certificates, versions and client auth apply at reload; the TLS sockets do not
    if bound.tls.as_ref().map(|t| &t.listen) != new.tls.as_ref().map(|t| &t.listen) {
        keys.push("server.tls.listen");
    }
    if bound.upgrade_socket != new.upgrade_socket {
        keys.push("server.upgrade_socket");
    }
    if bound.proxy_protocol != new.proxy_protocol {
        keys.push("server.proxy_protocol");
    }
    if bound.max_connections != new.max_connections {
        keys.push("server.max_connections");
    }
    if started.log.format != new_config.log.format {
        keys.push("log.format");
    }
    if bound.http2_keepalive_interval != new.http2_keepalive_interval
        || bound.http2_keepalive_timeout != new.http2_keepalive_timeout
    {
        keys.push("server.http2_keepalive_interval/http2_keepalive_timeout");
    }
    keys
}
