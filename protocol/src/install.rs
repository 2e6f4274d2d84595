//! The install step of a release (`hammer setup --install CMD`): a command run in the new
//! release's folder before it starts (`npm ci`, `pip install`, a build), and the dependency
//! folders the device may carry over from the release before it (`--reuse DIR:KEYFILE`).
//!
//! [`InstallStep`] travels in the setup request (`SetupRequest::install`), is stored in the
//! device's setup and is named in every signed [`crate::DesiredState`] the device gets. Its
//! one rule is [`validate_install`], used by the CLI (before the request), the service (on
//! every request) and the device manager (before it runs anything). Lengths are in bytes.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest install command, in bytes.
pub const MAX_INSTALL_COMMAND: usize = 4096;
/// Seconds an install may take unless `timeout_secs` says otherwise.
pub const DEFAULT_INSTALL_TIMEOUT_SECS: u32 = 600;
/// Longest install timeout accepted, in seconds (one hour).
pub const MAX_INSTALL_TIMEOUT_SECS: u32 = 3600;
/// Most dependency folders one install step may reuse.
pub const MAX_REUSE: usize = 8;
/// Longest path of a reused folder or of its key file, in bytes.
pub const MAX_REUSE_PATH: usize = 255;

/// The default of [`InstallStep::timeout_secs`].
pub fn default_install_timeout() -> u32 {
    DEFAULT_INSTALL_TIMEOUT_SECS
}

/// What runs in a new release's folder before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstallStep {
    /// Run as `/bin/sh -c COMMAND` in the new release's folder, as the app user, at low
    /// priority, while the running release keeps running. A non-zero exit fails the
    /// deployment.
    pub command: String,
    /// Seconds the command may take (1 to [`MAX_INSTALL_TIMEOUT_SECS`]); then it is killed and
    /// the deployment fails.
    #[serde(default = "default_install_timeout")]
    pub timeout_secs: u32,
    /// Folders taken over from the release before, when their key file is unchanged.
    #[serde(default)]
    pub reuse: Vec<ReuseDir>,
}

/// A dependency folder keyed on a file: `node_modules` on `package-lock.json`. When the key
/// file's content is the same in the running release and the new one, the new release gets a
/// copy of the running release's folder before the install command runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReuseDir {
    /// The folder, relative to the release folder.
    pub dir: String,
    /// The key file, relative to the release folder, outside `dir`.
    pub key: String,
}

impl ReuseDir {
    /// The `DIR:KEYFILE` form [`parse_reuse`] reads.
    pub fn spec(&self) -> String {
        format!("{}:{}", self.dir, self.key)
    }
}

/// Why an install step was refused. The message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InstallError {
    #[error("the install command must be a non-empty shell command of at most {MAX_INSTALL_COMMAND} bytes without NUL")]
    BadCommand,
    #[error("the install timeout must be 1 to {MAX_INSTALL_TIMEOUT_SECS} seconds ({0} given)")]
    BadTimeout(u32),
    #[error("at most {MAX_REUSE} reused folders ({0} given)")]
    TooManyReuse(usize),
    #[error("reuse {0:?} must look like DIR:KEYFILE, e.g. node_modules:package-lock.json")]
    NotDirKey(String),
    #[error("reuse path {0:?} is invalid: use a relative path inside the release (no leading '/', no '.' or '..' parts, no empty parts, no ':' or control characters, at most {MAX_REUSE_PATH} bytes)")]
    BadPath(String),
    #[error("reuse {0:?}: the key file must be outside the folder it keys (the folder is copied only after the key file was compared)")]
    KeyInsideDir(String),
    #[error("reuse {0:?} and {1:?}: a folder is named twice or lies inside another")]
    Overlap(String, String),
}

/// Checks an install step: a command of 1 to [`MAX_INSTALL_COMMAND`] bytes (not only blanks,
/// no NUL), a timeout of 1 to [`MAX_INSTALL_TIMEOUT_SECS`] s, at most [`MAX_REUSE`] reused
/// folders, each by [`validate_reuse`], none inside another.
pub fn validate_install(step: &InstallStep) -> Result<(), InstallError> {
    let cmd = &step.command;
    if cmd.trim().is_empty() || cmd.len() > MAX_INSTALL_COMMAND || cmd.contains('\0') {
        return Err(InstallError::BadCommand);
    }
    if step.timeout_secs == 0 || step.timeout_secs > MAX_INSTALL_TIMEOUT_SECS {
        return Err(InstallError::BadTimeout(step.timeout_secs));
    }
    if step.reuse.len() > MAX_REUSE {
        return Err(InstallError::TooManyReuse(step.reuse.len()));
    }
    for (i, r) in step.reuse.iter().enumerate() {
        validate_reuse(r)?;
        for other in &step.reuse[..i] {
            if inside(&r.dir, &other.dir) || inside(&other.dir, &r.dir) {
                return Err(InstallError::Overlap(other.dir.clone(), r.dir.clone()));
            }
        }
    }
    Ok(())
}

/// Checks one reused folder: both paths by the path rule, the key file outside the folder.
pub fn validate_reuse(r: &ReuseDir) -> Result<(), InstallError> {
    validate_reuse_path(&r.dir)?;
    validate_reuse_path(&r.key)?;
    if inside(&r.key, &r.dir) {
        return Err(InstallError::KeyInsideDir(r.spec()));
    }
    Ok(())
}

/// The path rule of a reused folder or key file: relative, inside the release, 1 to
/// [`MAX_REUSE_PATH`] bytes; parts separated by single `/`, none of them `.` or `..`; no `:`
/// (the separator of `DIR:KEYFILE`), no backslash and no control characters.
pub fn validate_reuse_path(p: &str) -> Result<(), InstallError> {
    let ok = !p.is_empty()
        && p.len() <= MAX_REUSE_PATH
        && !p.starts_with('/')
        && !p.chars().any(|c| c.is_control() || c == ':' || c == '\\')
        && p.split('/').all(|part| !matches!(part, "" | "." | ".."));
    if ok {
        Ok(())
    } else {
        Err(InstallError::BadPath(p.chars().take(64).collect()))
    }
}

/// Parses a `--reuse DIR:KEYFILE` argument into a folder that passes [`validate_reuse`].
pub fn parse_reuse(s: &str) -> Result<ReuseDir, InstallError> {
    let (dir, key) = s
        .split_once(':')
        .ok_or_else(|| InstallError::NotDirKey(s.chars().take(64).collect()))?;
    let r = ReuseDir {
        dir: dir.to_owned(),
        key: key.to_owned(),
    };
    validate_reuse(&r)?;
    Ok(r)
}

/// `path` is `dir` or lies inside it (both already pass the path rule).
fn inside(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(command: &str, reuse: &[&str]) -> InstallStep {
        InstallStep {
            command: command.into(),
            timeout_secs: DEFAULT_INSTALL_TIMEOUT_SECS,
            reuse: reuse.iter().map(|r| parse_reuse(r).unwrap()).collect(),
        }
    }

    #[test]
    fn a_plain_install_with_a_reused_folder_is_accepted() {
        let s = step("npm ci --omit=dev", &["node_modules:package-lock.json"]);
        assert_eq!(validate_install(&s), Ok(()));
        assert_eq!(s.reuse[0].dir, "node_modules");
        assert_eq!(s.reuse[0].key, "package-lock.json");
        assert_eq!(s.reuse[0].spec(), "node_modules:package-lock.json");
        assert!(validate_install(&step("x", &["web/node_modules:web/package-lock.json"])).is_ok());
    }

    #[test]
    fn the_command_is_not_blank_at_most_4096_bytes_and_has_no_nul() {
        for bad in ["", "   ", "a\0b"] {
            assert_eq!(
                validate_install(&step(bad, &[])),
                Err(InstallError::BadCommand)
            );
        }
        assert!(validate_install(&step(&"x".repeat(MAX_INSTALL_COMMAND), &[])).is_ok());
        assert!(validate_install(&step(&"x".repeat(MAX_INSTALL_COMMAND + 1), &[])).is_err());
    }

    #[test]
    fn the_timeout_is_one_second_to_one_hour() {
        let mut s = step("make", &[]);
        for (t, ok) in [(0, false), (1, true), (3600, true), (3601, false)] {
            s.timeout_secs = t;
            assert_eq!(validate_install(&s).is_ok(), ok, "{t}");
        }
    }

    #[test]
    fn reuse_paths_stay_inside_the_release() {
        for bad in [
            "/abs:k",
            "d:/etc/passwd",
            "../up:k",
            "d:../k",
            "a/../b:k",
            "./d:k",
            "d:.",
            "a//b:k",
            "d/:k",
            ":k",
            "d:",
            "a\\b:k",
            "d\n:k",
        ] {
            assert!(parse_reuse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_reuse("node_modules"),
            Err(InstallError::NotDirKey(_))
        ));
        // Only the first ':' separates; a key with ':' is refused by the path rule.
        assert!(parse_reuse("d:k:x").is_err());
        let long = "a".repeat(MAX_REUSE_PATH);
        assert!(parse_reuse(&format!("{long}:k")).is_ok());
        assert!(parse_reuse(&format!("{long}a:k")).is_err());
        assert!(parse_reuse(".venv:requirements.txt").is_ok());
    }

    #[test]
    fn the_key_file_is_outside_its_folder() {
        assert!(matches!(
            parse_reuse("node_modules:node_modules/.package-lock.json"),
            Err(InstallError::KeyInsideDir(_))
        ));
        assert!(matches!(
            parse_reuse("d:d"),
            Err(InstallError::KeyInsideDir(_))
        ));
        // A sibling whose name starts the same is outside.
        assert!(parse_reuse("node:node_modules.lock").is_ok());
    }

    #[test]
    fn at_most_eight_folders_none_inside_another() {
        let many: Vec<String> = (0..=MAX_REUSE).map(|i| format!("d{i}:k{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(validate_install(&step("x", &refs[..MAX_REUSE])), Ok(()));
        assert_eq!(
            validate_install(&step("x", &refs)),
            Err(InstallError::TooManyReuse(MAX_REUSE + 1))
        );
        for pair in [["a:k", "a:j"], ["a:k", "a/b:j"], ["a/b:k", "a:j"]] {
            assert!(
                matches!(
                    validate_install(&step("x", &pair)),
                    Err(InstallError::Overlap(..))
                ),
                "{pair:?}"
            );
        }
        assert!(validate_install(&step("x", &["a:k", "ab:j"])).is_ok());
    }

    #[test]
    fn an_omitted_timeout_and_reuse_list_take_their_defaults() {
        let s: InstallStep = serde_json::from_str(r#"{"command":"npm ci"}"#).unwrap();
        assert_eq!(s.timeout_secs, DEFAULT_INSTALL_TIMEOUT_SECS);
        assert!(s.reuse.is_empty());
    }
}
