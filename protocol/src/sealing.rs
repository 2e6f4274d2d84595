//! Sealed secrets: git credentials encrypted to one device's X25519 sealing key with HPKE
//! (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, base mode).
//!
//! The broker, an external broker's persistence and every other subscriber see only
//! ciphertext; only the device holding the private sealing key opens it. The HPKE `info`
//! binds the ciphertext to the device id, so a sealed secret cannot be replayed to another
//! device that happens to share nothing but the format.

use crate::codec::{decode, encode, CodecError};
use crate::credentials::GitCredentials;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

type KemT = X25519HkdfSha256;

/// A secret sealed to one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// HPKE encapsulated key.
    #[serde(with = "serde_bytes")]
    pub enc: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum SealError {
    #[error("invalid sealing key: {0}")]
    BadKey(String),
    #[error("could not seal: {0}")]
    Seal(String),
    #[error(
        "could not open the sealed secret: it was sealed for another device or key, or altered"
    )]
    Open,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no randomness: {0}")]
    Random(String),
}

/// The device's X25519 sealing key pair. The private half never leaves the device.
pub struct SealingKeyPair {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl SealingKeyPair {
    pub fn generate() -> Result<SealingKeyPair, SealError> {
        let mut ikm = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(ikm.as_mut()).map_err(|e| SealError::Random(e.to_string()))?;
        let (sk, pk) = KemT::derive_keypair(ikm.as_ref());
        let mut private = Zeroizing::new([0u8; 32]);
        private.copy_from_slice(&sk.to_bytes());
        let mut public = [0u8; 32];
        public.copy_from_slice(&pk.to_bytes());
        Ok(SealingKeyPair { private, public })
    }

    /// Loads the 32 private bytes written by [`SealingKeyPair::private_bytes`].
    pub fn from_private_bytes(bytes: &[u8]) -> Result<SealingKeyPair, SealError> {
        let sk = <KemT as Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|e| SealError::BadKey(format!("{e:?}")))?;
        let pk = KemT::sk_to_pk(&sk);
        let mut private = Zeroizing::new([0u8; 32]);
        private.copy_from_slice(&sk.to_bytes());
        let mut public = [0u8; 32];
        public.copy_from_slice(&pk.to_bytes());
        Ok(SealingKeyPair { private, public })
    }

    pub fn private_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.private.clone()
    }

    pub fn public_bytes(&self) -> [u8; 32] {
        self.public
    }

    /// Opens git credentials sealed for `device_id`.
    pub fn open_credentials(
        &self,
        device_id: &str,
        sealed: &SealedSecret,
    ) -> Result<GitCredentials, SealError> {
        let sk = <KemT as Kem>::PrivateKey::from_bytes(self.private.as_ref())
            .map_err(|e| SealError::BadKey(format!("{e:?}")))?;
        let enc =
            <KemT as Kem>::EncappedKey::from_bytes(&sealed.enc).map_err(|_| SealError::Open)?;
        let plain = Zeroizing::new(
            hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, KemT>(
                &OpModeR::Base,
                &sk,
                &enc,
                &info(device_id),
                &sealed.ciphertext,
                AAD,
            )
            .map_err(|_| SealError::Open)?,
        );
        Ok(decode::<Versioned>(&plain)?.credentials)
    }
}

impl std::fmt::Debug for SealingKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKeyPair(public {})", hex::encode(self.public))
    }
}

const AAD: &[u8] = b"hammer/v1 git credentials";

fn info(device_id: &str) -> Vec<u8> {
    format!("hammer/v1 sealed for device {device_id}").into_bytes()
}

#[derive(Serialize, Deserialize)]
struct Versioned {
    v: u16,
    credentials: GitCredentials,
}

/// Seals git credentials to a device's public sealing key (32 bytes).
pub fn seal_credentials(
    device_public: &[u8],
    device_id: &str,
    credentials: &GitCredentials,
) -> Result<SealedSecret, SealError> {
    let pk = <KemT as Kem>::PublicKey::from_bytes(device_public)
        .map_err(|e| SealError::BadKey(format!("{e:?}")))?;
    let plain = Zeroizing::new(encode(&Versioned {
        v: crate::PROTOCOL_VERSION,
        credentials: credentials.clone(),
    })?);
    let mut rng = rand_core::UnwrapErr(rand_core::OsRng);
    let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, KemT, _>(
        &OpModeS::Base,
        &pk,
        &info(device_id),
        &plain,
        AAD,
        &mut rng,
    )
    .map_err(|e| SealError::Seal(format!("{e:?}")))?;
    Ok(SealedSecret {
        enc: enc.to_bytes().to_vec(),
        ciphertext,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> GitCredentials {
        GitCredentials::Https {
            username: "git".into(),
            token: "s3cr3t-token".into(),
        }
    }

    #[test]
    fn seal_and_open() {
        let dev = SealingKeyPair::generate().unwrap();
        let sealed = seal_credentials(&dev.public_bytes(), "dev1", &creds()).unwrap();
        assert!(!sealed.ciphertext.windows(12).any(|w| w == b"s3cr3t-token"));
        assert_eq!(dev.open_credentials("dev1", &sealed).unwrap(), creds());
        let reloaded = SealingKeyPair::from_private_bytes(dev.private_bytes().as_ref()).unwrap();
        assert_eq!(reloaded.open_credentials("dev1", &sealed).unwrap(), creds());
    }

    #[test]
    fn wrong_device_key_or_tamper_fails() {
        let dev = SealingKeyPair::generate().unwrap();
        let other = SealingKeyPair::generate().unwrap();
        let sealed = seal_credentials(&dev.public_bytes(), "dev1", &creds()).unwrap();
        assert!(other.open_credentials("dev1", &sealed).is_err());
        assert!(dev.open_credentials("dev2", &sealed).is_err());
        let mut t = sealed.clone();
        t.ciphertext[0] ^= 1;
        assert!(dev.open_credentials("dev1", &t).is_err());
        let mut t = sealed;
        t.enc.truncate(3);
        assert!(dev.open_credentials("dev1", &t).is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let s = format!("{:?}", creds());
        assert!(!s.contains("s3cr3t"), "{s}");
        let ssh = GitCredentials::Ssh {
            private_key: "-----BEGIN OPENSSH PRIVATE KEY----- zzz".into(),
            known_hosts: "h ssh-ed25519 AAAA".into(),
        };
        assert!(!format!("{ssh:?}").contains("zzz"));
    }
}
