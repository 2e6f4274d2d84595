//! Hammer IoT wire protocol, shared by the service, the broker and the device manager.
//!
//! Everything here is pure: topic names ([`topics`]), name and id rules ([`names`]), the
//! rules for tags, environment variables and git refs ([`rules`]), the install step of a
//! release ([`install`]), broker URLs ([`broker_url`]), maintenance windows' text
//! ([`window`]), the wire names of enums ([`wire`]), the message types ([`messages`]), the
//! CBOR codec with its size limit ([`codec`]), the Ed25519 signing envelope for service →
//! device messages ([`signing`]) and HPKE-sealed git credentials ([`sealing`]).
//! No I/O happens in this crate.
//!
//! Each input rule has one definition here, used by the CLI, the service and the manager.

pub mod api;
pub mod broker_url;
pub mod codec;
pub mod credentials;
pub mod install;
pub mod messages;
pub mod names;
pub mod rules;
pub mod schedule;
pub mod sealing;
pub mod signing;
pub mod topics;
pub mod window;
pub mod wire;

pub use broker_url::{BrokerUrl, BrokerUrlError};
pub use codec::{decode, encode, CodecError};
pub use install::{parse_reuse, validate_install, InstallError, InstallStep, ReuseDir};
pub use messages::*;
pub use names::{validate_deployment_id, validate_device_id, validate_name, NameError};
pub use rules::{
    full_commit_id, parse_env, parse_tag, validate_env, validate_env_name, validate_git_ref,
    validate_tag, validate_tags, CommitIdError, EnvError, GitRefError, TagError,
};
pub use topics::{Channel, Topic, TopicError};
pub use window::{Window, WindowError};
pub use wire::WireName;

/// Version carried in every message as field `v`. Decoders refuse any other value.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest MQTT payload anyone in the system sends or accepts (256 KiB). The MQTT clients'
/// maximum packet size, the broker's front door and rumqttd are all configured from this.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// Largest MQTT packet: the payload plus room for the topic and the fixed header.
pub const MAX_PACKET: usize = MAX_PAYLOAD + 1024;

/// Milliseconds since the Unix epoch; the time unit of every message.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
