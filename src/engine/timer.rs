//! Keeps each worker's timer wheel from running empty.
//!
//! hyper arms a header-read timer for every request and drops it as soon as the head is in.
//! When a worker's wheel holds no timer at the moment its runtime parks, tokio records "no
//! next wake", and the next timer registered — the next request's — must wake the I/O driver
//! to shorten its wait: an eventfd write and an extra `epoll_wait` return, measured at one per
//! three requests under keep-alive load. A timer that is always pending a second ahead makes
//! every request's (30 s ahead) later than the recorded wake, so registering it is just the
//! wheel insert. Cost: one wake-up per second per worker.

use std::time::Duration;

const TICK: Duration = Duration::from_secs(1);

/// Spawns the tick on the current (worker) runtime.
pub fn keep_wheel_armed() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
        }
    });
}
