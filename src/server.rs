//! Startup and shutdown: config → shared state → listeners → workers, with the control plane
//! (key refreshers, admin listener, signals) on the main thread's runtime.

use std::sync::Arc;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::engine::listener::{self, BindError};
use crate::engine::worker::{ServeOptions, WorkerThreads};
use crate::gateway::{BuildError, Gateway, WorkerHandler};
use crate::keysync::Fetcher;
use crate::reload::Live;
use crate::tls::server::{TlsError, TlsServer};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot start runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The addresses actually bound (ports 0 resolved).
pub struct Bound {
    pub listen: Vec<std::net::SocketAddr>,
    pub admin: Option<std::net::SocketAddr>,
    /// the TLS listeners (`[server.tls]`)
    pub tls: Vec<std::net::SocketAddr>,
}

/// Runs the gateway until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), ServerError> {
    run_with(config, |_| {})
}

/// Like `run`, calling `on_ready` once the listeners are bound and the workers started.
pub fn run_with(config: Config, on_ready: impl FnOnce(&Bound)) -> Result<(), ServerError> {
    let config = Arc::new(config);
    let gw = Arc::new(Gateway::build(config.clone(), None)?);

    // certificates are read before anything is bound: a bad one fails startup cleanly
    let tls = match &config.server.tls {
        Some(t) => Some((t, TlsServer::new(t)?)),
        None => None,
    };
    let listener::WorkerSockets {
        per_worker,
        plain: bound,
        tls: tls_bound,
    } = listener::bind_workers(
        &config.server.listen,
        tls.as_ref().map(|(t, s)| (&t.listen[..], s.clone())),
        config.server.threads,
    )?;
    let tls = tls.map(|(_, s)| s);
    let admin_listener = config
        .server
        .admin_listen
        .map(listener::bind_single)
        .transpose()?;
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let opts = ServeOptions {
        max_header_bytes: config.server.max_header_bytes,
        header_read_timeout: config.server.header_read_timeout,
        shutdown_timeout: config.server.shutdown_timeout,
        proxy_protocol: config.server.proxy_protocol,
        http2_keepalive_interval: config.server.http2_keepalive_interval,
        http2_keepalive_timeout: config.server.http2_keepalive_timeout,
    };
    if config.server.proxy_protocol {
        // every reason's series from startup, for alerts
        for e in crate::engine::proxy_protocol::ProxyError::ALL {
            crate::metrics::METRICS
                .proxy_protocol_errors
                .with_label_values(&[e.reason()]);
        }
    }
    // built here so a reload can reach every worker; each serves on its own thread
    let handlers: Vec<Arc<WorkerHandler>> = (0..per_worker.len())
        .map(|_| Arc::new(WorkerHandler::new(gw.clone())))
        .collect();
    let threads = {
        let handlers = handlers.clone();
        WorkerThreads::start(per_worker, opts, move |i| handlers[i].clone())
            .map_err(ServerError::Runtime)?
    };

    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    rt.block_on(async {
        let fetcher = Arc::new(Fetcher::new());
        let mut live = Live::new(
            config.source.clone(),
            gw,
            handlers,
            fetcher.clone(),
            tls.clone(),
        );
        if let Some(t) = &tls {
            tokio::spawn(crate::tls::watch::run(t.clone(), crate::tls::watch::POLL));
        }
        // keys load in the background: startup does not wait for them (/readyz does)
        live.start_refreshers();
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<admin::ReloadReply>(4);
        if let Some(l) = admin_listener {
            let admin = Admin {
                gateway: live.current.clone(),
                fetcher,
                draining: draining.clone(),
                reload: reload_tx,
            };
            tokio::spawn(admin::serve(l, Arc::new(admin)));
        }
        let listen: Vec<String> = bound.iter().map(|a| a.to_string()).collect();
        let tls_listen: Vec<String> = tls_bound.iter().map(|a| a.to_string()).collect();
        // the one stable startup line (scripts and tests wait for it); `tls=` only when TLS
        // listeners exist, after the fields older readers know
        eprintln!(
            "cc-gateway ready listen={} admin={}{}",
            listen.join(","),
            admin_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            if tls_listen.is_empty() {
                String::new()
            } else {
                format!(" tls={}", tls_listen.join(","))
            }
        );
        tracing::info!(listen = %listen.join(","), tls = %tls_listen.join(","), threads = config.server.threads, "serving");
        on_ready(&Bound {
            listen: bound.clone(),
            admin: admin_addr,
            tls: tls_bound.clone(),
        });
        control_loop(&mut live, &mut reload_rx).await;
        tracing::info!("shutting down: no new connections, draining open ones");
        draining.store(true, std::sync::atomic::Ordering::Release);
        // the admin listener keeps answering (/readyz 503) while the workers drain
        let _ = tokio::task::spawn_blocking(move || threads.shutdown()).await;
        // the last counters reach the budget store before the process ends
        if let Some(b) = &live.gateway().budgets {
            b.flush();
        }
        // … and the request log's queued and spooled rows reach its store
        if let Some(l) = &live.gateway().request_log {
            let t = l.config().flush_timeout;
            let _ = tokio::task::spawn_blocking({
                let l = l.clone();
                move || l.shutdown(t)
            })
            .await;
        }
    });
    Ok(())
}

/// Waits for SIGTERM/SIGINT (returns) while serving reloads (SIGHUP, admin `POST /reload`).
async fn control_loop(
    live: &mut Live,
    reloads: &mut tokio::sync::mpsc::Receiver<admin::ReloadReply>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", live.path.display());
                let _ = live.reload();
            }
            Some(reply) = reloads.recv() => {
                let _ = reply.send(live.reload().map_err(|e| e.to_string()));
            }
        }
    }
}
