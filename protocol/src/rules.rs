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

/// Longest repository URL, in bytes.
pub const MAX_REMOTE_URL: usize = 2048;

/// The transports a repository URL may name. One rule, [`parse_remote_url`], decides for
/// the service (setup), the CLI and the device manager (the repository and its submodules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteScheme {
    Https,
    /// `ssh://`, `git+ssh://`, `ssh+git://` and the scp-like `[user@]host:path`.
    Ssh,
    /// Plain `http://`: allowed, with [`RemoteUrl::warning`].
    Http,
    /// `git://` (the git daemon): allowed, with [`RemoteUrl::warning`].
    Git,
    /// `file:///absolute/path`: a repository on the device itself (tests, local mirrors).
    File,
}

/// A repository URL that passed [`parse_remote_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteUrl {
    pub scheme: RemoteScheme,
    /// Lowercase, without brackets for IPv6; `None` for `file://`.
    pub host: Option<String>,
    /// The port, defaulted by scheme (443, 22, 80, 9418); `None` for `file://`.
    pub port: Option<u16>,
    /// The user name of the URL, if any.
    pub user: Option<String>,
    /// The URL carries a password (`user:password@`).
    pub has_password: bool,
}

impl RemoteUrl {
    /// The warning a user (API answer, CLI) and the device's log get for a transport that
    /// neither encrypts nor authenticates the server (`http://`, `git://`); `None` otherwise.
    pub fn warning(&self) -> Option<String> {
        let scheme = match self.scheme {
            RemoteScheme::Http => "http",
            RemoteScheme::Git => "git",
            _ => return None,
        };
        Some(format!(
            "{scheme}:// is neither encrypted nor authenticated: anyone on the network path can \
             read what is sent (a token included) and change the code the devices fetch; use \
             https:// or ssh:// unless this network is trusted"
        ))
    }

    /// Do both URLs name the same server (scheme family, host and port)? Git credentials
    /// given for one are used for the other only then (submodules).
    pub fn same_server(&self, other: &RemoteUrl) -> bool {
        let family = |s: RemoteScheme| match s {
            RemoteScheme::Https | RemoteScheme::Http => 0,
            RemoteScheme::Ssh => 1,
            RemoteScheme::Git => 2,
            RemoteScheme::File => 3,
        };
        family(self.scheme) == family(other.scheme)
            && self.host.is_some()
            && self.host == other.host
            && self.port == other.port
    }

    /// May a submodule of a repository at `self` be fetched from `sub`? The same schemes as
    /// for the repository itself, except `file://`: a submodule may name a path on the device
    /// only when the repository is itself on the device (a hostile `.gitmodules` must not
    /// read the device's own files).
    pub fn allows_submodule(&self, sub: &RemoteUrl) -> bool {
        sub.scheme != RemoteScheme::File || self.scheme == RemoteScheme::File
    }
}

/// Why a repository URL was refused. The message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RemoteUrlError {
    #[error("the repository URL is empty: give an https://, ssh:// or user@host:path URL")]
    Empty,
    #[error("the repository URL is longer than {MAX_REMOTE_URL} bytes")]
    TooLong,
    #[error("the repository URL {0:?} contains whitespace or control characters")]
    Whitespace(String),
    #[error("the repository URL {0:?} starts with '-' (it would be read as an option)")]
    LeadingDash(String),
    #[error("the repository URL {0:?} has no host (or a host starting with '-')")]
    NoHost(String),
    #[error("the repository URL {0:?} has a port that is not a number from 1 to 65535")]
    BadPort(String),
    #[error("the repository URL {0:?} has no path")]
    NoPath(String),
    #[error("the scheme of {0:?} is not accepted: use https://, ssh:// or user@host:path (http:// and git:// with a warning, file:///path for a repository on the device)")]
    Scheme(String),
    #[error("{0:?} is not a repository URL: use https://host/path, ssh://[user@]host[:port]/path, user@host:path or file:///absolute/path")]
    NotAUrl(String),
}

/// Checks a repository URL (no network): the one rule for remotes. Accepted: `https://`,
/// `ssh://` (also `git+ssh://`, `ssh+git://`), scp-like `[user@]host:path`, `http://` and
/// `git://` (both with the same [`RemoteUrl::warning`]), and `file:///absolute/path`.
/// Refused: anything else (`ftp://`, `ext::`, bare paths), whitespace and control
/// characters, a leading `-`, a missing host or path, a bad port. Credentials in the URL are
/// reported ([`RemoteUrl::user`], [`RemoteUrl::has_password`]), not judged here.
pub fn parse_remote_url(url: &str) -> Result<RemoteUrl, RemoteUrlError> {
    if url.is_empty() {
        return Err(RemoteUrlError::Empty);
    }
    if url.len() > MAX_REMOTE_URL {
        return Err(RemoteUrlError::TooLong);
    }
    let shown = || truncate(url);
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RemoteUrlError::Whitespace(shown()));
    }
    if url.starts_with('-') {
        return Err(RemoteUrlError::LeadingDash(shown()));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "https" => (RemoteScheme::Https, 443),
            "http" => (RemoteScheme::Http, 80),
            "git" => (RemoteScheme::Git, 9418),
            "ssh" | "git+ssh" | "ssh+git" => (RemoteScheme::Ssh, 22),
            "file" => {
                // file:///path (an empty host) or file://localhost/path.
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if !path.starts_with('/') || path.len() < 2 {
                    return Err(RemoteUrlError::NotAUrl(shown()));
                }
                return Ok(RemoteUrl {
                    scheme: RemoteScheme::File,
                    host: None,
                    port: None,
                    user: None,
                    has_password: false,
                });
            }
            _ => return Err(RemoteUrlError::Scheme(shown())),
        };
        let authority = match rest.find(['/', '?', '#']) {
            Some(i) => &rest[..i],
            None => rest,
        };
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) =
            split_host_port(host_port).ok_or_else(|| RemoteUrlError::BadPort(shown()))?;
        if host.is_empty() || host.starts_with('-') {
            return Err(RemoteUrlError::NoHost(shown()));
        }
        let (user, has_password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((name, _)) => (Some(name.to_owned()), true),
                None => (Some(u.to_owned()), false),
            },
            None => (None, false),
        };
        return Ok(RemoteUrl {
            scheme,
            host: Some(host.to_ascii_lowercase()),
            port: Some(port.unwrap_or(default_port)),
            user,
            has_password,
        });
    }
    // scp-like: [user@]host:path, where the first ':' comes before any '/'.
    let (user, rest) = match url.split_once('@') {
        Some((u, r)) if !u.contains([':', '/']) => (Some(u), r),
        _ => (None, url),
    };
    let (host, path) = if let Some(inner) = rest.strip_prefix('[') {
        match inner.split_once("]:") {
            Some((h, p)) => (h, p),
            None => return Err(RemoteUrlError::NotAUrl(shown())),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) if !h.contains('/') => (h, p),
            _ => return Err(RemoteUrlError::NotAUrl(shown())),
        }
    };
    if path.starts_with(':') {
        // `transport::address`: a remote helper (`ext::` runs a command).
        return Err(RemoteUrlError::Scheme(shown()));
    }
    if host.is_empty() || host.starts_with('-') {
        return Err(RemoteUrlError::NoHost(shown()));
    }
    if path.is_empty() {
        return Err(RemoteUrlError::NoPath(shown()));
    }
    Ok(RemoteUrl {
        scheme: RemoteScheme::Ssh,
        host: Some(host.to_ascii_lowercase()),
        port: Some(22),
        user: user.map(str::to_owned),
        has_password: false,
    })
}

/// Repository URLs (without credentials) and whether [`parse_remote_url`] accepts them: the
/// one table that the service's setup check and the device manager are both tested against,
/// so that the two sides agree.
pub const REMOTE_URL_TABLE: &[(&str, bool)] = &[
    ("https://git.example.com/team/app.git", true),
    ("https://git.example.com:8443/app.git", true),
    ("ssh://git@git.example.com/team/app.git", true),
    ("ssh://git@git.example.com:2222/app.git", true),
    ("git+ssh://git.example.com/app.git", true),
    ("ssh://git@[::1]:2222/srv/app.git", true),
    ("git@github.com:team/app.git", true),
    ("git.example.com:app.git", true),
    ("http://192.168.1.10/app.git", true),
    ("http://127.0.0.1:8080/app.git", true),
    ("git://git.example.com/app.git", true),
    ("file:///srv/git/app.git", true),
    ("", false),
    ("ftp://git.example.com/app.git", false),
    ("rsync://git.example.com/app.git", false),
    ("ext::sh", false),
    ("fd::17", false),
    ("/srv/git/app.git", false),
    ("../app.git", false),
    ("-oProxyCommand=touch:x", false),
    ("ssh://-oProxyCommand=x/app", false),
    ("https:///app.git", false),
    ("https://git.example.com:0/app.git", false),
    ("https://git.example.com/a b.git", false),
    ("https://git.example.com/a\u{7}.git", false),
    ("file://relative/app.git", false),
];

/// `host`, `host:port`, `[v6]` or `[v6]:port`; `None` when the port is not 1 to 65535.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let (h, after) = inner.split_once(']')?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    match port {
        None => Some((host, None)),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some((host, Some(n))),
            _ => None,
        },
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

#[cfg(test)]
mod remote_tests {
    use super::*;

    fn scheme(url: &str) -> Option<RemoteScheme> {
        parse_remote_url(url).ok().map(|u| u.scheme)
    }

    #[test]
    fn accepted_schemes_and_their_hosts_and_ports() {
        let u = parse_remote_url("https://Git.Example.com/team/app.git").unwrap();
        assert_eq!(u.scheme, RemoteScheme::Https);
        assert_eq!(u.host.as_deref(), Some("git.example.com"));
        assert_eq!(u.port, Some(443));
        let u = parse_remote_url("ssh://git@h.example:2222/r").unwrap();
        assert_eq!((u.scheme, u.port), (RemoteScheme::Ssh, Some(2222)));
        assert_eq!(u.user.as_deref(), Some("git"));
        let u = parse_remote_url("git@github.com:o/r.git").unwrap();
        assert_eq!(u.scheme, RemoteScheme::Ssh);
        assert_eq!(u.host.as_deref(), Some("github.com"));
        assert_eq!(u.user.as_deref(), Some("git"));
        let u = parse_remote_url("ssh://[::1]:2200/srv/r").unwrap();
        assert_eq!((u.host.as_deref(), u.port), (Some("::1"), Some(2200)));
        assert_eq!(scheme("git+ssh://h/r"), Some(RemoteScheme::Ssh));
        assert_eq!(scheme("host:r.git"), Some(RemoteScheme::Ssh));
        assert_eq!(
            scheme("http://127.0.0.1:8080/r.git"),
            Some(RemoteScheme::Http)
        );
        assert_eq!(scheme("git://h/r.git"), Some(RemoteScheme::Git));
        assert_eq!(scheme("file:///srv/r.git"), Some(RemoteScheme::File));
        assert_eq!(
            scheme("file://localhost/srv/r.git"),
            Some(RemoteScheme::File)
        );
    }

    #[test]
    fn refused_urls_say_why() {
        type Check = fn(&RemoteUrlError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, RemoteUrlError::Empty)),
            ("ftp://h/r", |e| matches!(e, RemoteUrlError::Scheme(_))),
            ("ext::sh -c x", |e| {
                matches!(e, RemoteUrlError::Whitespace(_))
            }),
            ("ext::cmd", |e| matches!(e, RemoteUrlError::Scheme(_))),
            ("https://h/r x", |e| {
                matches!(e, RemoteUrlError::Whitespace(_))
            }),
            ("https://h/\u{7f}", |e| {
                matches!(e, RemoteUrlError::Whitespace(_))
            }),
            ("-oProxyCommand=x:r", |e| {
                matches!(e, RemoteUrlError::LeadingDash(_))
            }),
            ("ssh://-oProxyCommand=x/r", |e| {
                matches!(e, RemoteUrlError::NoHost(_))
            }),
            ("https:///r", |e| matches!(e, RemoteUrlError::NoHost(_))),
            ("ssh://h:99999/r", |e| {
                matches!(e, RemoteUrlError::BadPort(_))
            }),
            ("ssh://h:x/r", |e| matches!(e, RemoteUrlError::BadPort(_))),
            ("/srv/r.git", |e| matches!(e, RemoteUrlError::NotAUrl(_))),
            ("file://r.git", |e| matches!(e, RemoteUrlError::NotAUrl(_))),
            ("not a url", |e| matches!(e, RemoteUrlError::Whitespace(_))),
            ("host:", |e| matches!(e, RemoteUrlError::NoPath(_))),
            ("../sibling.git", |e| {
                matches!(e, RemoteUrlError::NotAUrl(_))
            }),
        ];
        for (url, ok) in cases {
            let e = parse_remote_url(url).unwrap_err();
            assert!(ok(&e), "{url:?}: {e:?}");
        }
        assert!(parse_remote_url(&format!("https://h/{}", "a".repeat(2048))).is_err());
    }

    #[test]
    fn the_shared_table_holds() {
        for (url, ok) in REMOTE_URL_TABLE {
            assert_eq!(parse_remote_url(url).is_ok(), *ok, "{url:?}");
        }
    }

    #[test]
    fn http_and_git_get_the_same_warning_and_the_others_none() {
        let w = |u: &str| parse_remote_url(u).unwrap().warning();
        let http = w("http://h/r").unwrap();
        let git = w("git://h/r").unwrap();
        assert_eq!(
            http.replacen("http://", "", 1),
            git.replacen("git://", "", 1)
        );
        assert!(http.contains("use https:// or ssh://"), "{http}");
        for quiet in ["https://h/r", "ssh://h/r", "h:r", "file:///r"] {
            assert_eq!(w(quiet), None, "{quiet}");
        }
    }

    #[test]
    fn credentials_in_the_url_are_reported() {
        let u = parse_remote_url("https://bob:s3cret@h/r").unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert!(u.has_password);
        assert!(!parse_remote_url("ssh://git@h/r").unwrap().has_password);
    }

    #[test]
    fn same_server_needs_scheme_family_host_and_port() {
        let p = |u: &str| parse_remote_url(u).unwrap();
        assert!(p("https://h/a").same_server(&p("https://H/b")));
        assert!(p("https://h/a").same_server(&p("http://h:443/b")));
        assert!(!p("https://h/a").same_server(&p("https://h:8443/b")));
        assert!(!p("https://h/a").same_server(&p("https://other/b")));
        assert!(p("git@h:a").same_server(&p("ssh://h/b")));
        assert!(!p("git@h:a").same_server(&p("https://h/b")));
        assert!(!p("file:///a").same_server(&p("file:///b")));
    }

    #[test]
    fn a_submodule_on_the_device_only_under_a_repository_on_the_device() {
        let p = |u: &str| parse_remote_url(u).unwrap();
        assert!(p("file:///a").allows_submodule(&p("file:///b")));
        assert!(!p("https://h/a").allows_submodule(&p("file:///etc")));
        assert!(p("https://h/a").allows_submodule(&p("git@h:b")));
        assert!(p("https://h/a").allows_submodule(&p("http://h/b")));
    }
}
