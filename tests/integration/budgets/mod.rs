//! Request budgets (`[budgets]`): quotas (fixed UTC windows) and rates (GCRA), the 429 answer and
//! its headers, keys, tiers, overrides, route costs, the admin API and its bearer token, metrics,
//! and what `check` refuses.
//!
//! The contract every store keeps is written once, as `async fn test(store: &Store)`, and
//! instantiated per store by `per_store!` (tests `module::test::memory`, `::sqlite`, `::redis`;
//! Redis is a real `redis-server` on an ephemeral loopback port). What only one store does lives
//! in that store's module.

mod admin_api;
mod config;
mod exactness;
mod keys;
mod redis;
mod sqlite;
mod tiers;
