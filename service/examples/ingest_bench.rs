//! Status ingestion benchmark: many simulated devices publish status events over mTLS to the
//! embedded broker; the service stores each exactly once (10% are sent twice), flushes, and
//! acks. Prints stored events per second, measured until every device has its final ack.
//! The broker's per-device rate limit is off (the devices send as fast as they can).
//!
//! `cargo run --release -p hammer-service --example ingest_bench -- [DEVICES] [EVENTS_PER_DEVICE]`

use hammer_protocol::api::{ManagerConfigFile, ProvisionResponse};
use hammer_protocol::signing::{verify, PublicKey};
use hammer_protocol::topics::topic;
use hammer_protocol::{
    encode, now_ms, AddressedAck, Channel, Phase, StatusEvent, MAX_PACKET, PROTOCOL_VERSION,
};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    hammer_certs::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(100);
    let per_device = args.get(1).copied().unwrap_or(200);

    let dir = tempfile::tempdir()?;
    let mut cfg = hammer_service::ServeConfig::new(dir.path());
    cfg.http = "127.0.0.1:0".parse()?;
    cfg.mqtt = "127.0.0.1:0".parse()?;
    cfg.enroll = "127.0.0.1:0".parse()?;
    cfg.public_host = Some("127.0.0.1".into());
    cfg.drain_grace = std::time::Duration::ZERO;
    // Each simulated device sends its events as fast as it can, far above the broker's
    // per-device rate limit (50 packets/s, burst 1,000), which would close it: this measures
    // ingestion, not that limit.
    cfg.device_rate_limit = None;
    let svc = hammer_service::start(cfg).await?;
    let http = reqwest::Client::new();
    let base = svc.http_url();
    http.post(format!("{base}/api/v1/users"))
        .bearer_auth(&svc.admin_token)
        .json(&serde_json::json!({"name": "bench"}))
        .send()
        .await?
        .error_for_status()?;

    let mut bundles = Vec::new();
    for i in 0..devices {
        let b: ProvisionResponse = http
            .post(format!("{base}/api/v1/provision"))
            .bearer_auth(&svc.admin_token)
            .json(&serde_json::json!({"owner": "bench", "name": format!("d{i}")}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        bundles.push(b);
    }
    println!("{devices} devices × {per_device} status events (+10% duplicates)");

    let port = svc.mqtt_addr.port();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for b in bundles {
        tasks.push(tokio::spawn(device(b, port, per_device)));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = devices * per_device;
    println!(
        "stored and acked {total} events in {secs:.2} s: {:.0} events/s",
        total as f64 / secs
    );
    svc.shutdown().await;
    Ok(())
}

async fn device(b: ProvisionResponse, port: u16, n: u64) -> anyhow::Result<()> {
    let cfg: ManagerConfigFile = toml::from_str(&b.config_toml)?;
    let tls = hammer_certs::tls::client_config(&b.ca_pem, &b.cert_pem, &b.key_pem)?;
    let mut opts = MqttOptions::new(cfg.device_id.clone(), "127.0.0.1", port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts.set_inflight(100);
    let (client, mut el) = AsyncClient::new(opts, 1024);
    let id = cfg.device_id.clone();
    let service_key = PublicKey::from_hex(&cfg.service_public_key)
        .map_err(|e| anyhow::anyhow!("bundle service key: {e}"))?;
    let epoch = now_ms();
    let publisher = client.clone();
    let mut started = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), el.poll()).await??;
        match ev {
            Event::Incoming(Incoming::ConnAck(_)) => {
                client
                    .subscribe(topic(&id, Channel::Ack), QoS::AtLeastOnce)
                    .await?;
            }
            Event::Incoming(Incoming::SubAck(_)) if !started => {
                started = true;
                let (p, id, acked) = (publisher.clone(), id.clone(), acked.clone());
                // Like the device manager's outbox: send everything, then resend whatever is
                // not acked while the ack stops moving (the broker may drop under overload).
                tokio::spawn(async move {
                    let mut from = 1;
                    loop {
                        for seq in from..=n {
                            let payload = encode(&status(epoch, seq)).unwrap();
                            let repeat = if seq % 10 == 0 && from == 1 { 2 } else { 1 };
                            for _ in 0..repeat {
                                if p.publish(
                                    topic(&id, Channel::Status),
                                    QoS::AtLeastOnce,
                                    false,
                                    payload.clone(),
                                )
                                .await
                                .is_err()
                                {
                                    return;
                                }
                            }
                        }
                        let mut last = acked.load(std::sync::atomic::Ordering::SeqCst);
                        loop {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            let now = acked.load(std::sync::atomic::Ordering::SeqCst);
                            if now >= n {
                                return;
                            }
                            if now == last {
                                break;
                            }
                            last = now;
                        }
                        from = last + 1;
                    }
                });
            }
            Event::Incoming(Incoming::Publish(p)) => {
                let ack = verify::<AddressedAck>(&p.payload, &service_key, &id, &cfg.owner)
                    .map_err(|e| anyhow::anyhow!("the service's ack does not verify: {e}"))?
                    .ack();
                if ack.epoch == epoch {
                    acked.fetch_max(ack.seq, std::sync::atomic::Ordering::SeqCst);
                }
                if ack.epoch == epoch && ack.seq >= n {
                    let _ = client.disconnect().await;
                    return Ok(());
                }
            }
            _ => {}
        }
        if Instant::now() > deadline {
            anyhow::bail!("device {id} never got its final ack");
        }
    }
}

fn status(epoch: u64, seq: u64) -> StatusEvent {
    StatusEvent {
        v: PROTOCOL_VERSION,
        epoch,
        seq,
        generation: Some(1),
        deployment_id: None,
        phase: Phase::Running,
        commit: None,
        time: now_ms(),
        detail: None,
        log_tail: vec![],
        commit_subject: None,
    }
}
