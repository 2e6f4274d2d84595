//! The HTTP listener stays bounded under abuse: half-sent requests are closed after the
//! header-read timeout, connections over the per-address or total cap are closed at once
//! and counted, and `/healthz` keeps answering another address while one floods the port.
//! Every flood is bounded in count and time; everything is on 127.0.0.0/8.

use crate::common;

use crate::common::Harness;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const HALF_SENT: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";

async fn start(tweak: impl FnOnce(&mut hammer_service::ServeConfig)) -> Harness {
    common::init();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path());
    tweak(&mut cfg);
    let svc = hammer_service::start(cfg).await.unwrap();
    Harness {
        base: svc.http_url(),
        admin: svc.admin_token.clone(),
        svc: Some(svc),
        dir,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
    }
}

/// A TCP connection to `to` from `from` (any port).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// Whether the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => {
            // A response (e.g. 408) then the close.
            tokio::time::timeout(within, s.read_to_end(&mut Vec::new()))
                .await
                .is_ok()
        }
        Err(_) => false,
    }
}

/// `GET path` from a client bound to `from`.
async fn get_from(from: &str, base: &str, path: &str) -> (reqwest::StatusCode, String) {
    let c = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = c.get(format!("{base}{path}")).send().await.unwrap();
    let s = r.status();
    (s, r.text().await.unwrap())
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line_start} missing from {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_answers_a_new_address_while_another_floods_the_port_with_half_sent_requests() {
    const CAP: usize = 8;
    const FLOOD: usize = 48;
    let h = start(|c| {
        c.http_limits.max_connections_per_address = CAP;
        c.http_limits.max_connections = Some(32);
        // Long enough that the flood is still there when the new client comes.
        c.http_limits.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = h.svc().http_addr;
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let mut s = connect_from("127.0.0.1", addr).await;
        let _ = s.write_all(HALF_SENT).await;
        flood.push(s);
    }
    // Exactly the first CAP stay open; the server closes the rest at once.
    let mut open = 0;
    for s in &mut flood {
        if !closed_within(s, Duration::from_millis(300)).await {
            open += 1;
        }
    }
    assert_eq!(open, CAP, "open flood connections");

    // A well-behaved client from another address is served.
    let (s, body) = get_from("127.0.0.2", &h.base, "/healthz").await;
    assert_eq!((s.as_u16(), body.as_str()), (200, "ok\n"));
    // The flooding address itself is still refused.
    let mut again = connect_from("127.0.0.1", addr).await;
    let _ = again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(closed_within(&mut again, Duration::from_secs(5)).await);

    let (_, m) = get_from("127.0.0.2", &h.base, "/metrics").await;
    let refused = metric(
        &m,
        "hammer_http_connections_refused_total{listener=\"api\",reason=\"max_connections_per_address\"}",
    );
    assert!(refused > (FLOOD - CAP) as u64, "{refused}");
    assert_eq!(
        metric(
            &m,
            "hammer_http_connections_refused_total{listener=\"api\",reason=\"max_connections\"}"
        ),
        0
    );
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_total_cap_a_new_connection_is_closed_at_once_and_served_again_below_it() {
    let h = start(|c| {
        c.http_limits.max_connections = Some(4);
        c.http_limits.header_read_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = h.svc().http_addr;
    let mut held = Vec::new();
    for from in ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"] {
        let mut s = connect_from(from, addr).await;
        s.write_all(HALF_SENT).await.unwrap();
        held.push(s);
    }
    for s in &mut held {
        assert!(!closed_within(s, Duration::from_millis(200)).await);
    }
    let mut fifth = connect_from("127.0.0.7", addr).await;
    let _ = fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(closed_within(&mut fifth, Duration::from_secs(5)).await);

    drop(held.pop());
    // The slot comes back once the server sees the close.
    let mut served = None;
    for _ in 0..50 {
        let c = reqwest::Client::builder()
            .local_address("127.0.0.7".parse::<IpAddr>().unwrap())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        if let Ok(r) = c.get(format!("{}/metrics", h.base)).send().await {
            served = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = served.expect("never served below the cap");
    assert!(
        metric(
            &m,
            "hammer_http_connections_refused_total{listener=\"api\",reason=\"max_connections\"}"
        ) >= 1,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_half_sent_request_is_closed_after_the_header_read_timeout() {
    // hyper's own default is 30 s: closing within 10 s proves the configured one applies.
    let h = start(|c| c.http_limits.header_read_timeout = Duration::from_millis(300)).await;
    let mut s = connect_from("127.0.0.1", h.svc().http_addr).await;
    s.write_all(HALF_SENT).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    let (_, m) = h.get("/metrics", "").await;
    let m = m.as_str().unwrap().to_owned();
    assert_eq!(
        metric(
            &m,
            "hammer_http_connections_closed_total{listener=\"api\",reason=\"header_timeout\"}"
        ),
        1,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_request_body_is_closed_after_the_idle_timeout() {
    let h = start(|c| c.http_limits.idle_timeout = Duration::from_millis(500)).await;
    let t = h.user("alice").await;
    let mut s = connect_from("127.0.0.1", h.svc().http_addr).await;
    let head = format!(
        "POST /api/v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    let (_, m) = h.get("/metrics", "").await;
    let m = m.as_str().unwrap().to_owned();
    assert!(
        metric(
            &m,
            "hammer_http_connections_closed_total{listener=\"api\",reason=\"idle_timeout\"}"
        ) >= 1,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_stream_outlives_the_idle_timeout_while_its_client_reads() {
    let idle = Duration::from_millis(800);
    let h = start(|c| c.http_limits.idle_timeout = idle).await;
    let t = h.user("alice").await;
    let mut resp = h
        .http
        .get(format!("{}/api/v1/events", h.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    // An idle keep-alive connection next to it is closed meanwhile: the timeout is active.
    let mut quiet = connect_from("127.0.0.1", h.svc().http_addr).await;
    quiet
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + idle * 4;
    let mut comments = 0;
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => {
                comments += String::from_utf8_lossy(&c).matches(':').count();
            }
            Ok(Ok(None)) | Ok(Err(_)) => panic!("the event stream was closed"),
            Err(_) => break,
        }
    }
    assert!(comments >= 2, "keep-alive comments seen: {comments}");
    assert!(closed_within(&mut quiet, Duration::from_secs(10)).await);
}
