//! Certificate serial numbers: random generation and the one canonical hex form.
//!
//! Canonical form: lowercase hex, no colons, no leading zeros (zero is "0"). Every serial that
//! enters or leaves this crate goes through [`normalize_serial`] or [`serial_from_bytes`].

use crate::error::{CertError, Result};

/// Normalises a serial written as hex (any case, optional colons, optional leading zeros).
pub fn normalize_serial(serial: &str) -> Result<String> {
    let trimmed = serial.trim();
    let mut digits = String::with_capacity(trimmed.len());
    for c in trimmed.chars() {
        match c {
            ':' => {}
            c if c.is_ascii_hexdigit() => digits.push(c.to_ascii_lowercase()),
            _ => return Err(CertError::InvalidSerial(crate::error::truncate(serial))),
        }
    }
    if digits.is_empty() || digits.len() > 2 * 64 {
        return Err(CertError::InvalidSerial(crate::error::truncate(serial)));
    }
    let stripped = digits.trim_start_matches('0');
    Ok(if stripped.is_empty() {
        "0".to_string()
    } else {
        stripped.to_string()
    })
}

/// Canonical hex of a serial given as big-endian bytes (as stored in the certificate).
pub fn serial_from_bytes(bytes: &[u8]) -> String {
    let s = hex::encode(bytes);
    let stripped = s.trim_start_matches('0');
    if stripped.is_empty() {
        "0".to_string()
    } else {
        stripped.to_string()
    }
}

/// Big-endian bytes of a canonical (or any valid) hex serial, for writing a CRL.
pub(crate) fn serial_to_bytes(serial: &str) -> Result<Vec<u8>> {
    let canonical = normalize_serial(serial)?;
    let padded = if canonical.len() % 2 == 1 {
        format!("0{canonical}")
    } else {
        canonical
    };
    hex::decode(&padded).map_err(|_| CertError::InvalidSerial(crate::error::truncate(serial)))
}

/// A fresh random, positive, 16-byte serial.
pub(crate) fn random_serial() -> Result<rcgen::SerialNumber> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| CertError::InvalidInput {
        what: "system random source",
        detail: e.to_string(),
    })?;
    // Positive, and no leading zero byte, so the DER integer is exactly these 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize_serial("00:AB:cd").unwrap(), "abcd");
        assert_eq!(normalize_serial("0000").unwrap(), "0");
        assert_eq!(normalize_serial(" 0f ").unwrap(), "f");
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial("").is_err());
        assert_eq!(serial_from_bytes(&[0, 0x80, 1]), "8001");
        assert_eq!(serial_to_bytes("f01").unwrap(), vec![0x0f, 0x01]);
    }

    #[test]
    fn random_serials_are_positive_and_distinct() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }
}
