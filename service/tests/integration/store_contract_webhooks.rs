//! The `Store` contract for webhooks and their deliveries (the outbox and the delivery log),
//! run on every back end by `store_contract` (its `CASES` list these), plus two PostgreSQL
//! processes claiming from one outbox at once.

use crate::pg_server::TestPg;
use crate::store_contract::at_once;
use hammer_protocol::api::{DeliveryAttempt, DeliveryState, WebhookEvent};
use hammer_service::store::pg::{PgConfig, PgStore};
use hammer_service::store::*;
use std::collections::BTreeSet;
use std::sync::Arc;

type Open<'a> = &'a (dyn Fn(Retention) -> Arc<dyn Store> + Sync);

const WIDE: DeliveryBounds = DeliveryBounds {
    max_pending_per_owner: 1000,
    max_finished_per_webhook: 100,
};

pub fn hook(id: &str, owner: &str, at: u64) -> WebhookRecord {
    WebhookRecord {
        id: id.into(),
        owner: owner.into(),
        url: format!("https://example.com/{id}"),
        events: vec![WebhookEvent::DeploymentCreated],
        secret: "s".repeat(64),
        created_at: at,
    }
}

pub fn delivery(id: &str, webhook: &str, owner: &str, next_at: u64) -> DeliveryRecord {
    DeliveryRecord {
        id: id.into(),
        webhook_id: webhook.into(),
        owner: owner.into(),
        event: WebhookEvent::DeploymentCreated,
        body: format!("{{\"id\":\"{id}\"}}"),
        created_at: next_at,
        state: DeliveryState::Pending,
        attempts: vec![],
        attempt_count: 0,
        next_at,
        claimed_until: 0,
        seq: 0,
    }
}

fn ids(v: &[DeliveryRecord]) -> Vec<String> {
    v.iter().map(|d| d.id.clone()).collect()
}

fn done(mut d: DeliveryRecord, state: DeliveryState, status: u16) -> DeliveryRecord {
    d.state = state;
    d.attempt_count += 1;
    d.attempts.push(DeliveryAttempt {
        time: 5,
        status: Some(status),
        error: None,
        duration_ms: 1,
    });
    d
}

pub fn webhooks_belong_to_their_owner_within_the_cap_and_go_with_their_deliveries(open: Open) {
    let s = open(Retention::BUILT_IN);
    assert!(s.insert_webhook(&hook("w1", "u1", 1), 2).unwrap());
    assert!(s.insert_webhook(&hook("w2", "u1", 2), 2).unwrap());
    assert!(
        !s.insert_webhook(&hook("w3", "u1", 3), 2).unwrap(),
        "over the cap"
    );
    assert!(
        s.insert_webhook(&hook("w4", "u2", 4), 2).unwrap(),
        "another owner's cap"
    );
    let mine: Vec<String> = s
        .webhooks_of("u1")
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(mine, ["w1", "w2"]);
    assert_eq!(s.webhook("w4").unwrap(), Some(hook("w4", "u2", 4)));
    assert_eq!(s.webhook("w3").unwrap(), None);
    s.insert_delivery(&delivery("d1", "w1", "u1", 10), WIDE)
        .unwrap();
    s.insert_delivery(&delivery("d2", "w1", "u1", 11), WIDE)
        .unwrap();
    assert_eq!(s.count_pending_deliveries().unwrap(), 2);
    assert!(!s.delete_webhook("u2", "w1").unwrap(), "not u2's");
    assert!(s.delete_webhook("u1", "w1").unwrap());
    assert!(!s.delete_webhook("u1", "w1").unwrap(), "once");
    assert!(s.deliveries_of("w1", 10).unwrap().is_empty());
    assert_eq!(s.count_pending_deliveries().unwrap(), 0);
    assert!(s.claim_deliveries(100, 200, 10).unwrap().is_empty());
    // The freed place under the cap can be taken again.
    assert!(s.insert_webhook(&hook("w5", "u1", 5), 2).unwrap());
}

pub fn a_webhooks_deliveries_are_claimed_one_at_a_time_in_order_and_held_until_the_claim_lapses(
    open: Open,
) {
    let s = open(Retention::BUILT_IN);
    s.insert_webhook(&hook("w1", "u1", 1), 10).unwrap();
    s.insert_webhook(&hook("w2", "u1", 2), 10).unwrap();
    s.insert_delivery(&delivery("a1", "w1", "u1", 10), WIDE)
        .unwrap();
    s.insert_delivery(&delivery("a2", "w1", "u1", 10), WIDE)
        .unwrap();
    s.insert_delivery(&delivery("b1", "w2", "u1", 50), WIDE)
        .unwrap();
    // Not due yet: nothing.
    assert!(s.claim_deliveries(5, 1000, 10).unwrap().is_empty());
    // Each webhook's oldest, earliest due first; w2's is not due at 20.
    let c = s.claim_deliveries(20, 1000, 10).unwrap();
    assert_eq!(ids(&c), ["a1"]);
    let c2 = s.claim_deliveries(60, 1000, 10).unwrap();
    assert_eq!(ids(&c2), ["b1"], "a1 is held, and a2 waits behind it");
    s.finish_delivery(&done(c2[0].clone(), DeliveryState::Delivered, 200), WIDE)
        .unwrap();
    // A retry later: a1 stays first in its webhook's line until it is due again.
    let mut a1 = c[0].clone();
    a1.attempt_count = 1;
    a1.next_at = 500;
    s.finish_delivery(&a1, WIDE).unwrap();
    assert!(s.claim_deliveries(100, 1000, 10).unwrap().is_empty());
    let c = s.claim_deliveries(500, 2000, 10).unwrap();
    assert_eq!(ids(&c), ["a1"]);
    assert_eq!(c[0].attempt_count, 1);
    // Delivered: the next one of the webhook comes.
    s.finish_delivery(&done(c[0].clone(), DeliveryState::Delivered, 204), WIDE)
        .unwrap();
    let c = s.claim_deliveries(501, 3000, 10).unwrap();
    assert_eq!(ids(&c), ["a2"]);
    // A claim nobody finished lapses and the delivery is claimed again (at least once).
    assert!(s.claim_deliveries(2999, 9000, 10).unwrap().is_empty());
    assert_eq!(ids(&s.claim_deliveries(3000, 9000, 10).unwrap()), ["a2"]);
    // The log: newest first, each attempt with its status.
    let log = s.deliveries_of("w1", 10).unwrap();
    assert_eq!(ids(&log), ["a2", "a1"]);
    assert_eq!(log[1].state, DeliveryState::Delivered);
    assert_eq!(log[1].attempts[0].status, Some(204));
    assert_eq!(log[1].attempt_count, 2);
    assert_eq!(s.deliveries_of("w1", 1).unwrap().len(), 1);
    assert_eq!(s.count_pending_deliveries().unwrap(), 1);
    // At most `limit` per claim.
    s.insert_webhook(&hook("w3", "u2", 3), 10).unwrap();
    s.insert_delivery(&delivery("c1", "w3", "u2", 1), WIDE)
        .unwrap();
    assert_eq!(s.claim_deliveries(10_000, 20_000, 1).unwrap().len(), 1);
}

pub fn the_oldest_pending_delivery_is_dropped_at_the_owners_bound_and_the_log_keeps_the_newest(
    open: Open,
) {
    let s = open(Retention::BUILT_IN);
    let b = DeliveryBounds {
        max_pending_per_owner: 3,
        max_finished_per_webhook: 2,
    };
    s.insert_webhook(&hook("w1", "u1", 1), 10).unwrap();
    s.insert_webhook(&hook("w2", "u1", 2), 10).unwrap();
    s.insert_webhook(&hook("w3", "u2", 3), 10).unwrap();
    let mut dropped = Vec::new();
    for (i, w) in ["w1", "w2", "w1", "w2", "w1"].iter().enumerate() {
        dropped.push(
            s.insert_delivery(&delivery(&format!("d{i}"), w, "u1", 10 + i as u64), b)
                .unwrap(),
        );
    }
    // Another owner's queue is its own.
    assert_eq!(
        s.insert_delivery(&delivery("x", "w3", "u2", 1), b).unwrap(),
        0
    );
    assert_eq!(dropped, [0, 0, 0, 1, 1]);
    assert_eq!(s.count_pending_deliveries().unwrap(), 4);
    let w1 = s.deliveries_of("w1", 10).unwrap();
    assert_eq!(ids(&w1), ["d4", "d2", "d0"]);
    assert_eq!(
        w1.iter().map(|d| d.state).collect::<Vec<_>>(),
        [
            DeliveryState::Pending,
            DeliveryState::Pending,
            DeliveryState::Dropped
        ]
    );
    let w2 = s.deliveries_of("w2", 10).unwrap();
    assert_eq!(
        w2[1].state,
        DeliveryState::Dropped,
        "d1, the owner's second oldest"
    );
    // A dropped delivery is never claimed, and its late outcome does not revive it.
    let c = s.claim_deliveries(100, 10_000, 10).unwrap();
    assert_eq!(
        ids(&c).into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from(["d2".to_owned(), "d3".to_owned(), "x".to_owned()])
    );
    // Finishing: the log keeps the newest 2 finished per webhook.
    for d in c.iter().filter(|d| d.owner == "u1") {
        s.finish_delivery(&done(d.clone(), DeliveryState::Failed, 500), b)
            .unwrap();
    }
    let c = s.claim_deliveries(300, 10_000, 10).unwrap();
    assert_eq!(ids(&c), ["d4"]);
    s.finish_delivery(&done(c[0].clone(), DeliveryState::Delivered, 200), b)
        .unwrap();
    let w1 = s.deliveries_of("w1", 10).unwrap();
    assert_eq!(
        ids(&w1),
        ["d4", "d2"],
        "d0 (dropped, the oldest finished) pruned"
    );
    assert_eq!(w1[1].state, DeliveryState::Failed);
    assert_eq!(
        s.count_pending_deliveries().unwrap(),
        1,
        "only u2's x, held"
    );
}

pub fn concurrent_claims_never_hand_one_delivery_to_two_workers(open: Open) {
    let s = open(Retention::BUILT_IN);
    for w in 0..20 {
        s.insert_webhook(&hook(&format!("w{w}"), &format!("u{}", w % 4), 1), 10)
            .unwrap();
        for i in 0..3 {
            s.insert_delivery(
                &delivery(
                    &format!("d{w}-{i}"),
                    &format!("w{w}"),
                    &format!("u{}", w % 4),
                    1,
                ),
                WIDE,
            )
            .unwrap();
        }
    }
    let got: Vec<Vec<String>> = at_once(8, |_| ids(&s.claim_deliveries(10, 1000, 5).unwrap()));
    let all: Vec<String> = got.into_iter().flatten().collect();
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), distinct.len(), "claimed twice: {all:?}");
    assert_eq!(all.len(), 20, "each webhook's head once: {all:?}");
    assert!(all.iter().all(|d| d.ends_with("-0")), "{all:?}");
}

#[test]
fn postgres_two_processes_claiming_from_one_outbox_never_send_a_delivery_twice_at_once() {
    let Some(pg) = TestPg::start() else {
        return;
    };
    let url = pg.create_db("webhook_claims");
    let a = PgStore::open(&PgConfig::new(url.clone()), Retention::BUILT_IN).unwrap();
    let b = PgStore::open(&PgConfig::new(url), Retention::BUILT_IN).unwrap();
    for w in 0..30 {
        a.insert_webhook(&hook(&format!("w{w}"), "u1", 1), 100)
            .unwrap();
        a.insert_delivery(&delivery(&format!("d{w}"), &format!("w{w}"), "u1", 1), WIDE)
            .unwrap();
    }
    let stores: [&dyn Store; 2] = [&a, &b];
    let all: Vec<String> = at_once(8, |t| {
        ids(&stores[t % 2].claim_deliveries(10, 1000, 6).unwrap())
    })
    .into_iter()
    .flatten()
    .collect();
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), distinct.len(), "claimed twice: {all:?}");
    assert_eq!(all.len(), 30);
}
