//! Draining (issue 16, point 3): a stopping replica turns `/healthz` unready at once and keeps
//! serving for its drain grace, then refuses new connections, finishes the requests in
//! flight, and ends every event stream with a `reconnect` event.

use crate::common::Harness;
use futures_util::StreamExt;
use reqwest::StatusCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GRACE: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_service_is_unready_at_once_serves_through_the_grace_then_refuses() {
    let mut h = Harness::start_with(|c| c.drain_grace = GRACE).await;
    let alice = h.user("alice").await;
    let addr = h.svc().http_addr;
    let base = h.base.clone();
    let (status, _) = h.get("/api/v1/devices", &alice).await;
    assert_eq!(status, StatusCode::OK);
    let ready = h.http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    // An open event stream, read to its end in the background.
    let resp = h
        .http
        .get(format!("{base}/api/v1/events"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let stream = tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
                Err(e) => return (text, Err(e.to_string()), Instant::now()),
            }
        }
        (text, Ok(()), Instant::now())
    });

    // Drain: shutdown() drains first.
    let svc = h.svc.take().unwrap();
    let began = Instant::now();
    let stopping = tokio::spawn(svc.shutdown());

    // /healthz turns 503 at once, saying why.
    let unready = loop {
        let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            break began.elapsed();
        }
        assert!(began.elapsed() < Duration::from_millis(500), "still ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let body = reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.starts_with("draining"), "{body}");

    // During the grace an ordinary API request, on a new connection, still succeeds.
    let fresh = reqwest::Client::new();
    let r = fresh
        .get(format!("{base}/api/v1/devices"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        began.elapsed() < GRACE,
        "the checks took the whole grace ({:?})",
        began.elapsed()
    );
    assert!(
        !stream.is_finished(),
        "the event stream ended before the grace"
    );

    // A request in flight when the grace ends: its head and half its body sent now.
    let body = br#"{"name":"carol"}"#;
    let mut inflight = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/users HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        h.admin,
        body.len()
    );
    inflight.write_all(head.as_bytes()).await.unwrap();
    inflight.write_all(&body[..8]).await.unwrap();

    // The grace ends: new connections are refused.
    let refused = loop {
        match TcpStream::connect(addr).await {
            Err(_) => break began.elapsed(),
            Ok(_) => {
                assert!(
                    began.elapsed() < GRACE + Duration::from_secs(3),
                    "still accepting"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert!(
        refused + Duration::from_millis(50) >= GRACE,
        "refused after {refused:?}, before the grace of {GRACE:?}"
    );

    // The request in flight completes.
    inflight.write_all(&body[8..]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), inflight.read_to_end(&mut answer))
        .await
        .expect("the request in flight was not answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 201"),
        "{answer}"
    );
    assert!(answer.contains("token"), "{answer}");

    // The event stream got its last event and ended, cleanly, once the grace was over.
    let (text, end, ended) = tokio::time::timeout(Duration::from_secs(5), stream)
        .await
        .expect("the event stream did not end")
        .unwrap();
    assert!(end.is_ok(), "the stream ended with an error: {end:?}");
    assert!(
        ended.duration_since(began) + Duration::from_millis(50) >= GRACE,
        "the stream ended during the grace"
    );
    let last = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .last()
        .unwrap_or_default();
    assert!(last.contains("event: reconnect"), "{text:?}");
    assert!(last.contains("retry: 1000"), "{text:?}");
    assert!(
        last.contains("data: the service is restarting; reconnect"),
        "{text:?}"
    );

    tokio::time::timeout(
        GRACE + hammer_service::SHUTDOWN_DEADLINE + Duration::from_secs(2),
        stopping,
    )
    .await
    .expect("the service did not stop")
    .unwrap();
    let stopped = began.elapsed();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener accepts after the stop"
    );
    eprintln!(
        "healthz unready after {unready:?}; refused after {refused:?} (grace {GRACE:?}); stopped after {stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_grace_the_service_stops_at_once() {
    let mut h = Harness::start().await;
    let addr = h.svc().http_addr;
    let svc = h.svc.take().unwrap();
    assert_eq!(svc.drain_grace, Duration::ZERO);
    let began = Instant::now();
    svc.shutdown().await;
    let took = began.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(TcpStream::connect(addr).await.is_err());
}
