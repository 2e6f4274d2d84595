//! Atomic file writes with fixed permissions: private (0600) for keys and secrets, public
//! (0644) for certificates. Each write goes to a temporary file in the same folder, is
//! fsynced, renamed over the target, and the folder is fsynced, so a crash leaves either the
//! old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{CertError, Result};

/// Writes `bytes` to `path` atomically with mode 0600 (owner read/write only).
pub fn write_private(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Result<()> {
    write_atomic(path.as_ref(), bytes.as_ref(), 0o600)
}

/// Writes `bytes` to `path` atomically with mode 0644 (world-readable).
pub fn write_public(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Result<()> {
    write_atomic(path.as_ref(), bytes.as_ref(), 0o644)
}

/// Creates `dir` (and its parents) if missing; a folder this creates gets mode 0700.
pub fn create_private_dir(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CertError::io("cannot create folder", dir, e))
}

/// Reads a whole UTF-8 file, naming the file in the error.
pub fn read_string(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    fs::read_to_string(path).map_err(|e| CertError::io("cannot read", path, e))
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| CertError::InvalidInput {
        what: "file path",
        detail: format!("{} has no file name", path.display()),
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut nonce = [0u8; 8];
    getrandom::getrandom(&mut nonce).map_err(|e| CertError::InvalidInput {
        what: "system random source",
        detail: e.to_string(),
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        file_name.to_string_lossy(),
        std::process::id(),
        hex::encode(nonce)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| CertError::io("cannot create", &tmp, e))?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| CertError::io("cannot set permissions of", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| CertError::io("cannot write", &tmp, e))?;
        file.sync_all()
            .map_err(|e| CertError::io("cannot sync", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| CertError::io("cannot replace", path, e))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CertError::io("cannot sync folder", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let cert = dir.path().join("c.pem");
        write_private(&key, b"secret").unwrap();
        write_public(&cert, "public").unwrap();
        write_private(&key, b"secret2").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        assert_eq!(fs::read(&key).unwrap(), b"secret2");
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn missing_dir_is_an_error_with_path() {
        let err = write_public("/nonexistent-hammer/x.pem", b"x").unwrap_err();
        assert!(err.to_string().contains("/nonexistent-hammer"), "{err}");
    }
}
