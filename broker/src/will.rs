//! The will of a session, published by the front door itself (the router's own will
//! handling is not reachable through an in-process link).

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::{LastWill, Packet, Publish, QoS};

/// The PUBLISH that delivers `will`. QoS 2 is published as QoS 1: the router would hold a
/// QoS 2 publish until a PUBREL that a departed client never sends.
pub(crate) fn publish(will: LastWill) -> Packet {
    let qos = match will.qos {
        QoS::AtMostOnce => 0u8,
        QoS::AtLeastOnce | QoS::ExactlyOnce => 1,
    };
    // rumqttd's MQTT-independent serialisation is the only public way to set the QoS.
    let mut raw = BytesMut::with_capacity(5 + will.topic.len() + will.message.len());
    raw.put_u8(0b0011_0000 | u8::from(will.retain) | (qos << 1));
    raw.put_u16(0);
    raw.put_u16(will.topic.len() as u16);
    raw.extend_from_slice(&will.topic);
    raw.extend_from_slice(&will.message);
    Packet::Publish(Publish::deserialize(raw.freeze()), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn keeps_topic_payload_retain_and_caps_qos_at_one() {
        for (qos, want) in [
            (QoS::AtMostOnce, "AtMostOnce"),
            (QoS::AtLeastOnce, "AtLeastOnce"),
            (QoS::ExactlyOnce, "AtLeastOnce"),
        ] {
            let will = LastWill {
                topic: Bytes::from_static(b"hammer/v1/dev/a/presence"),
                message: Bytes::from_static(b"offline"),
                qos,
                retain: true,
            };
            let Packet::Publish(p, _) = publish(will) else {
                panic!("not a publish")
            };
            assert_eq!(&p.topic[..], b"hammer/v1/dev/a/presence");
            assert_eq!(&p.payload[..], b"offline");
            assert!(p.retain);
            assert!(format!("{p:?}").contains(want), "{p:?}");
        }
    }
}
