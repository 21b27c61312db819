//! A route's `retries` table: how many tries, on which failures, with which body limit.

use std::time::Duration;

use crate::config::raw::RawRetries;
use crate::config::{VResult, Validator};

/// When and how often a route's request is tried again (on another endpoint where one exists).
#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    /// tries in all, the first included (1: never retried)
    pub attempts: u32,
    /// the wait before the second try, doubled before each further one (jittered)
    pub backoff: Duration,
    pub on: RetryOn,
    /// bounds each try (connect and the wait for the response head); None: only the
    /// upstream's `read_timeout` and the route's `timeout`
    pub per_try_timeout: Option<Duration>,
    /// an idempotent request's body up to this size is buffered so that it can be replayed
    /// after a retryable status; of other bodies this much of what a try sent is kept (while
    /// streaming) for a `connect`/`refused` retry; past it a body goes once
    pub body_limit: u64,
}

/// The failures a route retries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryOn {
    /// no connection could be made
    pub connect: bool,
    /// the request provably never reached the application (any method); for an idempotent
    /// request also a connection that broke before any byte of the answer (a stale keep-alive
    /// connection)
    pub refused: bool,
    /// a try ran out of `per_try_timeout` / `read_timeout` (idempotent requests only)
    pub timeout: bool,
    /// response statuses (idempotent requests with a replayable body only)
    pub statuses: Vec<u16>,
}

impl Default for Retries {
    /// A route without a `retries` table: one more try when the request provably never
    /// reached the application — never a duplicate, so safe for every method.
    fn default() -> Self {
        Retries {
            attempts: 2,
            backoff: DEFAULT_BACKOFF,
            on: RetryOn {
                connect: true,
                refused: true,
                timeout: false,
                statuses: Vec::new(),
            },
            per_try_timeout: None,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
const DEFAULT_BODY_LIMIT: u64 = 64 * 1024;
/// Buffering more than this per request would turn retries into a memory problem.
const MAX_BODY_LIMIT: u64 = 16 * 1024 * 1024;

impl RetryOn {
    /// Anything that can only be retried with the request's body in hand for a replay.
    pub fn needs_replay(&self) -> bool {
        self.timeout || !self.statuses.is_empty()
    }
}

impl Validator {
    pub(in crate::config) fn retries(&self, p: &str, raw: Option<RawRetries>) -> VResult<Retries> {
        let d = Retries::default();
        let Some(r) = raw else { return Ok(d) };
        let p = format!("{p}.retries");
        let attempts = self.count(
            &format!("{p}.attempts"),
            r.attempts,
            d.attempts as usize,
            1,
            10,
        )? as u32;
        let backoff = self.duration(&format!("{p}.backoff"), &r.backoff, d.backoff)?;
        if backoff > Duration::from_secs(10) {
            return Err(self.err(
                format!("{p}.backoff"),
                "at most \"10s\" (the client is waiting)",
            ));
        }
        let per_try_timeout = r
            .per_try_timeout
            .map(|s| {
                self.positive_duration(&format!("{p}.per_try_timeout"), &Some(s), Duration::ZERO)
            })
            .transpose()?;
        let on = match r.on {
            None => d.on,
            Some(v) => self.retry_on(&p, &v)?,
        };
        let body_limit = match r.body_limit {
            None => d.body_limit,
            Some(s) => self.size(&format!("{p}.body_limit"), &s, MAX_BODY_LIMIT)?,
        };
        Ok(Retries {
            attempts,
            backoff,
            on,
            per_try_timeout,
            body_limit,
        })
    }

    fn retry_on(&self, p: &str, v: &[String]) -> VResult<RetryOn> {
        let mut on = RetryOn::default();
        for (j, s) in v.iter().enumerate() {
            match s.trim() {
                "connect" => on.connect = true,
                "refused" => on.refused = true,
                "timeout" => on.timeout = true,
                code => match code.parse::<u16>() {
                    Ok(c) if (500..=599).contains(&c) => {
                        if !on.statuses.contains(&c) {
                            on.statuses.push(c);
                        }
                    }
                    _ => {
                        return Err(self.err(
                            format!("{p}.on[{j}]"),
                            format!("{s:?}: expected \"connect\", \"refused\", \"timeout\" or a 5xx status such as \"503\""),
                        ))
                    }
                },
            }
        }
        Ok(on)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::super::tests::{parse, GOOD};

    fn with_retries(table: &str) -> String {
        GOOD.replace(
            "strip_prefix = true",
            &format!("strip_prefix = true\nretries = {table}"),
        )
    }

    #[test]
    fn default_is_one_more_try_on_connect_and_refused() {
        let r = &parse(GOOD).expect("valid").routes[0].retries;
        assert_eq!(r.attempts, 2);
        assert!(r.on.connect && r.on.refused && !r.on.timeout && r.on.statuses.is_empty());
        assert!(!r.on.needs_replay());
    }

    #[test]
    fn full_table() {
        let c = parse(&with_retries(
            r#"{ attempts = 3, backoff = "50ms", on = ["connect", "refused", "502", "503", "504", "timeout"], per_try_timeout = "10s", body_limit = "64KiB" }"#,
        ))
        .expect("valid");
        let r = &c.routes[0].retries;
        assert_eq!(r.attempts, 3);
        assert_eq!(r.backoff, Duration::from_millis(50));
        assert_eq!(r.on.statuses, vec![502, 503, 504]);
        assert!(r.on.timeout && r.on.connect && r.on.refused);
        assert_eq!(r.per_try_timeout, Some(Duration::from_secs(10)));
        assert_eq!(r.body_limit, 65536);
        let r = &parse(&with_retries(r#"{ on = ["503"], body_limit = 100 }"#))
            .expect("valid")
            .routes[0]
            .retries;
        assert!(!r.on.connect && !r.on.refused);
        assert_eq!(r.body_limit, 100);
        assert_eq!(
            parse(&with_retries(r#"{ body_limit = "1MiB" }"#))
                .expect("valid")
                .routes[0]
                .retries
                .body_limit,
            1 << 20
        );
    }

    #[test]
    fn errors_name_the_key() {
        for (table, path) in [
            ("{ attempts = 0 }", "routes[0].retries.attempts"),
            ("{ attempts = 11 }", "routes[0].retries.attempts"),
            (r#"{ on = ["connect", "404"] }"#, "routes[0].retries.on[1]"),
            (r#"{ on = ["reset"] }"#, "routes[0].retries.on[0]"),
            (r#"{ backoff = "soon" }"#, "routes[0].retries.backoff"),
            (r#"{ backoff = "1m" }"#, "routes[0].retries.backoff"),
            (
                r#"{ per_try_timeout = "0s" }"#,
                "routes[0].retries.per_try_timeout",
            ),
            (
                r#"{ body_limit = "64 potatoes" }"#,
                "routes[0].retries.body_limit",
            ),
            ("{ body_limit = -1 }", "routes[0].retries.body_limit"),
            (r#"{ body_limit = "1GiB" }"#, "routes[0].retries.body_limit"),
            ("{ tries = 2 }", "routes[0].retries"),
        ] {
            let e = parse(&with_retries(table)).unwrap_err();
            assert!(e.path.starts_with(path), "{table}: {} ({e})", e.path);
        }
    }
}
