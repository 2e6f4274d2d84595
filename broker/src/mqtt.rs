//! MQTT 3.1.1 framing for the front door, on top of rumqttc's `mqttbytes::v4` parser.
//!
//! Client packets are parsed in full and re-encoded before they are forwarded, so rumqttd sees
//! exactly what the ACL checked (no parser differential). Packet size is checked from the
//! fixed header before the body is buffered.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::mqttbytes::Error as ParseError;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why reading a client packet failed.
#[derive(Debug, Error)]
pub enum MqttError {
    #[error("packet of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed MQTT: {0}")]
    Malformed(String),
    #[error("connection closed in the middle of a packet")]
    Truncated,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one packet, buffering in `buf`. `Ok(None)` is a clean end of stream between packets.
/// Returns the packet and the number of bytes it took on the wire.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<(Packet, usize)>, MqttError> {
    loop {
        if !buf.is_empty() {
            let before = buf.len();
            match Packet::read(buf, max_packet) {
                Ok(p) => return Ok(Some((p, before - buf.len()))),
                Err(ParseError::InsufficientBytes(_)) => {}
                Err(ParseError::PayloadSizeLimitExceeded(n)) => return Err(MqttError::TooLarge(n)),
                Err(e) => return Err(MqttError::Malformed(e.to_string())),
            }
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

/// Encodes a packet for forwarding.
pub fn encode(packet: &Packet, out: &mut BytesMut) -> Result<(), MqttError> {
    packet
        .write(out, usize::MAX)
        .map(|_| ())
        .map_err(|e| MqttError::Malformed(e.to_string()))
}

/// A CONNACK with the given return code (3.1.1: 1 bad protocol version, 2 identifier
/// rejected, 5 not authorized).
pub fn connack(code: u8) -> [u8; 4] {
    [0x20, 0x02, 0x00, code]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4::{Connect, Publish};
    use rumqttc::mqttbytes::QoS;

    #[tokio::test]
    async fn reads_split_and_refuses_garbage() {
        let mut wire = BytesMut::new();
        encode(&Packet::Connect(Connect::new("x")), &mut wire).unwrap();
        let mut publish = Publish::new("a/b", QoS::AtLeastOnce, vec![1u8; 10]);
        publish.pkid = 1;
        encode(&Packet::Publish(publish), &mut wire).unwrap();
        let bytes = wire.to_vec();
        let mut reader = &bytes[..];
        let mut buf = BytesMut::new();
        let (p, _) = read_packet(&mut reader, &mut buf, 1024)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(p, Packet::Connect(_)));
        let (p, _) = read_packet(&mut reader, &mut buf, 1024)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(p, Packet::Publish(_)));
        assert!(read_packet(&mut reader, &mut buf, 1024)
            .await
            .unwrap()
            .is_none());

        let garbage = [0xffu8; 64];
        let mut reader = &garbage[..];
        let mut buf = BytesMut::new();
        assert!(read_packet(&mut reader, &mut buf, 1024).await.is_err());

        let mut big = BytesMut::new();
        encode(
            &Packet::Publish(Publish::new("a", QoS::AtMostOnce, vec![0u8; 5000])),
            &mut big,
        )
        .unwrap();
        let big = big.to_vec();
        let mut reader = &big[..8];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_packet(&mut reader, &mut buf, 1024).await,
            Err(MqttError::TooLarge(_))
        ));
    }
}
