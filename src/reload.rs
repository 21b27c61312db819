//! Configuration reload (SIGHUP or admin `POST /reload`), on the control plane.
//!
//! The file is read and validated first; a config that does not validate is refused with
//! `file: key.path: problem` and the running one stays untouched. A valid one is swapped in
//! atomically: each worker gets a new snapshot (requests in flight finish on the old one),
//! unchanged issuers keep their keys, unchanged upstreams keep their pools, the token cache is
//! kept when the issuers did not change. Listener settings (`[server]`) need a restart.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::accesslog::AccessLogger;
use crate::auth::Verifier;
use crate::config::{Config, ConfigError};
use crate::gateway::{Gateway, Worker};
use crate::keysync::{self, Fetcher};
use crate::metrics::METRICS;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Budgets(#[from] crate::budget::StoreError),
    #[error("access log {path}: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
}

/// What a successful reload did.
#[derive(Debug)]
pub struct Reloaded {
    pub generation: u64,
    /// `[server]` keys that changed but only apply after a restart
    pub restart_needed: Vec<&'static str>,
}

/// The running gateway's replaceable parts.
pub struct Live {
    pub path: PathBuf,
    pub gw: Arc<Gateway>,
    /// what the admin API reads (issuers, budgets, admin token)
    pub current: Arc<ArcSwap<Gateway>>,
    pub workers: Vec<Arc<Worker>>,
    pub fetcher: Arc<Fetcher>,
    pub generation: u64,
    refreshers: Vec<tokio::task::AbortHandle>,
}

impl Live {
    pub fn new(
        path: PathBuf,
        gw: Arc<Gateway>,
        workers: Vec<Arc<Worker>>,
        fetcher: Arc<Fetcher>,
    ) -> Self {
        let current = Arc::new(ArcSwap::new(gw.clone()));
        Live {
            path,
            gw,
            current,
            workers,
            fetcher,
            generation: 1,
            refreshers: Vec::new(),
        }
    }

    /// Starts one key refresher per issuer (replacing any previous ones). Needs a runtime.
    pub fn start_refreshers(&mut self) {
        for r in self.refreshers.drain(..) {
            r.abort();
        }
        let v = self.gw.verifier.clone();
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
        let old = &self.gw.config;
        let mut restart_needed = Vec::new();
        let (a, b) = (&old.server, &config.server);
        if a.listen != b.listen {
            restart_needed.push("server.listen");
        }
        if a.admin_listen != b.admin_listen {
            restart_needed.push("server.admin_listen");
        }
        if a.threads != b.threads {
            restart_needed.push("server.threads");
        }
        if a.max_header_bytes != b.max_header_bytes
            || a.header_read_timeout != b.header_read_timeout
        {
            restart_needed.push("server.max_header_bytes/header_read_timeout");
        }
        if a.shutdown_timeout != b.shutdown_timeout {
            restart_needed.push("server.shutdown_timeout");
        }
        // a file is always reopened: `kill -HUP` after logrotate moves it starts a fresh file
        let reuse = config.log.access == old.log.access
            && !matches!(config.log.access, crate::config::AccessLog::File(_));
        let access_log = if reuse {
            self.gw.access_log.clone()
        } else {
            AccessLogger::start(&config.log.access).map_err(|source| ReloadError::AccessLog {
                path: format!("{:?}", config.log.access),
                source,
            })?
        };
        let verifier = Arc::new(Verifier::new_from(&config, Some(&self.gw.verifier)));
        let gw = Arc::new(Gateway::new_from(
            config,
            verifier.clone(),
            access_log,
            Some(&self.gw),
        )?);
        for w in &self.workers {
            w.install(gw.clone());
        }
        self.current.store(gw.clone());
        self.gw = gw;
        self.start_refreshers();
        self.generation += 1;
        Ok(Reloaded {
            generation: self.generation,
            restart_needed,
        })
    }
}
