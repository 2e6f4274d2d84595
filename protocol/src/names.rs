//! Name rules: user and device names (chosen by people) and the ids the service chooses
//! (device ids, deployment ids).
//!
//! One validator per kind, used by every entry point (CLI, HTTP API, enrollment, broker).
//! Lengths are in bytes (what is stored and sent).

use thiserror::Error;

/// Longest user or device name, in bytes.
pub const MAX_NAME: usize = 63;

/// Longest device id (a lowercase ULID is 26 characters; leave room).
pub const MAX_DEVICE_ID: usize = 64;

/// Longest deployment id (the service makes 26-character ids; leave room).
pub const MAX_DEPLOYMENT_ID: usize = 64;

/// Why a name or id was refused. The message tells the user what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("name {0:?} is invalid: use 1 to 63 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit")]
    InvalidName(String),
    #[error("device id {0:?} is invalid: use 1 to 64 lowercase letters and digits")]
    InvalidDeviceId(String),
    #[error("deployment id {0:?} is invalid: use 1 to 64 lowercase letters and digits, as printed by `hammer deploy`")]
    InvalidDeploymentId(String),
}

/// Checks a user or device name against `^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NAME
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
    if is_id(id, MAX_DEVICE_ID) {
        Ok(())
    } else {
        Err(NameError::InvalidDeviceId(truncate(id)))
    }
}

/// Checks a deployment id: lowercase ASCII letters and digits, 1 to [`MAX_DEPLOYMENT_ID`]
/// long (the shape of the ids the service makes). Deployment ids appear in URL paths and
/// query strings, so no separators are allowed.
pub fn validate_deployment_id(id: &str) -> Result<(), NameError> {
    if is_id(id, MAX_DEPLOYMENT_ID) {
        Ok(())
    } else {
        Err(NameError::InvalidDeploymentId(truncate(id)))
    }
}

fn is_id(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_1_to_63_ascii_letters_digits_and_dot_dash_underscore_are_accepted() {
        for ok in ["a", "A9", "alice", "d1.lab_2-x", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "-a", "a b", "a/b", "ä", &"x".repeat(64), "a+b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_ids_are_1_to_64_lowercase_letters_and_digits() {
        assert!(validate_device_id("01jd3k4m5n6p7q8r9s0t1v2w3x").is_ok());
        assert!(validate_device_id(&"a".repeat(64)).is_ok());
        for bad in ["", "A", "a-b", "a/b", "+", "#", &"a".repeat(65)] {
            assert!(validate_device_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deployment_ids_have_the_shape_of_service_ids_and_nothing_else() {
        assert!(validate_deployment_id("01jd3k4m5n6p7q8r9s0t1v2w3x").is_ok());
        assert!(validate_deployment_id(&"9".repeat(64)).is_ok());
        // The CLI used to accept `-`, `_` and capitals, the service refused them.
        for bad in ["", "../etc", "a-b", "a_b", "ABC", "a b", &"a".repeat(65)] {
            assert!(validate_deployment_id(bad).is_err(), "{bad}");
        }
        let e = validate_deployment_id("a-b").unwrap_err().to_string();
        assert!(e.contains("lowercase letters and digits"), "{e}");
    }

    #[test]
    fn a_name_of_multi_byte_characters_is_refused_and_the_message_says_what_is_allowed() {
        let e = validate_name("größe").unwrap_err().to_string();
        assert!(e.contains("A-Z a-z 0-9 . _ -"), "{e}");
    }
}
