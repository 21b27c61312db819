//! A route's tries of one request: which failures are tried again, with which body, how long
//! each try may take and how long to wait between them.
//!
//! The contract: a request is never delivered twice unless its method is idempotent. A
//! non-idempotent request is tried again only when the failure proves it never reached the
//! application (`Failure::Connect`, `Failure::Unsent`) *and* its body can still be sent whole
//! (no try read a byte of it, or all a try read — at most `body_limit` — was kept: a stream
//! above a GOAWAY's last-stream-id was written out, body and all, yet never processed); an
//! idempotent one also after a broken connection, a timeout or a listed status, with its body
//! replayed from a buffer (bodies declared no larger than `body_limit`) or from what was kept.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::body::ReqBody;
use super::client::UpstreamClient;
use super::error::{Failed, Failure, UpstreamError};
use super::Tried;
use crate::config::Route;
use crate::metrics::UPSTREAM_RETRIES;

/// What the tries of one request did (the access log's `attempts` and `endpoint`); written
/// as they happen, so a request cut by the route's timeout or the client still has them.
#[derive(Debug, Default)]
pub struct Tries {
    /// tries made (0: the request never went upstream)
    pub attempts: u32,
    /// the endpoint of the last try
    pub endpoint: Option<Authority>,
}

/// Sends `req` to upstream `upstream` (the route's) under the route's `retries`. The route's
/// own `timeout` (the caller's) bounds all tries together; `per_try_timeout` each.
pub async fn send_with_retries(
    clients: &[Arc<UpstreamClient>],
    upstream: usize,
    route: &Route,
    req: Request<ReqBody>,
    path: PathAndQuery,
    tries: &mut Tries,
) -> Result<(Response<Incoming>, Authority), UpstreamError> {
    let policy = &route.retries;
    let (head, body) = req.into_parts();
    let idempotent = is_idempotent(&head.method);
    let body = if policy.attempts < 2 {
        body
    } else if idempotent && policy.on.needs_replay() {
        // buffered only where a status or a timeout may call for a replay of a body the
        // upstream may have read; a larger or unsized body streams and is lent instead
        match body.buffer_up_to(policy.body_limit).await {
            Ok(b) => b.lendable(policy.body_limit),
            Err(e) => {
                return Err(UpstreamError::Protocol {
                    endpoint: "the client".into(),
                    detail: format!("reading the request body: {e}"),
                })
            }
        }
    } else {
        body.lendable(policy.body_limit)
    };
    let name = clients.get(upstream).map_or("", |c| c.pool.name());
    let mut tried = Tried::new();
    let mut next = Some(body);
    let mut head = head;
    loop {
        let body = next.take().unwrap_or(ReqBody::Empty);
        // a copy for the next try, taken now: a lent body is checked again after the try
        let spare = body.replay();
        tries.attempts += 1;
        // the head is copied only for a try that may have a successor (one try by default);
        // the last takes it, leaving an empty one (no allocation) that nothing reads
        let this_head = if tries.attempts < policy.attempts {
            head.clone()
        } else {
            std::mem::replace(&mut head, Request::new(()).into_parts().0)
        };
        let result = one_try(
            clients,
            upstream,
            this_head,
            body,
            &path,
            policy.per_try_timeout,
            &mut tried,
            &mut tries.endpoint,
        )
        .await;
        let cause = match &result {
            Ok((resp, _)) => (idempotent && policy.on.statuses.contains(&resp.status().as_u16()))
                .then(|| resp.status().as_str().to_string()),
            Err(f) => retryable(f.failure, idempotent, &policy.on).map(str::to_string),
        };
        // the spare is good only while the body can go whole (a lent one: all the try read kept)
        next = spare.and_then(|s| s.replay().map(|_| s));
        let again = cause.filter(|_| tries.attempts < policy.attempts && next.is_some());
        let Some(cause) = again else {
            return result.map_err(|f| f.error);
        };
        UPSTREAM_RETRIES.with_label_values(&[name, &cause]).inc();
        match &result {
            Ok((resp, endpoint)) => {
                tracing::debug!(upstream = name, %endpoint, status = %resp.status(), "retrying")
            }
            Err(f) => tracing::debug!(upstream = name, error = %f.error, "retrying"),
        }
        drop(result);
        tokio::time::sleep(backoff(policy.backoff, tries.attempts)).await;
    }
}

/// One try to one endpoint (a fresh one where the upstream has one not yet tried).
#[allow(clippy::too_many_arguments)]
async fn one_try(
    clients: &[Arc<UpstreamClient>],
    upstream: usize,
    head: Parts,
    body: ReqBody,
    path: &PathAndQuery,
    per_try_timeout: Option<Duration>,
    tried: &mut Tried,
    endpoint: &mut Option<Authority>,
) -> Result<(Response<Incoming>, Authority), Failed> {
    let req = Request::from_parts(head, body);
    super::send(
        clients,
        upstream,
        req,
        path.clone(),
        tried,
        endpoint,
        per_try_timeout,
    )
    .await
}

/// The `on` value that retries this failure, if any.
fn retryable(f: Failure, idempotent: bool, on: &crate::config::RetryOn) -> Option<&'static str> {
    match f {
        Failure::Connect if on.connect => Some("connect"),
        Failure::Unsent if on.refused => Some("refused"),
        // the upstream may have read it: a repeat is harmless only for an idempotent method
        Failure::Broken if on.refused && idempotent => Some("refused"),
        Failure::Timeout if on.timeout && idempotent => Some("timeout"),
        _ => None,
    }
}

/// RFC 9110 §9.2.2 (CONNECT and PATCH are not; POST, gRPC's method, is not).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The wait before try `n + 1`: `base` doubled per earlier retry (at most 16 times `base`),
/// jittered down to half so that workers that failed together do not retry together.
fn backoff(base: Duration, n: u32) -> Duration {
    let d = base.saturating_mul(1 << n.saturating_sub(1).min(4));
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryOn;

    #[test]
    fn only_provably_unsent_failures_retry_a_post() {
        let on = RetryOn {
            connect: true,
            refused: true,
            timeout: true,
            statuses: vec![503],
        };
        for (f, post, get) in [
            (Failure::Connect, Some("connect"), Some("connect")),
            (Failure::Unsent, Some("refused"), Some("refused")),
            (Failure::Broken, None, Some("refused")),
            (Failure::Timeout, None, Some("timeout")),
            (Failure::Other, None, None),
        ] {
            assert_eq!(retryable(f, false, &on), post, "{f:?} POST");
            assert_eq!(retryable(f, true, &on), get, "{f:?} GET");
        }
        assert_eq!(retryable(Failure::Connect, true, &RetryOn::default()), None);
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(
                is_idempotent(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter() {
        let b = Duration::from_millis(100);
        for _ in 0..100 {
            let first = backoff(b, 1);
            assert!(first >= b / 2 && first <= b, "{first:?}");
            let third = backoff(b, 3);
            assert!(third >= b * 2 && third <= b * 4, "{third:?}");
            assert!(backoff(b, 30) <= b * 16);
        }
    }
}
