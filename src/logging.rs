//! The diagnostic log's level, changeable at reload. The subscriber is the CLI's (`main.rs`
//! installs it and registers how to change its filter here); the library only asks for a new
//! level when a reloaded `log.level` differs from the running one. `RUST_LOG`, when set at
//! startup, wins over the file and stays.

use std::sync::OnceLock;

type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Registers how the running subscriber's level changes (once, at startup).
pub fn register(set: SetLevel) {
    let _ = SET_LEVEL.set(set);
}

/// Applies `level` (validated by the config) to the running subscriber, if one is registered.
pub fn apply_level(level: &str) -> Result<(), String> {
    match SET_LEVEL.get() {
        Some(set) => set(level),
        None => Ok(()),
    }
}
