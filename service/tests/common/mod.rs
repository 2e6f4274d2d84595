//! Test harness: a service on loopback (ports 0, real embedded broker, real certificates), an
//! HTTP helper, and simulated devices that speak the real protocol over mTLS.
#![allow(dead_code)]

use hammer_protocol::api::{ManagerConfigFile, ProvisionResponse};
use hammer_protocol::signing::{verify, PublicKey};
use hammer_protocol::topics::topic;
use hammer_protocol::{
    encode, now_ms, Ack, AddressedAck, Channel, Command, CommandKind, DesiredState, Phase,
    Presence, StatusEvent, MAX_PACKET, PROTOCOL_VERSION,
};
use hammer_service::{RunningService, ServeConfig};
use reqwest::{Method, StatusCode};
use rumqttc::{
    AsyncClient, Event, Incoming, LastWill, MqttOptions, QoS, TlsConfiguration, Transport,
};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Creates a user; returns its token.
    pub async fn user(&self, name: &str) -> String {
        let (s, v) = self
            .post("/api/v1/users", &self.admin, json!({"name": name}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    /// Provisions a device for `owner` with tags; returns the bundle.
    pub async fn provision(&self, owner: &str, name: &str, tags: Value) -> ProvisionResponse {
        let (s, v) = self
            .post(
                "/api/v1/provision",
                &self.admin,
                json!({"owner": owner, "name": name, "tags": tags}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        serde_json::from_value(v).unwrap()
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
        let (s, v) = self
            .call(
                Method::PUT,
                &format!("/api/v1/devices/{name}/setup"),
                token,
                Some(json!({"repo_url": repo_url, "start": "./run.sh",
                            "credentials": {"type": "https", "username": "u", "token": "s3cret"}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
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
        for _ in 0..200 {
            let (_, v) = self.get(&format!("/api/v1/devices/{name}"), token).await;
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
        for _ in 0..secs * 20 {
            let (_, v) = self.get(&format!("/api/v1/deployments/{id}"), token).await;
            if v["state"] != "running" {
                return v;
            }
            last = v;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("deployment {id} still running: {last}");
    }
}

/// How a simulated device answers a desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// received → fetched → starting → running.
    Succeed,
    /// received → fetched → rolled_back.
    Fail,
    /// Says nothing.
    Silent,
    /// Fails this many times, then succeeds.
    FailTimes(u32),
}

/// A device speaking the real protocol over mTLS.
pub struct SimDevice {
    pub id: String,
    pub owner: String,
    pub client: AsyncClient,
    pub desired: Arc<Mutex<Vec<DesiredState>>>,
    pub cmds: Arc<Mutex<Vec<Command>>>,
    pub acks: Arc<Mutex<Vec<Ack>>>,
    pub behavior: Arc<Mutex<Behavior>>,
    /// The commit the device resolves a ref to when the desired state pins none.
    pub head: Arc<Mutex<String>>,
    pub epoch: u64,
    pub seq: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimDevice {
    pub async fn connect(
        mqtt: std::net::SocketAddr,
        bundle: &ProvisionResponse,
        behavior: Behavior,
    ) -> SimDevice {
        let cfg: ManagerConfigFile = toml::from_str(&bundle.config_toml).unwrap();
        let key = PublicKey::from_hex(&cfg.service_public_key).unwrap();
        let tls =
            hammer_certs::tls::client_config(&bundle.ca_pem, &bundle.cert_pem, &bundle.key_pem)
                .unwrap();
        let mut opts = MqttOptions::new(cfg.device_id.clone(), "127.0.0.1", mqtt.port());
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let mut epoch_b = [0u8; 8];
        getrandom::getrandom(&mut epoch_b).unwrap();
        let epoch = u64::from_le_bytes(epoch_b) >> 1;
        opts.set_last_will(LastWill::new(
            topic(&cfg.device_id, Channel::Presence),
            encode(&Presence::offline(epoch)).unwrap(),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut el) = AsyncClient::new(opts, 1000);
        let dev = SimDevice {
            id: cfg.device_id.clone(),
            owner: cfg.owner.clone(),
            client: client.clone(),
            desired: Default::default(),
            cmds: Default::default(),
            acks: Default::default(),
            behavior: Arc::new(Mutex::new(behavior)),
            head: Arc::new(Mutex::new(
                "1111111111111111111111111111111111111111".into(),
            )),
            epoch,
            seq: Arc::new(AtomicU64::new(0)),
            task: tokio::spawn(async {}),
        };
        let (desired, cmds, acks, beh, head, seq) = (
            dev.desired.clone(),
            dev.cmds.clone(),
            dev.acks.clone(),
            dev.behavior.clone(),
            dev.head.clone(),
            dev.seq.clone(),
        );
        let (id, owner) = (dev.id.clone(), dev.owner.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let ev = match el.poll().await {
                    Ok(ev) => ev,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                match ev {
                    Event::Incoming(Incoming::ConnAck(_)) => {
                        let filters = Channel::TO_DEVICE.iter().map(|c| {
                            rumqttc::SubscribeFilter::new(topic(&id, *c), QoS::AtLeastOnce)
                        });
                        client.subscribe_many(filters).await.unwrap();
                    }
                    Event::Incoming(Incoming::SubAck(_)) => {
                        let p = Presence {
                            v: PROTOCOL_VERSION,
                            online: true,
                            epoch,
                            generation: None,
                            acked_seq: 0,
                            manager_version: "sim".into(),
                            time: now_ms(),
                        };
                        client
                            .publish(
                                topic(&id, Channel::Presence),
                                QoS::AtLeastOnce,
                                true,
                                encode(&p).unwrap(),
                            )
                            .await
                            .unwrap();
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Incoming::Publish(p)) => {
                        let t = hammer_protocol::Topic::parse(&p.topic).unwrap();
                        match t.channel {
                            Channel::Desired if !p.payload.is_empty() => {
                                let d: DesiredState = verify(&p.payload, &key, &id, &owner)
                                    .expect("desired state signature");
                                let newer = desired
                                    .lock()
                                    .unwrap()
                                    .last()
                                    .is_none_or(|l| l.generation < d.generation);
                                if !newer {
                                    continue;
                                }
                                desired.lock().unwrap().push(d.clone());
                                let b = beh.lock().unwrap().clone();
                                let commit = d
                                    .commit
                                    .clone()
                                    .unwrap_or_else(|| head.lock().unwrap().clone());
                                let phases: Vec<Phase> = match b {
                                    Behavior::Silent => vec![],
                                    Behavior::Succeed => vec![
                                        Phase::Received,
                                        Phase::Fetched,
                                        Phase::Starting,
                                        Phase::Running,
                                    ],
                                    Behavior::Fail => {
                                        vec![Phase::Received, Phase::Fetched, Phase::RolledBack]
                                    }
                                    Behavior::FailTimes(n) => {
                                        failures += 1;
                                        if failures <= n {
                                            vec![Phase::Received, Phase::Fetched, Phase::RolledBack]
                                        } else {
                                            vec![Phase::Received, Phase::Fetched, Phase::Running]
                                        }
                                    }
                                };
                                for ph in phases {
                                    let ev = StatusEvent {
                                        v: PROTOCOL_VERSION,
                                        epoch,
                                        seq: seq.fetch_add(1, Ordering::SeqCst) + 1,
                                        generation: Some(d.generation),
                                        deployment_id: Some(d.deployment_id.clone()),
                                        phase: ph,
                                        commit: Some(commit.clone()),
                                        time: now_ms(),
                                        detail: (ph == Phase::RolledBack)
                                            .then(|| "health check failed".to_owned()),
                                        log_tail: vec![],
                                    };
                                    client
                                        .publish(
                                            topic(&id, Channel::Status),
                                            QoS::AtLeastOnce,
                                            false,
                                            encode(&ev).unwrap(),
                                        )
                                        .await
                                        .unwrap();
                                }
                            }
                            Channel::Cmd => {
                                let c: Command = verify(&p.payload, &key, &id, &owner)
                                    .expect("command signature");
                                if matches!(c.kind, CommandKind::Setup { .. }) {
                                    let ev = StatusEvent {
                                        v: PROTOCOL_VERSION,
                                        epoch,
                                        seq: seq.fetch_add(1, Ordering::SeqCst) + 1,
                                        generation: None,
                                        deployment_id: None,
                                        phase: Phase::Configured,
                                        commit: None,
                                        time: now_ms(),
                                        detail: None,
                                        log_tail: vec![],
                                    };
                                    client
                                        .publish(
                                            topic(&id, Channel::Status),
                                            QoS::AtLeastOnce,
                                            false,
                                            encode(&ev).unwrap(),
                                        )
                                        .await
                                        .unwrap();
                                }
                                cmds.lock().unwrap().push(c);
                            }
                            Channel::Ack => {
                                let a: AddressedAck = verify(&p.payload, &key, &id, &owner)
                                    .expect("ack signature and address");
                                acks.lock().unwrap().push(a.ack());
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("device connect timed out")
            .unwrap();
        let mut dev = dev;
        dev.task = task;
        dev
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
        let ev = StatusEvent {
            v: PROTOCOL_VERSION,
            epoch: self.epoch,
            seq,
            generation: desired.map(|d| d.generation),
            deployment_id: desired.map(|d| d.deployment_id.clone()),
            phase,
            commit: commit.map(str::to_owned),
            time: now_ms(),
            detail: None,
            log_tail: vec![],
        };
        self.client
            .publish(
                topic(&self.id, Channel::Status),
                QoS::AtLeastOnce,
                false,
                encode(&ev).unwrap(),
            )
            .await
            .unwrap();
    }

    /// Waits until an ack of at least `seq` (this epoch) arrived.
    pub async fn wait_ack(&self, seq: u64) -> bool {
        for _ in 0..200 {
            if self
                .acks
                .lock()
                .unwrap()
                .iter()
                .any(|a| a.epoch == self.epoch && a.seq >= seq)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The next seq this device would use (and reserves it).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn last_desired(&self) -> Option<DesiredState> {
        self.desired.lock().unwrap().last().cloned()
    }

    /// Waits until a desired state arrived (10 s).
    pub async fn wait_desired(&self) -> DesiredState {
        for _ in 0..200 {
            if let Some(d) = self.last_desired() {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no desired state arrived at {}", self.id);
    }

    /// Waits until a desired state naming a commit arrived (10 s).
    pub async fn wait_desired_commit(&self) -> DesiredState {
        for _ in 0..200 {
            if let Some(d) = self.last_desired().filter(|d| d.commit.is_some()) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no desired state naming a commit arrived at {} (got {:?})",
            self.id,
            self.last_desired()
        );
    }

    pub fn last_ack(&self) -> Option<Ack> {
        self.acks.lock().unwrap().last().copied()
    }
}
