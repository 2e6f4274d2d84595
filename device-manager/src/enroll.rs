//! `hammer-manager enroll`: make the device's keys locally, trade a CSR and the sealing
//! public key for a certificate at `POST {url}/api/v1/enroll`, and write the data dir.
//!
//! The TLS private key and the X25519 sealing key never leave the device. Trust comes from
//! the fleet CA's fingerprint (`--ca-sha256`, printed by `hammer device add`) and nothing
//! else (decision 0006):
//! - The URL must be `https://`: the one-time token never crosses the network in clear.
//!   Without `--ca-file`, the server must present the pinned CA in its chain and a server
//!   certificate from it for the host dialled (the service's enrollment listener does);
//!   with `--ca-file` (a TLS front end of the operator's own), that file is trusted for TLS.
//! - The answer is checked before anything is written ([`check_answer`]): its CA has the
//!   pinned fingerprint, the device certificate is from that CA, for this device's key, id
//!   and owner, and the broker URL (`mqtts://` only) and the service's signing key carry the
//!   CA's signature. A relay that rewrites any field makes enrollment fail with a message
//!   that names the field, and leaves the data dir untouched.

use crate::config::{DataDir, CA_FILE, CERT_FILE, CONFIG_FILE, KEY_FILE, SEALING_KEY_FILE};
use anyhow::{anyhow, bail, Context, Result};
use hammer_protocol::api::{
    EnrollRequest, EnrollResponse, ErrorBody, ManagerConfigFile, ENROLL_FIELD_BROKER_URL,
    ENROLL_FIELD_SERVICE_KEY,
};
use hammer_protocol::sealing::SealingKeyPair;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Largest enrollment answer read (a certificate, the CA and a few short fields).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

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

/// Refuses anything but `https://host…` before a byte is sent.
fn check_url(url: &str) -> Result<()> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("--url {url:?} must start with https://"))?;
    match scheme {
        "https" => {}
        "http" => bail!(
            "--url {url:?} is plain http: the one-time token would cross the network in clear; \
             use the https:// URL that `hammer device add` prints (the service's enrollment \
             listener, `hammer serve --enroll-listen`, port 8443 by default)"
        ),
        other => bail!("--url scheme {other:?} is not supported; use the https:// URL that `hammer device add` prints"),
    }
    if rest.split('/').next().unwrap_or_default().is_empty() {
        bail!("--url {url:?} has no host");
    }
    Ok(())
}

/// The TLS trust for the enrollment request and the CA fingerprint the answer must have.
fn trust(args: &EnrollArgs) -> Result<(rustls::ClientConfig, String)> {
    let pin = args.ca_sha256.as_deref().map(normalize_fingerprint);
    if let Some(p) = &pin {
        if p.len() != 64 {
            bail!("--ca-sha256 must be the 64 hex digits printed by `hammer device add`");
        }
    }
    match (&args.ca_file, pin) {
        (Some(file), pin) => {
            let pem = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read --ca-file {}", file.display()))?;
            let tls = hammer_certs::tls::client_config_no_auth(&pem)
                .with_context(|| format!("--ca-file {} holds no usable CA", file.display()))?;
            let pin = match pin {
                Some(p) => p,
                // Without a pin, the file must be the fleet CA itself.
                None => hammer_certs::CaCert::from_pem(&pem)
                    .map(|ca| normalize_fingerprint(&ca.fingerprint_sha256()))
                    .map_err(|_| {
                        anyhow!(
                            "--ca-file {} is not the fleet CA; pass the fleet CA's --ca-sha256 \
                             (printed by `hammer device add`) as well",
                            file.display()
                        )
                    })?,
            };
            Ok((tls, pin))
        }
        (None, Some(pin)) => Ok((hammer_certs::tls::client_config_pinned_ca(&pin)?, pin)),
        (None, None) => bail!(
            "enrollment needs --ca-sha256 (the fleet CA's fingerprint, printed by `hammer device add`)"
        ),
    }
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
    check_url(url)?;
    let (tls, pin) = trust(&args)?;

    // Keys first, locally.
    let (key_pem, csr_pem) = hammer_certs::new_device_key_and_csr()?;
    let key_pem = zeroize::Zeroizing::new(key_pem);
    let sealing = SealingKeyPair::generate()?;
    let req = EnrollRequest {
        token: args.token.clone(),
        csr_pem: csr_pem.clone(),
        sealing_public_key: hex::encode(sealing.public_bytes()),
    };

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .use_preconfigured_tls(tls)
        .https_only(true)
        .build()
        .context("cannot build the HTTP client")?;
    let endpoint = format!("{url}/api/v1/enroll");
    let resp = client
        .post(&endpoint)
        .json(&req)
        .send()
        .await
        .map_err(|e| anyhow!("cannot enroll at {endpoint}: {}", error_chain(&e)))?;
    let status = resp.status();
    let body = read_limited(resp).await?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(300).collect());
        bail!("enrollment refused ({status}): {}", printable(&msg));
    }
    let resp: EnrollResponse = serde_json::from_slice(&body)
        .context("the enrollment answer is not valid JSON; is --url the Hammer service's enrollment listener?")?;

    let cfg = check_answer(&resp, &pin, &csr_pem, SystemTime::now())?;
    write_data_dir(
        dir,
        &cfg,
        &resp.ca_pem,
        &resp.cert_pem,
        &key_pem,
        &sealing,
        args.force,
    )?;
    Ok(resp.device_id)
}

/// Reads the answer body, refusing one larger than [`MAX_ANSWER_BYTES`].
async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .context("the enrollment answer was cut off; try again")?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            bail!("the enrollment answer is larger than {MAX_ANSWER_BYTES} bytes; is --url the Hammer service?");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its sources on one line (reqwest hides the TLS reason in its sources).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Text from the network with control characters shown escaped.
fn printable(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect::<String>()
}

/// Checks everything in the answer the device will trust later, and returns the config to
/// write. Pure: the pin, our CSR and the time come in, a verdict comes out.
pub fn check_answer(
    resp: &EnrollResponse,
    pin: &str,
    csr_pem: &str,
    now: SystemTime,
) -> Result<ManagerConfigFile> {
    let ca = hammer_certs::CaCert::from_pem(&resp.ca_pem)
        .context("the CA in the enrollment answer is invalid")?;
    let fp = normalize_fingerprint(&ca.fingerprint_sha256());
    if fp != pin {
        bail!(
            "the CA in the enrollment answer has fingerprint {fp}, not the pinned --ca-sha256 {pin}; \
             refusing to enroll (a wrong service, or a man in the middle)"
        );
    }
    let identity = ca.identity_pem(&resp.cert_pem, now).context(
        "the device certificate in the enrollment answer is not a valid certificate from the pinned fleet CA",
    )?;
    if !hammer_certs::cert_matches_csr(&resp.cert_pem, csr_pem)? {
        bail!("the device certificate in the enrollment answer is not for the key this device just made; refusing to enroll (a man in the middle?)");
    }
    hammer_protocol::validate_device_id(&resp.device_id)
        .map_err(|e| anyhow!("the enrollment answer names an invalid device id: {e}"))?;
    if identity.id != resp.device_id {
        bail!(
            "the device certificate in the enrollment answer is for {:?}, not for device {:?}",
            printable(&identity.id),
            printable(&resp.device_id)
        );
    }
    if identity.owner.as_deref() != Some(resp.owner.as_str()) {
        bail!(
            "the device certificate in the enrollment answer names owner {:?}, not {:?}",
            identity.owner.as_deref().map(printable),
            printable(&resp.owner)
        );
    }
    let broker = crate::config::BrokerAddr::parse(&resp.broker_url)
        .context("the broker URL in the enrollment answer is invalid")?;
    if !broker.tls {
        bail!(
            "the enrollment answer names a plain mqtt:// broker ({}); devices connect only over \
             mqtts:// (mutual TLS); refusing to enroll",
            printable(&resp.broker_url)
        );
    }
    if !ca.verify_statement(
        ENROLL_FIELD_BROKER_URL,
        &resp.device_id,
        &resp.broker_url,
        &resp.ca_signatures.broker_url,
    ) {
        bail!(
            "the broker URL in the enrollment answer ({}) is not signed by the pinned fleet CA; \
             refusing to enroll (a man in the middle may have rewritten it)",
            printable(&resp.broker_url)
        );
    }
    hammer_protocol::signing::PublicKey::from_hex(&resp.service_public_key)
        .map_err(|e| anyhow!("the service signing key in the enrollment answer is invalid: {e}"))?;
    if !ca.verify_statement(
        ENROLL_FIELD_SERVICE_KEY,
        &resp.device_id,
        &resp.service_public_key,
        &resp.ca_signatures.service_public_key,
    ) {
        bail!(
            "the service signing key in the enrollment answer is not signed by the pinned fleet \
             CA; refusing to enroll (a man in the middle may have replaced it)"
        );
    }
    Ok(ManagerConfigFile {
        device_id: resp.device_id.clone(),
        owner: resp.owner.clone(),
        broker_url: resp.broker_url.clone(),
        service_public_key: resp.service_public_key.clone(),
        insecure_plain_mqtt_for_tests: false,
        git_ca_file: None,
    })
}

/// Writes the key files and config (config last: its presence means "enrolled"), and starts
/// a new epoch in the state store.
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
    if reset_state {
        // Enrolling again starts the state over: an older manager's database goes (decision
        // 0021).
        crate::store::remove_legacy(dir.path())?;
    }
    // The state store is locked while a manager runs: fail before writing anything.
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
    fn fingerprints_and_urls() {
        assert_eq!(normalize_fingerprint("AB:cd:01"), "abcd01");
        assert!(check_url("https://[::1]:8443").is_ok());
        assert!(check_url("https://svc.example").is_ok());
        let e = check_url("http://127.0.0.1:8080").unwrap_err().to_string();
        assert!(
            e.contains("in clear") && e.contains("hammer device add"),
            "{e}"
        );
        assert!(check_url("svc.example").is_err());
        assert!(check_url("https://").is_err());
        assert!(check_url("ftp://x").is_err());
    }

    #[test]
    fn control_characters_from_the_network_are_escaped() {
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
    }
}
