//! Configuration of `hammer serve`: where the data lives and which addresses to listen on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Bounds of each HTTP listener ([`crate::http::serve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request whose head (request line and headers) is not complete this long after the
    /// server started waiting for it is closed; this also ends idle keep-alive connections
    /// (`--http-header-timeout`, default 10 s).
    pub header_read_timeout: Duration,
    /// A connection waiting on its client (no request being handled, or a request body
    /// stalled) with no byte moving either way for this long is closed
    /// (`--http-idle-timeout`, default 60 s). Event streams send a comment at least every
    /// quarter of it, so a reading client keeps its stream.
    pub idle_timeout: Duration,
    /// Open connections per listener; `None` sizes it from the open-file limit
    /// ([`crate::limits::http_connection_cap`]) (`--max-http-connections`).
    pub max_connections: Option<usize>,
    /// Open connections per source IP address per listener (`--max-http-connections-per-address`,
    /// default 64).
    pub max_connections_per_address: usize,
    /// Time allowed for a TLS handshake (10 s).
    pub handshake_timeout: Duration,
    /// On shutdown, how long requests in flight may take to finish (5 s).
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            max_connections_per_address: 64,
            handshake_timeout: Duration::from_secs(10),
            // Within the service's whole shutdown deadline (8 s).
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// How long a stopping service keeps serving with `/healthz` unready (`--drain-grace`).
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Per-user quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Devices one user may own (`--max-devices-per-user`, default 10,000).
    pub max_devices_per_user: u64,
    /// Event streams (`GET /api/v1/events`) one user may have open at once
    /// (`--max-streams-per-user`, default 16).
    pub max_streams_per_user: usize,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            max_devices_per_user: 10_000,
            max_streams_per_user: 16,
        }
    }
}

/// How the HTTP listener serves TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpTls {
    /// A server certificate issued by the fleet CA on start (SANs as the broker's).
    FleetCa,
    /// A certificate chain and key given by path (PEM).
    Files { cert: PathBuf, key: PathBuf },
}

/// Everything `hammer serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data directory: CA, certificates, signing key, admin token, sled store.
    pub data_dir: PathBuf,
    /// Keep the store in PostgreSQL instead of sled under the data dir (`--database`).
    pub database: Option<crate::store::pg::PgConfig>,
    /// HTTP API listen address (default 127.0.0.1:8080; port 0 picks a free one).
    pub http: SocketAddr,
    /// Embedded broker listen address (default 0.0.0.0:8883; port 0 picks a free one).
    pub mqtt: SocketAddr,
    /// Enrollment listener (HTTPS with the fleet CA's server certificate; default
    /// 0.0.0.0:8443; port 0 picks a free one).
    pub enroll: SocketAddr,
    /// Host name devices use to reach the broker and the enrollment listener (also a SAN of
    /// the server certificate).
    pub public_host: Option<String>,
    /// `mqtts://host:port` of an external broker; no embedded broker runs when set.
    pub broker_url: Option<String>,
    /// Serve HTTPS instead of HTTP.
    pub http_tls: Option<HttpTls>,
    /// Connection bounds of every HTTP listener.
    pub http_limits: HttpLimits,
    /// Per-user quotas.
    pub quotas: Quotas,
    /// A file holding the bearer token `/metrics` requires (none: `/metrics` is open).
    pub metrics_token_file: Option<PathBuf>,
    /// Serve `/metrics` (and `/healthz`) on this address only, instead of on the API's.
    pub metrics_listen: Option<SocketAddr>,
    /// How much history the store keeps per device (`--history-max-events`,
    /// `--history-max-mib`, `--history-max-days`).
    pub retention: crate::store::Retention,
    /// The embedded broker's per-device publish limit (`--device-packets-per-sec` and
    /// friends; `None`: unlimited).
    pub device_rate_limit: Option<hammer_broker::limits::RateLimit>,
    /// On stop, how long the service keeps serving after `/healthz` turned unready (503), so
    /// a load balancer's health check takes it out before it stops accepting connections
    /// (`--drain-grace`, default 5 s; zero: stop at once).
    pub drain_grace: Duration,
    /// Run as replica NAME of several (`--replica`): needs `database` and `broker_url` (see
    /// `crate::cluster`).
    pub replica: Option<String>,
    /// How webhooks are delivered (`--webhook-allow-private`).
    pub webhooks: crate::webhooks::config::WebhookConfig,
}

impl ServeConfig {
    /// Refuses a replica set-up that cannot work, naming what to add.
    pub fn check_replica(&self) -> anyhow::Result<()> {
        let Some(name) = &self.replica else {
            return Ok(());
        };
        crate::init::validate_replica_name(name)?;
        if self.database.is_none() {
            anyhow::bail!(
                "--replica {name} needs a store every replica shares: add --database postgres://… (the embedded sled store belongs to one process)"
            );
        }
        if self.broker_url.is_none() {
            anyhow::bail!(
                "--replica {name} needs a broker every replica shares: add --broker-url mqtts://HOST:PORT (e.g. Mosquitto with examples/mosquitto/; the embedded broker belongs to one process)"
            );
        }
        Ok(())
    }

    /// Defaults: HTTP on 127.0.0.1:8080, MQTT on 0.0.0.0:8883, enrollment (HTTPS) on
    /// 0.0.0.0:8443, no TLS on HTTP.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServeConfig {
        ServeConfig {
            data_dir: data_dir.into(),
            database: None,
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mqtt: SocketAddr::from(([0, 0, 0, 0], 8883)),
            enroll: SocketAddr::from(([0, 0, 0, 0], 8443)),
            public_host: None,
            broker_url: None,
            http_tls: None,
            http_limits: HttpLimits::default(),
            quotas: Quotas::default(),
            metrics_token_file: None,
            metrics_listen: None,
            retention: crate::store::Retention::default(),
            device_rate_limit: Some(hammer_broker::limits::RateLimit::DEVICE),
            drain_grace: DEFAULT_DRAIN_GRACE,
            replica: None,
            webhooks: Default::default(),
        }
    }
}

/// A broker URL: the protocol's one parser. The service accepts only `mqtts://`
/// ([`BrokerUrl::parse_mqtts`]).
pub use hammer_protocol::BrokerUrl;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_takes_only_mqtts_broker_urls_and_reads_ipv6_like_the_manager() {
        let u = BrokerUrl::parse_mqtts("mqtts://example.com:1883").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("example.com", 1883));
        assert_eq!(
            BrokerUrl::parse_mqtts("mqtts://h").unwrap().port,
            hammer_broker::DEFAULT_PORT
        );
        assert_eq!(
            BrokerUrl::parse_mqtts("mqtts://[::1]:8883").unwrap(),
            BrokerUrl::mqtts("::1", 8883)
        );
        let e = BrokerUrl::parse_mqtts("mqtt://h:1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("TLS is required"), "{e}");
        assert!(BrokerUrl::parse_mqtts("mqtts://h:x").is_err());
    }

    #[test]
    fn a_replica_needs_a_shared_database_and_broker_and_a_valid_name() {
        let mut c = ServeConfig::new("/tmp/x");
        c.check_replica().unwrap();
        c.replica = Some("a".into());
        let e = c.check_replica().unwrap_err().to_string();
        assert!(e.contains("--database"), "{e}");
        c.database = Some(crate::store::pg::PgConfig::new("postgres://u@127.0.0.1/db"));
        let e = c.check_replica().unwrap_err().to_string();
        assert!(e.contains("--broker-url"), "{e}");
        c.broker_url = Some("mqtts://127.0.0.1:8883".into());
        c.check_replica().unwrap();
        c.replica = Some("Bad Name".into());
        assert!(c.check_replica().is_err());
    }
}
