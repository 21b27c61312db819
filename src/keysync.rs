//! Keeping issuers' keys fresh (control plane, never on the request path): OIDC discovery,
//! JWKS over HTTP(S) or from a file, background refresh honouring `Cache-Control: max-age`
//! within bounds, unknown-kid refetches, forced refreshes from the admin API.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::auth::jwk::{parse_jwks, KeySet};
use crate::auth::Verifier;
use crate::config::{Issuer, KeySource};
use crate::engine::upstream::error_chain;
use crate::metrics::METRICS;

/// JWKS and discovery documents larger than this are refused.
const MAX_DOC: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {uri}: {detail}")]
    Http { uri: String, detail: String },
    #[error("GET {uri}: status {status}")]
    Status { uri: String, status: u16 },
    #[error("GET {uri}: no answer within {timeout:?}")]
    Timeout { uri: String, timeout: Duration },
    #[error("discovery document {uri}: {detail}")]
    Discovery { uri: String, detail: String },
    #[error("reading {path}: {detail}")]
    File { path: String, detail: String },
    #[error("{source_name}: {detail}")]
    Jwks { source_name: String, detail: String },
}

pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Fetcher {
    pub fn new() -> Self {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_native_roots() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no system CA certificates: https key sources will fail (install ca-certificates)");
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::aws_lc_rs::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .map(|b| {
                        b.with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    })
                    .unwrap_or_else(|_| {
                        rustls::ClientConfig::builder()
                            .with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    }),
                )
            }
        };
        let https = builder.https_or_http().enable_http1().build();
        Fetcher {
            client: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    async fn get(
        &self,
        uri: &Uri,
        timeout: Duration,
    ) -> Result<(Bytes, Option<Duration>), FetchError> {
        let u = uri.to_string();
        let req = Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("cc-gateway/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| FetchError::Http {
                uri: u.clone(),
                detail: e.to_string(),
            })?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| FetchError::Http {
                    uri: u.clone(),
                    detail: error_chain(&e),
                })?;
            if !resp.status().is_success() {
                return Err(FetchError::Status {
                    uri: u.clone(),
                    status: resp.status().as_u16(),
                });
            }
            let max_age = resp
                .headers()
                .get(http::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(max_age);
            let body = Limited::new(resp.into_body(), MAX_DOC)
                .collect()
                .await
                .map_err(|e| FetchError::Http {
                    uri: u.clone(),
                    detail: format!("body: {e}"),
                })?
                .to_bytes();
            Ok((body, max_age))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| FetchError::Timeout {
                uri: u.clone(),
                timeout,
            })?
    }

    /// Fetches and parses an issuer's keys. Returns them with the server's `max-age`, if any.
    pub async fn fetch_keys(
        &self,
        issuer: &Issuer,
        previous: Option<&KeySet>,
    ) -> Result<(KeySet, Option<Duration>), FetchError> {
        let (doc, max_age, source_name) = match &issuer.source {
            KeySource::JwksFile(p) => {
                let d = tokio::fs::read(p).await.map_err(|e| FetchError::File {
                    path: p.display().to_string(),
                    detail: e.to_string(),
                })?;
                (Bytes::from(d), None, p.display().to_string())
            }
            KeySource::JwksUri(u) => {
                let (d, m) = self.get(u, issuer.fetch_timeout).await?;
                (d, m, u.to_string())
            }
            KeySource::Discovery(u) => {
                let jwks_uri = self.discover(issuer, u).await?;
                let (d, m) = self.get(&jwks_uri, issuer.fetch_timeout).await?;
                (d, m, jwks_uri.to_string())
            }
        };
        let set = parse_jwks(&doc, &issuer.algorithms, previous).map_err(|e| FetchError::Jwks {
            source_name,
            detail: e.to_string(),
        })?;
        Ok((set, max_age))
    }

    async fn discover(&self, issuer: &Issuer, uri: &Uri) -> Result<Uri, FetchError> {
        let (doc, _) = self.get(uri, issuer.fetch_timeout).await?;
        let err = |detail: String| FetchError::Discovery {
            uri: uri.to_string(),
            detail,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&doc).map_err(|e| err(format!("not JSON: {e}")))?;
        // OpenID Connect Discovery §4.3: the document must name the issuer we asked about
        let doc_iss = v.get("issuer").and_then(|i| i.as_str()).unwrap_or("");
        if doc_iss.trim_end_matches('/') != issuer.issuer.trim_end_matches('/') {
            return Err(err(format!(
                "it names issuer {doc_iss:?}, expected {:?}",
                issuer.issuer
            )));
        }
        let jwks = v
            .get("jwks_uri")
            .and_then(|j| j.as_str())
            .ok_or_else(|| err("no jwks_uri".into()))?;
        let u: Uri = jwks
            .parse()
            .map_err(|_| err(format!("jwks_uri {jwks:?} is not a URL")))?;
        if !matches!(u.scheme_str(), Some("http") | Some("https")) {
            return Err(err(format!("jwks_uri {jwks:?} is not http(s)")));
        }
        Ok(u)
    }
}

/// `max-age=N` from a Cache-Control value.
fn max_age(v: &str) -> Option<Duration> {
    v.split(',').find_map(|d| {
        let d = d.trim();
        let n = d
            .strip_prefix("max-age=")
            .or_else(|| d.strip_prefix("s-maxage="))?;
        n.trim_matches('"')
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    })
}

/// What a refresh did.
#[derive(Debug)]
pub struct Refreshed {
    pub keys: usize,
    pub kids: Vec<String>,
    pub max_age: Option<Duration>,
}

/// Fetches issuer `idx`'s keys now and installs them. A failure keeps the last good keys.
pub async fn refresh(
    verifier: &Verifier,
    idx: usize,
    fetcher: &Fetcher,
) -> Result<Refreshed, Arc<FetchError>> {
    let ik = &verifier.issuers()[idx];
    let _one_at_a_time = ik.fetch_lock.lock().await;
    ik.begin_fetch();
    let previous = ik.current();
    let result = fetcher.fetch_keys(&ik.cfg, previous.as_deref()).await;
    let out = match result {
        Ok((set, max_age)) => {
            for s in &set.skipped {
                tracing::warn!(issuer = %ik.cfg.name, "skipped a key: {s}");
            }
            let kids: Vec<String> = set
                .keys
                .iter()
                .map(|k| k.kid.clone().unwrap_or_else(|| "(no kid)".into()))
                .collect();
            let n = set.keys.len();
            verifier.install_keys(idx, set);
            ik.last_error.store(None);
            METRICS
                .jwks_refresh
                .with_label_values(&[&ik.cfg.name, "ok"])
                .inc();
            tracing::info!(issuer = %ik.cfg.name, keys = n, kids = ?kids, "keys loaded");
            Ok(Refreshed {
                keys: n,
                kids,
                max_age,
            })
        }
        Err(e) => {
            METRICS
                .jwks_refresh
                .with_label_values(&[&ik.cfg.name, "error"])
                .inc();
            tracing::warn!(issuer = %ik.cfg.name, error = %e, kept_last_good = previous.is_some(), "key refresh failed");
            let e = Arc::new(e);
            ik.last_error.store(Some(Arc::new(e.to_string())));
            Err(e)
        }
    };
    ik.end_fetch();
    out
}

/// The background refresher of one issuer: refresh, then sleep until the next refresh is due
/// (or an unknown kid wakes it, or — for files — the file changes). Failures retry with
/// backoff from 1 s up to 30 s (a request for the issuer wakes it sooner), keeping the last good keys meanwhile.
pub async fn run_refresher(verifier: Arc<Verifier>, idx: usize, fetcher: Arc<Fetcher>) {
    let cfg = verifier.issuers()[idx].cfg.clone();
    let floor = Duration::from_secs(60).min(cfg.refresh_interval);
    let mut backoff = Duration::from_secs(1);
    loop {
        let stamp = file_stamp(&cfg.source).await;
        let wait = match refresh(&verifier, idx, &fetcher).await {
            Ok(r) => {
                backoff = Duration::from_secs(1);
                r.max_age
                    .map(|m| m.clamp(floor, cfg.refresh_interval))
                    .unwrap_or(cfg.refresh_interval)
            }
            Err(_) => {
                let w = backoff;
                backoff = (backoff * 2)
                    .min(Duration::from_secs(30))
                    .min(cfg.refresh_interval.max(Duration::from_secs(1)));
                w
            }
        };
        let ik = &verifier.issuers()[idx];
        let deadline = tokio::time::Instant::now() + wait;
        if matches!(cfg.source, KeySource::JwksFile(_)) {
            // poll the file once a second: a changed file is re-read at once
            loop {
                let tick = tokio::time::sleep_until(
                    deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)),
                );
                tokio::select! {
                    _ = tick => {}
                    _ = ik.wake.notified() => break,
                }
                if tokio::time::Instant::now() >= deadline || file_stamp(&cfg.source).await != stamp
                {
                    break;
                }
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = ik.wake.notified() => {}
            }
        }
    }
}

/// (modified time, length) of a key file, to notice changes.
async fn file_stamp(src: &KeySource) -> Option<(SystemTime, u64)> {
    let KeySource::JwksFile(p) = src else {
        return None;
    };
    let m = tokio::fs::metadata(p).await.ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
