//! Name rules: user and device names (chosen by people) and device ids (chosen by the service).
//!
//! One validator per kind, used by every entry point (CLI, HTTP API, enrollment, broker).

use thiserror::Error;

/// Longest device id (a lowercase ULID is 26 characters; leave room).
pub const MAX_DEVICE_ID: usize = 64;

/// Why a name or id was refused. The message tells the user what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("name {0:?} is invalid: use 1 to 63 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit")]
    InvalidName(String),
    #[error("device id {0:?} is invalid: use 1 to 64 lowercase letters and digits")]
    InvalidDeviceId(String),
}

/// Checks a user or device name against `^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::InvalidName(truncate(name)))
    }
}

/// Checks a device id: lowercase ASCII letters and digits, 1 to [`MAX_DEVICE_ID`] long.
/// Device ids appear in MQTT topics and certificate CNs, so no separators are allowed.
pub fn validate_device_id(id: &str) -> Result<(), NameError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_DEVICE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(NameError::InvalidDeviceId(truncate(id)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "A9", "alice", "d1.lab_2-x", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "-a", "a b", "a/b", "ä", &"x".repeat(64), "a+b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_ids() {
        assert!(validate_device_id("01jd3k4m5n6p7q8r9s0t1v2w3x").is_ok());
        for bad in ["", "A", "a-b", "a/b", "+", "#", &"a".repeat(65)] {
            assert!(validate_device_id(bad).is_err(), "{bad}");
        }
    }
}
