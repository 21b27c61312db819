//! `cc-gateway tunnel`: the agent inside the private network. It dials out to the gateway's
//! `/_tunnel/<name>`, authenticates with its token (re-read at every connection: rotation),
//! and serves HTTP/2 over the WebSocket: each `CONNECT <service>:1` the gateway sends is
//! answered after the agent reached that service — one it was started with, never another —
//! and the stream's bytes are copied to it. When the connection ends it reconnects with
//! jittered exponential back-off.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{CONNECTION_WINDOW, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, STREAM_WINDOW};
use crate::tcp::client::{ClientError, Gateway, Remote};

/// The back-off after a failed or lost connection: doubled per failure up to the cap, each
/// wait a random 50–100 % of it (agents restarted together do not reconnect in step).
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A connection that lasted this long resets the back-off.
const STABLE: Duration = Duration::from_secs(30);
/// Connecting to an exposed service.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `cc-gateway tunnel` was asked for.
pub struct AgentOptions {
    /// `wss://gw.example/_tunnel/<name>` (built from `--gateway` and `--tunnel`)
    pub remote: Remote,
    /// service name → `host:port` inside the private network
    pub expose: HashMap<String, String>,
}

/// Runs the agent until the process ends. `connected` is called each time the gateway
/// accepted it (for the CLI's "connected" line).
pub async fn run(o: AgentOptions, connected: impl Fn() + Send + Sync) -> Result<(), ClientError> {
    let gateway = Gateway::new(&o.remote)?;
    let expose = Arc::new(o.expose);
    let mut backoff = BACKOFF_FIRST;
    loop {
        let started = Instant::now();
        match gateway.websocket().await {
            Ok(ws) => {
                connected();
                let again = Arc::new(Notify::new());
                let mut connection = tokio::spawn(serve(ws, expose.clone(), again.clone()));
                tokio::select! {
                    why = &mut connection => {
                        let why = why.unwrap_or_else(|e| e.to_string());
                        tracing::warn!(reason = %why, "disconnected from the gateway");
                    }
                    () = again.notified() => {
                        // the gateway is draining: dial again now (its successor answers)
                        // while this connection finishes the streams it carries
                        tracing::info!("the gateway asked to reconnect");
                        backoff = BACKOFF_FIRST;
                        continue;
                    }
                }
                if started.elapsed() >= STABLE {
                    backoff = BACKOFF_FIRST;
                }
            }
            // a refusal (bad token, unknown tunnel) is said each time: it may be fixed by a
            // rotated token file, so the agent keeps trying
            Err(e) => tracing::error!(error = %e, "cannot connect to the gateway"),
        }
        let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tracing::info!(retry_in = ?wait, "reconnecting");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

/// Serves the gateway's streams over one connection until it ends; says why.
async fn serve(
    ws: crate::tcp::ws::WsStream<Box<dyn crate::tcp::Io>>,
    expose: Arc<HashMap<String, String>>,
    again: Arc<Notify>,
) -> String {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let expose = expose.clone();
        let again = again.clone();
        async move {
            if req.method() == http::Method::POST && req.uri().path() == "/_reconnect" {
                again.notify_one();
                let mut r = Response::new(Empty::new());
                *r.status_mut() = StatusCode::NO_CONTENT;
                return Ok::<_, Infallible>(r);
            }
            Ok(stream(req, &expose).await)
        }
    });
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(16 * 1024)
        .serve_connection(TokioIo::new(ws), service)
        .await;
    match served {
        Ok(()) => "the gateway closed the connection".into(),
        Err(e) => e.to_string(),
    }
}

/// One stream: `CONNECT <service>:1` → reach the service, answer, then copy the bytes.
async fn stream(
    mut req: Request<Incoming>,
    expose: &HashMap<String, String>,
) -> Response<Empty<Bytes>> {
    let status = |s: StatusCode| {
        let mut r = Response::new(Empty::new());
        *r.status_mut() = s;
        r
    };
    if req.method() != http::Method::CONNECT {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let name = req.uri().host().unwrap_or("").to_string();
    let Some(addr) = expose.get(&name) else {
        tracing::warn!(service = %name, "the gateway asked for a service this agent does not expose");
        return status(StatusCode::NOT_FOUND);
    };
    let local = match tokio::time::timeout(SERVICE_CONNECT_TIMEOUT, TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(service = %name, %addr, error = %e, "cannot reach the service");
            return status(StatusCode::BAD_GATEWAY);
        }
        Err(_) => {
            tracing::warn!(service = %name, %addr, "the service did not answer in time");
            return status(StatusCode::BAD_GATEWAY);
        }
    };
    let _ = local.set_nodelay(true);
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(service = %name, error = %e, "the stream did not open");
                return;
            }
        };
        let mut remote = TokioIo::new(upgraded);
        let mut local = local;
        let _ = crate::tcp::copy::splice(
            &mut local,
            &mut remote,
            None,
            &crate::tcp::copy::Tally::unmetered(),
        )
        .await;
    });
    status(StatusCode::OK)
}
