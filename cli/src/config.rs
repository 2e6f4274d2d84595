//! Where the CLI connects and with which token: flags and environment first, then the file
//! saved by `hammer login` (`$XDG_CONFIG_HOME/hammer/config.toml`, else
//! `~/.config/hammer/config.toml`, mode 0600), then the default URL.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The service URL when nothing else says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// What `hammer login` saves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub url: Option<String>,
    pub token: Option<String>,
    /// PEM file of the CA that signed the service's HTTPS certificate.
    pub ca_cert: Option<PathBuf>,
}

/// The folder of the CLI's config file.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("hammer"));
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("hammer")),
        None => bail!(
            "cannot find a config folder: set HOME or XDG_CONFIG_HOME, or pass --url and --token"
        ),
    }
}

/// The CLI's config file.
pub fn config_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("config.toml"))
}

/// Reads the saved config; a missing file is an empty config.
pub fn load() -> Result<Saved> {
    let Ok(path) = config_path() else {
        return Ok(Saved::default());
    };
    load_from(&path)
}

/// Reads a config file; a missing file is an empty config.
pub fn load_from(path: &Path) -> Result<Saved> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| {
            format!(
                "cannot parse {}; fix it or run `hammer login` again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Saved::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the config file with mode 0600 in a 0700 folder.
pub fn save_to(path: &Path, saved: &Saved) -> Result<()> {
    if let Some(dir) = path.parent() {
        hammer_certs::files::create_private_dir(dir)?;
    }
    let text = toml::to_string(saved).context("cannot encode the config")?;
    hammer_certs::files::write_private(path, text)?;
    Ok(())
}

/// Connection settings after resolving flags, environment and the saved config: the API
/// client's plain settings.
pub use hammer_client::Conn;

/// Flags/environment win over the saved config, which wins over the default URL.
pub fn resolve(
    url: Option<&str>,
    token: Option<&str>,
    ca_cert: Option<&Path>,
    saved: &Saved,
) -> Conn {
    let non_empty = |s: Option<&str>| {
        s.filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().to_string())
    };
    let url = non_empty(url)
        .or_else(|| non_empty(saved.url.as_deref()))
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    Conn {
        url: url.trim_end_matches('/').to_string(),
        token: non_empty(token).or_else(|| non_empty(saved.token.as_deref())),
        ca_cert: ca_cert
            .map(Path::to_path_buf)
            .or_else(|| saved.ca_cert.clone()),
        timeout: hammer_client::DEFAULT_TIMEOUT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_saved_config() {
        let saved = Saved {
            url: Some("http://saved:1".into()),
            token: Some("saved-token".into()),
            ca_cert: None,
        };
        let c = resolve(Some("http://flag:2/"), None, None, &saved);
        assert_eq!(c.url, "http://flag:2");
        assert_eq!(c.token.as_deref(), Some("saved-token"));
        let c = resolve(None, Some("t"), None, &Saved::default());
        assert_eq!(c.url, DEFAULT_URL);
        assert_eq!(c.token.as_deref(), Some("t"));
        let c = resolve(Some(""), Some(" "), None, &Saved::default());
        assert_eq!(c.url, DEFAULT_URL);
        assert_eq!(c.token, None);
    }

    #[test]
    fn saves_private_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hammer").join("config.toml");
        assert_eq!(load_from(&path).unwrap(), Saved::default());
        let saved = Saved {
            url: Some("http://x:1".into()),
            token: Some("tok".into()),
            ca_cert: None,
        };
        save_to(&path, &saved).unwrap();
        assert_eq!(load_from(&path).unwrap(), saved);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
