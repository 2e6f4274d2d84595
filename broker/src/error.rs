//! Typed errors of the broker library.

use thiserror::Error;

/// Errors starting or operating the broker.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The TLS material in the configuration is unusable.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The front door cannot listen.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The embedded rumqttd could not start.
    #[error("internal broker: {0}")]
    Internal(String),
    /// The revocation list refused an update.
    #[error("revocation list: {0}")]
    Revocation(String),
}
