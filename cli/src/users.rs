//! `hammer login` and `hammer user add`.

use crate::commands::check_name;
use crate::config::{self, Conn, Saved};
use crate::output::{self, safe};
use anyhow::{bail, Result};
use hammer_client::Client;

/// Checks the token against the service (`GET /me`) and saves URL and token.
pub async fn login(conn: &Conn, json: bool) -> Result<()> {
    if conn.token.is_none() {
        bail!("`hammer login` needs a token: hammer login --url URL --token TOKEN");
    }
    let client = Client::new(conn)?;
    let answer = client.me().await?;
    let (v, me) = (answer.raw, answer.body);
    let path = config::config_path()?;
    config::save_to(
        &path,
        &Saved {
            url: Some(conn.url.clone()),
            token: conn.token.clone(),
            ca_cert: conn.ca_cert.clone(),
        },
    )?;
    if json {
        output::print_json(&v);
    } else {
        println!(
            "logged in to {} as {}{}; saved in {} (mode 0600)",
            safe(&conn.url),
            safe(&me.name),
            if me.admin { " (admin)" } else { "" },
            path.display()
        );
    }
    Ok(())
}

/// Creates a user (admin) and prints their token.
pub async fn add_user(conn: &Conn, name: &str, json: bool) -> Result<()> {
    check_name(name)?;
    let client = Client::new(conn)?;
    let answer = client.create_user(name).await?;
    let (v, created) = (answer.raw, answer.body);
    if json {
        output::print_json(&v);
    } else {
        eprintln!(
            "created user {} (id {}); their API token follows, it is shown only once:",
            safe(&created.user.name),
            safe(&created.user.id)
        );
        println!("{}", safe(&created.token));
        eprintln!(
            "they log in with: hammer login --url {} --token {}",
            safe(client.url()),
            safe(&created.token)
        );
    }
    Ok(())
}
