//! Where the PostgreSQL store connects: the `--database` URL read once, shown only without
//! its password, and the rule on TLS.
//!
//! TLS is not supported yet (decision 0010): a database on loopback or a Unix socket is
//! reached in plain; another host only with `sslmode=disable` written in the URL, which says
//! the operator provides the protection (a private network or a tunnel). `sslmode=require`
//! is refused with a sentence saying so.

use crate::store::{Result, StoreError};
use postgres::config::{Host, SslMode};
use postgres::{Client, NoTls};
use std::time::Duration;

/// How long opening a connection may take unless the URL says (`connect_timeout=`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed `--database` URL and what every connection is opened with.
pub struct Target {
    config: postgres::Config,
    /// `user@host:port/db`: how the database is named in logs and errors.
    shown: String,
    /// The password as written and as decoded: removed from any error text.
    secrets: Vec<String>,
    /// Every statement's bound (`SET statement_timeout`); a caller waits twice this long.
    pub statement_timeout: Duration,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The password part of `postgres://user:password@…`, as written.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    userinfo
        .split_once(':')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
}

/// `url` with its password replaced by `***`: the only form of the URL that may be shown.
pub fn redact_url(url: &str) -> String {
    match url_password(url) {
        Some(p) => url.replacen(&format!(":{p}@"), ":***@", 1),
        None => url.to_owned(),
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Target {
    /// Reads a `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?…]` URL (or `key=value` pairs).
    pub fn parse(url: &str, statement_timeout: Duration) -> Result<Target> {
        let mut secrets: Vec<String> = Vec::new();
        if let Some(p) = url_password(url) {
            secrets.push(p.to_owned());
        }
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            let why = scrub(&chain(&e), &secrets);
            StoreError(format!(
                "the --database URL {} is not a PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DB): {why}",
                redact_url(url)
            ))
        })?;
        if let Some(p) = config.get_password() {
            let p = String::from_utf8_lossy(p).into_owned();
            if !p.is_empty() && !secrets.contains(&p) {
                secrets.push(p);
            }
        }
        if config.get_hosts().is_empty() {
            return Err(StoreError(format!(
                "the --database URL {} names no host (postgres://USER@HOST:PORT/DB)",
                redact_url(url)
            )));
        }
        let host = |h: &Host| match h {
            Host::Tcp(n) => n.clone(),
            Host::Unix(p) => p.display().to_string(),
        };
        let hosts: Vec<String> = config.get_hosts().iter().map(host).collect();
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let shown = format!(
            "{}@{}:{port}/{}",
            config.get_user().unwrap_or("?"),
            hosts.join(","),
            config.get_dbname().or(config.get_user()).unwrap_or("?")
        );
        match config.get_ssl_mode() {
            SslMode::Disable => {}
            SslMode::Require => {
                return Err(StoreError(format!(
                    "the --database URL for {shown} asks for sslmode=require, and this hammer cannot connect to PostgreSQL over TLS yet: use a database on this machine (or a Unix socket), or reach it through a private network or a TLS tunnel and write sslmode=disable"
                )))
            }
            _ => {
                let remote = config.get_hosts().iter().any(|h| match h {
                    Host::Tcp(n) => !is_loopback(n),
                    Host::Unix(_) => false,
                });
                if remote {
                    return Err(StoreError(format!(
                        "the database {shown} is on another host and this hammer cannot connect to PostgreSQL over TLS yet: the password and the data would cross the network in plain. Reach it through a private network or a TLS tunnel and add sslmode=disable to the URL to say so"
                    )));
                }
                config.ssl_mode(SslMode::Disable);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("hammer");
        }
        config.keepalives_idle(Duration::from_secs(30));
        Ok(Target {
            config,
            shown,
            secrets,
            statement_timeout: statement_timeout.max(Duration::from_millis(100)),
        })
    }

    /// Opens a connection with the statement bounds set and commits that do not wait for
    /// the disk.
    pub fn connect(&self) -> Result<Client> {
        let mut c = self.config.connect(NoTls).map_err(|e| {
            StoreError(format!(
                "cannot connect to the database {self}: {}",
                describe(&e, self)
            ))
        })?;
        let ms = self.statement_timeout.as_millis();
        // Commits do not wait for the disk: `Store::flush` does, once for everything before
        // it (see `PgStore::flush`).
        c.batch_execute(&format!(
            "SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {}; \
             SET synchronous_commit = off",
            ms.saturating_mul(2)
        ))
        .map_err(|e| StoreError(format!("database {self}: {}", describe(&e, self))))?;
        Ok(c)
    }

    /// `text` without the password.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, &self.secrets)
    }
}

/// `text` with every secret replaced by `***`.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut t = text.to_owned();
    for s in secrets {
        if !s.is_empty() {
            t = t.replace(s.as_str(), "***");
        }
    }
    t
}

/// An error and its causes, one sentence.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A database error as one line: the server's message and SQLSTATE when it answered, the
/// cause otherwise; never the password.
pub fn describe(e: &postgres::Error, target: &Target) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => chain(e),
    };
    target.scrub(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn the_url_is_shown_without_its_password() {
        let t = Target::parse("postgres://hammer:s3cr%40t@127.0.0.1:5433/fleet", T).unwrap();
        assert_eq!(t.to_string(), "hammer@127.0.0.1:5433/fleet");
        assert_eq!(
            redact_url("postgres://hammer:s3cr%40t@db:5432/fleet"),
            "postgres://hammer:***@db:5432/fleet"
        );
        assert_eq!(t.scrub("x s3cr%40t y s3cr@t"), "x *** y ***");
        assert_eq!(
            redact_url("postgres://hammer@db/fleet"),
            "postgres://hammer@db/fleet"
        );
        let e = Target::parse("postgres://u:pw1234@127.0.0.1:notaport/db", T)
            .err()
            .unwrap()
            .0;
        assert!(!e.contains("pw1234") && e.contains("***"), "{e}");
    }

    #[test]
    fn tls_is_refused_with_a_sentence_and_a_remote_host_needs_sslmode_disable() {
        let e = Target::parse("postgres://u:pw@127.0.0.1/db?sslmode=require", T)
            .err()
            .unwrap()
            .0;
        assert!(e.contains("sslmode=require") && e.contains("TLS"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
        let e = Target::parse("postgres://u:pw@db.example.com/db", T)
            .err()
            .unwrap()
            .0;
        assert!(e.contains("sslmode=disable"), "{e}");
        assert!(Target::parse("postgres://u:pw@db.example.com/db?sslmode=disable", T).is_ok());
        assert!(Target::parse("postgres://u@localhost/db", T).is_ok());
        assert!(Target::parse("postgres://u@[::1]:5432/db", T).is_ok());
        assert!(Target::parse("host=/run/postgresql user=u dbname=db", T).is_ok());
    }
}
