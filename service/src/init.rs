//! The data directory: on first start it creates the fleet CA, the broker's server
//! certificate, the service's MQTT client certificate and its Ed25519 signing key; later
//! starts reuse them (the server certificate is reissued when its host names change).
//!
//! Layout: `ca/{ca.pem,ca.key}`, `broker/{server.pem,server.key,sans.json}`,
//! `service/{client.pem,client.key}`, `signing.key` (32-byte seed, 0600), `revoked.json`,
//! `admin.token` (0600), `store/` (sled), `replicas/NAME/{client.pem,client.key}` (each
//! replica's own MQTT identity, `hammer serve --replica NAME`).
//!
//! The data dir itself is made 0700 on every start ([`ensure_private_dir`]), not only when
//! it is created: a dir someone opened up (`chmod 755`) is closed again, with a log line.

use anyhow::Context;
use hammer_certs::{files, Ca, RevocationList};
use hammer_protocol::signing::SigningKeyPair;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The service's MQTT client id and certificate CN.
pub const SERVICE_ID: &str = "hammer-service";
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// Validity of device certificates.
pub const DEVICE_CERT_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// Key material and certificates loaded from (or created in) the data dir.
pub struct Material {
    pub dir: PathBuf,
    pub ca: Ca,
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub service_cert_pem: String,
    pub service_key_pem: String,
    pub signer: SigningKeyPair,
    pub revocations: Arc<RevocationList>,
}

/// The host name devices use for the broker: `--public-host`, else the `--mqtt` address when
/// it is a specific one, else this machine's host name.
pub fn public_host(public: Option<&str>, mqtt: SocketAddr) -> String {
    if let Some(h) = public {
        return h.to_owned();
    }
    if !mqtt.ip().is_unspecified() {
        return mqtt.ip().to_string();
    }
    hostname().unwrap_or_else(|| "localhost".to_owned())
}

/// This machine's host name, if it has a usable one.
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim().to_owned();
    (!name.is_empty() && name.is_ascii()).then_some(name)
}

/// Subject alternative names of the broker's (and HTTPS) server certificate.
pub fn server_sans(public: Option<&str>, mqtt: SocketAddr) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = Vec::new();
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut add = |h: &str| match h.parse::<IpAddr>() {
        Ok(ip) => {
            if !ips.contains(&ip) {
                ips.push(ip)
            }
        }
        Err(_) => {
            if !dns.iter().any(|d: &String| d == h) {
                dns.push(h.to_owned())
            }
        }
    };
    add(&public_host(public, mqtt));
    if public.is_none() && mqtt.ip().is_unspecified() {
        if let Some(h) = hostname() {
            add(&h);
        }
    }
    add("localhost");
    add("127.0.0.1");
    (dns, ips)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Creates `dir` (0700) if missing; an existing dir that others may read, write or enter
/// is set back to 0700 and a warning says so. Returns whether the mode was changed.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    files::create_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode == 0o700 {
        return Ok(false);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| {
        format!(
            "the data dir {} has mode {mode:04o} and cannot be made private (0700); run `chmod 700 {}` as its owner",
            dir.display(),
            dir.display()
        )
    })?;
    tracing::warn!(
        dir = %dir.display(),
        was = format!("{mode:04o}"),
        "the data dir was not private (it holds the CA key and the admin token); set it back to 0700"
    );
    Ok(true)
}

/// Loads the data dir's material, creating what is missing.
pub fn load_or_create(
    dir: &Path,
    public: Option<&str>,
    mqtt: SocketAddr,
) -> anyhow::Result<Material> {
    ensure_private_dir(dir)?;
    let ca = Ca::load_or_create(&dir.join("ca"), "Hammer IoT fleet CA")?;
    let ca_pem = ca.cert().pem().to_owned();

    let (dns, ips) = server_sans(public, mqtt);
    let broker_dir = dir.join("broker");
    files::create_private_dir(&broker_dir)?;
    let sans_json = serde_json::to_string(&(&dns, &ips))?;
    let sans_path = broker_dir.join("sans.json");
    let (cert_path, key_path) = (broker_dir.join("server.pem"), broker_dir.join("server.key"));
    let current = std::fs::read_to_string(&sans_path).ok();
    if current.as_deref() != Some(sans_json.as_str()) || !cert_path.exists() || !key_path.exists() {
        let issued = ca.issue_server(&dns, &ips, 2 * YEAR)?;
        files::write_private(&key_path, issued.key_pem.as_deref().unwrap_or_default())?;
        files::write_public(&cert_path, &issued.cert_pem)?;
        files::write_public(&sans_path, &sans_json)?;
        tracing::info!(?dns, ?ips, "issued the broker's server certificate");
    }

    let svc_dir = dir.join("service");
    files::create_private_dir(&svc_dir)?;
    let (svc_cert, svc_key) = (svc_dir.join("client.pem"), svc_dir.join("client.key"));
    if !svc_cert.exists() || !svc_key.exists() {
        let issued = ca.issue_service(SERVICE_ID, 10 * YEAR)?;
        files::write_private(&svc_key, issued.key_pem.as_deref().unwrap_or_default())?;
        files::write_public(&svc_cert, &issued.cert_pem)?;
    }

    let seed_path = dir.join("signing.key");
    let signer = if seed_path.exists() {
        let seed = std::fs::read(&seed_path)
            .with_context(|| format!("cannot read {}", seed_path.display()))?;
        SigningKeyPair::from_seed(&seed)
            .with_context(|| format!("{} is not a signing key seed", seed_path.display()))?
    } else {
        let k = SigningKeyPair::generate()?;
        files::write_private(&seed_path, k.to_seed().as_ref())?;
        k
    };

    let revocations = Arc::new(RevocationList::open(&dir.join("revoked.json"))?);
    Ok(Material {
        dir: dir.to_owned(),
        ca_pem,
        server_cert_pem: read(&cert_path)?,
        server_key_pem: read(&key_path)?,
        service_cert_pem: read(&svc_cert)?,
        service_key_pem: read(&svc_key)?,
        ca,
        signer,
        revocations,
    })
}

/// Checks a replica name (`hammer serve --replica NAME`): 1 to 32 characters, lowercase
/// letters, digits and '-', not starting with '-'. The replica's MQTT identity is
/// `hammer-service-NAME` ([`replica_id`]).
pub fn validate_replica_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        anyhow::bail!(
            "--replica {:?} is not a replica name: use 1 to 32 lowercase letters, digits and '-' (e.g. --replica a)",
            name.chars().take(40).collect::<String>()
        );
    }
    Ok(())
}

/// The MQTT client id and certificate CN of replica `name`.
pub fn replica_id(name: &str) -> String {
    format!("{SERVICE_ID}-{name}")
}

/// The MQTT client certificate and key of replica `name` (CN [`replica_id`]), under
/// `replicas/NAME/` in the data dir: issued by the fleet CA on the replica's first start,
/// reused later. Each replica has its own identity, so that the broker (with
/// `use_username_as_clientid`) keeps one session per replica; the broker's ACL lists each.
pub fn replica_identity(m: &Material, name: &str) -> anyhow::Result<(String, String)> {
    validate_replica_name(name)?;
    let dir = m.dir.join("replicas");
    files::create_private_dir(&dir)?;
    let dir = dir.join(name);
    files::create_private_dir(&dir)?;
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    if !cert.exists() || !key.exists() {
        let issued = m.ca.issue_service(&replica_id(name), 10 * YEAR)?;
        files::write_private(&key, issued.key_pem.as_deref().unwrap_or_default())?;
        files::write_public(&cert, &issued.cert_pem)?;
        tracing::info!(
            replica = name,
            "issued the replica's MQTT client certificate"
        );
    }
    Ok((read(&cert)?, read(&key)?))
}

/// Loads only what the standalone broker needs (`hammer broker`): CA, server certificate,
/// revocation list. The data dir must have been initialised by `hammer serve`.
pub fn load_broker_material(
    dir: &Path,
) -> anyhow::Result<(String, String, String, Arc<RevocationList>)> {
    let ca_pem = read(&dir.join("ca").join(hammer_certs::CA_CERT_FILE)).context(
        "the data dir has no CA yet: run `hammer serve` once with this --data-dir first",
    )?;
    let cert = read(&dir.join("broker").join("server.pem"))?;
    let key = read(&dir.join("broker").join("server.key"))?;
    let revocations = Arc::new(RevocationList::open(&dir.join("revoked.json"))?);
    Ok((ca_pem, cert, key, revocations))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_replica_gets_its_own_identity_once() {
        hammer_certs::tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let mqtt: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let m = load_or_create(dir.path(), None, mqtt).unwrap();
        let a = replica_identity(&m, "a").unwrap();
        assert_eq!(replica_identity(&m, "a").unwrap(), a, "reused");
        let b = replica_identity(&m, "b").unwrap();
        assert_ne!(a.0, b.0);
        let id =
            m.ca.cert()
                .identity_pem(&a.0, std::time::SystemTime::now())
                .unwrap();
        assert_eq!(id.id, "hammer-service-a");
        for bad in ["", "-a", "A", "a/b", &"x".repeat(33)] {
            assert!(replica_identity(&m, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn creates_then_reuses() {
        hammer_certs::tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let mqtt: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let a = load_or_create(dir.path(), None, mqtt).unwrap();
        let b = load_or_create(dir.path(), None, mqtt).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.server_cert_pem, b.server_cert_pem);
        assert_eq!(a.signer.public().to_hex(), b.signer.public().to_hex());
        let c = load_or_create(dir.path(), Some("fleet.example"), mqtt).unwrap();
        assert_ne!(a.server_cert_pem, c.server_cert_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_opened_up_data_dir_is_made_private_again_on_start() {
        use std::os::unix::fs::PermissionsExt;
        hammer_certs::tls::install_default_provider();
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let mqtt: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        load_or_create(&dir, None, mqtt).unwrap();
        assert_eq!(mode(&dir), 0o700, "a new data dir is private");
        for opened in [0o755, 0o701, 0o770, 0o1777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(opened)).unwrap();
            load_or_create(&dir, None, mqtt).unwrap();
            assert_eq!(mode(&dir), 0o700, "{opened:o} was not set back to 0700");
        }
        assert!(
            !ensure_private_dir(&dir).unwrap(),
            "a private dir is left alone"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            ensure_private_dir(&dir).unwrap(),
            "the change is reported (and logged)"
        );
    }
}
