//! Random identifiers and secrets: ids (lowercase base32), API and enrollment tokens, and
//! the SHA-256 hashes under which tokens are stored.

use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the operating system's random source failed");
    b
}

/// Lowercase base32 (Crockford alphabet) of `bytes`, 5 bits per character.
fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A new id: 26 lowercase letters and digits (128 random bits), valid as a device id
/// ([`hammer_protocol::validate_device_id`]), an owner id, a deployment id
/// ([`hammer_protocol::validate_deployment_id`]) and in MQTT topics.
pub fn new_id() -> String {
    base32(&random_bytes::<16>())
}

/// A short id for API tokens (not secret): 13 characters.
pub fn new_token_id() -> String {
    base32(&random_bytes::<8>())
}

/// A new API token: `hmr_` + 256 random bits.
pub fn new_api_token() -> String {
    format!("hmr_{}", base32(&random_bytes::<32>()))
}

/// A new one-time enrollment token: `hme_` + 160 random bits.
pub fn new_enrollment_token() -> String {
    format!("hme_{}", base32(&random_bytes::<20>()))
}

/// A new webhook signing secret: 256 random bits, 64 lowercase hex digits.
pub fn new_webhook_secret() -> String {
    hex::encode(random_bytes::<32>())
}

/// SHA-256 of a token, lowercase hex: what the store keeps.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_device_and_deployment_ids_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 26);
        hammer_protocol::validate_device_id(&a).unwrap();
        hammer_protocol::validate_deployment_id(&a).unwrap();
        assert_ne!(a, new_id());
        assert!(new_api_token().len() > 50);
        assert_eq!(hash_token("x").len(), 64);
    }
}
