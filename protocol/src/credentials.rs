//! Git credentials as the device uses them once opened from a [`crate::sealing::SealedSecret`]
//! (a leaf: both the messages and the sealing code name it).

use serde::{Deserialize, Serialize};

/// Sealed git credentials once opened on the device. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GitCredentials {
    Https {
        username: String,
        token: String,
    },
    Ssh {
        /// OpenSSH private key (PEM).
        private_key: String,
        /// Lines in OpenSSH known_hosts format; the server key must match one of them.
        known_hosts: String,
    },
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitCredentials::Https { username, .. } => f
                .debug_struct("Https")
                .field("username", username)
                .field("token", &"<redacted>")
                .finish(),
            GitCredentials::Ssh { known_hosts, .. } => f
                .debug_struct("Ssh")
                .field("private_key", &"<redacted>")
                .field("known_hosts_lines", &known_hosts.lines().count())
                .finish(),
        }
    }
}

impl Drop for GitCredentials {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        match self {
            GitCredentials::Https { token, .. } => token.zeroize(),
            GitCredentials::Ssh { private_key, .. } => private_key.zeroize(),
        }
    }
}
