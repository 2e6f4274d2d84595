//! Two replicas (`--replica a` and `--replica b`) on one throwaway PostgreSQL and one
//! Mosquitto, with simulated devices: deployments asked of the replica that does not drive
//! them run on the one that does, status events are stored once whichever replica got them,
//! the other replica's event stream sees them, and when the driving replica drains mid-rollout
//! the other takes the rollout lease over and finishes the deployment.
//!
//! Skips (with a printed message) only when mosquitto or PostgreSQL is not installed; under
//! `CI=true` a skip fails.

#[path = "../../../service/tests/integration/pg_server.rs"]
#[allow(dead_code)]
mod pg_server;

use hammer_fleet_sim::api::Api;
use hammer_fleet_sim::device::SimConfig;
use hammer_fleet_sim::fleet::{self, FleetStats};
use hammer_fleet_sim::mosquitto;
use hammer_protocol::api::DeploymentState;
use hammer_service::store::pg::PgConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn replica_config(
    dir: &std::path::Path,
    name: &str,
    db: &str,
    broker: &str,
) -> hammer_service::ServeConfig {
    let mut cfg = hammer_service::ServeConfig::new(dir);
    cfg.http = "127.0.0.1:0".parse().unwrap();
    cfg.mqtt = "127.0.0.1:0".parse().unwrap();
    cfg.enroll = "127.0.0.1:0".parse().unwrap();
    cfg.public_host = Some("127.0.0.1".into());
    cfg.broker_url = Some(broker.to_owned());
    let mut pg = PgConfig::new(db.to_owned());
    pg.pool = 4;
    cfg.database = Some(pg);
    cfg.replica = Some(name.to_owned());
    cfg.drain_grace = Duration::from_millis(500);
    cfg
}

/// Who holds the rollout lease, as PostgreSQL says.
fn lease_holder(pg: &pg_server::TestPg) -> String {
    pg.sql(
        "hammer",
        "SELECT split_part(holder, '@', 1) FROM leases WHERE name = 'rollout' AND expires_at > (extract(epoch from now()) * 1000)::bigint",
    )
}

async fn wait_holder(pg: &pg_server::TestPg, want: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if lease_holder(pg) == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "replica {want} did not take the rollout lease within {within:?} (holder: {:?})",
            lease_holder(pg)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the devices have every event acked, then checks that PostgreSQL holds exactly
/// as many events as they sent.
async fn stored_once(pg: &pg_server::TestPg, stats: &FleetStats) {
    use std::sync::atomic::Ordering::Relaxed;
    fleet::wait_for(Duration::from_secs(30), "every status event acked", || {
        stats.events_acked.load(Relaxed) >= stats.events_sent.load(Relaxed)
    })
    .await
    .unwrap();
    let stored: u64 = pg
        .sql("hammer", "SELECT count(*) FROM status_events")
        .parse()
        .unwrap();
    assert_eq!(
        stored,
        stats.events_sent.load(Relaxed),
        "stored events vs sent: {}",
        stats.line()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_the_work_and_one_takes_the_rollout_over_when_the_other_drains() {
    if mosquitto::binary().is_none() {
        pg_server::skip("the mosquitto binary is not installed (apt-get install mosquitto)");
        return;
    }
    let Some(pg) = pg_server::TestPg::start() else {
        return;
    };
    hammer_certs::tls::install_default_provider();
    let db = pg.create_db("hammer");
    let dir = tempfile::tempdir().unwrap();
    hammer_service::init::load_or_create(
        dir.path(),
        Some("127.0.0.1"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let port = mosquitto::free_port().unwrap();
    let acl = mosquitto::acl_with_users(&[
        ("hammer-service-a", "readwrite"),
        ("hammer-service-b", "readwrite"),
    ]);
    let mq = mosquitto::start_with(dir.path(), port, &acl, false)
        .await
        .expect("mosquitto starts");

    // The first replica alone (it creates the admin user), then the second.
    let a = hammer_service::start(replica_config(dir.path(), "a", &db, &mq.url()))
        .await
        .expect("replica a starts");
    wait_holder(&pg, "a", Duration::from_secs(10)).await;
    let b = hammer_service::start(replica_config(dir.path(), "b", &db, &mq.url()))
        .await
        .expect("replica b starts");
    assert_eq!(
        a.admin_token, b.admin_token,
        "one admin user, one token file"
    );

    // Everything is asked of b, which does not drive deployments.
    let admin_b = Api::new(&b.http_url(), &b.admin_token).unwrap();
    let admin_a = Api::new(&a.http_url(), &a.admin_token).unwrap();
    assert_eq!(
        admin_a.metric("hammer_rollout_lease_held").await.unwrap(),
        1
    );
    assert_eq!(
        admin_b.metric("hammer_rollout_lease_held").await.unwrap(),
        0
    );
    let n = 6;
    let (token, creds) = fleet::provision(&admin_b, "rep", n, 3).await.unwrap();
    let user_b = admin_b.with_token(&token);
    let user_a = Api::new(&a.http_url(), &token).unwrap();
    let stats = Arc::new(FleetStats::default());
    let sim = Arc::new(SimConfig {
        fetch: Duration::from_millis(300),
        start: Duration::from_millis(300),
        jitter: Duration::from_millis(100),
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
    .expect("devices connect to mosquitto");
    fleet::setup_all(&user_b, &creds, &stats, Duration::from_secs(90))
        .await
        .expect("setup through replica b");

    // b's event stream sees status events whichever replica stored them.
    let mut stream = reqwest::Client::new()
        .get(format!("{}/api/v1/events", b.http_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(stream.status().is_success());

    let id = user_b
        .deploy("fleet=rep", Some(2))
        .await
        .expect("deploy through b");
    let end = Instant::now() + Duration::from_secs(90);
    let mut streamed = String::new();
    let state = loop {
        let d = user_a.deployment(&id).await.unwrap();
        if d.state != DeploymentState::Running {
            break d.state;
        }
        assert!(Instant::now() < end, "deployment {id} still running: {d:?}");
        if let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_millis(100), stream.chunk()).await
        {
            streamed.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    assert_eq!(state, DeploymentState::Succeeded);
    while let Ok(Ok(Some(chunk))) =
        tokio::time::timeout(Duration::from_millis(500), stream.chunk()).await
    {
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        streamed.contains("\"running\""),
        "b's stream shows the devices' status events: {streamed:.2000}"
    );
    assert!(
        streamed.contains("\"deployment\""),
        "b's stream shows the progress a drove: {streamed:.2000}"
    );
    drop(stream);

    // Each event the devices sent stored exactly once (the table's key refuses a second copy;
    // a lost one would leave the count short).
    stored_once(&pg, &stats).await;

    // A second deployment; a drains in the middle of it; b takes the lease and finishes.
    let before = stats.finishes(false).len();
    let id2 = user_b
        .deploy("fleet=rep", Some(1))
        .await
        .expect("second deploy");
    fleet::wait_for(
        Duration::from_secs(30),
        "the first device of the second rollout",
        || stats.finishes(false).len() > before,
    )
    .await
    .unwrap();
    let t_drain = Instant::now();
    let stopping = tokio::spawn(a.shutdown());
    let took = wait_holder(&pg, "b", Duration::from_secs(10)).await;
    println!(
        "b took the rollout lease {:?} after a began draining",
        t_drain.elapsed().min(took)
    );
    let end = Instant::now() + Duration::from_secs(90);
    let state = loop {
        let d = user_b.deployment(&id2).await.unwrap();
        if d.state != DeploymentState::Running {
            break d;
        }
        assert!(
            Instant::now() < end,
            "deployment {id2} still running: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state.state, DeploymentState::Succeeded, "{state:?}");
    stopping.await.unwrap();
    assert_eq!(
        admin_b.metric("hammer_rollout_lease_held").await.unwrap(),
        1
    );
    assert!(
        admin_b
            .metric("hammer_cluster_messages_sent_total")
            .await
            .unwrap()
            > 0
    );

    // No device got two launches for one generation: every device finished each
    // deployment once (its last finish of each deployment, counted by generation).
    let mut per_gen = std::collections::BTreeMap::new();
    for f in stats.finishes(false) {
        *per_gen.entry((f.index, f.generation)).or_insert(0) += 1;
    }
    let twice: Vec<_> = per_gen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "launched twice: {twice:?}");
    stored_once(&pg, &stats).await;
    drop(devices);
    b.shutdown().await;
    drop(mq);
}
