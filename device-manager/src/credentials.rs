//! Git credentials on the device: `DATA/credentials`, mode 0600, CBOR of [`GitCredentials`].
//!
//! They arrive sealed in a setup command, are opened with the device's sealing key, and
//! exist in clear only in this file and in memory. Nothing here logs their content
//! (`GitCredentials`' `Debug` redacts the secret).

use anyhow::{Context, Result};
use hammer_protocol::GitCredentials;
use std::path::{Path, PathBuf};

pub const CREDENTIALS_FILE: &str = "credentials";

/// The credentials file of a data dir.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(CREDENTIALS_FILE)
}

/// Stores credentials (0600, atomic), or removes the file for `None`.
pub fn store(data_dir: &Path, creds: Option<&GitCredentials>) -> Result<()> {
    let p = path(data_dir);
    match creds {
        Some(c) => {
            let bytes = zeroize::Zeroizing::new(
                serde_cbor::to_vec(c).context("cannot encode the credentials")?,
            );
            hammer_certs::files::write_private(&p, bytes.as_slice())
                .with_context(|| format!("cannot write {}", p.display()))?;
        }
        None => match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        },
    }
    Ok(())
}

/// Loads the stored credentials, if any. An unreadable file is reported and treated as none.
pub fn load(data_dir: &Path) -> Option<GitCredentials> {
    let p = path(data_dir);
    let bytes = zeroize::Zeroizing::new(match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::error!(file = %p.display(), error = %e, "cannot read the git credentials");
            return None;
        }
    });
    match serde_cbor::from_slice(&bytes) {
        Ok(c) => Some(c),
        Err(_) => {
            tracing::error!(file = %p.display(), "the git credentials file is corrupt; send setup again");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn store_load_clear() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_none());
        let c = GitCredentials::Https {
            username: "u".into(),
            token: "t0ken".into(),
        };
        store(dir.path(), Some(&c)).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(dir.path()).unwrap(), c);
        store(dir.path(), None).unwrap();
        assert!(load(dir.path()).is_none());
        store(dir.path(), None).unwrap();
    }
}
