//! `hammer certs issue-device`: registers a device for a user through `POST /provision`
//! (admin token) and writes an offline bundle that is a ready `hammer-manager --data-dir`.

use crate::commands::{check_name, check_tags};
use crate::config::Conn;
use crate::output::{self, safe};
use anyhow::{bail, Context, Result};
use hammer_certs::files::{create_private_dir, write_private, write_public};
use hammer_client::Client;
use hammer_protocol::api::{ProvisionRequest, ProvisionResponse};
use std::path::Path;

/// File names inside a manager data dir (the names `hammer-manager` reads).
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "device.pem";
pub const KEY_FILE: &str = "device.key";
pub const SEALING_KEY_FILE: &str = "sealing.key";
pub const CONFIG_FILE: &str = "manager.toml";

/// Writes the bundle files; refuses to overwrite an existing identity.
pub fn write_bundle(dir: &Path, b: &ProvisionResponse) -> Result<()> {
    for f in [KEY_FILE, CERT_FILE, SEALING_KEY_FILE, CONFIG_FILE] {
        if dir.join(f).exists() {
            bail!(
                "{} already exists: choose an empty --out folder (a device identity is never overwritten)",
                dir.join(f).display()
            );
        }
    }
    create_private_dir(dir)?;
    write_public(dir.join(CA_FILE), &b.ca_pem)?;
    write_public(dir.join(CERT_FILE), &b.cert_pem)?;
    write_private(dir.join(KEY_FILE), &b.key_pem)?;
    write_private(
        dir.join(SEALING_KEY_FILE),
        format!("{}\n", b.sealing_private_key.trim()),
    )?;
    write_public(dir.join(CONFIG_FILE), &b.config_toml)?;
    Ok(())
}

/// `hammer certs issue-device --owner USER --name NAME --out DIR`.
pub async fn issue_device(
    conn: &Conn,
    owner: &str,
    name: &str,
    tags: Vec<(String, String)>,
    out: &Path,
    json: bool,
) -> Result<()> {
    check_name(owner)?;
    check_name(name)?;
    let tags = tags.into_iter().collect();
    check_tags(&tags)?;
    if out.exists() && !out.is_dir() {
        bail!("--out {} is a file, not a folder", out.display());
    }
    if out.join(KEY_FILE).exists() {
        bail!(
            "{} already holds a device key: choose an empty --out folder",
            out.display()
        );
    }
    let client = Client::new(conn)?;
    let req = ProvisionRequest {
        owner: owner.to_string(),
        name: name.to_string(),
        tags,
    };
    let answer = client.provision(&req).await?;
    let (mut v, bundle) = (answer.raw, answer.body);
    write_bundle(out, &bundle).with_context(|| {
        format!(
            "device {name} is registered but its bundle could not be written; remove it with `hammer device remove {name}` (as {owner}) and try again"
        )
    })?;
    if json {
        // The API's answer without the private keys (they are in the files), plus where.
        if let Some(obj) = v.as_object_mut() {
            obj.remove("key_pem");
            obj.remove("sealing_private_key");
            obj.insert("out".into(), out.display().to_string().into());
        }
        output::print_json(&v);
    } else {
        println!(
            "issued device {} (id {}) for {}; bundle written to {}:",
            safe(name),
            safe(&bundle.device.id),
            safe(owner),
            safe(&out.display().to_string())
        );
        for f in [CA_FILE, CERT_FILE, KEY_FILE, SEALING_KEY_FILE, CONFIG_FILE] {
            println!("  {}", safe(&out.join(f).display().to_string()));
        }
        println!(
            "on the device: hammer-manager run --data-dir {}",
            safe(&out.display().to_string())
        );
    }
    Ok(())
}
