//! Input rules for what people type and the service stores: device tags (and the `key=value`
//! tag selector), app environment variables and git refs. Names and ids are in
//! [`crate::names`], broker URLs in [`crate::broker_url`].
//!
//! Every rule has one function here, used by the `hammer` CLI (before a request is sent), the
//! service (on every request) and, where it applies, the device manager. Lengths are counted
//! in bytes (UTF-8), because bytes are what is stored and sent.

use crate::names::{validate_name, NameError};
use std::collections::BTreeMap;
use thiserror::Error;

/// Most tags on one device.
pub const MAX_TAGS: usize = 32;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE: usize = 128;
/// Longest environment variable name, in bytes.
pub const MAX_ENV_NAME: usize = 128;
/// Longest environment variable value, in bytes.
pub const MAX_ENV_VALUE: usize = 8192;
/// Longest git ref (branch, tag or commit), in bytes.
pub const MAX_GIT_REF: usize = 256;

/// Why a tag or a tag selector was refused. The message tells the user what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagError {
    #[error("at most {MAX_TAGS} tags per device ({0} given)")]
    TooMany(usize),
    #[error("tag key {key:?} is invalid: use 1 to 63 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit")]
    InvalidKey { key: String },
    #[error("tag {key}: the value {value:?} is invalid: use at most {MAX_TAG_VALUE} bytes of printable characters without '=' or ','")]
    InvalidValue { key: String, value: String },
    #[error("tag {0:?} must look like key=value, e.g. group=lab")]
    NotKeyValue(String),
}

/// Checks one tag: the key follows the name rule ([`validate_name`]); the value is 0 to
/// [`MAX_TAG_VALUE`] bytes without control characters, `=` or `,`.
pub fn validate_tag(key: &str, value: &str) -> Result<(), TagError> {
    validate_name(key).map_err(|_: NameError| TagError::InvalidKey { key: truncate(key) })?;
    let ok = value.len() <= MAX_TAG_VALUE
        && !value
            .chars()
            .any(|c| c.is_control() || c == '=' || c == ',');
    if ok {
        Ok(())
    } else {
        Err(TagError::InvalidValue {
            key: key.to_owned(),
            value: truncate(value),
        })
    }
}

/// Checks a device's tags: at most [`MAX_TAGS`], each one by [`validate_tag`].
pub fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), TagError> {
    if tags.len() > MAX_TAGS {
        return Err(TagError::TooMany(tags.len()));
    }
    tags.iter().try_for_each(|(k, v)| validate_tag(k, v))
}

/// Parses `key=value` (a `--tag` argument, or the tag selector of a device list or a
/// deployment) into a tag that passes [`validate_tag`]. The value may be empty.
pub fn parse_tag(s: &str) -> Result<(String, String), TagError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| TagError::NotKeyValue(truncate(s)))?;
    validate_tag(k, v)?;
    Ok((k.to_owned(), v.to_owned()))
}

/// The `key=value` form of a tag, as [`parse_tag`] reads it.
pub fn tag_selector(key: &str, value: &str) -> String {
    format!("{key}={value}")
}

/// Why an app environment variable was refused. The message tells the user what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvError {
    #[error("environment variable name {0:?} is invalid: use 1 to {MAX_ENV_NAME} bytes of A-Z a-z 0-9 _, not starting with a digit")]
    InvalidName(String),
    #[error("environment variable {0}: the value must be at most {MAX_ENV_VALUE} bytes and must not contain NUL")]
    InvalidValue(String),
    #[error("environment variable {0:?} must look like NAME=VALUE")]
    NotNameValue(String),
}

/// Checks an environment variable name: 1 to [`MAX_ENV_NAME`] bytes of ASCII letters, digits
/// and `_`, not starting with a digit (what every shell accepts).
pub fn validate_env_name(name: &str) -> Result<(), EnvError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ENV_NAME
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(EnvError::InvalidName(truncate(name)))
    }
}

/// Checks an environment variable: the name by [`validate_env_name`]; the value is at most
/// [`MAX_ENV_VALUE`] bytes without NUL (it becomes a C string in the app's environment).
pub fn validate_env(name: &str, value: &str) -> Result<(), EnvError> {
    validate_env_name(name)?;
    if value.len() > MAX_ENV_VALUE || value.contains('\0') {
        return Err(EnvError::InvalidValue(name.to_owned()));
    }
    Ok(())
}

/// Parses `NAME=VALUE` (the value may be empty or hold `=`) into a variable that passes
/// [`validate_env`].
pub fn parse_env(s: &str) -> Result<(String, String), EnvError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| EnvError::NotNameValue(truncate(s)))?;
    validate_env(k, v)?;
    Ok((k.to_owned(), v.to_owned()))
}

/// Why a git ref was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("git ref {0:?} is invalid: name a branch, tag or commit in 1 to {MAX_GIT_REF} bytes, without spaces or control characters, not starting with '-'")]
pub struct GitRefError(pub String);

/// Checks a git ref (branch, tag or commit) a user names: 1 to [`MAX_GIT_REF`] bytes, no
/// whitespace or control characters, not starting with `-` (git would read it as an option).
pub fn validate_git_ref(r: &str) -> Result<(), GitRefError> {
    let ok = !r.is_empty()
        && r.len() <= MAX_GIT_REF
        && !r.starts_with('-')
        && !r.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(GitRefError(truncate(r)))
    }
}

/// Why a commit id was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("commit {0:?} is not a full commit id: 40 hex digits (SHA-1) or 64 (SHA-256); name a branch or tag with --ref instead, and `hammer deploy` resolves it")]
pub struct CommitIdError(pub String);

/// A full commit id (40 hex digits for SHA-1, 64 for SHA-256), lowercased; abbreviated ids,
/// branches and tags are refused.
pub fn full_commit_id(s: &str) -> Result<String, CommitIdError> {
    let t = s.trim();
    if matches!(t.len(), 40 | 64) && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(CommitIdError(truncate(s)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod commit_tests {
    use super::*;

    #[test]
    fn only_full_commit_ids_are_commit_ids_and_they_come_back_lowercase() {
        let a = "A".repeat(40);
        assert_eq!(full_commit_id(&a).unwrap(), "a".repeat(40));
        assert!(full_commit_id(&"b".repeat(64)).is_ok());
        for bad in [
            "",
            "main",
            "abc1234",
            &"a".repeat(39),
            &"a".repeat(41),
            &"g".repeat(40),
        ] {
            assert!(full_commit_id(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_value_is_limited_in_bytes_so_multi_byte_characters_count_for_their_length() {
        // 64 two-byte characters: 128 bytes, at the limit.
        assert!(validate_tag("room", &"ä".repeat(64)).is_ok());
        // 65 of them are 130 bytes: the CLI (which counted 65 characters) used to accept
        // this and the service to refuse it.
        let e = validate_tag("room", &"ä".repeat(65)).unwrap_err();
        assert!(matches!(e, TagError::InvalidValue { .. }), "{e:?}");
        assert!(e.to_string().contains("at most 128 bytes"), "{e}");
        // Three-byte characters: 42 fit, 43 do not.
        assert!(validate_tag("k", &"€".repeat(42)).is_ok());
        assert!(validate_tag("k", &"€".repeat(43)).is_err());
        assert!(parse_tag(&format!("room={}", "ä".repeat(65))).is_err());
    }

    #[test]
    fn a_tag_value_may_be_empty_but_holds_no_equals_comma_or_control_character() {
        assert!(validate_tag("group", "").is_ok());
        assert!(validate_tag("group", "lab 2").is_ok());
        for bad in ["a=b", "a,b", "a\nb", "\x1b[2J", "a\u{85}b"] {
            assert!(validate_tag("group", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_tag_key_follows_the_name_rule() {
        for bad in ["", "-a", "a b", "ä", &"k".repeat(64)] {
            let e = validate_tag(bad, "v").unwrap_err();
            assert!(matches!(e, TagError::InvalidKey { .. }), "{bad:?}: {e:?}");
        }
        assert!(validate_tag(&"k".repeat(63), "v").is_ok());
    }

    #[test]
    fn at_most_32_tags_per_device() {
        let mut tags: BTreeMap<String, String> =
            (0..32).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(validate_tags(&tags).is_ok());
        tags.insert("k32".into(), "v".into());
        assert_eq!(validate_tags(&tags), Err(TagError::TooMany(33)));
    }

    #[test]
    fn a_tag_selector_is_key_equals_value_and_round_trips() {
        assert_eq!(
            parse_tag("group=lab").unwrap(),
            ("group".into(), "lab".into())
        );
        assert_eq!(
            parse_tag("group=").unwrap(),
            ("group".into(), String::new())
        );
        assert_eq!(
            parse_tag(&tag_selector("group", "lab 2")).unwrap(),
            ("group".into(), "lab 2".into())
        );
        assert!(matches!(parse_tag("group"), Err(TagError::NotKeyValue(_))));
        assert!(matches!(
            parse_tag("=lab"),
            Err(TagError::InvalidKey { .. })
        ));
        assert!(matches!(
            parse_tag("a=b=c"),
            Err(TagError::InvalidValue { .. })
        ));
        assert!(parse_tag("a b=c").is_err());
    }

    #[test]
    fn an_env_name_of_128_bytes_is_accepted_and_one_of_129_is_refused() {
        assert!(validate_env_name(&"A".repeat(128)).is_ok());
        let e = validate_env_name(&"A".repeat(129)).unwrap_err();
        assert!(e.to_string().contains("1 to 128 bytes"), "{e}");
        // The CLI used to accept any length; it now refuses it before the request.
        assert!(parse_env(&format!("{}=x", "A".repeat(129))).is_err());
        assert!(parse_env(&format!("{}=x", "A".repeat(128))).is_ok());
    }

    #[test]
    fn an_env_name_is_letters_digits_and_underscore_not_starting_with_a_digit() {
        for ok in ["PORT", "_x", "a1_B"] {
            assert!(validate_env_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "Ä", "A=B"] {
            assert!(validate_env_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_env_value_is_at_most_8192_bytes_without_nul_and_may_hold_equals() {
        assert!(validate_env("A", &"x".repeat(MAX_ENV_VALUE)).is_ok());
        assert!(validate_env("A", &"x".repeat(MAX_ENV_VALUE + 1)).is_err());
        assert!(validate_env("A", "a\0b").is_err());
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(
            parse_env("EMPTY=").unwrap(),
            ("EMPTY".into(), String::new())
        );
        assert!(matches!(parse_env("nope"), Err(EnvError::NotNameValue(_))));
    }

    #[test]
    fn a_git_ref_has_no_spaces_no_control_characters_and_no_leading_dash() {
        for ok in ["main", "v1.2", "refs/heads/x", &"a".repeat(256)] {
            assert!(validate_git_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            " ",
            "a b",
            "a\tb",
            "-x",
            "--upload-pack=x",
            "a\u{a0}b",
            &"a".repeat(257),
        ] {
            assert!(validate_git_ref(bad).is_err(), "{bad:?}");
        }
    }
}
