//! Checks every message from the service before anything acts on it (desired states,
//! commands and acks): the Ed25519 signature with the service key from enrollment, the
//! address (this device and its owner), the protocol version, and ordering (generation /
//! cmd_seq only move forward, commands expire; an ack only ever trims, see `outbox`).
//!
//! A refusal carries a sentence for the `refused` status event; it never includes secrets.

use hammer_protocol::signing::{verify, PublicKey, VerifyError};
use hammer_protocol::{Ack, AddressedAck, Command, DesiredState};

/// Who this device is, for checking signatures and addresses.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub service_key: PublicKey,
    pub device_id: String,
    pub owner: String,
}

/// Why a message was refused, with what could be read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// The generation of a refused desired state, when it was readable and authentic.
    pub generation: Option<u64>,
    pub deployment_id: Option<String>,
}

impl Refusal {
    fn plain(reason: String) -> Refusal {
        Refusal {
            reason,
            generation: None,
            deployment_id: None,
        }
    }
}

/// What to do with an authentic desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredVerdict {
    /// A newer generation: persist it, then hand it to the runtime.
    New(Box<DesiredState>),
    /// The generation already acted on (a republish): hand it on so the runtime re-confirms.
    Same(Box<DesiredState>),
}

fn describe(what: &str, e: VerifyError) -> String {
    match e {
        VerifyError::Codec(c) => format!("{what} refused: {c}"),
        other => format!("{what} refused: {other}"),
    }
}

impl Verifier {
    /// Checks a desired-state payload against the last generation acted on (0 = none).
    pub fn desired(&self, payload: &[u8], last_generation: u64) -> Result<DesiredVerdict, Refusal> {
        let d: DesiredState = verify(payload, &self.service_key, &self.device_id, &self.owner)
            .map_err(|e| Refusal::plain(describe("desired state", e)))?;
        if d.generation < last_generation || d.generation == 0 {
            return Err(Refusal {
                reason: format!(
                    "desired state refused: generation {} is older than generation {} already acted on (replay?)",
                    d.generation, last_generation
                ),
                generation: Some(d.generation),
                deployment_id: Some(d.deployment_id.clone()),
            });
        }
        if d.generation == last_generation {
            Ok(DesiredVerdict::Same(Box::new(d)))
        } else {
            Ok(DesiredVerdict::New(Box::new(d)))
        }
    }

    /// Checks an ack payload: signed by the service and addressed to this device. Which
    /// epoch it is for and whether it moves anything is the outbox's business.
    pub fn ack(&self, payload: &[u8]) -> Result<Ack, Refusal> {
        let a: AddressedAck = verify(payload, &self.service_key, &self.device_id, &self.owner)
            .map_err(|e| Refusal::plain(describe("ack", e)))?;
        Ok(a.ack())
    }

    /// Checks a command payload against the last accepted cmd_seq and the clock (`now_ms`).
    pub fn command(
        &self,
        payload: &[u8],
        last_cmd_seq: u64,
        now_ms: u64,
    ) -> Result<Command, Refusal> {
        let c: Command = verify(payload, &self.service_key, &self.device_id, &self.owner)
            .map_err(|e| Refusal::plain(describe("command", e)))?;
        if c.cmd_seq <= last_cmd_seq {
            return Err(Refusal::plain(format!(
                "command refused: cmd_seq {} is not after {} already accepted (replay?)",
                c.cmd_seq, last_cmd_seq
            )));
        }
        if c.expires_at < now_ms {
            return Err(Refusal::plain(format!(
                "command refused: it expired {} s ago (cmd_seq {}); check the device clock or send it again",
                (now_ms - c.expires_at) / 1000,
                c.cmd_seq
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hammer_protocol::signing::SigningKeyPair;
    use hammer_protocol::{CommandKind, RunState, PROTOCOL_VERSION};

    fn desired(gen: u64, dev: &str) -> DesiredState {
        DesiredState {
            v: PROTOCOL_VERSION,
            device_id: dev.into(),
            owner: "o1".into(),
            generation: gen,
            deployment_id: "dep".into(),
            repo_url: "file:///x".into(),
            git_ref: "main".into(),
            commit: None,
            start: "true".into(),
            env: Default::default(),
            health_window_secs: 1,
            health_cmd: None,
            run_state: RunState::Running,
            issued_at: 1,
            install: None,
            full_history: false,
        }
    }

    #[test]
    fn desired_checks() {
        let key = SigningKeyPair::generate().unwrap();
        let other = SigningKeyPair::generate().unwrap();
        let v = Verifier {
            service_key: key.public(),
            device_id: "d1".into(),
            owner: "o1".into(),
        };
        let wire = key.sign_to_vec(&desired(3, "d1")).unwrap();
        assert!(matches!(v.desired(&wire, 2), Ok(DesiredVerdict::New(_))));
        assert!(matches!(v.desired(&wire, 3), Ok(DesiredVerdict::Same(_))));
        let r = v.desired(&wire, 4).unwrap_err();
        assert_eq!(r.generation, Some(3));
        assert!(r.reason.contains("older"), "{}", r.reason);
        assert!(v
            .desired(&other.sign_to_vec(&desired(5, "d1")).unwrap(), 0)
            .is_err());
        let r = v
            .desired(&key.sign_to_vec(&desired(5, "d2")).unwrap(), 0)
            .unwrap_err();
        assert!(r.reason.contains("not to this device"), "{}", r.reason);
        assert!(v.desired(b"junk", 0).is_err());
    }

    #[test]
    fn command_checks() {
        let key = SigningKeyPair::generate().unwrap();
        let v = Verifier {
            service_key: key.public(),
            device_id: "d1".into(),
            owner: "o1".into(),
        };
        let cmd = |seq, exp| Command {
            v: PROTOCOL_VERSION,
            device_id: "d1".into(),
            owner: "o1".into(),
            cmd_seq: seq,
            issued_at: 0,
            expires_at: exp,
            kind: CommandKind::Restart,
        };
        assert!(v
            .command(&key.sign_to_vec(&cmd(2, 100)).unwrap(), 1, 50)
            .is_ok());
        assert!(v
            .command(&key.sign_to_vec(&cmd(1, 100)).unwrap(), 1, 50)
            .is_err());
        let r = v
            .command(&key.sign_to_vec(&cmd(2, 100)).unwrap(), 1, 5000)
            .unwrap_err();
        assert!(r.reason.contains("expired"));
    }

    #[test]
    fn acks_must_be_signed_by_the_service_and_name_this_device() {
        let key = SigningKeyPair::generate().unwrap();
        let other = SigningKeyPair::generate().unwrap();
        let v = Verifier {
            service_key: key.public(),
            device_id: "d1".into(),
            owner: "o1".into(),
        };
        let good = key
            .sign_to_vec(&AddressedAck::new("d1", "o1", 5, 9))
            .unwrap();
        assert_eq!(v.ack(&good).unwrap().seq, 9);
        let foreign = other
            .sign_to_vec(&AddressedAck::new("d1", "o1", 5, 9))
            .unwrap();
        assert!(v.ack(&foreign).unwrap_err().reason.contains("ack refused"));
        for (dev, owner) in [("d2", "o1"), ("d1", "o2")] {
            let wire = key
                .sign_to_vec(&AddressedAck::new(dev, owner, 5, 9))
                .unwrap();
            let r = v.ack(&wire).unwrap_err();
            assert!(r.reason.contains("not to this device"), "{}", r.reason);
        }
        let unsigned = hammer_protocol::encode(&Ack {
            v: PROTOCOL_VERSION,
            epoch: 5,
            seq: 9,
        })
        .unwrap();
        assert!(v.ack(&unsigned).is_err());
    }
}
