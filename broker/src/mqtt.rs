//! MQTT 3.1.1 framing for the front door, with rumqttd's own `protocol::v4` codec.
//!
//! The front door parses every client packet in full, checks it, and hands the parsed value
//! itself to the router, so the router acts on exactly what the ACL checked (no parser
//! differential). Packet size is checked from the fixed header before the body is buffered.

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Error as ParseError, Packet, Protocol};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why reading a client packet failed.
#[derive(Debug, Error)]
pub enum MqttError {
    #[error("packet of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("not MQTT 3.1.1")]
    UnsupportedProtocol,
    #[error("malformed MQTT: {0}")]
    Malformed(String),
    #[error("connection closed in the middle of a packet")]
    Truncated,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses one complete packet from the front of `buf`, if there is one. Returns the packet
/// and the number of bytes it took on the wire.
pub fn parse(buf: &mut BytesMut, max_packet: usize) -> Result<Option<(Packet, usize)>, MqttError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let before = buf.len();
    match V4.read_mut(buf, max_packet) {
        Ok(p) => Ok(Some((p, before - buf.len()))),
        Err(ParseError::InsufficientBytes(_)) => Ok(None),
        Err(ParseError::PayloadSizeLimitExceeded(n)) => Err(MqttError::TooLarge(n)),
        Err(ParseError::InvalidProtocol | ParseError::InvalidProtocolLevel(_)) => {
            Err(MqttError::UnsupportedProtocol)
        }
        Err(e) => Err(MqttError::Malformed(e.to_string())),
    }
}

/// Reads one packet, buffering in `buf`. `Ok(None)` is a clean end of stream between packets.
/// Cancel-safe: bytes read so far stay in `buf`.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<(Packet, usize)>, MqttError> {
    loop {
        if let Some(p) = parse(buf, max_packet)? {
            return Ok(Some(p));
        }
        buf.reserve(4096);
        let n = reader.read_buf(buf).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(MqttError::Truncated)
            };
        }
    }
}

/// Appends the wire form of `packet` to `out`.
pub fn encode(packet: Packet, out: &mut BytesMut) -> Result<(), MqttError> {
    V4.write(packet, out)
        .map(|_| ())
        .map_err(|e| MqttError::Malformed(e.to_string()))
}

/// A CONNACK with the given return code (3.1.1: 1 bad protocol version, 2 identifier
/// rejected, 3 server unavailable, 5 not authorized).
pub fn connack(code: u8) -> [u8; 4] {
    [0x20, 0x02, 0x00, code]
}

/// PINGRESP, answered by the front door itself.
pub const PINGRESP: [u8; 2] = [0xd0, 0x00];

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{Connect, Packet as CPacket, Publish};
    use rumqttc::mqttbytes::QoS;

    /// Wire bytes from rumqttc's encoder: an independent implementation of the format.
    fn wire(p: CPacket) -> Vec<u8> {
        let mut b = BytesMut::new();
        p.write(&mut b, usize::MAX).unwrap();
        b.to_vec()
    }

    #[tokio::test]
    async fn reads_split_and_refuses_garbage() {
        let mut bytes = wire(CPacket::Connect(Connect::new("x")));
        let mut publish = Publish::new("a/b", QoS::AtLeastOnce, vec![1u8; 10]);
        publish.pkid = 1;
        bytes.extend(wire(CPacket::Publish(publish)));
        let mut reader = &bytes[..];
        let mut buf = BytesMut::new();
        let (p, n) = read_packet(&mut reader, &mut buf, 1024)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(p, Packet::Connect(..)));
        assert_eq!(n, wire(CPacket::Connect(Connect::new("x"))).len());
        let (p, _) = read_packet(&mut reader, &mut buf, 1024)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(p, Packet::Publish(..)));
        assert!(read_packet(&mut reader, &mut buf, 1024)
            .await
            .unwrap()
            .is_none());

        let garbage = [0xffu8; 64];
        let mut reader = &garbage[..];
        let mut buf = BytesMut::new();
        assert!(read_packet(&mut reader, &mut buf, 1024).await.is_err());

        let big = wire(CPacket::Publish(Publish::new(
            "a",
            QoS::AtMostOnce,
            vec![0u8; 5000],
        )));
        let mut reader = &big[..8];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_packet(&mut reader, &mut buf, 1024).await,
            Err(MqttError::TooLarge(_))
        ));

        let mut truncated = &bytes[..5];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_packet(&mut truncated, &mut buf, 1024).await,
            Err(MqttError::Truncated)
        ));
    }

    #[test]
    fn other_protocol_versions_are_named() {
        let mut connect = Connect::new("x");
        connect.protocol = rumqttc::mqttbytes::Protocol::V5;
        let mut bytes = wire(CPacket::Connect(connect));
        // rumqttc writes level 4 for its v4 type; patch the level byte to 5 and to 3.
        let level = bytes.iter().position(|b| *b == b'T').unwrap() + 2;
        for l in [3u8, 5] {
            bytes[level] = l;
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(matches!(
                parse(&mut buf, 1024),
                Err(MqttError::UnsupportedProtocol)
            ));
        }
    }

    #[test]
    fn round_trips_what_rumqttc_writes() {
        let mut publish = Publish::new("hammer/v1/dev/a/status", QoS::AtLeastOnce, vec![7u8; 300]);
        publish.pkid = 9;
        publish.retain = true;
        let bytes = wire(CPacket::Publish(publish));
        let mut buf = BytesMut::from(&bytes[..]);
        let (p, _) = parse(&mut buf, 1024).unwrap().unwrap();
        let mut out = BytesMut::new();
        encode(p, &mut out).unwrap();
        assert_eq!(&out[..], &bytes[..]);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes from a client: an error or a packet, never a panic, never a loop.
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            for _ in 0..600 {
                match parse(&mut buf, 256) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
