//! A backend the pool tests steer: it answers its name, with a status the test sets (or a
//! scripted sequence of statuses), and its health check path `/hz` with its own status or
//! script. Before answering a scripted health check it can look at the gateway's
//! `/upstreams` — the state after every earlier check, exactly, because the gateway's checker
//! starts a round only after the previous one was applied.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::common::Req;

#[derive(Default)]
struct State {
    status: AtomicU16,
    /// ms before answering a request (not a check)
    delay_ms: AtomicU64,
    health: AtomicU16,
    /// statuses for the next requests (then `status`)
    script: Mutex<VecDeque<u16>>,
    /// statuses for the next health checks (then `health`)
    health_script: Mutex<VecDeque<u16>>,
    /// (admin address, endpoint): where to read the endpoint's state before a scripted check
    probe: Mutex<Option<(SocketAddr, String)>>,
    /// the endpoint's state seen before each scripted check
    seen: Mutex<Vec<String>>,
    /// the `Host` of the last health check
    health_host: Mutex<Option<String>>,
}

pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Backend::start_on("127.0.0.1:0".parse().expect("addr"), name).await
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> Backend {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding backend {name} on {addr}: {e}"));
        let addr = listener.local_addr().expect("backend addr");
        let state = Arc::new(State::default());
        state.status.store(200, Ordering::SeqCst);
        state.health.store(200, Ordering::SeqCst);
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (s, t, n) = (state.clone(), tasks.clone(), name.to_string());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, n) = (s.clone(), n.clone());
                let conn = tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (s, n) = (s.clone(), n.clone());
                        async move { Ok::<_, Infallible>(answer(&s, &n, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                t.lock().expect("tasks").push(conn.abort_handle());
            }
        });
        tasks.lock().expect("tasks").push(accept.abort_handle());
        Backend { addr, state, tasks }
    }

    /// Closes the listener and every connection: connecting is refused from now on.
    pub fn stop(&self) {
        for h in self.tasks.lock().expect("tasks").drain(..) {
            h.abort();
        }
    }

    /// A slow backend: every request (not the health checks) waits this long for its answer.
    pub fn set_delay(&self, d: std::time::Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_health(&self, s: u16) {
        self.state.health.store(s, Ordering::SeqCst);
    }

    pub fn script(&self, statuses: &[u16]) {
        self.state.script.lock().expect("script").extend(statuses);
    }

    /// Scripted health answers, each preceded by a look at the gateway's view of `endpoint`.
    pub fn health_script(&self, admin: SocketAddr, endpoint: &str, statuses: &[u16]) {
        *self.state.probe.lock().expect("probe") = Some((admin, endpoint.to_string()));
        self.state
            .health_script
            .lock()
            .expect("script")
            .extend(statuses);
    }

    pub fn seen(&self) -> Vec<String> {
        self.state.seen.lock().expect("seen").clone()
    }

    pub fn health_host(&self) -> Option<String> {
        self.state.health_host.lock().expect("host").clone()
    }

    pub fn script_done(&self) -> bool {
        self.state.health_script.lock().expect("script").is_empty()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer(s: &State, name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let status = if req.uri().path() == "/hz" {
        let host = req.headers().get(http::header::HOST);
        *s.health_host.lock().expect("host") =
            host.map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
        let next = s.health_script.lock().expect("script").pop_front();
        match next {
            Some(st) => {
                let probe = s.probe.lock().expect("probe").clone();
                if let Some((admin, endpoint)) = probe {
                    let state = endpoint_state(admin, &endpoint).await;
                    s.seen.lock().expect("seen").push(state);
                }
                st
            }
            None => s.health.load(Ordering::SeqCst),
        }
    } else {
        let next = s.script.lock().expect("script").pop_front();
        let delay = s.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            // the backend's own latency, what peak EWMA measures (not a sync point)
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        next.unwrap_or_else(|| s.status.load(Ordering::SeqCst))
    };
    let mut r = Response::new(Full::new(Bytes::from(name.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
    r
}

/// The gateway's `/upstreams` entry for `endpoint` (any upstream).
pub async fn endpoint_json(admin: SocketAddr, endpoint: &str) -> serde_json::Value {
    let v = Req::get("/upstreams").send(admin).await.json();
    v["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|u| u["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| e["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("{endpoint} not in /upstreams: {v}"))
}

pub async fn endpoint_state(admin: SocketAddr, endpoint: &str) -> String {
    endpoint_json(admin, endpoint).await["state"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}
