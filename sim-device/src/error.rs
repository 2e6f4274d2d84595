//! What can go wrong in a simulated device, as one typed error.

use std::time::Duration;

/// Errors of the simulated device. Received payloads never cause one: a message that does
/// not verify is a [`Refused`](crate::verify::Refused) handed to the driver, not an error.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The provisioning bundle's `manager.toml` does not parse.
    #[error("the bundle's manager.toml does not parse: {0}")]
    Bundle(#[from] toml::de::Error),
    /// The service public key in the bundle is not an Ed25519 key.
    #[error("bad service public key: {0}")]
    ServiceKey(#[from] hammer_protocol::signing::KeyError),
    /// The device's certificate, key or CA do not make a TLS client config.
    #[error("cannot build the device's TLS config: {0}")]
    Tls(#[from] hammer_certs::CertError),
    /// No randomness for the epoch.
    #[error("no randomness for the epoch: {0}")]
    Random(#[from] getrandom::Error),
    /// A message of ours does not encode (too large).
    #[error("cannot encode a message: {0}")]
    Encode(#[from] hammer_protocol::CodecError),
    /// The MQTT client's request queue is closed (the device's task ended).
    #[error("cannot publish: {0}")]
    Publish(#[from] rumqttc::ClientError),
    /// The device did not connect, subscribe and announce itself in time.
    #[error("device {device_id} did not connect and subscribe within {after:?}")]
    ConnectTimeout { device_id: String, after: Duration },
    /// Something awaited did not happen in time.
    #[error("{device_id}: timed out after {after:?} waiting for {what}")]
    Timeout {
        device_id: String,
        what: &'static str,
        after: Duration,
    },
}
