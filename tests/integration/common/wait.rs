//! The one polling helper: bounded deadline, short pauses between tries, clear failure message.

use std::future::Future;
use std::time::{Duration, Instant};

use super::gateway::Gateway;
use super::metrics::metric;

/// Default bound for conditions the gateway should reach "soon" (keys loaded, file re-read, log flushed).
pub const DEADLINE: Duration = Duration::from_secs(10);
const PAUSE: Duration = Duration::from_millis(25);

/// Polls `check` until it returns `Ok(value)` or `deadline` passes.
/// `Err(state)` means "not yet"; the last state is put in the panic message on timeout.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut tries = 0u32;
    loop {
        tries += 1;
        match check().await {
            Ok(v) => return v,
            Err(state) => {
                if start.elapsed() >= deadline {
                    panic!(
                        "timed out after {:?} ({tries} tries) waiting for: {what}; last state: {state}",
                        deadline
                    );
                }
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// Waits until the metric (sum over the series matching `labels`) reaches `expected`, then asserts
/// it is exactly `expected` (an over-count is a bug too). Metrics may be recorded when the response
/// completes, so a scrape right after the response could otherwise race.
pub async fn wait_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)], expected: f64) {
    let what = format!("{name}{labels:?} to reach {expected}");
    let got = wait_until(&what, DEADLINE, || async {
        let text = gw.metrics().await;
        let v = metric(&text, name, labels);
        if v >= expected {
            Ok(v)
        } else {
            Err(format!("value {v}"))
        }
    })
    .await;
    assert_eq!(
        got, expected,
        "metric {name}{labels:?}: expected exactly {expected}, got {got}"
    );
}
