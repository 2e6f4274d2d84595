//! The checks the real manager makes on every message from the service before anything acts
//! on it: the Ed25519 signature with the service key from enrollment and the address (this
//! device id and this owner), with the protocol version check of the codec. What a verified
//! message then means (a newer generation, which outbox entries an ack trims) is decided in
//! [`crate::decide`] and [`crate::outbox`].

use hammer_protocol::signing::{verify, PublicKey, VerifyError};
use hammer_protocol::{Ack, AddressedAck, Channel, Command, DesiredState};

/// Who this device is, for checking signatures and addresses.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub service_key: PublicKey,
    pub device_id: String,
    pub owner: String,
}

/// A message from the service that did not verify: on which channel, and why.
#[derive(Debug, thiserror::Error)]
#[error("{} refused: {error}", what(*.channel))]
pub struct Refused {
    pub channel: Channel,
    pub error: VerifyError,
}

fn what(c: Channel) -> &'static str {
    match c {
        Channel::Desired => "desired state",
        Channel::Cmd => "command",
        Channel::Ack => "ack",
        _ => "message",
    }
}

impl Verifier {
    fn check<T>(&self, channel: Channel, payload: &[u8]) -> Result<T, Refused>
    where
        T: serde::de::DeserializeOwned + hammer_protocol::Addressed,
    {
        verify(payload, &self.service_key, &self.device_id, &self.owner)
            .map_err(|error| Refused { channel, error })
    }

    /// A signed desired state addressed to this device.
    pub fn desired(&self, payload: &[u8]) -> Result<DesiredState, Refused> {
        self.check(Channel::Desired, payload)
    }

    /// A signed command addressed to this device.
    pub fn command(&self, payload: &[u8]) -> Result<Command, Refused> {
        self.check(Channel::Cmd, payload)
    }

    /// A signed ack addressed to this device. Which epoch it is for and what it trims is the
    /// outbox's business.
    pub fn ack(&self, payload: &[u8]) -> Result<Ack, Refused> {
        self.check::<AddressedAck<'static>>(Channel::Ack, payload)
            .map(|a| a.ack())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::signing::SigningKeyPair;
    use hammer_protocol::{CommandKind, PROTOCOL_VERSION};

    fn desired(device: &str, owner: &str) -> DesiredState {
        crate::test_desired(device, owner)
    }

    fn verifier(key: &SigningKeyPair) -> Verifier {
        Verifier {
            service_key: key.public(),
            device_id: "d1".into(),
            owner: "o1".into(),
        }
    }

    #[test]
    fn desired_needs_the_service_key_and_this_address() {
        let key = SigningKeyPair::generate().unwrap();
        let other = SigningKeyPair::generate().unwrap();
        let v = verifier(&key);
        let ok = key.sign_to_vec(&desired("d1", "o1")).unwrap();
        assert_eq!(v.desired(&ok).unwrap().generation, 3);
        let forged = other.sign_to_vec(&desired("d1", "o1")).unwrap();
        assert!(matches!(
            v.desired(&forged),
            Err(Refused {
                channel: Channel::Desired,
                error: VerifyError::UnknownKey { .. }
            })
        ));
        for (dev, owner) in [("d2", "o1"), ("d1", "o2")] {
            let wire = key.sign_to_vec(&desired(dev, owner)).unwrap();
            let e = v.desired(&wire).unwrap_err();
            assert!(matches!(e.error, VerifyError::WrongAddress { .. }), "{e}");
            assert!(e.to_string().starts_with("desired state refused"), "{e}");
        }
        assert!(v.desired(&[0xff, 0x00]).is_err(), "garbage is refused");
        assert!(v.desired(&[]).is_err());
    }

    #[test]
    fn commands_and_acks_are_checked_the_same_way() {
        let key = SigningKeyPair::generate().unwrap();
        let v = verifier(&key);
        let cmd = |device: &str| Command {
            v: PROTOCOL_VERSION,
            device_id: device.into(),
            owner: "o1".into(),
            cmd_seq: 1,
            issued_at: 1,
            expires_at: 2,
            kind: CommandKind::Restart,
        };
        assert!(v.command(&key.sign_to_vec(&cmd("d1")).unwrap()).is_ok());
        let e = v
            .command(&key.sign_to_vec(&cmd("d2")).unwrap())
            .unwrap_err();
        assert_eq!(e.channel, Channel::Cmd);

        let ack = key
            .sign_to_vec(&AddressedAck::new("d1", "o1", 7, 9))
            .unwrap();
        let a = v.ack(&ack).unwrap();
        assert_eq!((a.epoch, a.seq), (7, 9));
        let misdirected = key
            .sign_to_vec(&AddressedAck::new("d1", "o2", 7, 9))
            .unwrap();
        assert_eq!(v.ack(&misdirected).unwrap_err().channel, Channel::Ack);
        // A plain (unsigned) ack is not an ack.
        let plain = hammer_protocol::encode(&a).unwrap();
        assert!(v.ack(&plain).is_err());
    }
}
