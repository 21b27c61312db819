//! Startup and shutdown: config → shared state → listeners → workers, with the control plane
//! (key refreshers, admin listener, signals) on the main thread's runtime.

use std::sync::Arc;
use std::time::Duration;

use crate::admin::{self, Admin};
use crate::config::Config;
use crate::engine::listener::{self, BindError};
use crate::engine::worker::{ServeOptions, Stop, WorkerThreads};
use crate::gateway::{BuildError, Gateway, WorkerHandler};
use crate::keysync::Fetcher;
use crate::notify;
use crate::reload::Live;
use crate::tls::server::{TlsError, TlsServer};
use crate::upgrade::{self, UpgradeError};

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
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    #[error(transparent)]
    Adopt(#[from] listener::AdoptError),
    #[error(
        "--upgrade needs server.upgrade_socket: where the running gateway hands over its sockets"
    )]
    NoUpgradeSocket,
    #[error(
        "upgrade: the issuers' keys did not load within {0:?}; the running gateway goes on serving"
    )]
    KeysNotLoaded(Duration),
}

/// The addresses actually bound (ports 0 resolved).
pub struct Bound {
    pub listen: Vec<std::net::SocketAddr>,
    pub admin: Option<std::net::SocketAddr>,
    /// the TLS listeners (`[server.tls]`)
    pub tls: Vec<std::net::SocketAddr>,
}

/// How the process gets its listening sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Start {
    /// binds them
    #[default]
    Fresh,
    /// takes them over from the gateway listening on `server.upgrade_socket` (`run --upgrade`)
    Upgrade,
}

/// How the control loop ended.
enum Exit {
    /// SIGTERM (`delay`: wait `server.drain_delay` first) or SIGINT (no delay: Ctrl-C at a
    /// terminal has no load balancer to wait for): close the listeners and drain
    Terminate { delay: bool },
    /// a successor took the listening sockets and serves: hand them over and drain
    Upgraded,
}

/// How long a process taking over waits for its issuers' keys before it gives up (and the
/// old process keeps serving): it must not accept a request it would refuse for want of keys.
const UPGRADE_KEYS_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the gateway until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), ServerError> {
    run_with(config, |_| {})
}

/// Like `run`, calling `on_ready` once the listeners are bound and the workers started.
pub fn run_with(config: Config, on_ready: impl FnOnce(&Bound)) -> Result<(), ServerError> {
    run_as(config, Start::Fresh, on_ready)
}

/// Like [`run_with`], binding the listeners or taking them over (`start`).
pub fn run_as(
    config: Config,
    start: Start,
    on_ready: impl FnOnce(&Bound),
) -> Result<(), ServerError> {
    let config = Arc::new(config);
    let gw = Arc::new(Gateway::build(config.clone(), None)?);

    // certificates are read before anything is bound: a bad one fails startup cleanly
    let tls = match &config.server.tls {
        Some(t) => Some((t, TlsServer::new(t)?)),
        None => None,
    };
    let tls_listen = tls.as_ref().map(|(t, s)| (&t.listen[..], s.clone()));
    let (sockets, tcp_sockets, admin_listener, predecessor) = match start {
        Start::Fresh => (
            listener::bind_workers(&config.server.listen, tls_listen, config.server.threads)?,
            crate::tcp::bind(&config, config.server.threads)?,
            config
                .server
                .admin_listen
                .map(listener::bind_single)
                .transpose()?,
            None,
        ),
        Start::Upgrade => {
            let path = config
                .server
                .upgrade_socket
                .as_deref()
                .ok_or(ServerError::NoUpgradeSocket)?;
            let mut taken = upgrade::take_over(path)?;
            let sockets = listener::adopt_workers(
                &config.server.listen,
                std::mem::take(&mut taken.plain),
                tls_listen,
                std::mem::take(&mut taken.tls),
                config.server.threads,
            )?;
            let tcp = crate::tcp::adopt(
                &config,
                std::mem::take(&mut taken.tcp),
                config.server.threads,
            )?;
            // the admin socket too, when the address stayed: binding it anew would collide
            let admin = match (config.server.admin_listen, taken.admin.take()) {
                (Some(want), Some((held, l))) if listener::same_address(want, held) => Some(l),
                (Some(want), _) => Some(listener::bind_single(want)?),
                (None, _) => None,
            };
            tracing::info!(from = taken.from, "took over the listening sockets");
            (sockets, tcp, admin, Some(taken))
        }
    };
    let listener::WorkerSockets {
        per_worker,
        plain: bound,
        tls: tls_bound,
    } = sockets;
    let tls = tls.map(|(_, s)| s);
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    // what a later upgrade hands over: this process's own duplicates of every socket
    let passable = match &config.server.upgrade_socket {
        Some(_) => passable(&per_worker, &tcp_sockets, admin_listener.as_ref())?,
        None => Vec::new(),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    let opts = ServeOptions {
        max_header_bytes: config.server.max_header_bytes,
        header_read_timeout: config.server.header_read_timeout,
        shutdown_timeout: config.server.shutdown_timeout,
        proxy_protocol: config.server.proxy_protocol,
        max_connections_per_worker: config
            .server
            .max_connections
            .map(|m| m.div_ceil(config.server.threads.max(1))),
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

    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    rt.block_on(async {
        let fetcher = Arc::new(Fetcher::new());
        let mut live = Live::new(
            config.source.clone(),
            gw,
            handlers.clone(),
            fetcher.clone(),
            tls.clone(),
        );
        if let Some(t) = &tls {
            tokio::spawn(crate::tls::watch::run(t.clone(), crate::tls::watch::POLL));
        }
        // keys load in the background: startup does not wait for them (/readyz does)...
        live.start_refreshers();
        // one supervisor per upstream pool (health checks, DNS), here on the control plane
        crate::engine::upstream::supervise(&live.gateway().pools);
        // ...except when taking over: the old process serves until this one has them
        if predecessor.is_some() {
            wait_for_keys(&live).await?;
        }
        let handoff = match &config.server.upgrade_socket {
            Some(path) => Some(upgrade::Handoff::bind(
                path,
                passable,
                predecessor.is_some(),
            )?),
            None => None,
        };
        let tcp_ready = tcp_sockets.describe(&config);
        let tcp = crate::tcp::TcpService::new(tcp_sockets, live.current.clone(), tls.clone());
        crate::tunnel::metrics::register_series(&config);
        let tcp_worker = tcp.clone();
        let threads = WorkerThreads::start(per_worker, opts, move |i| {
            // on worker i's thread: its L4 connections live there too
            tcp_worker.start_worker(i);
            handlers[i].clone()
        })
        .map_err(ServerError::Runtime)?;
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<admin::ReloadReply>(4);
        let admin_task = admin_listener.map(|l| {
            let admin = Admin {
                gateway: live.current.clone(),
                fetcher,
                draining: draining.clone(),
                reload: reload_tx,
            };
            tokio::spawn(admin::serve(l, Arc::new(admin)))
        });
        let listen: Vec<String> = bound.iter().map(|a| a.to_string()).collect();
        let tls_listen: Vec<String> = tls_bound.iter().map(|a| a.to_string()).collect();
        // the one stable startup line (scripts and tests wait for it); `tls=` only when TLS
        // listeners exist, `tcp=route@addr,…` only with L4 routes, after the fields older
        // readers know
        eprintln!(
            "cc-gateway ready listen={} admin={}{}{}",
            listen.join(","),
            admin_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            if tls_listen.is_empty() {
                String::new()
            } else {
                format!(" tls={}", tls_listen.join(","))
            },
            if tcp_ready.is_empty() {
                String::new()
            } else {
                format!(" tcp={}", tcp_ready.join(","))
            }
        );
        // "off" rather than an empty field: log pipelines drop or mistype empty values
        let tls = if tls_listen.is_empty() {
            "off".to_string()
        } else {
            tls_listen.join(",")
        };
        tracing::info!(listen = %listen.join(","), tls = %tls, threads = config.server.threads, "serving");
        notify::ready(predecessor.is_some());
        on_ready(&Bound {
            listen: bound.clone(),
            admin: admin_addr,
            tls: tls_bound.clone(),
        });
        if let Some(p) = predecessor {
            let from = p.from;
            match p.ready() {
                Ok(()) => tracing::info!(from, "the previous process drains and exits"),
                // it was told nothing: it goes on serving beside this one until stopped
                Err(e) => tracing::error!(from, error = %e, "cannot tell the previous process to stop"),
            }
        }
        let exit = control_loop(&mut live, &mut reload_rx, handoff.as_ref()).await;
        let stop = match exit {
            Exit::Terminate { delay } => {
                tracing::info!("shutting down: /readyz says 503; draining after server.drain_delay");
                draining.store(true, std::sync::atomic::Ordering::Release);
                notify::stopping();
                // no upgrade once stopping; our copies of the sockets must not keep them open
                drop(handoff);
                // load balancers see /readyz fail and stop sending; until they do, new
                // connections are still served
                if delay {
                    tokio::time::sleep(live.gateway().config.server.drain_delay).await;
                }
                tracing::info!("shutting down: no new connections, draining open ones");
                Stop::Close
            }
            Exit::Upgraded => {
                tracing::info!("upgraded: the new process accepts; draining open connections");
                // the successor answers the admin socket now
                if let Some(t) = &admin_task {
                    t.abort();
                }
                drop(handoff);
                Stop::HandOver
            }
        };
        tcp.stop(stop);
        // the admin listener keeps answering (/readyz 503) while the workers drain
        let _ = tokio::task::spawn_blocking(move || threads.shutdown(stop)).await;
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
        live.gateway().tracer.flush(std::time::Duration::from_secs(5));
        Ok::<(), ServerError>(())
    })
}

/// Duplicates of every worker's listening sockets (HTTP and L4) and of the admin socket, to
/// hand over.
fn passable(
    per_worker: &[Vec<listener::Listening>],
    tcp: &crate::tcp::TcpSockets,
    admin: Option<&std::net::TcpListener>,
) -> Result<Vec<upgrade::Passable>, ServerError> {
    let mut out = Vec::new();
    let kinded = per_worker.iter().flatten().map(|l| {
        let kind = match l.tls {
            Some(_) => upgrade::Kind::Tls,
            None => upgrade::Kind::Plain,
        };
        (&l.socket, kind)
    });
    let kinded = kinded.chain(tcp.sockets().map(|s| (s, upgrade::Kind::Tcp)));
    for (socket, kind) in kinded.chain(admin.map(|a| (a, upgrade::Kind::Admin))) {
        let dup = || -> std::io::Result<upgrade::Passable> {
            Ok(upgrade::Passable {
                addr: socket.local_addr()?,
                fd: socket.try_clone()?.into(),
                kind,
            })
        };
        out.push(dup().map_err(ServerError::Runtime)?);
    }
    Ok(out)
}

/// Waits until every issuer's keys are loaded, up to [`UPGRADE_KEYS_TIMEOUT`].
async fn wait_for_keys(live: &Live) -> Result<(), ServerError> {
    let verifier = live.gateway().verifier.clone();
    let waited = tokio::time::timeout(UPGRADE_KEYS_TIMEOUT, async {
        // the refreshers have no "loaded" event to await; a short poll is cheap and bounded
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while !verifier.issuers().iter().all(|i| i.is_loaded()) {
            tick.tick().await;
        }
    })
    .await;
    waited.map_err(|_| ServerError::KeysNotLoaded(UPGRADE_KEYS_TIMEOUT))
}

/// Serves reloads (SIGHUP, admin `POST /reload`) and upgrades until SIGTERM/SIGINT or a
/// successor takes over.
async fn control_loop(
    live: &mut Live,
    reloads: &mut tokio::sync::mpsc::Receiver<admin::ReloadReply>,
    handoff: Option<&upgrade::Handoff>,
) -> Exit {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return Exit::Terminate { delay: false };
    };
    // one upgrade attempt at a time, kept across loop turns (a reload must not cancel it)
    let offer = || async move {
        match handoff {
            Some(h) => h.offer().await,
            None => std::future::pending().await,
        }
    };
    let mut upgrade = Box::pin(offer());
    loop {
        tokio::select! {
            _ = term.recv() => return Exit::Terminate { delay: true },
            _ = int.recv() => return Exit::Terminate { delay: false },
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", live.path.display());
                notify::reloading();
                let _ = live.reload();
                notify::reloaded();
            }
            Some(reply) = reloads.recv() => {
                notify::reloading();
                let _ = reply.send(live.reload().map_err(|e| e.to_string()));
                notify::reloaded();
            }
            result = &mut upgrade => match result {
                Ok(pid) => {
                    tracing::info!(pid, "a new process took over the listening sockets");
                    return Exit::Upgraded;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade abandoned; serving on");
                    upgrade = Box::pin(offer());
                }
            },
        }
    }
}
