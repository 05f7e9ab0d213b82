//! The HTTP client every upstream call goes through: rustls with the ring
//! provider, bounded timeouts, and a user agent that names canotify.

use std::time::Duration;

/// Installs ring as the process's TLS provider; harmless if one already is.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client with a whole-request timeout and a shorter connect timeout.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    install_tls_provider();
    reqwest::Client::builder()
        .user_agent(concat!("canotify/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
}
