//! The client against a scripted HTTP server on loopback: the request it sends (path, query,
//! token), paging over `next-cursor`, error answers, and the event stream.

use hammer_client::{Client, Conn, Error, EventFilter, Page};
use hammer_protocol::api::Event;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One answer: status, extra headers, body.
type Reply = (u16, Vec<(&'static str, String)>, String);

/// A server that answers each request (its request line, e.g. `GET /api/v1/me HTTP/1.1`, and
/// its lowercased head) with `answer`; returns its URL and every request head it saw.
async fn server(
    answer: impl Fn(&str) -> Reply + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (seen2, answer) = (seen.clone(), Arc::new(answer));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (seen, answer) = (seen2.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head = loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break String::from_utf8_lossy(&buf[..i]).into_owned();
                    }
                };
                seen.lock().unwrap().push(head.clone());
                let (status, headers, body) = answer(head.lines().next().unwrap_or(""));
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                let _ = s.write_all(out.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (url, seen)
}

fn client(url: &str) -> Client {
    Client::new(&Conn::new(url).token("tok-1")).unwrap()
}

#[tokio::test]
async fn a_typed_call_sends_the_token_and_returns_raw_and_typed() {
    let (url, seen) = server(|line| {
        assert!(line.starts_with("GET /api/v1/me "), "{line}");
        (
            200,
            vec![],
            r#"{"id":"u1","name":"alice","admin":false,"extra":1}"#.into(),
        )
    })
    .await;
    let me = client(&url).me().await.unwrap();
    assert_eq!(me.body.name, "alice");
    assert_eq!(me.raw["extra"], 1, "the raw answer is exact");
    let head = seen.lock().unwrap()[0].to_lowercase();
    assert!(head.contains("authorization: bearer tok-1"), "{head}");
}

#[tokio::test]
async fn every_page_is_fetched_with_all_and_put_in_order() {
    let (url, seen) = server(|line| {
        let page = |body: &str, next: Option<&str>| -> Reply {
            let headers = next
                .map(|n| vec![("next-cursor", n.to_owned())])
                .unwrap_or_default();
            (200, headers, body.to_owned())
        };
        let entry = |t: u64| {
            format!(r#"{{"time":{t},"deployment_id":null,"deployer":null,"generation":null,"phase":"running","commit":null,"detail":null}}"#)
        };
        if line.contains("cursor=c1") {
            page(&format!("[{},{}]", entry(1), entry(2)), None)
        } else {
            page(&format!("[{},{}]", entry(3), entry(4)), Some("c1"))
        }
    })
    .await;
    let c = client(&url);
    let first = c.history("d1", Page::first(2)).await.unwrap();
    assert!(first.more);
    assert_eq!(
        first.items.iter().map(|e| e.time).collect::<Vec<_>>(),
        [3, 4]
    );
    let all = c.history("d1", Page::all(Some(2))).await.unwrap();
    assert!(!all.more);
    assert_eq!(
        all.items.iter().map(|e| e.time).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "older pages go in front"
    );
    assert_eq!(all.raw.as_array().unwrap().len(), 4);
    let lines: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.lines().next().unwrap().to_owned())
        .collect();
    assert_eq!(
        lines,
        [
            "GET /api/v1/devices/d1/history?limit=2 HTTP/1.1",
            "GET /api/v1/devices/d1/history?limit=2 HTTP/1.1",
            "GET /api/v1/devices/d1/history?limit=2&cursor=c1 HTTP/1.1",
        ]
    );
}

#[tokio::test]
async fn a_cursor_that_comes_back_ends_the_fetch_with_an_error() {
    let (url, _) = server(|_| (200, vec![("next-cursor", "same".into())], "[]".into())).await;
    let e = client(&url).deployments(Page::all(None)).await.unwrap_err();
    assert!(matches!(e, Error::RepeatedCursor { .. }), "{e}");
}

#[tokio::test]
async fn error_answers_become_sentences() {
    let (url, _) = server(|line| {
        if line.contains("/devices/gone") {
            (404, vec![], r#"{"error":"no device named gone."}"#.into())
        } else if line.contains("/me") {
            (401, vec![], r#"{"error":"invalid token"}"#.into())
        } else {
            (200, vec![], "<html>a proxy</html>".into())
        }
    })
    .await;
    let c = client(&url);
    let e = c.device("gone").await.unwrap_err();
    assert_eq!(e.to_string(), "no device named gone (HTTP 404)");
    assert_eq!(e.status(), Some(404));
    let e = c.me().await.unwrap_err();
    assert!(e.to_string().contains("run `hammer login --url"), "{e}");
    let e = c.devices(None).await.unwrap_err();
    assert!(matches!(e, Error::NotJson { .. }), "{e}");
    assert!(e.to_string().contains("is not JSON"), "{e}");
}

#[tokio::test]
async fn a_json_answer_of_the_wrong_shape_names_the_endpoint() {
    let (url, _) = server(|_| (200, vec![], r#"{"unexpected":true}"#.into())).await;
    let e = client(&url).device("d1").await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("unexpected answer from /devices/d1 ("),
        "{e}"
    );
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = client(&format!("http://127.0.0.1:{port}"))
        .me()
        .await
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(e
        .to_string()
        .starts_with("cannot reach the Hammer service at"));
}

#[tokio::test]
async fn events_are_read_from_the_stream_with_the_filter_in_the_query() {
    let (url, seen) = server(|_| {
        (
            200,
            vec![("content-type", "text/event-stream".into())],
            ": hi\n\ndata: {\"kind\":\"presence\",\"device\":\"d1\",\"online\":true,\"time\":5}\n\ndata: not json\n\ndata: {\"kind\":\"other\"}\n\n".into(),
        )
    })
    .await;
    let mut got = Vec::new();
    client(&url)
        .events(
            EventFilter {
                device: Some("d1"),
                deployment: None,
            },
            |raw, ev| {
                got.push((raw.to_owned(), ev));
                true
            },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(matches!(got[0].1, Event::Presence { online: true, .. }));
    assert_eq!(got[1].1, Event::Unknown);
    let line = seen.lock().unwrap()[0].lines().next().unwrap().to_owned();
    assert_eq!(line, "GET /api/v1/events?device=d1 HTTP/1.1");
}

#[tokio::test]
async fn metrics_are_read_as_text() {
    let (url, _) = server(|line| {
        assert!(line.starts_with("GET /metrics "), "{line}");
        (200, vec![], "# TYPE a counter\na_total 7\n".into())
    })
    .await;
    let text = client(&url).metrics().await.unwrap();
    assert_eq!(hammer_client::metric_value(&text, "a_total"), Some(7.0));
}
