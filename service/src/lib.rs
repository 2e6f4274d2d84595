//! Hammer IoT cloud service (`hammer serve`): the HTTP API, the embedded broker, the store
//! (sled, or PostgreSQL with `--database`), status ingestion and the rollout engine.
//!
//! Entry points: [`run`] (until Ctrl-C / SIGTERM, then it drains: see
//! [`RunningService::shutdown`]), [`start`] (background tasks, for tests
//! and embedding; returns a [`RunningService`]) and [`run_broker`] (`hammer broker`: the
//! broker alone, with the certificates of a serve data dir, so the service can be upgraded
//! without dropping devices: run `hammer broker` and `hammer serve --broker-url`).
//!
//! Layout: [`config`] and [`init`] (data dir), [`store`] (trait + sled), [`auth`], [`api`]
//! (one module per resource), [`mqtt`] (link, publish, ingest), [`rollout`], [`live`]
//! (in-memory device state), [`metrics`], [`views`], [`http`] (listener), [`web`] (the
//! browser dashboard at `/` and its session cookies).

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod http_stats;
pub mod ids;
pub mod init;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod mqtt;
pub mod rollout;
pub mod router;
pub mod service;
pub mod sessions;
pub mod store;
pub mod views;
pub mod web;
pub mod webhooks;

pub use config::{BrokerUrl, HttpLimits, HttpTls, Quotas, ServeConfig, DEFAULT_DRAIN_GRACE};

use anyhow::Context;
use hammer_broker::{Broker, BrokerConfig, BrokerHandle};
use service::Service;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use store::sled::SledStore;
use store::{Store, UserRecord};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

/// How long a stopping service waits for its tasks (HTTP requests in flight, the rollout
/// engine's last write, ingestion's last batch) before it aborts the rest; counted from the
/// end of the drain grace ([`ServeConfig::drain_grace`]).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(8);

/// Name of the admin user created on first start.
pub const ADMIN_USER: &str = "admin";
/// File in the data dir holding the admin token (0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// A service running in background tasks. [`RunningService::shutdown`] stops it cleanly (so
/// another one can open the same data dir); dropping it signals the tasks to stop.
pub struct RunningService {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Where the embedded broker listens (the external broker's address with `--broker-url`).
    pub mqtt_addr: SocketAddr,
    /// Where the enrollment listener (HTTPS, fleet CA certificate) listens.
    pub enroll_addr: SocketAddr,
    /// `https://host:port` of the enrollment listener, as printed in enroll lines.
    pub enroll_url: String,
    /// Where `/metrics` is served on its own (`--metrics-listen`), if it is.
    pub metrics_addr: Option<SocketAddr>,
    /// The connection bounds each HTTP listener applies.
    pub http_limits: http::ConnLimits,
    /// The admin token (also in `DIR/admin.token`).
    pub admin_token: String,
    /// `mqtts://host:port` handed to devices.
    pub device_broker_url: String,
    /// Whether HTTP is served over TLS.
    pub https: bool,
    pub data_dir: PathBuf,
    /// How long [`RunningService::drain`] keeps serving with `/healthz` unready.
    pub drain_grace: Duration,
    stop: watch::Sender<bool>,
    phase: watch::Sender<service::RunPhase>,
    drain_began: std::sync::OnceLock<tokio::time::Instant>,
    broker: Option<BrokerHandle>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningService {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:8080`.
    pub fn http_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.http_addr)
    }

    /// Starts draining, at once: `/healthz` answers 503 (a load balancer's health check
    /// takes this replica out) while every request is still served. Idempotent.
    pub fn begin_drain(&self) {
        let mut first = false;
        self.drain_began.get_or_init(|| {
            first = true;
            tokio::time::Instant::now()
        });
        if first {
            self.phase.send_replace(service::RunPhase::Draining);
            tracing::info!(
                grace_ms = self.drain_grace.as_millis() as u64,
                "draining: /healthz answers 503; serving on for the drain grace"
            );
        }
    }

    /// Drains: [`RunningService::begin_drain`], then waits until the drain grace
    /// (`--drain-grace`) has passed since draining began, so that requests a load balancer
    /// routed here before it noticed still succeed.
    pub async fn drain(&self) {
        self.begin_drain();
        if let Some(began) = self.drain_began.get() {
            tokio::time::sleep_until(*began + self.drain_grace).await;
        }
    }

    /// Drains ([`RunningService::drain`]), then stops: the listeners accept no more
    /// connections and finish the requests in flight, every event stream gets a last
    /// `reconnect` event and ends, the rollout engine writes its state, ingestion stores its
    /// last batch, the broker stops. One deadline for all of that after the grace
    /// ([`SHUTDOWN_DEADLINE`]): what has not stopped by then is aborted. Nothing
    /// acknowledged is lost that way: a status event is acked only after it is durable, and
    /// the rollout engine writes its state as it stops.
    pub async fn shutdown(self) {
        self.drain().await;
        self.stop_now().await;
    }

    /// Stops without waiting for the rest of the drain grace (a second signal).
    pub async fn stop_now(mut self) {
        self.signal_stop();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
        for t in std::mem::take(&mut self.tasks) {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                tracing::warn!("a task did not stop before the shutdown deadline; aborted");
                abort.abort();
            }
        }
        tracing::info!("service stopped");
    }

    fn signal_stop(&self) {
        self.stop.send_replace(true);
        if let Some(b) = &self.broker {
            b.shutdown();
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// `hammer serve`: runs until Ctrl-C or SIGTERM.
pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    let svc = start(cfg).await?;
    tracing::info!(http = %svc.http_url(), mqtt = %svc.mqtt_addr, broker_url = %svc.device_broker_url, enroll_url = %svc.enroll_url, "hammer serve running; admin token in {}", svc.data_dir.join(ADMIN_TOKEN_FILE).display());
    wait_for_signal().await?;
    tracing::info!("shutting down (a second Ctrl-C or SIGTERM skips the drain grace)");
    tokio::select! {
        _ = svc.drain() => {}
        r = wait_for_signal() => {
            r?;
            tracing::info!("second signal: stopping without the rest of the drain grace");
        }
    }
    svc.stop_now().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// `hammer broker`: the broker alone, with the certificates of a serve data dir.
pub async fn run_broker(
    data_dir: PathBuf,
    listen: SocketAddr,
    device_rate_limit: Option<hammer_broker::limits::RateLimit>,
) -> anyhow::Result<()> {
    hammer_certs::tls::install_default_provider();
    let (ca, cert, key, revocations) = init::load_broker_material(&data_dir)?;
    hammer_broker::run_standalone(
        BrokerConfig::new(ca, cert, key, revocations)
            .with_listen(listen)
            .with_device_rate_limit(device_rate_limit),
    )
    .await
}

/// `host:port`, with brackets around an IPv6 address.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Opens the store, waiting a little while a previous instance in this process lets go.
async fn open_store(dir: &Path, retention: store::Retention) -> anyhow::Result<SledStore> {
    let mut last = None;
    for _ in 0..50 {
        match SledStore::open_with(dir, retention) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("cannot open the store")))
}

/// Opens the PostgreSQL store (`--database`): connects, migrates, starts its pool.
async fn open_database(
    pg: store::pg::PgConfig,
    retention: store::Retention,
) -> anyhow::Result<store::pg::PgStore> {
    tokio::task::spawn_blocking(move || store::pg::PgStore::open(&pg, retention))
        .await
        .context("the database store's opening task failed")?
        .map_err(anyhow::Error::from)
}

/// Starts the embedded broker, waiting a little for a previous instance in this process to
/// release a fixed port.
async fn start_broker(bc: BrokerConfig) -> anyhow::Result<BrokerHandle> {
    let mut tries = 0;
    loop {
        match Broker::start(bc.clone()).await {
            Ok(h) => return Ok(h),
            Err(hammer_broker::BrokerError::Listen { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && tries < 30 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("cannot start the embedded broker")),
        }
    }
}

/// Creates the admin user on first start and returns its token (from `admin.token`, or a
/// new one when the file is missing).
async fn ensure_admin(store: &dyn Store, dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    let admin = match store.user_by_name(ADMIN_USER)? {
        Some(u) => u,
        None => {
            let u = UserRecord {
                id: ids::new_id(),
                name: ADMIN_USER.into(),
                admin: true,
                created_at: hammer_protocol::now_ms(),
                bad_commits: Vec::new(),
            };
            if store.insert_user(&u)? {
                u
            } else {
                // Another replica created it at the same moment: use theirs.
                store.user_by_name(ADMIN_USER)?.context(
                    "the admin user was created by another process but cannot be read back",
                )?
            }
        }
    };
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_owned();
        if store
            .token_by_hash(&ids::hash_token(&t))?
            .is_some_and(|r| r.user_id == admin.id)
        {
            return Ok(t);
        }
    }
    let token = api::users::issue_token(store, &admin)?;
    store.flush().await?;
    hammer_certs::files::write_private(&path, format!("{}\n", token.token))?;
    tracing::info!(path = %path.display(), "wrote a new admin token");
    Ok(token.token)
}

/// Reads the `/metrics` bearer token from `path`; returns its hash.
fn read_metrics_token(path: &Path) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the metrics token file {} (--metrics-token-file); write a token into it, e.g. `openssl rand -hex 32 > {}`",
            path.display(),
            path.display()
        )
    })?;
    let t = t.trim();
    if t.is_empty() {
        anyhow::bail!(
            "the metrics token file {} (--metrics-token-file) is empty; write a token into it, e.g. `openssl rand -hex 32 > {}`",
            path.display(),
            path.display()
        );
    }
    Ok(ids::hash_token(t))
}

/// Starts everything in background tasks: data dir, store, broker (unless `broker_url`),
/// MQTT link, ingestion, rollout engine and the HTTP API. Ports may be 0.
pub async fn start(cfg: ServeConfig) -> anyhow::Result<RunningService> {
    hammer_certs::tls::install_default_provider();
    cfg.check_replica()?;
    let dir = cfg.data_dir.clone();
    let material = init::load_or_create(&dir, cfg.public_host.as_deref(), cfg.mqtt)
        .with_context(|| format!("cannot initialise the data dir {}", dir.display()))?;
    let backend: Arc<dyn Store> = match &cfg.database {
        None => Arc::new(open_store(&dir.join("store"), cfg.retention).await?),
        Some(pg) => Arc::new(open_database(pg.clone(), cfg.retention).await?),
    };
    let admin_token = ensure_admin(backend.as_ref(), &dir).await?;
    // Counted once here, then as records are written: `/metrics` never scans the store.
    let (counting, gauges) = metrics::CountingStore::wrap(backend)
        .context("cannot count the devices and deployments in the store")?;
    let store: Arc<dyn Store> = Arc::new(counting);
    let metrics_token_hash = match &cfg.metrics_token_file {
        None => None,
        Some(path) => Some(read_metrics_token(path)?),
    };
    let nofile = Some(hammer_broker::limits::soft_nofile());
    let conn_limits = http::ConnLimits::resolve(&cfg.http_limits, nofile);
    tracing::info!(
        open_files = nofile
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unknown".into()),
        max_connections = conn_limits.max_connections,
        max_connections_per_address = conn_limits.max_connections_per_address,
        header_read_timeout_ms = conn_limits.header_read_timeout.as_millis() as u64,
        idle_timeout_ms = conn_limits.idle_timeout.as_millis() as u64,
        max_devices_per_user = cfg.quotas.max_devices_per_user,
        max_streams_per_user = cfg.quotas.max_streams_per_user,
        "HTTP connection bounds (per listener) and per-user quotas"
    );

    let (broker, target, mqtt_addr, device_broker_url) = match &cfg.broker_url {
        Some(url) => {
            let target = BrokerUrl::parse_mqtts(url)?;
            let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
                .await
                .ok()
                .and_then(|mut a| a.next())
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], target.port)));
            (None, target.clone(), addr, target.to_url())
        }
        None => {
            let bc = BrokerConfig::new(
                material.ca_pem.clone(),
                material.server_cert_pem.clone(),
                material.server_key_pem.clone(),
                material.revocations.clone(),
            )
            .with_listen(cfg.mqtt)
            .with_device_rate_limit(cfg.device_rate_limit);
            let handle = start_broker(bc).await?;
            let addr = handle.local_addr();
            let local_ip = if addr.ip().is_unspecified() {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                addr.ip()
            };
            let target = BrokerUrl::mqtts(local_ip.to_string(), addr.port());
            let public = BrokerUrl::mqtts(
                init::public_host(cfg.public_host.as_deref(), cfg.mqtt),
                addr.port(),
            );
            // Devices read this URL with the same parser: refuse a host they would refuse.
            let device_url = public.to_url();
            BrokerUrl::parse_mqtts(&device_url).with_context(|| {
                format!(
                    "the broker URL devices would get, {device_url:?}, is invalid: set --public-host to a DNS name or an IP address"
                )
            })?;
            (Some(handle), target, addr, device_url)
        }
    };

    // The enrollment listener is bound before anything uses its URL, so port 0 works.
    let enroll_tcp = tokio::net::TcpListener::bind(cfg.enroll)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for enrollment (--enroll-listen)",
                cfg.enroll
            )
        })?;
    let enroll_addr = enroll_tcp.local_addr()?;
    let enroll_url = format!(
        "https://{}",
        // The broker's host: it is in the server certificate's SANs.
        host_port(
            &init::public_host(cfg.public_host.as_deref(), cfg.mqtt),
            enroll_addr.port()
        )
    );

    // Each replica has its own MQTT identity; a single service has `hammer-service`.
    let (client_id, (mqtt_cert, mqtt_key)) = match &cfg.replica {
        Some(name) => (
            init::replica_id(name),
            init::replica_identity(&material, name)?,
        ),
        None => (
            init::SERVICE_ID.to_owned(),
            (
                material.service_cert_pem.clone(),
                material.service_key_pem.clone(),
            ),
        ),
    };
    let (client, eventloop) =
        mqtt::link::client(&target, &material.ca_pem, &mqtt_cert, &mqtt_key, &client_id)?;
    let cluster_link = cfg
        .replica
        .clone()
        .map(|name| Arc::new(cluster::outbox::ClusterLink::new(name, client.clone())));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (phase_tx, phase_rx) = watch::channel(service::RunPhase::Serving);
    // Deep enough for a 10,000-device rollout's burst (about 60,000 status events within
    // seconds; ~250 bytes each): what overflows the status queue is shed and resent by the
    // devices seconds later, which is what made the service finish ~5 s after the devices.
    let (rollout_tx, rollout_rx) = mpsc::channel(64 * 1024);
    let (status_tx, status_rx) = mpsc::channel(128 * 1024);
    let (hub, _) = broadcast::channel(4096);
    let api_stats = http::ListenerStats::new("api");
    let enroll_stats = http::ListenerStats::new("enroll");
    let metrics_stats = cfg
        .metrics_listen
        .map(|_| http::ListenerStats::new("metrics"));
    let mut listeners = vec![api_stats.clone(), enroll_stats.clone()];
    listeners.extend(metrics_stats.clone());
    let init::Material {
        ca,
        ca_pem,
        signer,
        revocations,
        server_cert_pem,
        server_key_pem,
        ..
    } = material;
    let sessions = sessions::Sessions::new(store.clone(), cfg.http_tls.is_some());
    let enroll_limiter = limits::EnrollLimiter::new(store.clone());
    let svc = Arc::new(Service {
        store,
        ca,
        ca_pem,
        signer,
        revocations,
        broker: broker.clone(),
        device_broker_url: device_broker_url.clone(),
        enroll_url: enroll_url.clone(),
        mqtt: client,
        live: Default::default(),
        counters: Default::default(),
        hub,
        rollout: rollout_tx,
        enroll_limiter,
        shutdown: stop_rx.clone(),
        phase: phase_rx,
        sessions,
        gauges,
        quotas: cfg.quotas.clone(),
        streams: service::StreamSlots::new(cfg.quotas.max_streams_per_user),
        device_insert: Default::default(),
        metrics_token_hash,
        metrics_elsewhere: cfg.metrics_listen.is_some(),
        sse_keep_alive: http::sse_keep_alive(conn_limits.idle_timeout),
        listeners,
        cluster: cluster_link.clone(),
        webhooks: webhooks::Webhooks::new(cfg.webhooks.clone()),
    });

    let mut tasks = Vec::new();
    // One engine drives deployments: here, or with replicas on the rollout lease's holder.
    let cluster_tx = match cluster_link {
        None => {
            let engine = rollout::Engine::load(svc.clone()).await?;
            tasks.push(tokio::spawn(engine.run(rollout_rx, stop_rx.clone())));
            None
        }
        Some(link) => {
            let (tx, rx) = mpsc::channel(cluster::INBOUND_QUEUE);
            tasks.push(tokio::spawn(cluster::leader::run(
                svc.clone(),
                link,
                rollout_rx,
                rx,
                stop_rx.clone(),
            )));
            Some(tx)
        }
    };
    tasks.push(tokio::spawn(webhooks::worker::run(
        svc.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(mqtt::ingest::status_worker(
        svc.clone(),
        status_rx,
    )));
    tasks.push(tokio::spawn(mqtt::link::run(
        svc.clone(),
        eventloop,
        status_tx,
        cluster_tx,
        stop_rx.clone(),
    )));
    if let Some(b) = broker.clone() {
        let (svc, mut stop) = (svc.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = mqtt::ingest::broker_events(svc, b) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }));
    }

    // Enrollment: HTTPS with the fleet CA's server certificate, the CA itself sent in the
    // chain so that a device holding only the CA's fingerprint can verify it (decision 0006).
    let enroll_tls = hammer_certs::tls::server_config(
        &format!("{server_cert_pem}{}", svc.ca_pem),
        &server_key_pem,
    )
    .context("cannot build the enrollment listener's TLS configuration")?;
    let enroll_app = router::enroll(svc.clone());
    let (stop, limits) = (stop_rx.clone(), conn_limits.clone());
    tasks.push(tokio::spawn(async move {
        let tls = Some(Arc::new(enroll_tls));
        if let Err(e) = http::serve(enroll_tcp, tls, enroll_app, stop, limits, enroll_stats).await {
            tracing::error!(error = %e, "enrollment listener failed");
        }
    }));

    let tls = match &cfg.http_tls {
        None => None,
        Some(HttpTls::FleetCa) => Some(hammer_certs::tls::server_config(
            &server_cert_pem,
            &server_key_pem,
        )?),
        Some(HttpTls::Files { cert, key }) => {
            let c = std::fs::read_to_string(cert)
                .with_context(|| format!("cannot read {}", cert.display()))?;
            let k = std::fs::read_to_string(key)
                .with_context(|| format!("cannot read {}", key.display()))?;
            Some(hammer_certs::tls::server_config(&c, &k)?)
        }
    };
    let https = tls.is_some();
    let tcp = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("cannot listen on {} for HTTP", cfg.http))?;
    let http_addr = tcp.local_addr()?;
    let app = router::app(svc.clone());
    let (stop, limits) = (stop_rx.clone(), conn_limits.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = http::serve(tcp, tls.map(Arc::new), app, stop, limits, api_stats).await {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));
    let metrics_addr = match (cfg.metrics_listen, metrics_stats) {
        (Some(addr), Some(stats)) => {
            let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for metrics (--metrics-listen)")
            })?;
            let local = tcp.local_addr()?;
            let app = router::metrics(svc.clone());
            let (stop, limits) = (stop_rx.clone(), conn_limits.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = http::serve(tcp, None, app, stop, limits, stats).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            }));
            tracing::info!(%local, "metrics served on their own address");
            Some(local)
        }
        _ => None,
    };
    drop(svc);
    tracing::info!(%http_addr, %mqtt_addr, %enroll_addr, "service started");
    Ok(RunningService {
        http_addr,
        mqtt_addr,
        enroll_addr,
        enroll_url,
        metrics_addr,
        http_limits: conn_limits,
        admin_token,
        device_broker_url,
        https,
        data_dir: dir,
        drain_grace: cfg.drain_grace,
        stop: stop_tx,
        phase: phase_tx,
        drain_began: std::sync::OnceLock::new(),
        broker,
        tasks,
    })
}
