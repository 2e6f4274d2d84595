//! `hammer-manager enroll`: make the device's keys locally, trade a CSR and the sealing
//! public key for a certificate at `POST {url}/api/v1/enroll`, and write the data dir.
//!
//! The TLS private key and the X25519 sealing key never leave the device. The returned CA is
//! pinned by `--ca-sha256` (printed by `hammer device add`); over plain http to anything but
//! loopback the pin is required, since nothing else would stop a man in the middle from
//! handing the device a CA of its own. For https the server is checked against `--ca-file`.

use crate::config::{DataDir, CA_FILE, CERT_FILE, CONFIG_FILE, KEY_FILE, SEALING_KEY_FILE};
use anyhow::{anyhow, bail, Context, Result};
use hammer_protocol::api::{EnrollRequest, EnrollResponse, ErrorBody, ManagerConfigFile};
use hammer_protocol::sealing::SealingKeyPair;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What `enroll` was asked to do.
#[derive(Debug, Clone)]
pub struct EnrollArgs {
    pub url: String,
    pub token: String,
    pub ca_sha256: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub data_dir: DataDir,
    pub force: bool,
}

/// Lowercase hex without separators, so `AB:CD…` and `abcd…` compare equal.
pub fn normalize_fingerprint(fp: &str) -> String {
    fp.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Splits `scheme://host[:port]/…` into (scheme, host).
fn scheme_and_host(url: &str) -> Result<(&str, &str)> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("--url {url:?} must start with http:// or https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if authority.starts_with('[') {
        authority
            .split(']')
            .next()
            .unwrap_or_default()
            .trim_start_matches('[')
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        bail!("--url {url:?} has no host");
    }
    Ok((scheme, host))
}

/// Runs the whole enrollment and returns the device id.
pub async fn enroll(args: EnrollArgs) -> Result<String> {
    let dir = &args.data_dir;
    if dir.is_enrolled() && !args.force {
        bail!(
            "{} is already enrolled ({} exists); pass --force to enroll again with new keys",
            dir.path().display(),
            dir.file(CONFIG_FILE).display()
        );
    }
    let url = args.url.trim_end_matches('/');
    let (scheme, host) = scheme_and_host(url)?;
    let pin = args.ca_sha256.as_deref().map(normalize_fingerprint);
    if let Some(p) = &pin {
        if p.len() != 64 {
            bail!("--ca-sha256 must be the 64 hex digits printed by `hammer device add`");
        }
    }
    let tls = match scheme {
        "http" => {
            if pin.is_none() && !is_loopback_host(host) {
                bail!(
                    "enrolling over plain http to {host} needs --ca-sha256 (printed by `hammer device add`), or use https with --ca-file"
                );
            }
            None
        }
        "https" => {
            let ca_file = args.ca_file.as_ref().ok_or_else(|| {
                anyhow!("https enrollment needs --ca-file with the CA that signed the service's certificate")
            })?;
            let ca_pem = std::fs::read_to_string(ca_file)
                .with_context(|| format!("cannot read --ca-file {}", ca_file.display()))?;
            Some(hammer_certs::tls::client_config_no_auth(&ca_pem)?)
        }
        other => bail!("--url scheme {other:?} is not supported; use http:// or https://"),
    };

    // Keys first, locally.
    let (key_pem, csr_pem) = hammer_certs::new_device_key_and_csr()?;
    let key_pem = zeroize::Zeroizing::new(key_pem);
    let sealing = SealingKeyPair::generate()?;
    let req = EnrollRequest {
        token: args.token.clone(),
        csr_pem,
        sealing_public_key: hex::encode(sealing.public_bytes()),
    };

    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10));
    if let Some(cfg) = tls {
        builder = builder.use_preconfigured_tls(cfg);
    }
    let client = builder.build().context("cannot build the HTTP client")?;
    let endpoint = format!("{url}/api/v1/enroll");
    let resp = client
        .post(&endpoint)
        .json(&req)
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}; check --url and the network"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| body.chars().take(300).collect());
        bail!("enrollment refused ({status}): {msg}");
    }
    let resp: EnrollResponse = resp
        .json()
        .await
        .context("the enrollment answer is not valid JSON; is --url the Hammer service?")?;

    // Check what came back before writing anything.
    let ca = hammer_certs::CaCert::from_pem(&resp.ca_pem).context("the returned CA is invalid")?;
    let fp = ca.fingerprint_sha256();
    if let Some(p) = &pin {
        if *p != normalize_fingerprint(&fp) {
            bail!("the service's CA has fingerprint {fp}, not the --ca-sha256 given; refusing to enroll (wrong service or a man in the middle)");
        }
    }
    let identity = ca
        .identity_pem(&resp.cert_pem, std::time::SystemTime::now())
        .context("the returned device certificate does not verify against the returned CA")?;
    if identity.id != resp.device_id {
        bail!(
            "the returned certificate is for {:?}, not for device {:?}",
            identity.id,
            resp.device_id
        );
    }
    if identity.owner.as_deref() != Some(resp.owner.as_str()) {
        bail!(
            "the returned certificate names owner {:?}, not {:?}",
            identity.owner,
            resp.owner
        );
    }
    hammer_protocol::validate_device_id(&resp.device_id)
        .map_err(|e| anyhow!("the service returned an invalid device id: {e}"))?;
    crate::config::BrokerAddr::parse(&resp.broker_url)?;
    hammer_protocol::signing::PublicKey::from_hex(&resp.service_public_key)
        .map_err(|e| anyhow!("the service returned an invalid signing key: {e}"))?;

    write_data_dir(
        dir,
        &ManagerConfigFile {
            device_id: resp.device_id.clone(),
            owner: resp.owner.clone(),
            broker_url: resp.broker_url.clone(),
            service_public_key: resp.service_public_key.clone(),
        },
        &resp.ca_pem,
        &resp.cert_pem,
        &key_pem,
        &sealing,
        args.force,
    )?;
    Ok(resp.device_id)
}

/// Writes the key files and config (config last: its presence means "enrolled"), and starts
/// a new epoch in the state database.
pub fn write_data_dir(
    dir: &DataDir,
    cfg: &ManagerConfigFile,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    sealing: &SealingKeyPair,
    reset_state: bool,
) -> Result<()> {
    hammer_certs::files::create_private_dir(dir.path())?;
    // The state database is locked while a manager runs: fail before writing anything.
    let db = crate::store::open_db(dir.path())?;
    let store = crate::store::Store::open(&db)?;
    if reset_state {
        store.reset()?;
        crate::credentials::store(dir.path(), None)?;
    }
    drop(store);
    drop(db);
    let sealing_hex = zeroize::Zeroizing::new(hex::encode(sealing.private_bytes().as_ref()));
    hammer_certs::files::write_private(dir.file(KEY_FILE), key_pem)?;
    hammer_certs::files::write_private(dir.file(SEALING_KEY_FILE), sealing_hex.as_bytes())?;
    hammer_certs::files::write_public(dir.file(CA_FILE), ca_pem)?;
    hammer_certs::files::write_public(dir.file(CERT_FILE), cert_pem)?;
    let toml = toml::to_string(cfg).context("cannot encode manager.toml")?;
    hammer_certs::files::write_public(dir.file(CONFIG_FILE), toml)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_and_hosts() {
        assert_eq!(normalize_fingerprint("AB:cd:01"), "abcd01");
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("[::1]"));
        assert!(is_loopback_host("localhost"));
        assert!(!is_loopback_host("10.0.0.1"));
        assert_eq!(
            scheme_and_host("http://[::1]:8080/x").unwrap(),
            ("http", "::1")
        );
        assert_eq!(
            scheme_and_host("https://svc.example:443").unwrap(),
            ("https", "svc.example")
        );
        assert!(scheme_and_host("svc.example").is_err());
    }
}
