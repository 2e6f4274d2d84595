//! MQTT topic names: `hammer/v1/dev/{device_id}/{channel}`.

use crate::names::validate_device_id;
use std::fmt;
use thiserror::Error;

/// Prefix of every topic the system uses.
pub const PREFIX: &str = "hammer/v1/";
/// Prefix of every per-device topic.
pub const DEVICE_PREFIX: &str = "hammer/v1/dev/";
/// Shared subscription through which service replicas split the status stream.
pub const STATUS_SHARED_SUBSCRIPTION: &str = "$share/hammer/hammer/v1/dev/+/status";

/// The per-device channels, with their direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// service → device, retained, signed [`crate::DesiredState`].
    Desired,
    /// service → device, signed [`crate::Command`].
    Cmd,
    /// service → device, [`crate::Ack`] of stored status seqs.
    Ack,
    /// device → service, [`crate::StatusEvent`].
    Status,
    /// device → service, [`crate::Health`].
    Health,
    /// device → service, [`crate::LogBatch`].
    Logs,
    /// device → service, [`crate::Presence`].
    Presence,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::Desired,
        Channel::Cmd,
        Channel::Ack,
        Channel::Status,
        Channel::Health,
        Channel::Logs,
        Channel::Presence,
    ];
    /// Channels the service publishes and a device subscribes to.
    pub const TO_DEVICE: [Channel; 3] = [Channel::Desired, Channel::Cmd, Channel::Ack];
    /// Channels a device publishes and the service subscribes to.
    pub const FROM_DEVICE: [Channel; 4] = [
        Channel::Status,
        Channel::Health,
        Channel::Logs,
        Channel::Presence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Desired => "desired",
            Channel::Cmd => "cmd",
            Channel::Ack => "ack",
            Channel::Status => "status",
            Channel::Health => "health",
            Channel::Logs => "logs",
            Channel::Presence => "presence",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// True when devices publish on this channel.
    pub fn from_device(self) -> bool {
        Channel::FROM_DEVICE.contains(&self)
    }

    /// The filter that matches this channel for every device: `hammer/v1/dev/+/{channel}`.
    pub fn all_devices_filter(self) -> String {
        format!("{DEVICE_PREFIX}+/{}", self.as_str())
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed per-device topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    pub device_id: String,
    pub channel: Channel,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    #[error("topic {0:?} is not of the form hammer/v1/dev/{{device_id}}/{{channel}}")]
    Malformed(String),
    #[error("topic {0:?} names an unknown channel")]
    UnknownChannel(String),
    #[error("topic {0:?} has an invalid device id")]
    BadDeviceId(String),
}

impl Topic {
    pub fn new(device_id: &str, channel: Channel) -> Topic {
        Topic {
            device_id: device_id.to_owned(),
            channel,
        }
    }

    /// Parses `hammer/v1/dev/{device_id}/{channel}`; nothing else is accepted.
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let short = || topic.chars().take(200).collect::<String>();
        let rest = topic
            .strip_prefix(DEVICE_PREFIX)
            .ok_or_else(|| TopicError::Malformed(short()))?;
        let (id, channel) = rest
            .split_once('/')
            .ok_or_else(|| TopicError::Malformed(short()))?;
        validate_device_id(id).map_err(|_| TopicError::BadDeviceId(short()))?;
        let channel = Channel::parse(channel).ok_or_else(|| TopicError::UnknownChannel(short()))?;
        Ok(Topic::new(id, channel))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DEVICE_PREFIX}{}/{}", self.device_id, self.channel)
    }
}

/// The topic string for one device and channel.
pub fn topic(device_id: &str, channel: Channel) -> String {
    format!("{DEVICE_PREFIX}{device_id}/{}", channel.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for c in Channel::ALL {
            let t = topic("abc123", c);
            assert_eq!(Topic::parse(&t).unwrap(), Topic::new("abc123", c));
            assert_eq!(Topic::new("abc123", c).to_string(), t);
        }
    }

    #[test]
    fn refuses() {
        for bad in [
            "hammer/v1/dev/abc/x",
            "hammer/v1/dev/ABC/status",
            "hammer/v1/dev/+/status",
            "hammer/v1/dev/#",
            "hammer/v1/dev/abc/status/extra",
            "hammer/v2/dev/abc/status",
            "",
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Channel::Status.all_devices_filter(),
            "hammer/v1/dev/+/status"
        );
    }
}
