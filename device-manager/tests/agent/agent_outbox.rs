//! Outbox and resync against a real broker (rumqttd on loopback): events survive a lost
//! connection and a manager restart, acks trim the outbox, an ack that is behind triggers a
//! re-send, presence carries the resync request.

use crate::agent_support::*;
use hammer_manager::runtime::Report;
use hammer_manager::store::Counter;
use hammer_protocol::signing::SigningKeyPair;
use hammer_protocol::*;
use std::sync::Arc;
use std::time::Duration;

/// The service's ack as it sends it: signed, addressed to this device and its owner.
async fn signed_ack(svc: &Service, epoch: u64, seq: u64) {
    let wire = svc
        .key
        .sign_to_vec(&AddressedAck::new(DEVICE, OWNER, epoch, seq))
        .unwrap();
    svc.publish(Channel::Ack, false, wire).await;
}

/// The service's client on `broker`, with a new signing key, and a device data dir in `dir`
/// whose manager connects to `device_addr` (the broker, or a proxy in front of it) and trusts
/// that key.
async fn service_and_data_dir(
    broker: std::net::SocketAddr,
    device_addr: std::net::SocketAddr,
    dir: &TempDir,
) -> Service {
    let svc = Service::connect(broker, SigningKeyPair::generate().unwrap()).await;
    make_data_dir(&dir.path(), device_addr, &svc.key);
    svc
}

fn ev(n: u64) -> Report {
    Report {
        generation: Some(1),
        deployment_id: Some("dep1".into()),
        phase: Phase::Fetching,
        commit: None,
        detail: Some(format!("event {n}")),
        log_tail: vec![],
        commit_subject: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_survives_disconnect_and_restart_and_acks_trim_it() {
    let broker = start_broker();
    let proxy = Proxy::start(broker).await;
    let dir = TempDir::new();
    let mut svc = service_and_data_dir(broker, proxy.addr, &dir).await;

    let outbox = open_outbox(&dir.path());
    let epoch = outbox.store().epoch();
    let backend = Arc::new(Recorder::default());
    let agent = start_agent(
        &dir.path(),
        fast_options(&dir.path()),
        outbox.clone(),
        backend.clone(),
    );

    // Presence online: the resync request, with the epoch and nothing acked yet.
    let p = svc
        .wait_for("presence online", |s| match s {
            Seen::Presence(p) if p.online => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!((p.epoch, p.acked_seq, p.generation), (epoch, 0, None));

    // Events appended (as the runtime's report sink does) are published in order.
    for n in 1..=3 {
        outbox.append(ev(n)).unwrap();
    }
    let got = svc.wait_status(&[1, 2, 3]).await;
    assert!(got.values().all(|e| e.epoch == epoch));
    assert_eq!(got[&2].detail.as_deref(), Some("event 2"));

    // Lose the connection; events made meanwhile are stored, then everything unacked is
    // re-sent after the reconnect.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    outbox.append(ev(4)).unwrap();
    outbox.append(ev(5)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.reopen();
    svc.wait_for("presence online again", |s| match s {
        Seen::Presence(p) if p.online => Some(()),
        _ => None,
    })
    .await;
    let got = svc.wait_status(&[1, 2, 3, 4, 5]).await;
    assert_eq!(got.len(), 5, "nothing lost");

    // The service acks 3: the outbox keeps only 4 and 5, durably.
    signed_ack(&svc, epoch, 3).await;
    wait_until("outbox trimmed to 2", || outbox.len() == 2).await;
    assert_eq!(outbox.store().get(Counter::AckedSeq), 3);
    // An ack of another epoch (a wiped device's old life) changes nothing.
    signed_ack(&svc, epoch.wrapping_add(1), 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(outbox.len(), 2);

    // Restart the manager: a new event and the unacked ones go out, numbering continues.
    agent.stop();
    let p = svc
        .wait_for("presence offline", |s| match s {
            Seen::Presence(p) if !p.online => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(p.epoch, epoch);
    drop(outbox);
    let outbox = open_outbox(&dir.path());
    assert_eq!(outbox.store().epoch(), epoch, "epoch survives a restart");
    assert_eq!(outbox.append(ev(6)).unwrap().seq, 6);
    let _svc_drain = svc.drain(Duration::from_millis(100)).await;
    let agent = start_agent(
        &dir.path(),
        fast_options(&dir.path()),
        outbox.clone(),
        backend.clone(),
    );
    let p = svc
        .wait_for("presence online after restart", |s| match s {
            Seen::Presence(p) if p.online => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        p.acked_seq, 3,
        "presence tells the service what it already has"
    );
    let got = svc.wait_status(&[4, 5, 6]).await;
    assert!(
        !got.contains_key(&1) && !got.contains_key(&3),
        "acked events are not re-sent"
    );

    signed_ack(&svc, epoch, 6).await;
    wait_until("outbox empty", || outbox.is_empty()).await;
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_behind_the_outbox_triggers_a_resend() {
    let broker = start_broker();
    let dir = TempDir::new();
    let mut svc = service_and_data_dir(broker, broker, &dir).await;
    let outbox = open_outbox(&dir.path());
    let epoch = outbox.store().epoch();
    let agent = start_agent(
        &dir.path(),
        fast_options(&dir.path()),
        outbox.clone(),
        Arc::new(Recorder::default()),
    );
    svc.wait_for("presence", |s| {
        matches!(s, Seen::Presence(p) if p.online).then_some(())
    })
    .await;
    for n in 1..=4 {
        outbox.append(ev(n)).unwrap();
    }
    svc.wait_status(&[1, 2, 3, 4]).await;

    // A prompt ack (the normal flow) re-sends nothing.
    signed_ack(&svc, epoch, 1).await;
    let seen = svc.drain(Duration::from_millis(150)).await;
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::Status(_))),
        "no re-send on a fresh ack: {seen:?}"
    );

    // The service "restarted" and lost 3 and 4: its republished ack (2) is behind events
    // sent long ago, so the device re-sends the rest.
    tokio::time::sleep(Duration::from_millis(400)).await;
    signed_ack(&svc, epoch, 2).await;
    let got = svc.wait_status(&[3, 4]).await;
    assert_eq!(got.len(), 2);
    wait_until("trimmed to 2", || outbox.len() == 2).await;
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_only_what_the_answering_ack_does_not_cover_is_resent() {
    let broker = start_broker();
    let proxy = Proxy::start(broker).await;
    let dir = TempDir::new();
    let mut svc = service_and_data_dir(broker, proxy.addr, &dir).await;
    let outbox = open_outbox(&dir.path());
    let epoch = outbox.store().epoch();
    let mut opts = fast_options(&dir.path());
    // Long enough that a resend before the ack cannot be the fallback's.
    opts.resend_after = Duration::from_secs(5);
    let agent = start_agent(
        &dir.path(),
        opts,
        outbox.clone(),
        Arc::new(Recorder::default()),
    );
    svc.wait_for("presence", |s| {
        matches!(s, Seen::Presence(p) if p.online).then_some(())
    })
    .await;
    for n in 1..=4 {
        outbox.append(ev(n)).unwrap();
    }
    svc.wait_status(&[1, 2, 3, 4]).await;

    // The connection drops before any ack arrives (the service stored 1..=3 meanwhile).
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.reopen();
    let p = svc
        .wait_for("presence online again", |s| match s {
            Seen::Presence(p) if p.online => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (p.acked_seq, p.last_seq),
        (0, Some(4)),
        "the presence says what waits"
    );
    let seen = svc.drain(Duration::from_millis(500)).await;
    assert!(
        !seen.iter().any(|s| matches!(s, Seen::Status(_))),
        "nothing is re-sent before the service's ack: {seen:?}"
    );
    // An event made now waits behind the older ones.
    outbox.append(ev(5)).unwrap();

    // The service answers the presence with its ack: only 4 and 5 go out.
    signed_ack(&svc, epoch, 3).await;
    let got = svc.wait_status(&[4, 5]).await;
    assert_eq!(got.len(), 2);
    let seen = svc.drain(Duration::from_millis(300)).await;
    assert!(
        !seen
            .iter()
            .any(|s| matches!(s, Seen::Status(e) if e.seq <= 3)),
        "what the ack covers is not re-sent: {seen:?}"
    );
    wait_until("trimmed to 2", || outbox.len() == 2).await;

    // In sync: a reconnect with nothing waiting announces last_seq == acked_seq.
    signed_ack(&svc, epoch, 5).await;
    wait_until("outbox empty", || outbox.is_empty()).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.reopen();
    let p = svc
        .wait_for("presence online in sync", |s| match s {
            Seen::Presence(p) if p.online => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!((p.acked_seq, p.last_seq), (5, Some(5)));
    agent.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_and_live_logs() {
    let broker = start_broker();
    let dir = TempDir::new();
    let mut svc = service_and_data_dir(broker, broker, &dir).await;
    let mut opts = fast_options(&dir.path());
    opts.health_interval = Duration::from_millis(200);
    let backend = Arc::new(Recorder::default());
    let agent = start_agent(&dir.path(), opts, open_outbox(&dir.path()), backend.clone());
    let h = svc
        .wait_for("health", |s| match s {
            Seen::Health(h) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!(h.pid, Some(42));
    assert_eq!(h.manager_version, env!("CARGO_PKG_VERSION"));

    svc.command(&command(1, CommandKind::Logs { on: true }))
        .await;
    wait_until("logs on delivered", || backend.count() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    backend.log_line("line one");
    backend.log_line("line two");
    let lines = svc
        .wait_for("a log batch", |s| match s {
            Seen::Logs(b) => Some(b.lines.clone()),
            _ => None,
        })
        .await;
    assert_eq!(lines, vec!["line one".to_owned(), "line two".to_owned()]);

    svc.command(&command(2, CommandKind::Logs { on: false }))
        .await;
    wait_until("logs off delivered", || backend.count() >= 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    backend.log_line("not streamed");
    let seen = svc.drain(Duration::from_millis(600)).await;
    assert!(!seen.iter().any(|s| matches!(s, Seen::Logs(_))), "{seen:?}");
    agent.stop();
}
