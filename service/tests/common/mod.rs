//! Test harness: a service on loopback (ports 0, real embedded broker, real certificates), the
//! typed API client (`hammer-client`, what the CLI and fleet-sim use) for the ordinary steps,
//! a raw HTTP helper for what a typed client cannot send (bad bodies, missing tokens, other
//! users' tokens checked for the exact status), and simulated devices that speak the real protocol over mTLS (the scripted
//! device of `hammer-sim-device`).
#![allow(dead_code)]

use hammer_client::{Client, Conn};
use hammer_protocol::api::{ProvisionRequest, ProvisionResponse, SetupRequest};
use hammer_protocol::{DesiredState, Phase};
use hammer_service::{RunningService, ServeConfig};
use hammer_sim_device::ScriptedDevice;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

pub fn init() {
    hammer_certs::tls::install_default_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn config(dir: &Path) -> ServeConfig {
    let mut cfg = ServeConfig::new(dir);
    cfg.http = "127.0.0.1:0".parse().unwrap();
    cfg.mqtt = "127.0.0.1:0".parse().unwrap();
    cfg.enroll = "127.0.0.1:0".parse().unwrap();
    cfg.public_host = Some("127.0.0.1".into());
    // No load balancer to wait for: tests stop at once (`drain` tests set their own grace).
    cfg.drain_grace = Duration::ZERO;
    cfg
}

/// A running service plus an HTTP client.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub svc: Option<RunningService>,
    pub http: reqwest::Client,
    pub base: String,
    pub admin: String,
}

impl Harness {
    pub async fn start() -> Harness {
        init();
        let dir = tempfile::tempdir().unwrap();
        let svc = hammer_service::start(config(dir.path())).await.unwrap();
        Harness {
            base: svc.http_url(),
            admin: svc.admin_token.clone(),
            svc: Some(svc),
            dir,
            // No pooled connections: a request the service refuses before reading its body
            // (oversized) closes that connection, and a pooled reuse would fail at random.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    /// A harness whose service's config is changed by `tweak` (e.g. a `--database`).
    pub async fn start_with(tweak: impl Fn(&mut ServeConfig)) -> Harness {
        init();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let svc = hammer_service::start(cfg).await.unwrap();
        Harness {
            base: svc.http_url(),
            admin: svc.admin_token.clone(),
            svc: Some(svc),
            dir,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    }

    /// [`Harness::restart`] with the config changed by `tweak`.
    pub async fn restart_with(&mut self, tweak: impl Fn(&mut ServeConfig)) {
        let old = self.svc.take().unwrap();
        let mut cfg = config(self.dir.path());
        cfg.mqtt = old.mqtt_addr;
        tweak(&mut cfg);
        old.shutdown().await;
        let svc = hammer_service::start(cfg).await.unwrap();
        self.base = svc.http_url();
        self.svc = Some(svc);
    }

    pub fn svc(&self) -> &RunningService {
        self.svc.as_ref().unwrap()
    }

    /// Stops the service and starts a new one on the same data dir and broker port.
    pub async fn restart(&mut self) {
        let old = self.svc.take().unwrap();
        let mut cfg = config(self.dir.path());
        cfg.mqtt = old.mqtt_addr;
        old.shutdown().await;
        let svc = hammer_service::start(cfg).await.unwrap();
        self.base = svc.http_url();
        self.svc = Some(svc);
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if !token.is_empty() {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    /// The value of the series `name` (its whole name, labels included) in `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let (s, v) = self.get("/metrics", &self.admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let text = v.as_str().unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics: {text}"))
    }

    /// Waits (10 s at most) until the series `name` in `/metrics` reaches `at_least`.
    pub async fn wait_metric(&self, name: &str, at_least: u64) {
        for _ in 0..200 {
            if self.metric(name).await >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} never reached {at_least}");
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// The typed API client (`hammer-client`) with `token`.
    pub fn client(&self, token: &str) -> Client {
        Client::new(&Conn::new(self.base.clone()).token(token)).unwrap()
    }

    /// Creates a user; returns its token.
    pub async fn user(&self, name: &str) -> String {
        let t = self.client(&self.admin).create_user(name).await.unwrap();
        t.body.token
    }

    /// Provisions a device for `owner` with tags; returns the bundle.
    pub async fn provision(&self, owner: &str, name: &str, tags: Value) -> ProvisionResponse {
        let req: ProvisionRequest =
            serde_json::from_value(json!({"owner": owner, "name": name, "tags": tags})).unwrap();
        self.client(&self.admin).provision(&req).await.unwrap().body
    }

    /// Provisions, connects and sets up a device; waits until it is ready.
    pub async fn ready_device(
        &self,
        owner: &str,
        token: &str,
        name: &str,
        tags: Value,
        behavior: Behavior,
    ) -> SimDevice {
        let bundle = self.provision(owner, name, tags).await;
        let dev = SimDevice::connect(self.svc().mqtt_addr, &bundle, behavior).await;
        self.setup_device(token, name, "https://example.com/app.git")
            .await;
        dev
    }

    /// Sets up a connected device with `repo_url` (credentials included); waits until the
    /// device confirmed it (ready).
    pub async fn setup_device(&self, token: &str, name: &str, repo_url: &str) {
        let req: SetupRequest = serde_json::from_value(json!({
            "repo_url": repo_url, "start": "./run.sh",
            "credentials": {"type": "https", "username": "u", "token": "s3cret"}
        }))
        .unwrap();
        self.client(token).setup(name, &req).await.unwrap();
        self.wait_device(token, name, |d| d["state"] == "ready")
            .await;
    }

    /// Polls a device view until `pred` holds (10 s).
    pub async fn wait_device(
        &self,
        token: &str,
        name: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let client = self.client(token);
        for _ in 0..200 {
            let v = client.device(name).await.unwrap().raw;
            if pred(&v) {
                return v;
            }
            last = v;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("device {name} never reached the expected state: {last}");
    }

    /// Polls a deployment until it is no longer running (`secs`).
    pub async fn wait_deployment(&self, token: &str, id: &str, secs: u64) -> Value {
        let mut last = Value::Null;
        let client = self.client(token);
        for _ in 0..secs * 20 {
            let v = client.deployment(id).await.unwrap().raw;
            if v["state"] != "running" {
                return v;
            }
            last = v;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("deployment {id} still running: {last}");
    }
}

pub use hammer_sim_device::Behavior;

/// A device speaking the real protocol over mTLS: `hammer_sim_device::ScriptedDevice`
/// (fields and the methods that cannot fail through `Deref`), with the fallible methods
/// panicking as a test wants.
pub struct SimDevice(pub ScriptedDevice);

impl std::ops::Deref for SimDevice {
    type Target = ScriptedDevice;
    fn deref(&self) -> &ScriptedDevice {
        &self.0
    }
}

impl SimDevice {
    /// Connects the bundle's device; waits until it is subscribed and announced (10 s).
    pub async fn connect(
        mqtt: std::net::SocketAddr,
        bundle: &ProvisionResponse,
        behavior: Behavior,
    ) -> SimDevice {
        match ScriptedDevice::connect(mqtt, bundle, behavior).await {
            Ok(d) => SimDevice(d),
            Err(e) => panic!("simulated device {}: {e}", bundle.device.name),
        }
    }

    /// Publishes a raw status event.
    pub async fn status(&self, seq: u64, phase: Phase) {
        self.report(seq, None, phase, None).await
    }

    /// Publishes a status event for the latest desired state (or none).
    pub async fn report(
        &self,
        seq: u64,
        desired: Option<&DesiredState>,
        phase: Phase,
        commit: Option<&str>,
    ) {
        if let Err(e) = self.0.report(seq, desired, phase, commit).await {
            panic!("{}: cannot publish a status event: {e}", self.id);
        }
    }

    /// [`SimDevice::report`] with a commit subject.
    pub async fn report_subject(
        &self,
        seq: u64,
        desired: Option<&DesiredState>,
        phase: Phase,
        commit: Option<&str>,
        subject: &str,
    ) {
        if let Err(e) = self
            .0
            .report_subject(seq, desired, phase, commit, Some(subject))
            .await
        {
            panic!("{}: cannot publish a status event: {e}", self.id);
        }
    }

    /// Waits until a desired state arrived (10 s).
    pub async fn wait_desired(&self) -> DesiredState {
        match self.0.wait_desired().await {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits until a desired state naming a commit arrived (10 s).
    pub async fn wait_desired_commit(&self) -> DesiredState {
        match self.0.wait_desired_commit().await {
            Ok(d) => d,
            Err(e) => panic!("{e} (got {:?})", self.last_desired()),
        }
    }
}
