//! Helpers of the routing tests.

use crate::common::*;

/// Waits for `requests_total{labels}` to grow by one over the value in `before`.
pub async fn expect_request_counted(fx: &Fixture, before: &str, labels: &[(&str, &str)]) {
    let b = metric(before, "cc_gateway_requests_total", labels);
    wait_metric(&fx.gw, "cc_gateway_requests_total", labels, b + 1.0).await;
}
