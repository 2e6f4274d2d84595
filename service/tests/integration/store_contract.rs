//! The `Store` contract, one suite run on every back end: sled (the embedded default) and
//! PostgreSQL (`--database`, on a throwaway cluster: `pg_server`). Each case gets a fresh,
//! empty store from the back end's opener, with the retention it asks for.
//!
//! What only one back end can show stays with it: sled's index rebuild for records of older
//! versions is a unit test in `store/sled.rs`; two processes on one database, migrations,
//! reconnecting and the URL's secrecy are the PostgreSQL tests at the end.

use crate::pg_server::TestPg;
use crate::store_contract_webhooks as wh;
use hammer_protocol::api::{AppliesTo, DeploymentState, DeviceState, Strategy};
use hammer_protocol::{Phase, StatusEvent, PROTOCOL_VERSION};
use hammer_service::domain::devices::new_device;
use hammer_service::store::pg::{PgConfig, PgStore};
use hammer_service::store::sled::SledStore;
use hammer_service::store::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Opens a fresh, empty store keeping history within the given bounds.
type Open<'a> = &'a (dyn Fn(Retention) -> Arc<dyn Store> + Sync);

fn fresh(open: Open) -> Arc<dyn Store> {
    open(Retention::BUILT_IN)
}

/// Waits for `Store::flush` (an async call) from a plain test thread.
fn flush(s: &dyn Store) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(s.flush())
        .unwrap();
}

fn status(dev: &str, epoch: u64, seq: u64) -> StoredStatus {
    StoredStatus {
        device_id: dev.into(),
        received_at: 1,
        deployer: None,
        event: StatusEvent {
            commit_subject: None,
            v: PROTOCOL_VERSION,
            epoch,
            seq,
            generation: None,
            deployment_id: None,
            phase: Phase::Running,
            commit: None,
            time: 1,
            detail: None,
            log_tail: vec![],
        },
    }
}

fn status_at(dev: &str, seq: u64, at: u64) -> StoredStatus {
    StoredStatus {
        received_at: at,
        ..status(dev, 3, seq)
    }
}

fn seqs(s: &dyn Store, dev: &str) -> Vec<u64> {
    s.statuses_of(dev)
        .unwrap()
        .iter()
        .map(|x| x.event.seq)
        .collect()
}

fn deployment(id: &str, owner: &str, created_at: u64) -> DeploymentRecord {
    DeploymentRecord {
        phasing: None,
        id: id.into(),
        owner: owner.into(),
        deployer: owner.into(),
        created_at,
        finished_at: None,
        git_ref: None,
        commit: None,
        strategy: Strategy::default(),
        state: DeploymentState::Running,
        reason: None,
        paused: false,
        targets: vec![],
    }
}

fn user(id: &str, name: &str) -> UserRecord {
    UserRecord {
        id: id.into(),
        name: name.into(),
        admin: false,
        created_at: 0,
        bad_commits: Vec::new(),
    }
}

fn status_is_stored_once_and_the_ack_is_the_highest_contiguous_seq(open: Open) {
    let s = fresh(open);
    assert_eq!(s.ack_of("d").unwrap(), None);
    let i = s.insert_status(&status("d", 7, 2)).unwrap();
    assert_eq!((i.new, i.contiguous), (true, 0));
    let i = s.insert_status(&status("d", 7, 1)).unwrap();
    assert_eq!((i.new, i.contiguous), (true, 2));
    let i = s.insert_status(&status("d", 7, 1)).unwrap();
    assert_eq!((i.new, i.contiguous), (false, 2));
    let i = s.insert_status(&status("d", 7, 2)).unwrap();
    assert_eq!((i.new, i.contiguous), (false, 2));
    assert_eq!(s.ack_of("d").unwrap(), Some((7, 2)));
    // A gap holds the ack back until it is filled.
    s.insert_status(&status("d", 7, 4)).unwrap();
    assert_eq!(s.ack_of("d").unwrap(), Some((7, 2)));
    let i = s.insert_status(&status("d", 7, 3)).unwrap();
    assert_eq!((i.new, i.contiguous), (true, 4));
    // Another device with a name prefix of "d" is separate.
    s.insert_status(&status("dd", 1, 1)).unwrap();
    assert_eq!(s.statuses_of("d").unwrap().len(), 4);
    // A new epoch (wiped device) starts over.
    let i = s.insert_status(&status("d", 9, 1)).unwrap();
    assert_eq!((i.new, i.contiguous), (true, 1));
    flush(s.as_ref());
    assert_eq!(s.ack_of("d").unwrap(), Some((9, 1)));
}

fn events_come_in_epoch_and_seq_order_over_the_whole_u64_range(open: Open) {
    let s = fresh(open);
    let big = u64::MAX - 1;
    s.insert_status(&status("d", big, 2)).unwrap();
    s.insert_status(&status("d", 5, u64::MAX)).unwrap();
    s.insert_status(&status("d", big, 1)).unwrap();
    s.insert_status(&status("d", 5, 1)).unwrap();
    let got: Vec<(u64, u64)> = s
        .statuses_of("d")
        .unwrap()
        .iter()
        .map(|x| (x.event.epoch, x.event.seq))
        .collect();
    assert_eq!(got, [(5, 1), (5, u64::MAX), (big, 1), (big, 2)]);
    // The current epoch is the one of the last new event.
    assert_eq!(s.ack_of("d").unwrap(), Some((5, 1)));
    let i = s.insert_status(&status("d", big, 3)).unwrap();
    assert_eq!((i.new, i.contiguous), (true, 3));
    assert_eq!(s.ack_of("d").unwrap(), Some((big, 3)));
}

fn audit(owner: &str, time: u64, target: &str) -> AuditRecord {
    AuditRecord {
        time,
        owner: owner.into(),
        actor: "alice".into(),
        action: hammer_protocol::api::AuditAction::DeploymentCreated,
        target: Some(target.into()),
        peer: Some("10.0.0.1".into()),
        result: "201".into(),
        detail: None,
    }
}

fn audit_targets(p: &Page<AuditRecord, AuditCursor>) -> Vec<String> {
    p.items
        .iter()
        .map(|r| r.target.clone().unwrap_or_default())
        .collect()
}

fn audit_pages_are_per_user_and_newest_first(open: Open) {
    let s = fresh(open);
    for i in 1..=5 {
        s.append_audit(&audit("u1", 1000 + i, &format!("t{i}")))
            .unwrap();
        s.append_audit(&audit("u2", 1000 + i, &format!("o{i}")))
            .unwrap();
    }
    let mut long = audit("u1", 2000, "t6");
    long.detail = Some("x".repeat(10_000));
    s.append_audit(&long).unwrap();
    let p = s.audit_page("u1", None, 4).unwrap();
    assert_eq!(audit_targets(&p), ["t6", "t5", "t4", "t3"]);
    let d = p.items[0].detail.as_deref().unwrap();
    assert!(
        d.len() <= MAX_AUDIT_TEXT && d.ends_with(CUT_MARKER),
        "{}",
        d.len()
    );
    assert_eq!(p.items[1], audit("u1", 1005, "t5"));
    let p2 = s.audit_page("u1", p.next, 4).unwrap();
    assert_eq!(audit_targets(&p2), ["t2", "t1"]);
    assert_eq!(p2.next, None);
    assert_eq!(audit_targets(&s.audit_page("u2", None, 1).unwrap()), ["o5"]);
    assert!(s.audit_page("nobody", None, 10).unwrap().items.is_empty());
}

fn audit_keeps_at_most_the_configured_count_and_age_per_user(open: Open) {
    let s = open(Retention {
        max_audit_per_user: 3,
        max_age: Duration::from_secs(10),
        ..Retention::BUILT_IN
    });
    for i in 1..=6 {
        s.append_audit(&audit("u1", 1000 + i, &format!("t{i}")))
            .unwrap();
    }
    s.append_audit(&audit("u2", 1000, "o1")).unwrap();
    let p = s.audit_page("u1", None, 100).unwrap();
    assert_eq!(audit_targets(&p), ["t6", "t5", "t4"]);
    // 20 s later every earlier record is older than 10 s; the other user's stay.
    s.append_audit(&audit("u1", 21_000, "t7")).unwrap();
    let p = s.audit_page("u1", None, 100).unwrap();
    assert_eq!(audit_targets(&p), ["t7"]);
    assert_eq!(s.audit_page("u2", None, 100).unwrap().items.len(), 1);
}

fn history_keeps_at_most_the_configured_count_and_the_oldest_go(open: Open) {
    let s = open(Retention {
        max_events_per_device: 5,
        ..Retention::BUILT_IN
    });
    assert_eq!(s.retention().max_events_per_device, 5);
    for seq in 1..=12 {
        s.insert_status(&status_at("d", seq, 1000 + seq)).unwrap();
    }
    s.insert_status(&status_at("other", 1, 1)).unwrap();
    assert_eq!(seqs(s.as_ref(), "d"), vec![8, 9, 10, 11, 12]);
    assert_eq!(s.statuses_of("other").unwrap().len(), 1);
    assert_eq!(s.ack_of("d").unwrap(), Some((3, 12)));
    // A resend of a pruned event is a duplicate, not a new event.
    let i = s.insert_status(&status_at("d", 2, 2000)).unwrap();
    assert_eq!((i.new, i.contiguous), (false, 12));
    assert_eq!(s.statuses_of("d").unwrap().len(), 5);
}

fn history_drops_events_older_than_the_age_bound_and_bytes_beyond_the_budget(open: Open) {
    let s = open(Retention {
        max_events_per_device: 1000,
        max_bytes_per_device: 1000,
        max_age: Duration::from_secs(10),
        ..Retention::BUILT_IN
    });
    s.insert_status(&status_at("d", 1, 1_000)).unwrap();
    s.insert_status(&status_at("d", 2, 2_000)).unwrap();
    // 20 s later: both are older than 10 s.
    s.insert_status(&status_at("d", 3, 22_000)).unwrap();
    assert_eq!(seqs(s.as_ref(), "d"), vec![3]);
    // Each event is ~250 bytes: a 1,000 byte budget keeps the newest few.
    for seq in 4..=20 {
        s.insert_status(&status_at("d", seq, 22_000)).unwrap();
    }
    let kept = s.statuses_of("d").unwrap();
    let bytes: usize = kept
        .iter()
        .map(|x| serde_json::to_vec(x).unwrap().len())
        .sum();
    assert!(bytes <= 1000, "{bytes}");
    assert!(kept.len() >= 2 && kept.last().unwrap().event.seq == 20);
    // The newest event stays even when it alone is over the budget.
    let mut huge = status_at("d", 21, 22_000);
    huge.event.detail = Some("x".repeat(MAX_DETAIL));
    s.insert_status(&huge).unwrap();
    assert_eq!(seqs(s.as_ref(), "d"), vec![21]);
}

fn stored_events_are_capped(open: Open) {
    let s = fresh(open);
    let mut st = status("d", 1, 1);
    st.event.detail = Some("x".repeat(100_000));
    st.event.log_tail = vec!["y".repeat(100_000); 500];
    s.insert_status(&st).unwrap();
    let got = &s.statuses_of("d").unwrap()[0].event;
    assert!(got.detail.as_ref().unwrap().len() <= MAX_DETAIL);
    assert_eq!(got.log_tail.len(), MAX_LOG_TAIL_LINES);
    assert!(got.log_tail.iter().all(|l| l.len() <= MAX_LOG_TAIL_LINE));
}

fn history_pages_walk_every_event_once_newest_page_first(open: Open) {
    let s = fresh(open);
    for seq in 1..=23 {
        s.insert_status(&status("d", 1, seq)).unwrap();
        s.insert_status(&status("d2", 1, seq)).unwrap();
    }
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let p = s.history_page("d", cursor, 5).unwrap();
        assert!(p.items.len() <= 5);
        pages.push(p.items.iter().map(|x| x.event.seq).collect::<Vec<_>>());
        match p.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages[0], vec![19, 20, 21, 22, 23]);
    assert_eq!(pages.len(), 5);
    let all: Vec<u64> = pages.into_iter().rev().flatten().collect();
    assert_eq!(all, (1..=23).collect::<Vec<_>>());
    assert_eq!(s.history_page("none", None, 5).unwrap().items.len(), 0);
    // Pages follow the order of storing, not of seqs.
    s.insert_status(&status("late", 1, 2)).unwrap();
    s.insert_status(&status("late", 1, 1)).unwrap();
    let p = s.history_page("late", None, 10).unwrap();
    let got: Vec<u64> = p.items.iter().map(|x| x.event.seq).collect();
    assert_eq!((got, p.next), (vec![2, 1], None));
}

fn an_owners_deployments_come_newest_first_in_pages(open: Open) {
    let s = fresh(open);
    for i in 0..7u64 {
        s.put_deployment(&deployment(&format!("a{i}"), "alice", 100 + i))
            .unwrap();
        s.put_deployment(&deployment(&format!("b{i}"), "bob", 100 + i))
            .unwrap();
    }
    // Two created in the same millisecond: the id decides.
    s.put_deployment(&deployment("a7", "alice", 106)).unwrap();
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let p = s.deployments_of("alice", after.as_ref(), 3).unwrap();
        assert!(p.items.len() <= 3);
        ids.extend(p.items.iter().map(|d| d.id.clone()));
        match p.next {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(ids, ["a7", "a6", "a5", "a4", "a3", "a2", "a1", "a0"]);
    assert!(s.deployments_of("carol", None, 3).unwrap().items.is_empty());
    assert_eq!(s.deployments().unwrap().len(), 15);
    // A write of the same id replaces the record.
    let mut d = deployment("a0", "alice", 100);
    d.state = DeploymentState::Succeeded;
    d.finished_at = Some(150);
    s.put_deployment(&d).unwrap();
    assert_eq!(s.deployment("a0").unwrap(), Some(d.clone()));
    // A phased deployment's progress comes back as written (every gate).
    use hammer_service::store::{PhaseGate, PhasingRecord, Promotion};
    for gate in [
        PhaseGate::Running,
        PhaseGate::Soaking { until: 9 },
        PhaseGate::AwaitingPromotion,
        PhaseGate::Held {
            reason: "phase 1: d crashed".into(),
        },
    ] {
        d.phasing = Some(PhasingRecord {
            ends: vec![1, 5, 9],
            current: 1,
            gate,
            unhealthy: Some("d restarted".into()),
            promotions: vec![Promotion {
                phase: 0,
                at: 7,
                by: Some("alice".into()),
            }],
        });
        d.strategy.phases = vec![
            hammer_protocol::api::PhaseSize::Devices(1),
            hammer_protocol::api::PhaseSize::Percent(50),
        ];
        d.strategy.soak_secs = Some(60);
        d.strategy.start_at = Some(123);
        s.put_deployment(&d).unwrap();
        assert_eq!(s.deployment("a0").unwrap(), Some(d.clone()));
    }
    assert_eq!(s.deployments().unwrap().len(), 15);
    assert_eq!(s.deployment("nope").unwrap(), None);
}

fn old_finished_deployments_are_pruned_when_the_owner_deploys_again(open: Open) {
    let s = open(Retention {
        max_age: Duration::from_secs(60),
        ..Retention::BUILT_IN
    });
    let now = hammer_protocol::now_ms();
    let mut old = deployment("old", "alice", now - 600_000);
    old.state = DeploymentState::Succeeded;
    old.finished_at = Some(now - 500_000);
    s.put_deployment(&old).unwrap();
    let running = deployment("old-running", "alice", now - 500_000);
    s.put_deployment(&running).unwrap();
    let mut bobs = deployment("bobs", "bob", now - 600_000);
    s.put_deployment(&bobs).unwrap();
    bobs.state = DeploymentState::Failed;
    bobs.finished_at = Some(now - 500_000);
    s.put_deployment(&bobs).unwrap(); // an update prunes nothing
    s.put_deployment(&deployment("new", "alice", now)).unwrap();
    let ids: Vec<String> = s
        .deployments_of("alice", None, 10)
        .unwrap()
        .items
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["new", "old-running"]);
    assert!(s.deployment("old").unwrap().is_none());
    assert!(
        s.deployment("bobs").unwrap().is_some(),
        "only the deployer's own"
    );
}

fn users_have_unique_names(open: Open) {
    let s = fresh(open);
    let u = user("u1", "alice");
    assert!(s.insert_user(&u).unwrap());
    assert!(!s.insert_user(&user("u2", "alice")).unwrap());
    assert!(s.insert_user(&user("u0", "bob")).unwrap());
    assert_eq!(s.user("u1").unwrap(), Some(u.clone()));
    assert_eq!(s.user("u2").unwrap(), None);
    assert_eq!(s.user_by_name("alice").unwrap(), Some(u));
    assert_eq!(s.user_by_name("carol").unwrap(), None);
    let ids: Vec<String> = s.users().unwrap().into_iter().map(|u| u.id).collect();
    assert_eq!(ids, ["u0", "u1"]);
}

fn a_users_bad_commits_are_updated_in_place_and_kept(open: Open) {
    let s = fresh(open);
    assert!(s.insert_user(&user("u1", "alice")).unwrap());
    let bad = BadCommitRecord {
        commit: "a".repeat(40),
        reason: Some("boot loop".into()),
        marked_at: 5,
    };
    let b2 = bad.clone();
    let got = s
        .update_user("u1", &mut |u| u.bad_commits.push(b2.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(got.bad_commits, std::slice::from_ref(&bad));
    assert_eq!(
        s.user("u1").unwrap().unwrap().bad_commits,
        std::slice::from_ref(&bad)
    );
    assert_eq!(s.user_by_name("alice").unwrap().unwrap().bad_commits, [bad]);
    s.update_user("u1", &mut |u| u.bad_commits.clear()).unwrap();
    assert_eq!(s.user("u1").unwrap().unwrap(), user("u1", "alice"));
    assert_eq!(s.update_user("nobody", &mut |_| {}).unwrap(), None);
}

fn tokens_are_found_by_hash_listed_per_user_and_revoked_for_good(open: Open) {
    let s = fresh(open);
    let tok = |id: &str, user: &str, hash: &str| TokenRecord {
        id: id.into(),
        user_id: user.into(),
        hash: hash.into(),
        created_at: 1,
        revoked_at: None,
    };
    s.insert_token(&tok("t2", "u1", "h2")).unwrap();
    s.insert_token(&tok("t1", "u1", "h1")).unwrap();
    s.insert_token(&tok("t3", "u2", "h3")).unwrap();
    assert_eq!(s.token_by_hash("h1").unwrap(), Some(tok("t1", "u1", "h1")));
    assert_eq!(s.token_by_hash("nope").unwrap(), None);
    let ids: Vec<String> = s
        .tokens_of("u1")
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["t1", "t2"]);
    let day = REVOKED_TOKEN_KEPT_MS;
    assert_eq!(
        s.revoke_token("u2", "t1", 1_000).unwrap(),
        Revoked::NoSuch,
        "only the user's own"
    );
    assert_eq!(s.revoke_token("u1", "t1", 1_000).unwrap(), Revoked::Now);
    assert_eq!(s.token_by_hash("h1").unwrap(), None, "it signs nobody in");
    assert_eq!(s.tokens_of("u1").unwrap().len(), 1, "nor is it listed");
    assert_eq!(
        s.revoke_token("u1", "t1", 1_000 + day).unwrap(),
        Revoked::Earlier,
        "the same revocation again within a day is answered as done"
    );
    // A later revocation of another token prunes it after the day.
    assert_eq!(
        s.revoke_token("u1", "t2", 2_000 + day).unwrap(),
        Revoked::Now
    );
    assert_eq!(
        s.revoke_token("u1", "t1", 2_000 + day).unwrap(),
        Revoked::NoSuch
    );
    assert_eq!(s.tokens_of("u1").unwrap(), []);
    assert_eq!(s.token_by_hash("h3").unwrap(), Some(tok("t3", "u2", "h3")));
}

fn devices_have_unique_names_per_owner_and_are_updated_and_deleted_whole(open: Open) {
    let s = fresh(open);
    let a = new_device("alice", "pi", Default::default(), DeviceState::Registered);
    assert!(s.insert_device(&a).unwrap());
    assert!(!s
        .insert_device(&new_device(
            "alice",
            "pi",
            Default::default(),
            DeviceState::Registered
        ))
        .unwrap());
    let b = new_device("bob", "pi", Default::default(), DeviceState::Registered);
    assert!(s.insert_device(&b).unwrap(), "names are per owner");
    let a2 = new_device(
        "alice",
        "a-first",
        Default::default(),
        DeviceState::Registered,
    );
    assert!(s.insert_device(&a2).unwrap());
    assert_eq!(s.device(&a.id).unwrap(), Some(a.clone()));
    assert_eq!(s.device_by_name("alice", "pi").unwrap(), Some(a.clone()));
    assert_eq!(s.device_by_name("carol", "pi").unwrap(), None);
    let names: Vec<String> = s
        .devices_of("alice")
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["a-first", "pi"]);
    assert_eq!(s.all_devices().unwrap().len(), 3);

    let got = s
        .update_device(&a.id, &mut |d| {
            d.generation += 1;
            d.state = DeviceState::Ready;
        })
        .unwrap()
        .unwrap();
    assert_eq!((got.generation, got.state), (1, DeviceState::Ready));
    assert_eq!(s.device(&a.id).unwrap(), Some(got));
    assert_eq!(s.update_device("nope", &mut |_| {}).unwrap(), None);

    // Deleting a device removes its history, its ack and its enrollment tokens.
    s.insert_status(&status(&a.id, 1, 1)).unwrap();
    s.insert_status(&status(&b.id, 1, 1)).unwrap();
    let e = EnrollmentRecord {
        device_id: a.id.clone(),
        owner: "alice".into(),
        expires_at: 5,
    };
    s.insert_enrollment("h", &e).unwrap();
    let gone = s.delete_device(&a.id).unwrap().unwrap();
    assert_eq!(gone.id, a.id);
    assert_eq!(s.delete_device(&a.id).unwrap(), None);
    assert_eq!(s.device(&a.id).unwrap(), None);
    assert_eq!(s.device_by_name("alice", "pi").unwrap(), None);
    assert!(s.statuses_of(&a.id).unwrap().is_empty());
    assert_eq!(s.ack_of(&a.id).unwrap(), None);
    assert_eq!(s.take_enrollment("h").unwrap(), None);
    assert_eq!(
        s.statuses_of(&b.id).unwrap().len(),
        1,
        "another device keeps its own"
    );
    // The name is free again; the new device starts with no history.
    let again = new_device("alice", "pi", Default::default(), DeviceState::Registered);
    assert!(s.insert_device(&again).unwrap());
    let i = s.insert_status(&status(&a.id, 1, 1)).unwrap();
    assert_eq!((i.new, i.contiguous), (true, 1));
}

fn an_enrollment_token_is_taken_once(open: Open) {
    let s = fresh(open);
    let e = EnrollmentRecord {
        device_id: "d".into(),
        owner: "u1".into(),
        expires_at: 5,
    };
    s.insert_enrollment("h", &e).unwrap();
    assert_eq!(s.take_enrollment("h").unwrap(), Some(e.clone()));
    assert_eq!(s.take_enrollment("h").unwrap(), None);
    s.insert_enrollment("h1", &e).unwrap();
    s.insert_enrollment("h2", &e).unwrap();
    let other = EnrollmentRecord {
        device_id: "d2".into(),
        ..e.clone()
    };
    s.insert_enrollment("h3", &other).unwrap();
    s.delete_enrollments_of("d").unwrap();
    assert_eq!(s.take_enrollment("h1").unwrap(), None);
    assert_eq!(s.take_enrollment("h2").unwrap(), None);
    assert_eq!(s.take_enrollment("h3").unwrap(), Some(other));
}

/// `n` threads run `f(i)` at once.
pub(crate) fn at_once<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let (f, barrier) = (&f, &barrier);
                sc.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn concurrent_writers_store_each_event_once_take_a_token_once_and_lose_no_update(open: Open) {
    let s = fresh(open);
    // Every thread sends the same 30 events (in its own order): 30 are new, once each.
    let news: usize = at_once(6, |t| {
        let mut new = 0;
        for k in 0..30u64 {
            let seq = (k + t as u64 * 7) % 30 + 1;
            if s.insert_status(&status("d", 4, seq)).unwrap().new {
                new += 1;
            }
        }
        new
    })
    .into_iter()
    .sum();
    assert_eq!(news, 30);
    assert_eq!(seqs(s.as_ref(), "d"), (1..=30).collect::<Vec<_>>());
    assert_eq!(s.ack_of("d").unwrap(), Some((4, 30)));

    let e = EnrollmentRecord {
        device_id: "d".into(),
        owner: "u".into(),
        expires_at: 5,
    };
    s.insert_enrollment("once", &e).unwrap();
    let taken = at_once(6, |_| s.take_enrollment("once").unwrap().is_some());
    assert_eq!(taken.iter().filter(|t| **t).count(), 1);

    let d = new_device("alice", "pi", Default::default(), DeviceState::Registered);
    s.insert_device(&d).unwrap();
    at_once(6, |_| {
        for _ in 0..10 {
            s.update_device(&d.id, &mut |r| r.cmd_seq += 1).unwrap();
        }
    });
    assert_eq!(s.device(&d.id).unwrap().unwrap().cmd_seq, 60);
    let names = at_once(6, |i| {
        s.insert_user(&user(&format!("u{i}"), "same")).unwrap()
    });
    assert_eq!(names.iter().filter(|n| **n).count(), 1);
}

fn a_lease_goes_to_one_holder_at_a_time_and_a_new_holder_gets_the_next_token(open: Open) {
    let s = fresh(open);
    assert_eq!(s.lease("rollout").unwrap(), None);
    // The first holder gets token 1.
    let a = s
        .acquire_lease("rollout", "a", 1_000, 500)
        .unwrap()
        .unwrap();
    assert_eq!(
        a,
        Lease {
            name: "rollout".into(),
            holder: "a".into(),
            token: 1,
            expires_at: 1_500
        }
    );
    assert_eq!(s.lease("rollout").unwrap(), Some(a.clone()));
    // Another holder is refused while it is valid, up to its last millisecond.
    assert_eq!(s.acquire_lease("rollout", "b", 1_200, 500).unwrap(), None);
    assert_eq!(s.acquire_lease("rollout", "b", 1_499, 500).unwrap(), None);
    // A renewal keeps the token and extends the lease.
    let renewed = s
        .acquire_lease("rollout", "a", 1_400, 500)
        .unwrap()
        .unwrap();
    assert_eq!((renewed.token, renewed.expires_at), (1, 1_900));
    assert_eq!(s.acquire_lease("rollout", "b", 1_600, 500).unwrap(), None);
    // Another lease name is separate.
    let other = s.acquire_lease("other", "b", 1_600, 500).unwrap().unwrap();
    assert_eq!(other.token, 1);
    // Expired (expires_at <= now): taken by another holder with the next token.
    let b = s
        .acquire_lease("rollout", "b", 1_900, 500)
        .unwrap()
        .unwrap();
    assert_eq!((b.holder.as_str(), b.token, b.expires_at), ("b", 2, 2_400));
    assert_eq!(s.acquire_lease("rollout", "a", 2_000, 500).unwrap(), None);
    // A release by a holder that lost the lease does nothing.
    s.release_lease("rollout", "a", 1).unwrap();
    assert_eq!(s.lease("rollout").unwrap(), Some(b.clone()));
    // Nor does one with a stale token.
    s.release_lease("rollout", "b", 1).unwrap();
    assert_eq!(s.lease("rollout").unwrap(), Some(b.clone()));
    // The holder's release ends it at once: another takes it, with the next token.
    s.release_lease("rollout", "b", 2).unwrap();
    let released = s.lease("rollout").unwrap().unwrap();
    assert_eq!(
        (
            released.holder.as_str(),
            released.token,
            released.expires_at
        ),
        ("b", 2, 0)
    );
    let a2 = s
        .acquire_lease("rollout", "a", 2_001, 500)
        .unwrap()
        .unwrap();
    assert_eq!((a2.holder.as_str(), a2.token), ("a", 3));
    // Releasing a lease never taken is nothing.
    s.release_lease("never", "a", 1).unwrap();
    assert_eq!(s.lease("never").unwrap(), None);
}

fn a_fenced_write_lands_only_while_its_fence_matches_the_stored_lease(open: Open) {
    let s = fresh(open);
    let d = deployment("dep1", "alice", 10);
    // No lease taken yet: refused.
    let never = Fence {
        name: "rollout".into(),
        holder: "a".into(),
        token: 1,
    };
    assert!(matches!(
        s.put_deployment_fenced(&d, &never),
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(s.deployment("dep1").unwrap(), None);

    let a = s
        .acquire_lease("rollout", "a", 1_000, 100)
        .unwrap()
        .unwrap();
    s.put_deployment_fenced(&d, &a.fence()).unwrap();
    assert_eq!(s.deployment("dep1").unwrap(), Some(d.clone()));
    // Expired but not taken by anyone: the holder's writes still land (nobody else drives).
    let b = s
        .acquire_lease("rollout", "b", 2_000, 100)
        .unwrap()
        .unwrap();
    assert_eq!(b.token, 2);
    // `a` was taken over: its writes fail with Fenced, naming the lease, and store nothing.
    let mut stale = d.clone();
    stale.state = DeploymentState::Canceled;
    let e = s.put_deployment_fenced(&stale, &a.fence()).unwrap_err();
    match &e {
        StoreError::Fenced {
            lease,
            token,
            current,
            holder,
        } => assert_eq!(
            (lease.as_str(), *token, *current, holder.as_str()),
            ("rollout", 1, 2, "b")
        ),
        other => panic!("not fenced: {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("lease rollout") && msg.contains("token 2 > 1"),
        "{msg}"
    );
    assert_eq!(s.deployment("dep1").unwrap(), Some(d.clone()));
    let mut new = deployment("dep2", "alice", 11);
    assert!(s.put_deployment_fenced(&new, &a.fence()).is_err());
    assert_eq!(s.deployment("dep2").unwrap(), None);
    // A fence of the right token but another holder is refused too.
    let forged = Fence {
        holder: "c".into(),
        ..b.fence()
    };
    assert!(s.put_deployment_fenced(&new, &forged).is_err());
    // The current fence writes, and the write lists like any other.
    new.state = DeploymentState::Running;
    s.put_deployment_fenced(&new, &b.fence()).unwrap();
    s.put_deployment_fenced(&stale, &b.fence()).unwrap();
    assert_eq!(s.deployment("dep1").unwrap(), Some(stale));
    assert_eq!(s.deployments_of("alice", None, 10).unwrap().items.len(), 2);
}

fn web_session(id: &str, user: &str, created_at: u64, ttl: u64) -> SessionRecord {
    SessionRecord {
        id_hash: id.into(),
        user_id: user.into(),
        token_hash: format!("t-{user}"),
        created_at,
        expires_at: created_at + ttl,
    }
}

const ROOMY: SessionCaps = SessionCaps {
    per_user: 100,
    total: 1_000,
};

fn a_session_is_found_by_its_id_hash_until_it_expires_and_ends_once(open: Open) {
    let s = fresh(open);
    let a = web_session("h1", "alice", 1_000, 500);
    assert_eq!(
        s.insert_session(&a, 1_000, ROOMY).unwrap(),
        SessionsEnded::default()
    );
    assert_eq!(s.session("h1", 1_000).unwrap(), Some(a.clone()));
    assert_eq!(s.session("h1", 1_499).unwrap(), Some(a.clone()));
    // Expired (now >= expires_at): not found, not counted.
    assert_eq!(s.session("h1", 1_500).unwrap(), None);
    assert_eq!(s.count_sessions_of("alice", 1_499).unwrap(), 1);
    assert_eq!(s.count_sessions_of("alice", 1_500).unwrap(), 0);
    assert_eq!(s.session("nope", 1_000).unwrap(), None);
    assert!(s.delete_session("h1").unwrap());
    assert!(!s.delete_session("h1").unwrap());
    assert_eq!(s.session("h1", 1_000).unwrap(), None);
    assert_eq!(s.count_sessions_of("alice", 1_000).unwrap(), 0);
}

fn signing_in_past_the_per_user_cap_ends_that_users_oldest_sessions_only(open: Open) {
    let s = fresh(open);
    let caps = SessionCaps {
        per_user: 3,
        total: 100,
    };
    s.insert_session(&web_session("b0", "bob", 10, 1_000), 10, caps)
        .unwrap();
    // Five sign-ins in the same millisecond: the order of insertion decides which is oldest.
    let mut ended = 0;
    for i in 0..5 {
        ended += s
            .insert_session(&web_session(&format!("a{i}"), "alice", 10, 1_000), 10, caps)
            .unwrap()
            .over_user_cap;
    }
    assert_eq!(ended, 2);
    assert_eq!(s.count_sessions_of("alice", 10).unwrap(), 3);
    let live: Vec<bool> = (0..5)
        .map(|i| s.session(&format!("a{i}"), 10).unwrap().is_some())
        .collect();
    assert_eq!(live, [false, false, true, true, true]);
    assert!(s.session("b0", 10).unwrap().is_some());
    assert_eq!(s.count_sessions_of("bob", 10).unwrap(), 1);
}

fn a_full_session_table_ends_the_oldest_session_of_whoever_holds_the_most(open: Open) {
    let s = fresh(open);
    // Room for 4 in all, 3 each: alice fills 3, bob 1.
    let caps = SessionCaps {
        per_user: 3,
        total: 4,
    };
    let put = |id: &str, user: &str| {
        s.insert_session(&web_session(id, user, 10, 1_000), 10, caps)
            .unwrap()
    };
    let live = |id: &str| s.session(id, 10).unwrap().is_some();
    for i in 0..3 {
        put(&format!("a{i}"), "alice");
    }
    put("b0", "bob");
    // Carol, holding none, takes alice's oldest (alice holds the most), not bob's one.
    assert_eq!(put("c0", "carol").table_full, 1);
    assert!(!live("a0") && live("a1") && live("b0") && live("c0"));
    // Bob signing in again with 1 while alice holds 2: alice's oldest goes.
    put("b1", "bob");
    assert!(!live("a1") && live("b0"));
    // Now alice 1, bob 2, carol 1: bob signing in again ends his own oldest.
    put("b2", "bob");
    assert!(!live("b0"));
    assert!(["a2", "b1", "b2", "c0"].iter().all(|id| live(id)));
    // A tie among others (alice 1, carol 1, bob 2 → dave, holding none): bob, the most.
    put("d0", "dave");
    assert!(!live("b1") && live("b2"));
}

fn expired_sessions_are_removed_a_batch_at_a_time_as_new_ones_are_stored(open: Open) {
    let s = fresh(open);
    // More expired sessions than one insert removes.
    let old = PRUNE_BATCH + 10;
    for i in 0..old {
        s.insert_session(
            &web_session(&format!("old{i}"), &format!("u{i}"), 10, 5),
            10,
            ROOMY,
        )
        .unwrap();
    }
    let first = s
        .insert_session(&web_session("new0", "zed", 100, 1_000), 100, ROOMY)
        .unwrap();
    assert_eq!(first.expired, PRUNE_BATCH);
    let second = s
        .insert_session(&web_session("new1", "zed", 100, 1_000), 100, ROOMY)
        .unwrap();
    assert_eq!(second.expired, 10);
    let third = s
        .insert_session(&web_session("new2", "zed", 100, 1_000), 100, ROOMY)
        .unwrap();
    assert_eq!(third.expired, 0);
    // The expired ones are gone, not only hidden: deleting one finds nothing.
    assert!(!s.delete_session("old0").unwrap());
    assert!(!s.delete_session(&format!("old{}", old - 1)).unwrap());
    assert_eq!(s.count_sessions_of("zed", 100).unwrap(), 3);
    // The table cap counts what is stored: a full table of expired sessions makes room by
    // removing them, ending nobody's live session.
    let s = fresh(open);
    let tight = SessionCaps {
        per_user: 3,
        total: 2,
    };
    s.insert_session(&web_session("x0", "x", 10, 5), 10, tight)
        .unwrap();
    s.insert_session(&web_session("y0", "y", 10, 5), 10, tight)
        .unwrap();
    let e = s
        .insert_session(&web_session("z0", "z", 100, 1_000), 100, tight)
        .unwrap();
    assert_eq!((e.expired, e.table_full), (2, 0));
}

fn failures_are_counted_per_key_in_a_window_from_the_first_one(open: Open) {
    let s = fresh(open);
    let w = 1_000;
    assert_eq!(s.failures("ip a", 100, w).unwrap(), 0);
    assert_eq!(s.note_failure("ip a", 100, w).unwrap(), 1);
    assert_eq!(s.note_failure("ip a", 600, w).unwrap(), 2);
    assert_eq!(s.note_failure("ip b", 600, w).unwrap(), 1);
    assert_eq!(s.failures("ip a", 1_099, w).unwrap(), 2);
    assert_eq!(s.failures("ip b", 1_099, w).unwrap(), 1);
    // The window is from the first failure: at its end the count is over.
    assert_eq!(s.failures("ip a", 1_100, w).unwrap(), 0);
    // A failure after it starts a new window.
    assert_eq!(s.note_failure("ip a", 1_100, w).unwrap(), 1);
    // "ip b"'s window (600..1,600) is unaffected by "ip a"'s.
    assert_eq!(s.note_failure("ip b", 1_500, w).unwrap(), 2);
    assert_eq!(s.note_failure("ip a", 2_099, w).unwrap(), 2);
    assert_eq!(s.failures("ip a", 2_099, w).unwrap(), 2);
    assert_eq!(s.failures("ip a", 2_100, w).unwrap(), 0);
    assert_eq!(s.failures("ip b", 2_099, w).unwrap(), 0);
}

fn ended_failure_windows_are_removed_a_batch_at_a_time_as_failures_are_noted(open: Open) {
    let s = fresh(open);
    let w = 100;
    let old = PRUNE_BATCH + 5;
    for i in 0..old {
        s.note_failure(&format!("old {i}"), 10, w).unwrap();
    }
    // Each later failure removes at most a batch of ended windows; after two, none is left,
    // and a key whose rows were removed starts again at 1.
    s.note_failure("new", 1_000, w).unwrap();
    s.note_failure("new", 1_001, w).unwrap();
    for i in [0, old - 1] {
        assert_eq!(
            s.failures(&format!("old {i}"), 20, w).unwrap(),
            0,
            "old {i}"
        );
    }
    assert_eq!(s.note_failure("old 0", 20, w).unwrap(), 1);
    assert_eq!(s.failures("new", 1_001, w).unwrap(), 2);
}

fn concurrent_failures_of_one_key_are_each_counted_once(open: Open) {
    let s = fresh(open);
    let counts = at_once(6, |_| {
        (0..10)
            .map(|_| s.note_failure("ip", 1_000, 60_000).unwrap())
            .collect::<Vec<_>>()
    });
    let mut all: Vec<u32> = counts.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=60).collect::<Vec<u32>>());
    assert_eq!(s.failures("ip", 1_000, 60_000).unwrap(), 60);
}

fn window(id: &str, owner: &str, created_at: u64, applies_to: AppliesTo) -> WindowRecord {
    WindowRecord {
        id: id.into(),
        owner: owner.into(),
        name: Some(format!("window {id}")),
        applies_to,
        window: hammer_protocol::Window::parse("mon-fri 22:00-04:00").unwrap(),
        created_at,
    }
}

fn a_users_windows_are_listed_oldest_first_within_the_bound_and_removed_once(open: Open) {
    let s = fresh(open);
    let w2 = window("w2", "u1", 20, AppliesTo::Tag("site=lab".into()));
    let w1 = window("w1", "u1", 10, AppliesTo::Device("pi".into()));
    let w3 = window("w1", "u2", 5, AppliesTo::Device("pi".into()));
    assert!(s.insert_window(&w2, 2).unwrap());
    assert!(s.insert_window(&w1, 2).unwrap());
    assert!(s.insert_window(&w3, 2).unwrap(), "the bound is per user");
    assert_eq!(s.windows_of("u1").unwrap(), [w1.clone(), w2.clone()]);
    assert_eq!(s.windows_of("u2").unwrap(), std::slice::from_ref(&w3));
    assert!(s.windows_of("nobody").unwrap().is_empty());
    // At the bound nothing more is stored.
    let w4 = window("w4", "u1", 30, AppliesTo::Device("x".into()));
    assert!(!s.insert_window(&w4, 2).unwrap());
    assert_eq!(s.windows_of("u1").unwrap().len(), 2);
    // Removed by its owner only, once.
    assert!(!s.delete_window("u3", "w2").unwrap());
    assert!(s.delete_window("u1", "w1").unwrap());
    assert!(!s.delete_window("u1", "w1").unwrap());
    assert_eq!(s.windows_of("u1").unwrap(), [w2]);
    assert_eq!(
        s.windows_of("u2").unwrap(),
        [w3],
        "u2's window of the same id stays"
    );
    flush(&*s);
}

fn concurrent_window_inserts_never_pass_the_bound(open: Open) {
    let s = fresh(open);
    let added = at_once(8, |i| {
        let w = window(
            &format!("c{i}"),
            "u1",
            i as u64,
            AppliesTo::Device("pi".into()),
        );
        s.insert_window(&w, 5).unwrap()
    });
    assert_eq!(added.iter().filter(|a| **a).count(), 5, "{added:?}");
    assert_eq!(s.windows_of("u1").unwrap().len(), 5);
}

fn an_owners_device_count_follows_inserts_and_deletes_and_no_one_elses(open: Open) {
    let s = fresh(open);
    assert_eq!(s.count_devices_of("al").unwrap(), 0);
    let mut ids = Vec::new();
    for n in ["a", "b", "c"] {
        let d = new_device("al", n, Default::default(), DeviceState::Registered);
        assert!(s.insert_device(&d).unwrap());
        ids.push(d.id);
    }
    // An owner whose id starts with "al", and a name taken (not a new device).
    let other = new_device("alice", "a", Default::default(), DeviceState::Registered);
    assert!(s.insert_device(&other).unwrap());
    let again = new_device("al", "a", Default::default(), DeviceState::Registered);
    assert!(!s.insert_device(&again).unwrap());
    assert_eq!(s.count_devices_of("al").unwrap(), 3);
    assert_eq!(s.count_devices_of("alice").unwrap(), 1);
    s.delete_device(&ids[0]).unwrap().unwrap();
    assert_eq!(s.count_devices_of("al").unwrap(), 2);
    assert_eq!(s.count_devices_of("nobody").unwrap(), 0);
}

type Case = (&'static str, fn(Open));

const CASES: &[Case] = &[
    (
        "a_users_bad_commits_are_updated_in_place_and_kept",
        a_users_bad_commits_are_updated_in_place_and_kept,
    ),
    (
        "status_is_stored_once_and_the_ack_is_the_highest_contiguous_seq",
        status_is_stored_once_and_the_ack_is_the_highest_contiguous_seq,
    ),
    (
        "events_come_in_epoch_and_seq_order_over_the_whole_u64_range",
        events_come_in_epoch_and_seq_order_over_the_whole_u64_range,
    ),
    (
        "history_keeps_at_most_the_configured_count_and_the_oldest_go",
        history_keeps_at_most_the_configured_count_and_the_oldest_go,
    ),
    (
        "audit_pages_are_per_user_and_newest_first",
        audit_pages_are_per_user_and_newest_first,
    ),
    (
        "audit_keeps_at_most_the_configured_count_and_age_per_user",
        audit_keeps_at_most_the_configured_count_and_age_per_user,
    ),
    (
        "history_drops_events_older_than_the_age_bound_and_bytes_beyond_the_budget",
        history_drops_events_older_than_the_age_bound_and_bytes_beyond_the_budget,
    ),
    ("stored_events_are_capped", stored_events_are_capped),
    (
        "history_pages_walk_every_event_once_newest_page_first",
        history_pages_walk_every_event_once_newest_page_first,
    ),
    (
        "an_owners_deployments_come_newest_first_in_pages",
        an_owners_deployments_come_newest_first_in_pages,
    ),
    (
        "old_finished_deployments_are_pruned_when_the_owner_deploys_again",
        old_finished_deployments_are_pruned_when_the_owner_deploys_again,
    ),
    ("users_have_unique_names", users_have_unique_names),
    (
        "tokens_are_found_by_hash_listed_per_user_and_revoked_for_good",
        tokens_are_found_by_hash_listed_per_user_and_revoked_for_good,
    ),
    (
        "devices_have_unique_names_per_owner_and_are_updated_and_deleted_whole",
        devices_have_unique_names_per_owner_and_are_updated_and_deleted_whole,
    ),
    (
        "an_enrollment_token_is_taken_once",
        an_enrollment_token_is_taken_once,
    ),
    (
        "concurrent_writers_store_each_event_once_take_a_token_once_and_lose_no_update",
        concurrent_writers_store_each_event_once_take_a_token_once_and_lose_no_update,
    ),
    (
        "a_lease_goes_to_one_holder_at_a_time_and_a_new_holder_gets_the_next_token",
        a_lease_goes_to_one_holder_at_a_time_and_a_new_holder_gets_the_next_token,
    ),
    (
        "a_fenced_write_lands_only_while_its_fence_matches_the_stored_lease",
        a_fenced_write_lands_only_while_its_fence_matches_the_stored_lease,
    ),
    (
        "a_session_is_found_by_its_id_hash_until_it_expires_and_ends_once",
        a_session_is_found_by_its_id_hash_until_it_expires_and_ends_once,
    ),
    (
        "signing_in_past_the_per_user_cap_ends_that_users_oldest_sessions_only",
        signing_in_past_the_per_user_cap_ends_that_users_oldest_sessions_only,
    ),
    (
        "a_full_session_table_ends_the_oldest_session_of_whoever_holds_the_most",
        a_full_session_table_ends_the_oldest_session_of_whoever_holds_the_most,
    ),
    (
        "expired_sessions_are_removed_a_batch_at_a_time_as_new_ones_are_stored",
        expired_sessions_are_removed_a_batch_at_a_time_as_new_ones_are_stored,
    ),
    (
        "failures_are_counted_per_key_in_a_window_from_the_first_one",
        failures_are_counted_per_key_in_a_window_from_the_first_one,
    ),
    (
        "ended_failure_windows_are_removed_a_batch_at_a_time_as_failures_are_noted",
        ended_failure_windows_are_removed_a_batch_at_a_time_as_failures_are_noted,
    ),
    (
        "concurrent_failures_of_one_key_are_each_counted_once",
        concurrent_failures_of_one_key_are_each_counted_once,
    ),
    (
        "an_owners_device_count_follows_inserts_and_deletes_and_no_one_elses",
        an_owners_device_count_follows_inserts_and_deletes_and_no_one_elses,
    ),
    (
        "a_users_windows_are_listed_oldest_first_within_the_bound_and_removed_once",
        a_users_windows_are_listed_oldest_first_within_the_bound_and_removed_once,
    ),
    (
        "concurrent_window_inserts_never_pass_the_bound",
        concurrent_window_inserts_never_pass_the_bound,
    ),
    (
        "webhooks_belong_to_their_owner_within_the_cap_and_go_with_their_deliveries",
        wh::webhooks_belong_to_their_owner_within_the_cap_and_go_with_their_deliveries,
    ),
    (
        "a_webhooks_deliveries_are_claimed_one_at_a_time_in_order_and_held_until_the_claim_lapses",
        wh::a_webhooks_deliveries_are_claimed_one_at_a_time_in_order_and_held_until_the_claim_lapses,
    ),
    (
        "the_oldest_pending_delivery_is_dropped_at_the_owners_bound_and_the_log_keeps_the_newest",
        wh::the_oldest_pending_delivery_is_dropped_at_the_owners_bound_and_the_log_keeps_the_newest,
    ),
    (
        "concurrent_claims_never_hand_one_delivery_to_two_workers",
        wh::concurrent_claims_never_hand_one_delivery_to_two_workers,
    ),
];

/// Runs every case on the back end; prints each case's time and the total.
fn run_contract(backend: &str, open: Open) {
    let start = Instant::now();
    for (name, case) in CASES {
        let t = Instant::now();
        case(open);
        println!("store contract on {backend}: {name} ({:?})", t.elapsed());
    }
    println!(
        "store contract on {backend}: {} cases in {:?}",
        CASES.len(),
        start.elapsed()
    );
}

#[test]
fn store_contract_on_sled() {
    let dirs = Mutex::new(Vec::new());
    run_contract("sled", &|r| {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open_with(dir.path(), r).unwrap();
        dirs.lock().unwrap().push(dir);
        Arc::new(s)
    });
}

/// A store on a new, empty database of `pg`.
fn pg_store(pg: &TestPg, n: &AtomicUsize, r: Retention) -> Arc<dyn Store> {
    let url = pg.create_db(&format!("contract_{}", n.fetch_add(1, Ordering::Relaxed)));
    Arc::new(PgStore::open(&PgConfig::new(url), r).unwrap())
}

#[test]
fn store_contract_on_postgres() {
    let Some(pg) = TestPg::start() else {
        return;
    };
    let n = AtomicUsize::new(0);
    run_contract("postgres", &|r| pg_store(&pg, &n, r));
}

#[test]
fn postgres_two_processes_store_each_event_once_and_agree_on_the_ack() {
    let Some(pg) = TestPg::start() else {
        return;
    };
    let url = pg.create_db("two");
    // Two stores with their own pools: as two `hammer serve` on one database.
    let a = PgStore::open(&PgConfig::new(url.clone()), Retention::BUILT_IN).unwrap();
    let b = PgStore::open(&PgConfig::new(url), Retention::BUILT_IN).unwrap();
    let stores: [&dyn Store; 2] = [&a, &b];
    let news: usize = at_once(8, |t| {
        let s = stores[t % 2];
        (1..=50u64)
            .filter(|seq| s.insert_status(&status("d", 11, *seq)).unwrap().new)
            .count()
    })
    .into_iter()
    .sum();
    assert_eq!(news, 50);
    assert_eq!(a.ack_of("d").unwrap(), Some((11, 50)));
    assert_eq!(b.statuses_of("d").unwrap().len(), 50);
    // The per-device counts the retention works from are exact: 50 stored, bound 50 → none go.
    pg.sql("two", "SELECT 1");
    assert_eq!(
        pg.sql(
            "two",
            "SELECT count || ',' || (bytes > 0) FROM status_heads WHERE device_id = 'd'"
        ),
        "50,true"
    );
}

#[test]
fn postgres_two_replicas_racing_for_a_lease_never_both_win() {
    let Some(pg) = TestPg::start() else {
        return;
    };
    let url = pg.create_db("lease_race");
    // Two stores (two replicas' pools) on one database.
    let a = PgStore::open(&PgConfig::new(url.clone()), Retention::BUILT_IN).unwrap();
    let b = PgStore::open(&PgConfig::new(url), Retention::BUILT_IN).unwrap();
    let stores: [&dyn Store; 2] = [&a, &b];
    let mut tokens = std::collections::HashMap::new();
    for round in 0..50u64 {
        let name = format!("race{}", round % 5);
        // Each round starts where the previous ones left the lease: expired at `now`.
        let now = 1_000 * (round + 1);
        let won = at_once(4, |i| {
            stores[i % 2]
                .acquire_lease(&name, &format!("r{i}"), now, 1_000)
                .unwrap()
        });
        let winners: Vec<&Lease> = won.iter().flatten().collect();
        assert_eq!(winners.len(), 1, "round {round}: {won:?}");
        let stored = a.lease(&name).unwrap().unwrap();
        assert_eq!(&stored, winners[0], "round {round}");
        // A token never goes back.
        let prev = tokens.insert(name, stored.token).unwrap_or(0);
        assert!(
            stored.token >= prev,
            "round {round}: {} < {prev}",
            stored.token
        );
    }
}

#[test]
fn postgres_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let Some(pg) = TestPg::start() else {
        return;
    };
    let url = pg.create_db("mig");
    drop(PgStore::open(&PgConfig::new(url.clone()), Retention::BUILT_IN).unwrap());
    drop(PgStore::open(&PgConfig::new(url.clone()), Retention::BUILT_IN).unwrap());
    assert_eq!(
        pg.sql(
            "mig",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"
        ),
        hammer_service::store::pg::migrate::MIGRATIONS
            .iter()
            .map(|m| m.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    pg.sql("mig", "INSERT INTO schema_migrations VALUES (999, 0)");
    let e = PgStore::open(&PgConfig::new(url), Retention::BUILT_IN)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("version 999") && e.contains("upgrade hammer"),
        "{e}"
    );
}

#[test]
fn postgres_errors_never_show_the_password_and_a_lost_database_is_reconnected() {
    let Some(mut pg) = TestPg::start() else {
        return;
    };
    let url = pg.create_db("lost");
    let wrong = "not-the-Pa55word";
    let bad = url.replace(&pg.password, wrong);
    let e = PgStore::open(&PgConfig::new(bad), Retention::BUILT_IN)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(e.contains("hammer@127.0.0.1"), "{e}");
    assert!(!e.contains(wrong) && !e.contains(&pg.password), "{e}");

    // This server has no TLS: a URL asking for it is refused, saying so.
    let dir = tempfile::tempdir().unwrap();
    let ca = hammer_certs::Ca::create("another").unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert().pem()).unwrap();
    let e = PgStore::open(
        &PgConfig::new(format!(
            "{url}?sslmode=require&sslrootcert={}",
            dir.path().join("ca.pem").display()
        )),
        Retention::BUILT_IN,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("does not support TLS"), "{e}");
    assert!(!e.contains(&pg.password), "{e}");

    let s = PgStore::open(&PgConfig::new(url), Retention::BUILT_IN).unwrap();
    assert!(s.insert_user(&user("u1", "alice")).unwrap());
    pg.stop();
    let e = s.user("u1").unwrap_err().to_string();
    assert!(
        e.contains("database") && e.contains("hammer@127.0.0.1"),
        "{e}"
    );
    assert!(!e.contains(&pg.password), "{e}");
    pg.start_again();
    // Within a few seconds every connection of the pool is open again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.user("u1") {
            Ok(u) => {
                assert_eq!(u.unwrap().name, "alice");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the store did not reconnect: {e}"),
        }
    }
    for _ in 0..20 {
        s.user("u1").unwrap();
    }
}

#[test]
fn postgres_over_tls_verifies_the_servers_certificate() {
    let Some(pg) = TestPg::start_tls() else {
        return;
    };
    let url = pg.create_db("tls");
    let ca = pg.ca_file.clone().unwrap();
    let s = PgStore::open(
        &PgConfig::new(format!(
            "{url}?sslmode=verify-full&sslrootcert={}",
            ca.display()
        )),
        Retention::BUILT_IN,
    )
    .unwrap();
    assert!(s.insert_user(&user("u1", "alice")).unwrap());
    assert_eq!(s.user_by_name("alice").unwrap().unwrap().id, "u1");
    // Every connection the store holds is encrypted.
    assert_eq!(
        pg.sql(
            "tls",
            "SELECT bool_and(s.ssl) AND count(*) > 0 FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'hammer'"
        ),
        "t"
    );
    // A server whose certificate is not from the CA named is refused.
    let dir = tempfile::tempdir().unwrap();
    let other = hammer_certs::Ca::create("another").unwrap();
    std::fs::write(dir.path().join("ca.pem"), other.cert().pem()).unwrap();
    let e = PgStore::open(
        &PgConfig::new(format!(
            "{url}?sslrootcert={}",
            dir.path().join("ca.pem").display()
        )),
        Retention::BUILT_IN,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("certificate"), "{e}");
    assert!(!e.contains(&pg.password), "{e}");
}
