//! Shared test harness for the agent tests: a real MQTT broker (rumqttd, in-process, plain
//! TCP on loopback), a cuttable TCP proxy in front of it, a "service" MQTT client that signs
//! what it sends with a real `SigningKeyPair`, a data dir, and the agent running on its own
//! current-thread runtime (as in production) with a recording backend.

#![allow(dead_code)]

use hammer_manager::agent::{self, AgentOptions};
use hammer_manager::backend::{Backend, BoxFuture};
use hammer_manager::config::{DataDir, Identity, CONFIG_FILE, SEALING_KEY_FILE};
use hammer_manager::link::Backoff;
use hammer_manager::outbox::Outbox;
use hammer_manager::runtime::{Input, LocalStatus, Step};
use hammer_manager::store::{open_db, Store};
use hammer_protocol::api::ManagerConfigFile;
use hammer_protocol::sealing::SealingKeyPair;
use hammer_protocol::signing::SigningKeyPair;
use hammer_protocol::topics::topic;
use hammer_protocol::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};

pub const DEVICE: &str = "dev1";
pub const OWNER: &str = "alice1";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts rumqttd on a loopback port (plain TCP) in its own thread; returns the address.
pub fn start_broker() -> SocketAddr {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut v4 = HashMap::new();
    v4.insert(
        "1".to_owned(),
        rumqttd::ServerSettings {
            name: "v4-1".into(),
            listen: addr,
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: MAX_PACKET,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        },
    );
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 10 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        let _ = broker.start();
    });
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return addr;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("rumqttd did not start");
}

/// A loopback TCP proxy that can cut every connection and refuse new ones.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    cut_tx: broadcast::Sender<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let (cut_tx, _) = broadcast::channel(4);
        let (o, c) = (open.clone(), cut_tx.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Proxy { addr, open, cut_tx }
    }

    /// Drops every open connection and refuses new ones until [`Proxy::reopen`].
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let _ = self.cut_tx.send(());
    }

    pub fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// What the service side saw from the device.
#[derive(Debug, Clone)]
pub enum Seen {
    Status(StatusEvent),
    Presence(Presence),
    Health(Health),
    Logs(LogBatch),
}

/// The "service": a plain MQTT client that watches the device topics and publishes signed
/// desired states, commands and acks.
pub struct Service {
    pub client: AsyncClient,
    pub key: SigningKeyPair,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

impl Service {
    pub async fn connect(broker: SocketAddr, key: SigningKeyPair) -> Service {
        let o = MqttOptions::new("svc", broker.ip().to_string(), broker.port());
        Service::connect_with(o, key).await
    }

    /// Connects with the given options (e.g. mTLS with a service certificate).
    pub async fn connect_with(mut o: MqttOptions, key: SigningKeyPair) -> Service {
        o.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, mut el) = AsyncClient::new(o, 64);
        let (tx, seen) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let c2 = client.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for ch in Channel::FROM_DEVICE {
                            c2.subscribe(ch.all_devices_filter(), QoS::AtLeastOnce)
                                .await
                                .unwrap();
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let t = Topic::parse(&p.topic).unwrap();
                        let s = match t.channel {
                            Channel::Status => Seen::Status(decode(&p.payload).unwrap()),
                            Channel::Presence => Seen::Presence(decode(&p.payload).unwrap()),
                            Channel::Health => Seen::Health(decode(&p.payload).unwrap()),
                            Channel::Logs => Seen::Logs(decode(&p.payload).unwrap()),
                            _ => continue,
                        };
                        if tx.send(s).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("service did not subscribe")
            .unwrap();
        Service { client, key, seen }
    }

    pub async fn publish(&self, channel: Channel, retain: bool, payload: Vec<u8>) {
        self.client
            .publish(topic(DEVICE, channel), QoS::AtLeastOnce, retain, payload)
            .await
            .unwrap();
    }

    pub async fn desired(&self, d: &DesiredState) {
        self.publish(Channel::Desired, true, self.key.sign_to_vec(d).unwrap())
            .await;
    }

    pub async fn command(&self, c: &Command) {
        self.publish(Channel::Cmd, false, self.key.sign_to_vec(c).unwrap())
            .await;
    }

    pub async fn ack(&self, epoch: u64, seq: u64) {
        let signed = self
            .key
            .sign_to_vec(&AddressedAck::new(DEVICE, OWNER, epoch, seq))
            .unwrap();
        self.publish(Channel::Ack, false, signed).await;
    }

    /// Waits for the next message matching `f`, skipping others.
    pub async fn wait_for<T>(&mut self, what: &str, mut f: impl FnMut(&Seen) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(s)) => {
                    if let Some(t) = f(&s) {
                        return t;
                    }
                }
                Ok(None) => panic!("service client stopped while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Waits until every seq in `seqs` has been seen on the status topic; returns the events
    /// by seq (the last copy of each).
    pub async fn wait_status(&mut self, seqs: &[u64]) -> BTreeMap<u64, StatusEvent> {
        let mut got = BTreeMap::new();
        while !seqs.iter().all(|s| got.contains_key(s)) {
            let ev = self
                .wait_for(
                    &format!("status seqs {seqs:?} (have {:?})", got.keys()),
                    |s| match s {
                        Seen::Status(e) => Some(e.clone()),
                        _ => None,
                    },
                )
                .await;
            got.insert(ev.seq, ev);
        }
        got
    }

    /// Waits for the next status event with this phase.
    pub async fn wait_phase(&mut self, phase: Phase) -> StatusEvent {
        self.wait_for(&format!("a {phase:?} event"), |s| match s {
            Seen::Status(e) if e.phase == phase => Some(e.clone()),
            _ => None,
        })
        .await
    }

    /// Everything that arrives within `d`.
    pub async fn drain(&mut self, d: Duration) -> Vec<Seen> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(s)) = tokio::time::timeout_at(deadline, self.seen.recv()).await {
            out.push(s);
        }
        out
    }
}

/// A backend that records what the agent asks for.
#[derive(Default)]
pub struct Recorder {
    pub inputs: Mutex<Vec<Input>>,
    pub logs: Mutex<Option<broadcast::Sender<String>>>,
}

impl Recorder {
    pub fn desired_generations(&self) -> Vec<u64> {
        self.inputs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|a| match a {
                Input::Desired { desired, .. } => Some(desired.generation),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.inputs.lock().unwrap().len()
    }

    /// Sends a live log line (only received while logs are on).
    pub fn log_line(&self, line: &str) {
        if let Some(tx) = self.logs.lock().unwrap().as_ref() {
            let _ = tx.send(line.to_owned());
        }
    }
}

impl Backend for Recorder {
    fn deliver(&self, input: Input) -> BoxFuture<'_> {
        Box::pin(async move {
            self.inputs.lock().unwrap().push(input);
        })
    }

    fn status(&self) -> LocalStatus {
        LocalStatus {
            generation: Some(1),
            deployment_id: Some("dep1".into()),
            commit: Some("abc".into()),
            release_generation: Some(1),
            previous_commit: None,
            step: Step::Idle,
            run_state: RunState::Running,
            app_running: true,
            pid: Some(42),
            restarts: 1,
            uptime_secs: 7,
            rss_kb: 1000,
            cpu_ms: 5,
            rolled_back: Vec::new(),
        }
    }

    fn subscribe_logs(&self) -> Option<broadcast::Receiver<String>> {
        let mut g = self.logs.lock().unwrap();
        let tx = g.get_or_insert_with(|| broadcast::channel(256).0);
        Some(tx.subscribe())
    }
}

/// A device data dir pointing at `broker` over plain TCP, with `service_key` as the trusted
/// service key. Returns the sealing key pair (its public half is what the service seals to).
pub fn make_data_dir(dir: &Path, broker: SocketAddr, service: &SigningKeyPair) -> SealingKeyPair {
    let cfg = ManagerConfigFile {
        device_id: DEVICE.into(),
        owner: OWNER.into(),
        broker_url: format!("mqtt://{broker}"),
        service_public_key: service.public().to_hex(),
        insecure_plain_mqtt_for_tests: true,
        git_ca_file: None,
    };
    std::fs::write(dir.join(CONFIG_FILE), toml::to_string(&cfg).unwrap()).unwrap();
    let sealing = SealingKeyPair::generate().unwrap();
    std::fs::write(
        dir.join(SEALING_KEY_FILE),
        hex::encode(sealing.private_bytes().as_ref()),
    )
    .unwrap();
    sealing
}

/// One running agent (on its own thread and current-thread runtime, like the binary).
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops the agent and waits for its thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

pub fn fast_options(data_dir: &Path) -> AgentOptions {
    let mut o = AgentOptions::new(data_dir.to_path_buf());
    o.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
    o.resend_after = Duration::from_millis(300);
    o.health_interval = Duration::from_secs(3600);
    o
}

/// Starts the agent on the data dir with `outbox` (whose db the test may share).
pub fn start_agent(
    data_dir: &Path,
    opts: AgentOptions,
    outbox: Outbox,
    backend: Arc<dyn Backend>,
) -> Running {
    let identity = Identity::load(&DataDir::new(data_dir), None).unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            agent::run(identity, opts, outbox, backend, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    Running {
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// Opens the data dir's store and outbox.
pub fn open_outbox(data_dir: &Path) -> Outbox {
    let db = open_db(data_dir).unwrap();
    Outbox::new(Store::open(&db).unwrap())
}

pub fn desired(generation: u64) -> DesiredState {
    DesiredState {
        v: PROTOCOL_VERSION,
        device_id: DEVICE.into(),
        owner: OWNER.into(),
        generation,
        deployment_id: format!("dep{generation}"),
        repo_url: "file:///nonexistent".into(),
        git_ref: "main".into(),
        commit: None,
        start: "./start.sh".into(),
        env: Default::default(),
        health_window_secs: 1,
        health_cmd: None,
        run_state: RunState::Running,
        issued_at: now_ms(),
        install: None,
        full_history: false,
    }
}

pub fn command(cmd_seq: u64, kind: CommandKind) -> Command {
    Command {
        v: PROTOCOL_VERSION,
        device_id: DEVICE.into(),
        owner: OWNER.into(),
        cmd_seq,
        issued_at: now_ms(),
        expires_at: now_ms() + 60_000,
        kind,
    }
}

pub struct TempDir(pub tempfile::TempDir);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(tempfile::tempdir().unwrap())
    }
    pub fn path(&self) -> PathBuf {
        self.0.path().to_path_buf()
    }
}

/// Polls `f` until it holds (10 s at most).
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
