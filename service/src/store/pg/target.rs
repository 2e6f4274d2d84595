//! Where the PostgreSQL store connects: the `--database` URL read once, shown only without
//! its password, and the rule on TLS (decision 0010):
//!
//! - a database on loopback or a Unix socket is reached in plain unless the URL asks for TLS;
//! - another host is reached over TLS unless the URL says `sslmode=disable` (the operator
//!   then provides the protection: a private network or a tunnel);
//! - TLS always verifies the server's certificate and host name ([`super::tls`]), against
//!   `sslrootcert=FILE` or the system's roots: `sslmode=require`, `verify-ca` and
//!   `verify-full` all mean that.

use super::tls::Rustls;
use crate::store::{Result, StoreError};
use postgres::config::{Host, SslMode};
use postgres::{Client, NoTls};
use std::path::PathBuf;
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
    /// How connections are encrypted (`None`: in plain).
    tls: Option<Rustls>,
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

/// `%XX` escapes of a URL parameter decoded.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Takes out of `url` what the client library does not read: `sslrootcert=FILE` (answered),
/// and `sslmode=verify-ca|verify-full` (here the same as `require`: the certificate is
/// always verified).
fn take_tls_params(url: &str) -> (String, Option<PathBuf>) {
    let mut root = None;
    let mut keep = |k: &str, v: &str| -> Option<String> {
        match (k, v) {
            ("sslrootcert", v) => {
                root = Some(PathBuf::from(percent_decode(v)));
                None
            }
            ("sslmode", "verify-ca" | "verify-full") => Some("sslmode=require".into()),
            _ => Some(format!("{k}={v}")),
        }
    };
    if url.contains("://") {
        let Some((base, query)) = url.split_once('?') else {
            return (url.to_owned(), None);
        };
        let params: Vec<String> = query
            .split('&')
            .filter_map(|p| match p.split_once('=') {
                Some((k, v)) => keep(k, v),
                None => Some(p.to_owned()),
            })
            .collect();
        let url = if params.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", params.join("&"))
        };
        (url, root)
    } else {
        let pairs: Vec<String> = url
            .split_whitespace()
            .filter_map(|p| match p.split_once('=') {
                Some((k, v)) => keep(k, v),
                None => Some(p.to_owned()),
            })
            .collect();
        (pairs.join(" "), root)
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
        let (plain_url, root) = take_tls_params(url);
        let mut config: postgres::Config = plain_url.parse().map_err(|e: postgres::Error| {
            let why = scrub(&chain(&e), &secrets);
            StoreError::Backend(format!(
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
            return Err(StoreError::Backend(format!(
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
        let remote = config.get_hosts().iter().any(|h| match h {
            Host::Tcp(n) => !is_loopback(n),
            Host::Unix(_) => false,
        });
        let unix_only = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
        let wanted = match config.get_ssl_mode() {
            SslMode::Disable => false,
            SslMode::Require => true,
            // Unset (prefer): TLS to another host, or when a CA file is named.
            _ => remote || root.is_some(),
        };
        if wanted && unix_only {
            return Err(StoreError::Backend(format!(
                "the --database URL for {shown} asks for TLS over a Unix socket, which PostgreSQL does not offer: drop sslmode and sslrootcert, or name a TCP host"
            )));
        }
        let tls = if wanted {
            config.ssl_mode(SslMode::Require);
            Some(Rustls::new(root.as_deref()).map_err(|e| {
                StoreError::Backend(format!("the database {shown}: {}", e.message()))
            })?)
        } else {
            config.ssl_mode(SslMode::Disable);
            None
        };
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
            tls,
        })
    }

    /// Opens a connection with the statement bounds set and commits that do not wait for
    /// the disk.
    pub fn connect(&self) -> Result<Client> {
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        let mut c = connected.map_err(|e| {
            let mut why = describe(&e, self);
            if why.contains("does not support TLS") {
                why.push_str(
                    " (a database on another host is reached over TLS; sslmode=disable in the URL connects in plain)",
                );
            }
            StoreError::Backend(format!("cannot connect to the database {self}: {why}"))
        })?;
        let ms = self.statement_timeout.as_millis();
        // Commits do not wait for the disk: `Store::flush` does, once for everything before
        // it (see `PgStore::flush`).
        c.batch_execute(&format!(
            "SET statement_timeout = {ms}; SET idle_in_transaction_session_timeout = {}; \
             SET synchronous_commit = off",
            ms.saturating_mul(2)
        ))
        .map_err(|e| StoreError::Backend(format!("database {self}: {}", describe(&e, self))))?;
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
            .message();
        assert!(!e.contains("pw1234") && e.contains("***"), "{e}");
    }

    #[test]
    fn tls_to_another_host_unless_sslmode_disable_and_whenever_the_url_asks() {
        let dir = tempfile::tempdir().unwrap();
        let ca = hammer_certs::Ca::create("pg test").unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert().pem()).unwrap();
        let root = ca_file.display().to_string();
        let tls = |url: &str| Target::parse(url, T).map(|t| t.tls.is_some());
        assert!(!tls("postgres://u:pw@127.0.0.1/db").unwrap());
        assert!(!tls("postgres://u@localhost/db").unwrap());
        assert!(!tls("postgres://u@[::1]:5432/db").unwrap());
        assert!(!tls("host=/run/postgresql user=u dbname=db").unwrap());
        assert!(!tls("postgres://u:pw@db.example.com/db?sslmode=disable").unwrap());
        assert!(tls(&format!(
            "postgres://u:pw@db.example.com/db?sslrootcert={root}"
        ))
        .unwrap());
        assert!(tls(&format!(
            "postgres://u:pw@127.0.0.1/db?sslmode=verify-full&sslrootcert={root}&connect_timeout=2"
        ))
        .unwrap());
        assert!(tls(&format!(
            "host=127.0.0.1 user=u sslmode=require sslrootcert={root}"
        ))
        .unwrap());
        let e = Target::parse(
            "postgres://u:pw@db.example.com/db?sslrootcert=/nope/ca.pem",
            T,
        )
        .err()
        .unwrap()
        .message();
        assert!(e.contains("/nope/ca.pem") && !e.contains("pw@"), "{e}");
        let e = Target::parse("host=/run/postgresql user=u sslmode=require", T)
            .err()
            .unwrap()
            .message();
        assert!(e.contains("Unix socket"), "{e}");
        assert_eq!(
            take_tls_params("postgres://u@h/db?sslrootcert=%2Ftmp%2Fca.pem&sslmode=verify-ca"),
            (
                "postgres://u@h/db?sslmode=require".to_owned(),
                Some(PathBuf::from("/tmp/ca.pem"))
            )
        );
    }
}
