//! The data dir: file names, `manager.toml`, key material, and the broker address.
//!
//! Layout of `DATA/` (default `/var/lib/hammer-manager`):
//! `manager.toml` ([`ManagerConfigFile`]), `ca.pem`, `device.pem`, `device.key` (0600),
//! `sealing.key` (0600, hex), `credentials` (0600, CBOR [`GitCredentials`], after setup),
//! `store/` (the agent's and the runtime's state, see [`crate::store`]).

use anyhow::{anyhow, bail, Context, Result};
use hammer_protocol::api::ManagerConfigFile;
use hammer_protocol::sealing::SealingKeyPair;
use hammer_protocol::signing::PublicKey;
use std::path::{Path, PathBuf};

/// Default data dir of an installed manager.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/hammer-manager";

pub const CONFIG_FILE: &str = "manager.toml";
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "device.pem";
pub const KEY_FILE: &str = "device.key";
pub const SEALING_KEY_FILE: &str = "sealing.key";
/// JSON snapshot of the local status, kept by a running manager.
pub const STATUS_SNAPSHOT_FILE: &str = "status.json";

/// Paths inside one data dir.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn new(p: impl Into<PathBuf>) -> DataDir {
        DataDir(p.into())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// True when enrollment (or a provisioning bundle) has written the config file.
    pub fn is_enrolled(&self) -> bool {
        self.file(CONFIG_FILE).exists()
    }
}

/// How the manager reaches the broker: the protocol's one broker URL parser
/// ([`hammer_protocol::BrokerUrl`]; `tls` is false for `mqtt://`, which [`Identity::load`]
/// accepts only with `insecure_plain_mqtt_for_tests` in `manager.toml`).
pub use hammer_protocol::BrokerUrl as BrokerAddr;

/// Reads `manager.toml`.
pub fn load_config_file(dir: &DataDir) -> Result<ManagerConfigFile> {
    let path = dir.file(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "not enrolled: {} is missing; run `hammer-manager enroll --url URL --token TOKEN --data-dir {}` first",
            path.display(),
            dir.path().display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    toml::from_str(&text).with_context(|| format!("{} is not a valid config file", path.display()))
}

/// Everything the agent needs to connect and to verify what it receives.
pub struct Identity {
    pub device_id: String,
    pub owner: String,
    pub broker: BrokerAddr,
    pub service_key: PublicKey,
    pub sealing: SealingKeyPair,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// `git_ca_file` of manager.toml, made absolute (relative paths are in the data dir).
    pub git_ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("device_id", &self.device_id)
            .field("owner", &self.owner)
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

fn read(dir: &DataDir, name: &str) -> Result<String> {
    let path = dir.file(name);
    std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; enroll again with `hammer-manager enroll --force …` if it is lost",
            path.display()
        )
    })
}

/// Parses the sealing key file: 64 hex characters (or the raw 32 bytes).
pub fn parse_sealing_key(bytes: &[u8]) -> Result<SealingKeyPair> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    let raw = match text.map(hex::decode) {
        Some(Ok(b)) => b,
        _ => bytes.to_vec(),
    };
    SealingKeyPair::from_private_bytes(&raw).map_err(|e| anyhow!("sealing.key is invalid: {e}"))
}

impl Identity {
    /// Loads the identity from the data dir, with an optional broker URL override.
    pub fn load(dir: &DataDir, broker_override: Option<&str>) -> Result<Identity> {
        let cfg = load_config_file(dir)?;
        let broker = BrokerAddr::parse(broker_override.unwrap_or(&cfg.broker_url))?;
        if !broker.tls && !cfg.insecure_plain_mqtt_for_tests {
            bail!(
                "the broker URL is plain mqtt://: no TLS and no device certificate, so anyone on \
                 the path could read and forge this device's traffic; use mqtts:// (for a local \
                 test broker only, set `insecure_plain_mqtt_for_tests = true` in {})",
                dir.file(CONFIG_FILE).display()
            );
        }
        let service_key = PublicKey::from_hex(&cfg.service_public_key)
            .map_err(|e| anyhow!("service_public_key in manager.toml is invalid: {e}"))?;
        let sealing_path = dir.file(SEALING_KEY_FILE);
        let sealing = parse_sealing_key(
            &std::fs::read(&sealing_path)
                .with_context(|| format!("cannot read {}", sealing_path.display()))?,
        )?;
        hammer_protocol::validate_device_id(&cfg.device_id)
            .map_err(|e| anyhow!("device_id in manager.toml is invalid: {e}"))?;
        Ok(Identity {
            device_id: cfg.device_id,
            owner: cfg.owner,
            service_key,
            sealing,
            // Plain mqtt:// (tests) needs no key material; mqtts:// needs all three files.
            ca_pem: if broker.tls {
                read(dir, CA_FILE)?
            } else {
                String::new()
            },
            cert_pem: if broker.tls {
                read(dir, CERT_FILE)?
            } else {
                String::new()
            },
            key_pem: if broker.tls {
                read(dir, KEY_FILE)?
            } else {
                String::new()
            },
            broker,
            git_ca_file: cfg.git_ca_file.as_deref().map(|f| dir.path().join(f)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manager_reads_broker_urls_like_the_service_including_ipv6_without_a_port() {
        assert_eq!(
            BrokerAddr::parse("mqtts://broker.example:8883").unwrap(),
            BrokerAddr {
                host: "broker.example".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(BrokerAddr::parse("mqtt://127.0.0.1").unwrap().port, 1883);
        assert_eq!(BrokerAddr::parse("mqtts://[::1]:9000").unwrap().host, "::1");
        // Refused here before, accepted by the service.
        assert_eq!(
            BrokerAddr::parse("mqtts://[::1]").unwrap(),
            BrokerAddr::mqtts("::1", 8883)
        );
        assert!(BrokerAddr::parse("http://x:1").is_err());
        assert!(BrokerAddr::parse("mqtts://:1").is_err());
        assert!(BrokerAddr::parse("mqtts://h:notaport").is_err());
    }

    fn data_dir_with(broker_url: &str, plain_opt_in: bool) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = ManagerConfigFile {
            device_id: "dev1".into(),
            owner: "alice1".into(),
            broker_url: broker_url.into(),
            service_public_key: hammer_protocol::signing::SigningKeyPair::generate()
                .unwrap()
                .public()
                .to_hex(),
            insecure_plain_mqtt_for_tests: plain_opt_in,
            git_ca_file: None,
        };
        std::fs::write(tmp.path().join(CONFIG_FILE), toml::to_string(&cfg).unwrap()).unwrap();
        let k = SealingKeyPair::generate().unwrap();
        std::fs::write(
            tmp.path().join(SEALING_KEY_FILE),
            hex::encode(k.private_bytes().as_ref()),
        )
        .unwrap();
        tmp
    }

    #[test]
    fn plain_mqtt_is_refused_unless_manager_toml_opts_in() {
        let tmp = data_dir_with("mqtt://127.0.0.1:1883", false);
        let dir = DataDir::new(tmp.path());
        let e = Identity::load(&dir, None).unwrap_err().to_string();
        assert!(e.contains("insecure_plain_mqtt_for_tests"), "{e}");
        // The override on the command line is held to the same rule.
        let tmp2 = data_dir_with("mqtts://127.0.0.1:8883", false);
        let e = Identity::load(&DataDir::new(tmp2.path()), Some("mqtt://127.0.0.1:1883"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain mqtt://"), "{e}");
        let tmp3 = data_dir_with("mqtt://127.0.0.1:1883", true);
        assert!(
            !Identity::load(&DataDir::new(tmp3.path()), None)
                .unwrap()
                .broker
                .tls
        );
    }

    #[test]
    fn sealing_key_hex_or_raw() {
        let k = SealingKeyPair::generate().unwrap();
        let hex = hex::encode(k.private_bytes().as_ref());
        assert_eq!(
            parse_sealing_key(hex.as_bytes()).unwrap().public_bytes(),
            k.public_bytes()
        );
        assert_eq!(
            parse_sealing_key(k.private_bytes().as_ref())
                .unwrap()
                .public_bytes(),
            k.public_bytes()
        );
    }
}
