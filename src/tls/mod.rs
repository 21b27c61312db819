//! TLS, both sides: the one crypto provider (aws-lc-rs) and the PEM files certificates, keys
//! and CAs are read from. Server (downstream) and client (upstream) configs build on these.
//!
//! Downstream: `certs` (a served certificate, checked), `server` (the listeners' rustls config,
//! swapped whole at reload and rotation, and the handshake), `watch` (the files polled for
//! rotation), `peer` (a client certificate's identities).

pub mod certs;
pub mod client;
pub mod peer;
pub mod pem;
pub mod server;
pub mod watch;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The process's crypto provider. Installed once at startup so that no dependency that asks
/// rustls for "the default" can pull in a second provider (ring) behind our back.
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Installs aws-lc-rs as the process default; harmless when it already is.
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
