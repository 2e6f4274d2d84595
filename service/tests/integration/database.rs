//! `hammer serve --database`: the whole service on PostgreSQL (a throwaway cluster, see
//! `pg_server`) — users, devices, a deployment and its history through the API — and a
//! restart that keeps them.

use crate::common::{Behavior, Harness};
use crate::pg_server::TestPg;
use hammer_service::store::pg::PgConfig;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_serves_the_api_and_keeps_everything_across_a_restart() {
    // Started on this test's thread: the cluster lives as long as the test.
    let Some(pg) = TestPg::start() else {
        return;
    };
    let url = pg.create_db("hammer");
    let with_db = |cfg: &mut hammer_service::ServeConfig| {
        let mut db = PgConfig::new(url.clone());
        db.pool = 4;
        cfg.database = Some(db);
    };
    let mut h = Harness::start_with(with_db).await;
    let t = h.user("alice").await;
    let dev = h
        .ready_device("alice", &t, "d0", json!({"group": "a"}), Behavior::Succeed)
        .await;
    let (s, v) = h
        .post(
            "/api/v1/deployments",
            &t,
            json!({"targets": {"names": ["d0"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let v = h.wait_deployment(&t, &id, 20).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let (_, hist) = h.get("/api/v1/devices/d0/history", &t).await;
    let phases = hist.as_array().map_or(0, |a| a.len());
    assert!(phases >= 3, "{hist}");
    // The records are in PostgreSQL, not in a sled store under the data dir.
    assert!(!h.dir.path().join("store").exists());
    assert_eq!(pg.sql("hammer", "SELECT count(*) FROM deployments"), "1");
    assert_eq!(
        pg.sql("hammer", "SELECT count(*) FROM users WHERE name = 'alice'"),
        "1"
    );
    drop(dev);

    h.restart_with(with_db).await;
    let (s, me) = h.get("/api/v1/me", &t).await;
    assert_eq!(s, StatusCode::OK, "the token survives: {me}");
    let v = h.client(&t).device("d0").await.unwrap().raw;
    assert_eq!(v["name"], "d0", "{v}");
    let (_, again) = h.get(&format!("/api/v1/deployments/{id}"), &t).await;
    assert_eq!(again["state"], "succeeded", "{again}");
    let (_, list) = h.get("/api/v1/deployments", &t).await;
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "{list}");
    let (_, hist2) = h.get("/api/v1/devices/d0/history", &t).await;
    assert_eq!(hist2.as_array().map_or(0, |a| a.len()), phases, "{hist2}");
    let (s, metrics) = h.get("/metrics", "").await;
    assert_eq!(s, StatusCode::OK);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics.contains("hammer_database_queue_full_total 0"),
        "{metrics}"
    );
    h.svc.take().unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_a_service_on_an_unreachable_database_does_not_start_and_says_why() {
    let Some(pg) = TestPg::start() else {
        return;
    };
    let url = pg.create_db("hammer").replace(&pg.password, "wrong-Pa55");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::common::config(dir.path());
    cfg.database = Some(PgConfig::new(url));
    let e = match hammer_service::start(cfg).await {
        Ok(_) => panic!("started with a wrong password"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(
        !e.contains("wrong-Pa55") && !e.contains(&pg.password),
        "{e}"
    );
}
