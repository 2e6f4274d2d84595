//! What the service sends is verified before anything acts on it, against a real broker:
//! replayed or badly signed desired states and stale or expired commands are refused with a
//! `refused` event and change nothing; acks that are forged, tampered, unsigned or addressed
//! to another device are refused and never trim the outbox; setup stores the sealed credentials at 0600 and the
//! secret never shows up in logs or events.

use crate::agent_support::*;
use hammer_manager::runtime::{Input, Report};
use hammer_manager::store::Counter;
use hammer_protocol::sealing::seal_credentials;
use hammer_protocol::signing::{Signed, SigningKeyPair};
use hammer_protocol::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Every log line of this test binary (all levels), to check no secret is ever logged.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b2 = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Capture(b2.clone()))
            .init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Setup {
    svc: Service,
    backend: Arc<Recorder>,
    outbox: hammer_manager::outbox::Outbox,
    sealing_public: [u8; 32],
    dir: TempDir,
    _agent: Running,
}

async fn setup() -> Setup {
    let _ = captured_logs();
    let broker = start_broker();
    let key = SigningKeyPair::generate().unwrap();
    let mut svc = Service::connect(
        broker,
        SigningKeyPair::from_seed(key.to_seed().as_ref()).unwrap(),
    )
    .await;
    let dir = TempDir::new();
    let sealing = make_data_dir(&dir.path(), broker, &key);
    let outbox = open_outbox(&dir.path());
    let backend = Arc::new(Recorder::default());
    let agent = start_agent(
        &dir.path(),
        fast_options(&dir.path()),
        outbox.clone(),
        backend.clone(),
    );
    svc.wait_for("presence", |s| {
        matches!(s, Seen::Presence(p) if p.online).then_some(())
    })
    .await;
    Setup {
        svc,
        backend,
        outbox,
        sealing_public: sealing.public_bytes(),
        dir,
        _agent: agent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_or_forged_desired_states_are_refused_and_change_nothing() {
    let mut s = setup().await;

    // A good one is persisted, then handed on.
    s.svc.desired(&desired(5)).await;
    wait_until("generation 5 delivered", || {
        s.backend.desired_generations() == [5]
    })
    .await;
    assert_eq!(s.outbox.store().get(Counter::Generation), 5);

    // The same generation again (a republish) is passed through to re-confirm.
    s.svc.desired(&desired(5)).await;
    wait_until("generation 5 re-confirmed", || {
        s.backend.desired_generations() == [5, 5]
    })
    .await;

    // An older generation (replay): refused, nothing changes.
    s.svc.desired(&desired(3)).await;
    let ev = s.svc.wait_phase(Phase::Refused).await;
    assert_eq!(ev.generation, Some(3));
    assert!(ev.detail.as_deref().unwrap().contains("older"), "{ev:?}");

    // Signed by another key.
    let forger = SigningKeyPair::generate().unwrap();
    s.svc
        .publish(
            Channel::Desired,
            true,
            forger.sign_to_vec(&desired(9)).unwrap(),
        )
        .await;
    let ev = s.svc.wait_phase(Phase::Refused).await;
    assert!(
        ev.detail.as_deref().unwrap().contains("signed by key"),
        "{ev:?}"
    );

    // The right key id but a tampered body.
    let mut t: Signed = s.svc.key.sign(&desired(10)).unwrap();
    let n = t.body.len();
    t.body[n - 1] ^= 1;
    s.svc
        .publish(Channel::Desired, true, encode(&t).unwrap())
        .await;
    let ev = s.svc.wait_phase(Phase::Refused).await;
    assert!(
        ev.detail.as_deref().unwrap().contains("signature"),
        "{ev:?}"
    );

    // Addressed to another device (or owner).
    let mut other = desired(11);
    other.owner = "mallory".into();
    s.svc.desired(&other).await;
    let ev = s.svc.wait_phase(Phase::Refused).await;
    assert!(
        ev.detail.as_deref().unwrap().contains("not to this device"),
        "{ev:?}"
    );

    // A protocol version this build does not speak.
    let mut env = s.svc.key.sign(&desired(12)).unwrap();
    env.v = 2;
    s.svc
        .publish(Channel::Desired, true, serde_cbor::to_vec(&env).unwrap())
        .await;
    let ev = s.svc.wait_phase(Phase::Refused).await;
    assert!(ev.detail.as_deref().unwrap().contains("version"), "{ev:?}");

    // An empty retained payload (the service cleared it) is ignored silently.
    s.svc.publish(Channel::Desired, true, Vec::new()).await;
    let seen = s.svc.drain(Duration::from_millis(300)).await;
    assert!(
        !seen.iter().any(|x| matches!(x, Seen::Status(_))),
        "{seen:?}"
    );

    assert_eq!(
        s.backend.desired_generations(),
        [5, 5],
        "nothing else acted on"
    );
    assert_eq!(s.outbox.store().get(Counter::Generation), 5);

    // A newer one moves it again.
    s.svc.desired(&desired(6)).await;
    wait_until("generation 6 delivered", || {
        s.backend.desired_generations() == [5, 5, 6]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_expired_and_unknown_commands_are_refused() {
    let mut s = setup().await;
    s.svc.command(&command(4, CommandKind::Restart)).await;
    wait_until("restart delivered", || s.backend.count() == 1).await;
    assert!(matches!(
        s.backend.inputs.lock().unwrap()[0],
        Input::Restart
    ));
    assert_eq!(s.outbox.store().get(Counter::CmdSeq), 4);

    // Replay of the same cmd_seq, and an older one.
    for seq in [4, 2] {
        s.svc.command(&command(seq, CommandKind::Restart)).await;
        let ev = s.svc.wait_phase(Phase::Refused).await;
        assert!(ev.detail.as_deref().unwrap().contains("cmd_seq"), "{ev:?}");
    }
    // Expired.
    let mut c = command(7, CommandKind::Restart);
    c.expires_at = now_ms() - 5_000;
    s.svc.command(&c).await;
    let ev = s.svc.wait_phase(Phase::Refused).await;
    assert!(ev.detail.as_deref().unwrap().contains("expired"), "{ev:?}");
    // Badly signed.
    let forger = SigningKeyPair::generate().unwrap();
    s.svc
        .publish(
            Channel::Cmd,
            false,
            forger
                .sign_to_vec(&command(8, CommandKind::Restart))
                .unwrap(),
        )
        .await;
    s.svc.wait_phase(Phase::Refused).await;

    assert_eq!(s.backend.count(), 1, "nothing else acted on");
    assert_eq!(
        s.outbox.store().get(Counter::CmdSeq),
        4,
        "cmd_seq unchanged"
    );

    // A command kind from a newer service: accepted in order, refused as unknown.
    s.svc.command(&command(9, CommandKind::Unknown)).await;
    let ev = s.svc.wait_phase(Phase::Refused).await;
    assert!(
        ev.detail.as_deref().unwrap().contains("unknown command"),
        "{ev:?}"
    );
    assert_eq!(s.backend.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_stores_credentials_0600_and_never_logs_them() {
    let mut s = setup().await;
    const SECRET: &str = "ghp_TOPSECRET_token_1234567890";
    let creds = GitCredentials::Https {
        username: "deploy".into(),
        token: SECRET.into(),
    };
    let sealed = seal_credentials(&s.sealing_public, DEVICE, &creds).unwrap();
    s.svc
        .command(&command(
            1,
            CommandKind::Setup {
                credentials: Some(sealed.clone()),
            },
        ))
        .await;
    let ev = s.svc.wait_phase(Phase::Configured).await;
    assert!(!format!("{ev:?}").contains(SECRET));

    let path = hammer_manager::credentials::path(&s.dir.path());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        hammer_manager::credentials::load(&s.dir.path()).unwrap(),
        creds
    );

    // The next desired state carries them to the runtime.
    s.svc.desired(&desired(1)).await;
    wait_until("desired delivered", || s.backend.count() == 1).await;
    match &s.backend.inputs.lock().unwrap()[0] {
        Input::Desired { credentials, .. } => assert_eq!(credentials.as_ref(), Some(&creds)),
        other => panic!("{other:?}"),
    }

    // Sealed for another device: refused, the stored credentials stay.
    let wrong = seal_credentials(&s.sealing_public, "otherdev", &creds).unwrap();
    s.svc
        .command(&command(
            2,
            CommandKind::Setup {
                credentials: Some(wrong),
            },
        ))
        .await;
    let ev = s.svc.wait_phase(Phase::Refused).await;
    assert!(
        ev.detail.as_deref().unwrap().contains("setup refused"),
        "{ev:?}"
    );
    assert!(path.exists());

    // Setup without credentials clears them.
    s.svc
        .command(&command(3, CommandKind::Setup { credentials: None }))
        .await;
    s.svc.wait_phase(Phase::Configured).await;
    assert!(!path.exists());

    // The secret is in no log line and no stored event.
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(logs.contains("setup stored"), "logs were captured");
    assert!(!logs.contains(SECRET), "secret leaked into logs");
    for e in s.outbox.unacked().unwrap() {
        assert!(!format!("{e:?}").contains(SECRET));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_misaddressed_acks_are_refused_and_never_trim_the_outbox() {
    let mut s = setup().await;
    let epoch = s.outbox.store().epoch();
    for n in 1..=3 {
        s.outbox
            .append(Report {
                generation: None,
                deployment_id: None,
                phase: Phase::Restarted,
                commit: None,
                detail: Some(format!("event {n}")),
                log_tail: vec![],
                commit_subject: None,
            })
            .unwrap();
    }
    s.svc.wait_status(&[1, 2, 3]).await;
    assert_eq!(s.outbox.len(), 3);

    // Signed by another key.
    let forger = SigningKeyPair::generate().unwrap();
    let forged = forger
        .sign_to_vec(&AddressedAck::new(DEVICE, OWNER, epoch, 3))
        .unwrap();
    s.svc.publish(Channel::Ack, false, forged).await;
    // The service's key, but for another device, and for another owner.
    for (dev, owner) in [("dev2", OWNER), (DEVICE, "mallory1")] {
        let wire = s
            .svc
            .key
            .sign_to_vec(&AddressedAck::new(dev, owner, epoch, 3))
            .unwrap();
        s.svc.publish(Channel::Ack, false, wire).await;
    }
    // The right key id over a tampered body (seq 1 → another value).
    let mut t: Signed = s
        .svc
        .key
        .sign(&AddressedAck::new(DEVICE, OWNER, epoch, 3))
        .unwrap();
    let n = t.body.len();
    t.body[n - 1] ^= 1;
    s.svc
        .publish(Channel::Ack, false, encode(&t).unwrap())
        .await;
    // The old unsigned form.
    let plain = encode(&Ack {
        v: PROTOCOL_VERSION,
        epoch,
        seq: 3,
    })
    .unwrap();
    s.svc.publish(Channel::Ack, false, plain).await;

    // Then a good ack of 1 only: acks are handled in order, so once it trimmed one event,
    // every refused one before it has been handled, and none trimmed anything.
    let good = s
        .svc
        .key
        .sign_to_vec(&AddressedAck::new(DEVICE, OWNER, epoch, 1))
        .unwrap();
    s.svc.publish(Channel::Ack, false, good).await;
    wait_until("the good ack trimmed event 1", || s.outbox.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.outbox.len(), 2, "a refused ack trimmed the outbox");
    assert_eq!(s.outbox.store().get(Counter::AckedSeq), 1);
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(logs.contains("refused an ack"), "refusals are logged");
}
