//! Who a simulated device is and how it connects: its enrolled identity (certificate, key,
//! CA, service key), the MQTT options for it (mTLS, client id = device id, the protocol's
//! packet size, keep-alive, the offline presence as last will) and a fresh epoch.

use crate::error::SimError;
use crate::verify::Verifier;
use hammer_protocol::api::{ManagerConfigFile, ProvisionResponse};
use hammer_protocol::signing::PublicKey;
use hammer_protocol::topics::topic;
use hammer_protocol::{encode, Channel, Presence, MAX_PACKET};
use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use std::sync::Arc;
use std::time::Duration;

/// What a device needs to connect: its identity, key material and the service key.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The device's name (the owner's name for it).
    pub name: String,
    pub device_id: String,
    pub owner: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The service's Ed25519 public key, hex.
    pub service_key: String,
    pub broker_url: String,
}

impl Credentials {
    /// From an operator provisioning bundle.
    pub fn from_bundle(b: &ProvisionResponse) -> Result<Credentials, SimError> {
        let cfg: ManagerConfigFile = toml::from_str(&b.config_toml)?;
        Ok(Credentials {
            name: b.device.name.clone(),
            device_id: cfg.device_id,
            owner: cfg.owner,
            ca_pem: b.ca_pem.clone(),
            cert_pem: b.cert_pem.clone(),
            key_pem: b.key_pem.clone(),
            service_key: cfg.service_public_key,
            broker_url: cfg.broker_url,
        })
    }

    /// The checks the manager makes on every message from the service: the service key,
    /// this device id and this owner.
    pub fn verifier(&self) -> Result<Verifier, SimError> {
        Ok(Verifier {
            service_key: PublicKey::from_hex(&self.service_key)?,
            device_id: self.device_id.clone(),
            owner: self.owner.clone(),
        })
    }
}

/// MQTT options for a device identity: mTLS with its bundle, client id = device id, the
/// protocol's packet size, the given keep-alive. No last will (see [`set_offline_will`]).
pub fn mqtt_options(
    creds: &Credentials,
    broker: (&str, u16),
    keep_alive: Duration,
) -> Result<MqttOptions, SimError> {
    let tls = hammer_certs::tls::client_config(&creds.ca_pem, &creds.cert_pem, &creds.key_pem)?;
    let mut opts = MqttOptions::new(creds.device_id.clone(), broker.0, broker.1);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts.set_keep_alive(keep_alive);
    Ok(opts)
}

/// Sets the device's last will: its presence offline for `epoch`, retained (what the broker
/// publishes when the connection is lost without a clean disconnect).
pub fn set_offline_will(
    opts: &mut MqttOptions,
    device_id: &str,
    epoch: u64,
) -> Result<(), SimError> {
    opts.set_last_will(LastWill::new(
        topic(device_id, Channel::Presence),
        encode(&Presence::offline(epoch))?,
        QoS::AtLeastOnce,
        true,
    ));
    Ok(())
}

/// A random epoch, as a fresh data dir of the manager would have (63 bits).
pub fn new_epoch() -> Result<u64, SimError> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b)?;
    Ok(u64::from_le_bytes(b) >> 1)
}
