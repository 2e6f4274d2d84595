//! The signing envelope for every service → device message (desired state, commands, acks).
//!
//! `Signed { body, signature, key_id }`: Ed25519 over the exact CBOR bytes of `body`. The
//! device verifies the signature with the service key it got at enrollment, then that the
//! message names this device and its owner. Ordering (generation, cmd_seq, expiry) is the
//! device's job, since only it knows what it has acted on.

use crate::codec::{decode, encode, CodecError};
use crate::messages::Addressed;
use crate::PROTOCOL_VERSION;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

/// A signed message as it travels on the desired and cmd topics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub v: u16,
    /// [`PublicKey::key_id`] of the signing key.
    pub key_id: String,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("message is signed by key {found}, expected the service key {expected}")]
    UnknownKey { found: String, expected: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("message is addressed to device {device_id} of owner {owner}, not to this device")]
    WrongAddress { device_id: String, owner: String },
}

#[derive(Debug, Error)]
#[error("invalid Ed25519 key: {0}")]
pub struct KeyError(String);

/// The envelope as [`SigningKeyPair::sign_to_vec`] writes it, borrowing its parts: encodes to
/// the same bytes as [`Signed`] without copying the key id or the signature.
#[derive(Serialize)]
struct SignedRef<'a> {
    v: u16,
    key_id: &'a str,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
    #[serde(with = "serde_bytes")]
    signature: &'a [u8],
}

/// The service's Ed25519 signing key.
pub struct SigningKeyPair {
    key: SigningKey,
    /// [`PublicKey::key_id`], computed once: every signature names it.
    key_id: String,
}

impl SigningKeyPair {
    /// A new random key.
    pub fn generate() -> Result<SigningKeyPair, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|e| KeyError(e.to_string()))?;
        Ok(SigningKeyPair::from_key(SigningKey::from_bytes(&seed)))
    }

    fn from_key(key: SigningKey) -> SigningKeyPair {
        let key_id = PublicKey(key.verifying_key()).key_id();
        SigningKeyPair { key, key_id }
    }

    /// Loads the 32-byte seed written by [`SigningKeyPair::to_seed`].
    pub fn from_seed(seed: &[u8]) -> Result<SigningKeyPair, KeyError> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| KeyError(format!("seed is {} bytes, expected 32", seed.len())))?;
        Ok(SigningKeyPair::from_key(SigningKey::from_bytes(&seed)))
    }

    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.key.to_bytes())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// Encodes `msg` and signs the exact bytes.
    pub fn sign<T: Serialize>(&self, msg: &T) -> Result<Signed, CodecError> {
        let body = encode(msg)?;
        let signature = self.key.sign(&body).to_bytes().to_vec();
        Ok(Signed {
            v: PROTOCOL_VERSION,
            key_id: self.key_id.clone(),
            body,
            signature,
        })
    }

    /// [`SigningKeyPair::sign`] and encodes the envelope for the wire. Two allocations (the
    /// body and the envelope): the service signs every ack with it.
    pub fn sign_to_vec<T: Serialize>(&self, msg: &T) -> Result<Vec<u8>, CodecError> {
        let body = encode(msg)?;
        let signature = self.key.sign(&body).to_bytes();
        encode(&SignedRef {
            v: PROTOCOL_VERSION,
            key_id: &self.key_id,
            body: &body,
            signature: &signature,
        })
    }
}

impl std::fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKeyPair(public {})", self.public().key_id())
    }
}

/// The service's Ed25519 public key, as devices hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError(format!("public key is {} bytes, expected 32", bytes.len())))?;
        VerifyingKey::from_bytes(&arr)
            .map(PublicKey)
            .map_err(|e| KeyError(e.to_string()))
    }

    pub fn from_hex(s: &str) -> Result<PublicKey, KeyError> {
        let bytes = hex::decode(s.trim()).map_err(|e| KeyError(e.to_string()))?;
        PublicKey::from_bytes(&bytes)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// First 8 bytes of SHA-256 of the key, hex: names the key in envelopes.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.to_bytes())[..8])
    }

    /// Checks the signature over the envelope's body and returns the decoded body. Does not
    /// check the address; see [`verify`].
    pub fn open<T: DeserializeOwned>(&self, signed: &Signed) -> Result<T, VerifyError> {
        let expected = self.key_id();
        if signed.key_id != expected {
            return Err(VerifyError::UnknownKey {
                found: signed.key_id.chars().take(32).collect(),
                expected,
            });
        }
        let sig =
            Signature::from_slice(&signed.signature).map_err(|_| VerifyError::BadSignature)?;
        self.0
            .verify(&signed.body, &sig)
            .map_err(|_| VerifyError::BadSignature)?;
        Ok(decode(&signed.body)?)
    }
}

/// Decodes a signed envelope from the wire, checks its signature with `key` and that the body
/// is addressed to `device_id` of `owner`.
pub fn verify<T: DeserializeOwned + Addressed>(
    payload: &[u8],
    key: &PublicKey,
    device_id: &str,
    owner: &str,
) -> Result<T, VerifyError> {
    let signed: Signed = decode(payload)?;
    let msg: T = key.open(&signed)?;
    if msg.device_id() != device_id || msg.owner() != owner {
        return Err(VerifyError::WrongAddress {
            device_id: msg.device_id().chars().take(64).collect(),
            owner: msg.owner().chars().take(64).collect(),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    fn cmd(device: &str) -> Command {
        Command {
            v: PROTOCOL_VERSION,
            device_id: device.into(),
            owner: "alice".into(),
            cmd_seq: 1,
            issued_at: 1,
            expires_at: 2,
            kind: CommandKind::Restart,
        }
    }

    #[test]
    fn sign_and_verify() {
        let key = SigningKeyPair::generate().unwrap();
        let wire = key.sign_to_vec(&cmd("dev1")).unwrap();
        let back: Command = verify(&wire, &key.public(), "dev1", "alice").unwrap();
        assert_eq!(back, cmd("dev1"));
        let reloaded = SigningKeyPair::from_seed(key.to_seed().as_ref()).unwrap();
        assert_eq!(reloaded.public(), key.public());
        assert_eq!(
            PublicKey::from_hex(&key.public().to_hex()).unwrap(),
            key.public()
        );
    }

    #[test]
    fn tampering_is_refused() {
        let key = SigningKeyPair::generate().unwrap();
        let signed = key.sign(&cmd("dev1")).unwrap();
        // Every single-byte change of the body breaks the signature.
        for i in 0..signed.body.len() {
            let mut t = signed.clone();
            t.body[i] ^= 0x01;
            let wire = encode(&t).unwrap();
            assert!(verify::<Command>(&wire, &key.public(), "dev1", "alice").is_err());
        }
        let mut t = signed.clone();
        t.signature[0] ^= 0x80;
        assert!(matches!(
            verify::<Command>(&encode(&t).unwrap(), &key.public(), "dev1", "alice"),
            Err(VerifyError::BadSignature)
        ));
        t.signature.truncate(10);
        assert!(verify::<Command>(&encode(&t).unwrap(), &key.public(), "dev1", "alice").is_err());
    }

    #[test]
    fn other_key_and_wrong_address_are_refused() {
        let key = SigningKeyPair::generate().unwrap();
        let other = SigningKeyPair::generate().unwrap();
        let wire = other.sign_to_vec(&cmd("dev1")).unwrap();
        assert!(matches!(
            verify::<Command>(&wire, &key.public(), "dev1", "alice"),
            Err(VerifyError::UnknownKey { .. })
        ));
        // Forged key id with a foreign signature.
        let mut forged = other.sign(&cmd("dev1")).unwrap();
        forged.key_id = key.public().key_id();
        assert!(matches!(
            verify::<Command>(&encode(&forged).unwrap(), &key.public(), "dev1", "alice"),
            Err(VerifyError::BadSignature)
        ));
        let wire = key.sign_to_vec(&cmd("dev2")).unwrap();
        assert!(matches!(
            verify::<Command>(&wire, &key.public(), "dev1", "alice"),
            Err(VerifyError::WrongAddress { .. })
        ));
        assert!(matches!(
            verify::<Command>(
                &key.sign_to_vec(&cmd("dev1")).unwrap(),
                &key.public(),
                "dev1",
                "bob"
            ),
            Err(VerifyError::WrongAddress { .. })
        ));
    }

    #[test]
    fn the_wire_envelope_is_the_signed_envelope_encoded() {
        let key = SigningKeyPair::generate().unwrap();
        let wire = key.sign_to_vec(&cmd("dev1")).unwrap();
        let signed: Signed = decode(&wire).unwrap();
        // Ed25519 is deterministic: the borrowed envelope encodes to the same bytes.
        assert_eq!(wire, encode(&key.sign(&cmd("dev1")).unwrap()).unwrap());
        assert_eq!(signed.key_id, key.public().key_id());
        assert_eq!(signed.signature.len(), 64);
    }

    #[test]
    fn acks_are_signed_and_addressed_like_commands() {
        let key = SigningKeyPair::generate().unwrap();
        let other = SigningKeyPair::generate().unwrap();
        let wire = key
            .sign_to_vec(&AddressedAck::new("dev1", "alice", 7, 42))
            .unwrap();
        let back: AddressedAck = verify(&wire, &key.public(), "dev1", "alice").unwrap();
        assert_eq!(
            back.ack(),
            Ack {
                v: PROTOCOL_VERSION,
                epoch: 7,
                seq: 42
            }
        );
        assert!(matches!(
            verify::<AddressedAck>(&wire, &key.public(), "dev2", "alice"),
            Err(VerifyError::WrongAddress { .. })
        ));
        assert!(matches!(
            verify::<AddressedAck>(&wire, &key.public(), "dev1", "bob"),
            Err(VerifyError::WrongAddress { .. })
        ));
        let forged = other
            .sign_to_vec(&AddressedAck::new("dev1", "alice", 7, 42))
            .unwrap();
        assert!(verify::<AddressedAck>(&forged, &key.public(), "dev1", "alice").is_err());
        // The old unsigned form is not an envelope.
        let plain = encode(&Ack {
            v: PROTOCOL_VERSION,
            epoch: 7,
            seq: 42,
        })
        .unwrap();
        assert!(verify::<AddressedAck>(&plain, &key.public(), "dev1", "alice").is_err());
    }
}
