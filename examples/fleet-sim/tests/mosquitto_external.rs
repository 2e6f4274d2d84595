//! Mosquitto as the external broker: `hammer_service::start` with `broker_url` pointing at a
//! `mosquitto` started on a free loopback port with `examples/mosquitto/` (certificates and
//! CRL from the service's data dir). Runs a deployment to simulated devices through it and
//! shows that one device cannot read another device's commands.
//!
//! Skips (with a printed message) only when the `mosquitto` binary is not installed.

use hammer_fleet_sim::api::Api;
use hammer_fleet_sim::device::SimConfig;
use hammer_fleet_sim::fleet::{self, FleetStats};
use hammer_fleet_sim::{bench, mosquitto};
use hammer_protocol::topics::topic;
use hammer_protocol::Channel;
use rumqttc::{
    AsyncClient, Event, Incoming, MqttOptions, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_through_mosquitto_with_identity_acls() {
    if mosquitto::binary().is_none() {
        // CI installs it: there, a skip is a failure.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the mosquitto binary is not installed (CI=true: a skipped test fails CI)"
        );
        println!("SKIPPED: the mosquitto binary is not installed (apt-get install mosquitto)");
        return;
    }
    hammer_certs::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = hammer_service::ServeConfig::new(dir.path());
    cfg.http = "127.0.0.1:0".parse().unwrap();
    cfg.mqtt = "127.0.0.1:0".parse().unwrap();
    cfg.enroll = "127.0.0.1:0".parse().unwrap();
    cfg.public_host = Some("127.0.0.1".into());
    hammer_service::init::load_or_create(dir.path(), cfg.public_host.as_deref(), cfg.mqtt)
        .expect("data dir");
    let port = mosquitto::free_port().unwrap();
    let mq = mosquitto::start(dir.path(), port)
        .await
        .expect("mosquitto should start with examples/mosquitto/mosquitto.conf");
    cfg.broker_url = Some(mq.url());
    let svc = hammer_service::start(cfg).await.expect("service start");
    assert_eq!(svc.device_broker_url, mq.url());

    let admin = Api::new(&svc.http_url(), &svc.admin_token).unwrap();
    let n = 5;
    let (token, creds) = fleet::provision(&admin, "mq", n, 4).await.unwrap();
    for c in &creds {
        assert_eq!(c.broker_url, mq.url(), "bundles name the external broker");
    }
    let user = admin.with_token(&token);
    let stats = Arc::new(FleetStats::default());
    let sim = Arc::new(SimConfig {
        fetch: Duration::from_millis(20),
        start: Duration::from_millis(20),
        jitter: Duration::from_millis(10),
        ..SimConfig::default()
    });
    let devices = fleet::connect_all(
        creds.clone(),
        None,
        0.0,
        sim,
        stats.clone(),
        Duration::from_secs(60),
    )
    .await
    .expect("devices connect to mosquitto with their certificates");
    // The service connects with its own backoff; setup commands queue until presence.
    fleet::setup_all(&user, &creds, &stats, Duration::from_secs(90))
        .await
        .expect("setup through mosquitto");

    // A device outside the fleet (its own certificate) tries to read device 1's messages.
    let spy_bundle = admin
        .provision("simmq", "spy", ("role", "spy"))
        .await
        .unwrap();
    let c0 = hammer_fleet_sim::device::Credentials::from_bundle(&spy_bundle).unwrap();
    let tls = hammer_certs::tls::client_config(&c0.ca_pem, &c0.cert_pem, &c0.key_pem).unwrap();
    let (spy_host, spy_port) = ("127.0.0.1", port);
    // A foreign client id is replaced by the CN (use_username_as_clientid).
    let mut opts = MqttOptions::new("spy-client-id", spy_host, spy_port);
    opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    let (spy, mut spy_el) = AsyncClient::new(opts, 16);
    let victim = &creds[1];
    spy.subscribe(topic(&victim.device_id, Channel::Cmd), QoS::AtLeastOnce)
        .await
        .unwrap();
    spy.subscribe(topic(&victim.device_id, Channel::Desired), QoS::AtLeastOnce)
        .await
        .unwrap();
    let spied = Arc::new(std::sync::Mutex::new((0usize, Vec::<String>::new())));
    let spied2 = spied.clone();
    let spy_task = tokio::spawn(async move {
        let end = Instant::now() + Duration::from_secs(300);
        while Instant::now() < end {
            match tokio::time::timeout(Duration::from_secs(1), spy_el.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::SubAck(s)))) => {
                    // Mosquitto 2.0 may grant the subscription and filter at delivery
                    // (read ACL); either way nothing of the victim's may arrive.
                    let refused = s
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, SubscribeReasonCode::Failure))
                        .count();
                    println!("spy SUBACK: {refused} of {} refused", s.return_codes.len());
                    spied2.lock().unwrap().0 += s.return_codes.len();
                }
                Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                    spied2.lock().unwrap().1.push(p.topic.clone())
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(_) => {}
            }
        }
    });

    let r = bench::rollout(
        &user,
        &admin,
        "mq",
        n,
        None,
        &stats,
        Duration::from_secs(120),
    )
    .await
    .expect("deployment through mosquitto");
    assert_eq!(r.running, n, "every device runs the new release: {r:?}");
    assert_eq!(r.state, "succeeded", "{r:?}");
    // Another setup to the victim: a command it gets and the spy must not.
    user.setup(&victim.name).await.unwrap();
    fleet::wait_for(Duration::from_secs(60), "the victim's second setup", || {
        stats.configured.load(std::sync::atomic::Ordering::Relaxed) > n as u64
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    spy_task.abort();
    let _ = spy.try_disconnect();
    let (answered, seen) = spied.lock().unwrap().clone();
    assert!(
        seen.is_empty(),
        "a device read another device's messages through mosquitto: {seen:?}"
    );
    assert_eq!(
        answered, 2,
        "the spy should have been connected and answered for both subscriptions"
    );
    assert_eq!(
        stats
            .bad_signatures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        stats
            .foreign_messages
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(devices);
    svc.shutdown().await;
    drop(mq);
}
