//! The CLI: `check`, `token keygen` / `mint` / `inspect`, `dev`, and where `run` finds its config
//! and what it says when it cannot start.

mod check;
mod dev;
mod keygen;
mod startup;
mod token;
