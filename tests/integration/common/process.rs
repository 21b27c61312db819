//! Waiting on the gateway process itself (shutdown, upgrade hand-over), shared by the
//! lifecycle and L4 tests.

use std::time::Duration;

use super::wait::wait_until;
use super::Gateway;

/// Waits until the process has exited; fails the test after `within`.
pub async fn wait_exit(gw: &mut Gateway, within: Duration) {
    wait_until("the gateway process to exit", within, || {
        let running = gw.is_running();
        async move {
            if running {
                Err("still running".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
}
