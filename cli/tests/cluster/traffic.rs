//! API clients through the load balancer, all the time: reads (devices, deployments) and a
//! write (create an API token, then revoke it). Every request that fails (transport error or
//! an answer other than 2xx) is recorded with its time and the phase of the test it fell in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Failure {
    /// Since the traffic started.
    pub at: Duration,
    pub phase: String,
    pub request: String,
    pub error: String,
}

#[derive(Default)]
struct State {
    phase: String,
    /// phase → (sent, failed).
    counts: BTreeMap<String, (u64, u64)>,
    failures: Vec<Failure>,
}

pub struct Traffic {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn one(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
) -> Result<serde_json::Value, String> {
    let rsp = client
        .request(method, &url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = rsp.status();
    let body = rsp.bytes().await.map_err(|e| format!("body: {e:?}"))?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    if body.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| format!("{status} but not JSON ({e})"))
}

impl Traffic {
    /// Starts `workers` clients against `base` (the load balancer) with `token`.
    pub fn start(base: &str, token: &str, workers: usize) -> Traffic {
        let state = Arc::new(Mutex::new(State {
            phase: "start".into(),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let tasks = (0..workers)
            .map(|_| {
                let (state, stop) = (state.clone(), stop.clone());
                let (base, token) = (base.to_owned(), token.to_owned());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(15))
                        .build()
                        .unwrap();
                    let note = |request: &str, r: &Result<serde_json::Value, String>| {
                        let mut s = state.lock().unwrap();
                        let phase = s.phase.clone();
                        let c = s.counts.entry(phase.clone()).or_default();
                        c.0 += 1;
                        if let Err(e) = r {
                            c.1 += 1;
                            s.failures.push(Failure {
                                at: t0.elapsed(),
                                phase,
                                request: request.to_owned(),
                                error: e.clone(),
                            });
                        }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        for path in ["/api/v1/devices", "/api/v1/deployments"] {
                            let r = one(
                                &client,
                                reqwest::Method::GET,
                                format!("{base}{path}"),
                                &token,
                            )
                            .await;
                            note(&format!("GET {path}"), &r);
                        }
                        let r = one(
                            &client,
                            reqwest::Method::POST,
                            format!("{base}/api/v1/tokens"),
                            &token,
                        )
                        .await;
                        note("POST /api/v1/tokens", &r);
                        if let Some(id) = r.ok().and_then(|v| v["id"].as_str().map(String::from)) {
                            let path = format!("/api/v1/tokens/{id}");
                            let r = one(
                                &client,
                                reqwest::Method::DELETE,
                                format!("{base}{path}"),
                                &token,
                            )
                            .await;
                            note("DELETE /api/v1/tokens/{id}", &r);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Traffic { state, stop, tasks }
    }

    /// Requests from now on count in `phase`.
    pub fn phase(&self, phase: &str) {
        self.state.lock().unwrap().phase = phase.to_owned();
    }

    pub fn failures(&self, phase: &str) -> Vec<Failure> {
        let s = self.state.lock().unwrap();
        s.failures
            .iter()
            .filter(|f| f.phase == phase)
            .cloned()
            .collect()
    }

    /// Every phase with (sent, failed).
    pub fn summary(&self) -> BTreeMap<String, (u64, u64)> {
        self.state.lock().unwrap().counts.clone()
    }

    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
    }
}

/// One ended event stream.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub phase: String,
    /// The answer's status line.
    pub status: String,
    /// Whether `event: reconnect` came before the end.
    pub reconnect: bool,
}

/// A client of `GET /api/v1/events` through the load balancer that reconnects whenever its
/// stream ends (as the dashboard and `hammer events` do), recording how each stream ended.
pub struct EventStreams {
    phase: Arc<Mutex<String>>,
    ends: Arc<Mutex<Vec<StreamEnd>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventStreams {
    pub fn start(port: u16, token: &str) -> EventStreams {
        use std::io::{Read, Write};
        let phase = Arc::new(Mutex::new("start".to_owned()));
        let ends = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, e, s, token) = (phase.clone(), ends.clone(), stop.clone(), token.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let addr = ([127, 0, 0, 1], port).into();
                let Ok(mut conn) =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                else {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                };
                conn.set_read_timeout(Some(Duration::from_millis(300))).ok();
                // `Connection: close`: the end of the stream closes the connection (else the load
                // balancer keeps it open for the next request).
                let req = format!(
                    "GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
                );
                if conn.write_all(req.as_bytes()).is_err() {
                    continue;
                }
                let mut text = Vec::new();
                let mut buf = [0u8; 4096];
                let ended = loop {
                    if s.load(Ordering::Relaxed) {
                        break false;
                    }
                    match conn.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(n) => text.extend_from_slice(&buf[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break true,
                    }
                };
                if !ended {
                    break;
                }
                let text = String::from_utf8_lossy(&text);
                e.lock().unwrap().push(StreamEnd {
                    phase: p.lock().unwrap().clone(),
                    status: text.lines().next().unwrap_or("").to_owned(),
                    reconnect: text.contains("event: reconnect"),
                });
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        EventStreams {
            phase,
            ends,
            stop,
            thread: Some(thread),
        }
    }

    pub fn phase(&self, phase: &str) {
        *self.phase.lock().unwrap() = phase.to_owned();
    }

    pub fn stop(mut self) -> Vec<StreamEnd> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ends.lock().unwrap().clone()
    }
}
