//! Building blocks of `abuse-bench`: a well-behaved device that measures the time from each
//! status event to its ack ([`Victim`], `hammer-sim-device`'s latency probe), a bounded MQTT
//! publish flood from one device identity ([`flood`]), bounded sets of stalled TCP
//! connections ([`hold_stalled`]), timed HTTP GETs ([`timed_get`]), the service's RSS
//! sampled every 100 ms ([`RssSampler`]) and the limit counters of `/metrics`
//! ([`scrape_metrics`], [`limit_changes`]).
//!
//! Nothing here treats the service's behaviour as an error: a refused or closed connection,
//! a missing ack or an HTTP error is counted and reported.

use crate::device::Credentials;
use crate::percentile;
use crate::procstat::rss_kib;
use anyhow::Context;
use futures_util::stream::{self, StreamExt};
use hammer_sim_device::{LatencyProbe, SessionConfig};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An MQTT client for a device identity (mTLS with its bundle) and its event loop, with none
/// of a device's manners (no subscriptions, presence, outbox or last will): for the attackers
/// ([`flood`]), which send what they want. A well-behaved device is a `hammer-sim-device`
/// session (the [`Victim`]).
pub fn mqtt_client(
    creds: &Credentials,
    broker: (&str, u16),
    cap: usize,
    connect_timeout: Duration,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let opts = crate::device::mqtt_options(creds, broker, Duration::from_secs(30))?;
    let (client, mut el) = AsyncClient::new(opts, cap);
    el.network_options
        .set_connection_timeout(connect_timeout.as_secs().max(1));
    Ok((client, el))
}

// ---------------------------------------------------------------------------------------
// The victim
// ---------------------------------------------------------------------------------------

/// A well-behaved device of another tenant: `hammer-sim-device`'s latency probe, which
/// publishes a `running` status event every `every` (QoS 1, outbox, resend after 5 s, like
/// the manager) and measures each event's time to the service's signed ack.
pub struct Victim(LatencyProbe);

/// Ack latency of the victim's events sent in one window.
#[derive(Debug, Clone, Default)]
pub struct AckStats {
    pub sent: usize,
    pub acked: usize,
    /// Sent in the window and still not acked when measured.
    pub missed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Connections the victim lost during the whole run so far.
    pub disconnects: u64,
}

impl AckStats {
    pub fn line(&self) -> String {
        format!(
            "{} events, {} acked: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; missed {}; victim disconnects so far {}",
            self.sent, self.acked, self.p50_ms, self.p99_ms, self.max_ms, self.missed, self.disconnects
        )
    }
}

impl Victim {
    /// Connects and starts publishing; waits (up to `timeout`) until subscribed to its acks.
    pub async fn start(
        creds: &Credentials,
        broker: (&str, u16),
        every: Duration,
        timeout: Duration,
    ) -> anyhow::Result<Victim> {
        let cfg = SessionConfig {
            request_cap: 256,
            manager_version: "abuse-bench victim".into(),
            ready_timeout: timeout,
            ..SessionConfig::new((broker.0.to_owned(), broker.1))
        };
        let probe = LatencyProbe::connect(creds, cfg, every)
            .await
            .context("the victim device did not connect")?;
        Ok(Victim(probe))
    }

    /// Ack figures of the events first sent in `[from, to)`.
    pub fn window(&self, from: Instant, to: Instant) -> AckStats {
        let w = self.0.window(from, to);
        let lat: Vec<f64> = w
            .latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        AckStats {
            sent: w.sent(),
            acked: lat.len(),
            missed: w.missed,
            p50_ms: percentile(&lat, 50.0),
            p99_ms: percentile(&lat, 99.0),
            max_ms: lat.last().copied().unwrap_or(0.0),
            disconnects: self.0.disconnects(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Publish floods
// ---------------------------------------------------------------------------------------

/// What one flood did.
#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    /// Messages handed to the client.
    pub produced: u64,
    /// PUBLISH packets written to the connection.
    pub written: u64,
    /// PUBACKs received (QoS 1).
    pub acked: u64,
    /// Payload bytes handed to the client.
    pub bytes_produced: u64,
    /// Established connections the broker closed.
    pub cut_offs: u64,
    /// PUBLISH packets written before the first cut-off.
    pub first_cut_after: Option<u64>,
    /// Reconnects that failed (refused, TLS error, timeout).
    pub connect_failures: u64,
    pub connects: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Stopped by the time bound rather than by reaching the count.
    pub timed_out: bool,
}

impl FloodReport {
    pub fn line(&self, want: u64) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        let mut s = format!(
            "{} of {want} messages written ({:.1} MB of payload handed to the client) in {:.1} s ({:.0}/s)",
            self.written,
            self.bytes_produced as f64 / 1e6,
            secs,
            self.written as f64 / secs
        );
        if self.acked > 0 {
            s += &format!(", {} PUBACKs", self.acked);
        }
        if self.timed_out {
            s += ", stopped by the time bound";
        }
        match self.first_cut_after {
            Some(n) => {
                s += &format!(
                    "; CUT OFF {} time(s), first after {n} messages",
                    self.cut_offs
                )
            }
            None => s += "; never cut off",
        }
        if self.connect_failures > 0 {
            s += &format!("; {} reconnects failed", self.connect_failures);
        }
        if let Some(e) = &self.first_error {
            s += &format!(" (first error: {e})");
        }
        s
    }

    pub fn short(&self) -> String {
        match self.first_cut_after {
            Some(n) => format!("cut off after {n} ({}x)", self.cut_offs),
            None => format!("not cut off ({} sent)", self.written),
        }
    }
}

/// Publishes up to `count` messages made by `make(i)` on `topic` from one device identity,
/// as fast as the connection takes them, until `deadline`. A connection the broker closes is
/// counted and reconnected after 1 s (an attacker does not give up).
#[allow(clippy::too_many_arguments)]
pub async fn flood(
    creds: &Credentials,
    broker: (&str, u16),
    topic: String,
    qos: QoS,
    retain: bool,
    count: u64,
    deadline: Instant,
    make: impl Fn(u64) -> Vec<u8> + Send + Sync + 'static,
) -> anyhow::Result<FloodReport> {
    let (client, mut el) = mqtt_client(creds, broker, 1024, Duration::from_secs(10))?;
    let t0 = Instant::now();
    let produced = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let producer_done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (produced, done, bytes) = (produced.clone(), producer_done.clone(), bytes.clone());
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..count {
                let payload = make(i);
                let len = payload.len() as u64;
                let fut = client.publish(topic.clone(), qos, retain, payload);
                match tokio::time::timeout_at(deadline.into(), fut).await {
                    Ok(Ok(())) => {
                        produced.fetch_add(1, Relaxed);
                        bytes.fetch_add(len, Relaxed);
                    }
                    _ => break,
                }
            }
            done.store(true, Relaxed);
        })
    };
    let mut r = FloodReport::default();
    let mut connected = false;
    // After the producer is done: at most this long to drain what is queued.
    let mut drain_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if producer_done.load(Relaxed) {
            let p = produced.load(Relaxed);
            let finished = match qos {
                QoS::AtMostOnce => r.written >= p,
                _ => r.acked >= p,
            };
            if finished {
                break;
            }
            let until = *drain_until.get_or_insert(now + Duration::from_secs(10));
            if now > until {
                break;
            }
        }
        if now > deadline {
            r.timed_out = true;
            break;
        }
        let ev = tokio::select! {
            ev = el.poll() => ev,
            _ = tokio::time::sleep_until(deadline.into()) => continue,
            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
        };
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                connected = true;
                r.connects += 1;
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) => r.written += 1,
            Ok(Event::Incoming(Incoming::PubAck(_))) => r.acked += 1,
            Ok(_) => {}
            Err(e) => {
                if connected {
                    r.cut_offs += 1;
                    r.first_cut_after.get_or_insert(r.written);
                } else {
                    r.connect_failures += 1;
                }
                connected = false;
                if r.first_error.is_none() {
                    r.first_error = Some(e.to_string());
                }
                let pause = Instant::now() + Duration::from_secs(1);
                tokio::time::sleep_until(pause.min(deadline).into()).await;
            }
        }
    }
    producer.abort();
    if !producer_done.load(Relaxed) && Instant::now() >= deadline {
        r.timed_out = true;
    }
    r.produced = produced.load(Relaxed);
    r.bytes_produced = bytes.load(Relaxed);
    r.elapsed = t0.elapsed();
    // Close without a DISCONNECT racing the queue: dropping the loop closes the socket.
    drop(el);
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// Stalled connections
// ---------------------------------------------------------------------------------------

/// A set of TCP connections that sent `head` (possibly nothing) and then stall.
pub struct Stalled {
    pub wanted: usize,
    pub opened: usize,
    pub failed: usize,
    pub first_failure: Option<String>,
    /// How long opening them all took.
    pub opening: Duration,
    /// Seconds after opening at which the server closed each one it closed.
    closed: Arc<Mutex<Vec<f64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Stalled {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Stalled {
    /// How many the server closed so far, and the median time to close.
    pub fn closed(&self) -> (usize, f64) {
        let mut c = lock(&self.closed).clone();
        c.sort_by(f64::total_cmp);
        (c.len(), percentile(&c, 50.0))
    }

    pub fn line(&self) -> String {
        let (n, p50) = self.closed();
        let mut s = format!(
            "{} of {} opened in {:.1} s",
            self.opened,
            self.wanted,
            self.opening.as_secs_f64()
        );
        if self.failed > 0 {
            s += &format!(
                ", {} failed to open ({})",
                self.failed,
                self.first_failure.as_deref().unwrap_or("?")
            );
        }
        if n > 0 {
            s += &format!("; {n} closed by the server (median after {p50:.1} s)");
        } else {
            s += "; none closed by the server";
        }
        s
    }
}

/// Opens `n` TCP connections to `addr` (64 at a time, 5 s connect timeout each), writes
/// `head` on each and keeps them open, noting when the server closes one.
pub async fn hold_stalled(addr: SocketAddr, n: usize, head: &'static [u8]) -> Stalled {
    let closed: Arc<Mutex<Vec<f64>>> = Arc::default();
    let t0 = Instant::now();
    let results: Vec<Result<tokio::task::JoinHandle<()>, String>> = stream::iter(0..n)
        .map(|_| {
            let closed = closed.clone();
            async move {
                let mut s = match tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("connect timed out".into()),
                };
                let t0 = Instant::now();
                if !head.is_empty() {
                    if let Err(e) = s.write_all(head).await {
                        return Err(format!("write: {e}"));
                    }
                }
                Ok(tokio::spawn(async move {
                    // Whatever the server answers, keep reading until it closes.
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    lock(&closed).push(t0.elapsed().as_secs_f64());
                }))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut st = Stalled {
        wanted: n,
        opened: 0,
        failed: 0,
        first_failure: None,
        opening: t0.elapsed(),
        closed,
        tasks: Vec::with_capacity(n),
    };
    for r in results {
        match r {
            Ok(t) => {
                st.opened += 1;
                st.tasks.push(t);
            }
            Err(e) => {
                st.failed += 1;
                st.first_failure.get_or_insert(e);
            }
        }
    }
    st
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// One timed GET.
#[derive(Debug, Clone)]
pub struct Got {
    pub status: u16,
    pub bytes: usize,
    pub took: Duration,
    pub body: String,
    pub next_cursor: bool,
}

/// GET `url` with a bearer token; the time includes reading the whole body.
pub async fn timed_get(http: &reqwest::Client, url: &str, token: &str) -> Result<Got, String> {
    let t0 = Instant::now();
    let r = http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("{e:#}"))?;
    let status = r.status().as_u16();
    let next_cursor = r.headers().contains_key("next-cursor");
    let body = r.text().await.map_err(|e| format!("{e:#}"))?;
    Ok(Got {
        status,
        bytes: body.len(),
        took: t0.elapsed(),
        body,
        next_cursor,
    })
}

/// Latency samples of one endpoint.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub ms: Vec<f64>,
    pub failed: usize,
    pub first_failure: Option<String>,
    pub last_bytes: usize,
}

impl Samples {
    pub fn push(&mut self, r: Result<Got, String>) {
        match r {
            Ok(g) if (200..300).contains(&g.status) => {
                self.ms.push(g.took.as_secs_f64() * 1000.0);
                self.last_bytes = g.bytes;
            }
            Ok(g) => {
                self.failed += 1;
                self.first_failure.get_or_insert(format!(
                    "HTTP {}: {}",
                    g.status,
                    g.body.chars().take(120).collect::<String>()
                ));
            }
            Err(e) => {
                self.failed += 1;
                self.first_failure.get_or_insert(e);
            }
        }
    }

    pub fn line(&self) -> String {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        let mut s = format!(
            "{} ok: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; body {} bytes",
            v.len(),
            percentile(&v, 50.0),
            percentile(&v, 99.0),
            v.last().copied().unwrap_or(0.0),
            self.last_bytes
        );
        if self.failed > 0 {
            s += &format!(
                "; {} FAILED ({})",
                self.failed,
                self.first_failure.as_deref().unwrap_or("?")
            );
        }
        s
    }

    pub fn short(&self) -> String {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        format!(
            "p50 {:.0} / max {:.0} ms{}",
            percentile(&v, 50.0),
            v.last().copied().unwrap_or(0.0),
            if self.failed > 0 {
                format!(", {} failed", self.failed)
            } else {
                String::new()
            }
        )
    }
}

/// An HTTP client that opens a new connection for every request (a fresh client each time).
pub fn fresh_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(0)
        .build()
        .context("cannot set up the HTTP client")
}

// ---------------------------------------------------------------------------------------
// RSS and metrics
// ---------------------------------------------------------------------------------------

/// The service's RSS, sampled every 100 ms for the whole run.
pub struct RssSampler {
    pid: u32,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let samples: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let s = samples.clone();
        let task = tokio::spawn(async move {
            let pid = pid.to_string();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let kib = rss_kib(&pid);
                if kib > 0 {
                    lock(&s).push((Instant::now(), kib));
                }
            }
        });
        RssSampler { pid, samples, task }
    }

    /// RSS now, in KiB (0 if the process is gone).
    pub fn now(&self) -> u64 {
        rss_kib(&self.pid.to_string())
    }

    /// The highest sample in `[from, to]`, in KiB.
    pub fn peak(&self, from: Instant, to: Instant) -> u64 {
        lock(&self.samples)
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0)
    }
}

/// Every sample of `/metrics` (`name{labels}` → value); HTTP errors are errors.
pub async fn scrape_metrics(
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> Result<BTreeMap<String, f64>, String> {
    let g = timed_get(http, &format!("{base}/metrics"), token).await?;
    if !(200..300).contains(&g.status) {
        return Err(format!("/metrics answered HTTP {}", g.status));
    }
    Ok(parse_metrics(&g.body))
}

/// Parses the Prometheus text format (samples only).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.trim().rsplit_once(' ')?;
            Some((k.trim().to_owned(), v.parse::<f64>().ok()?))
        })
        .collect()
}

/// Words that mark a limit counter (in the sample's name or labels).
pub const LIMIT_WORDS: [&str; 9] = [
    "refus", "shed", "drop", "reject", "limit", "coalesc", "evict", "timeout", "quota",
];

/// The limit counters that changed between two scrapes: (sample, before, after).
pub fn limit_changes(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> Vec<(String, f64, f64)> {
    after
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            LIMIT_WORDS.iter().any(|w| k.contains(w))
        })
        .filter_map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or(0.0);
            (*a != b).then(|| (k.clone(), b, *a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_changed_limit_counters() {
        let before = parse_metrics(
            "# HELP x\nhammer_status_events_shed_total 1\nhammer_broker_refusals_total{reason=\"rate_limit\"} 0\nhammer_acks_sent_total 5\n",
        );
        let after = parse_metrics(
            "hammer_status_events_shed_total 1\nhammer_broker_refusals_total{reason=\"rate_limit\"} 3\nhammer_acks_sent_total 9\nhammer_log_batches_dropped_total 2\n",
        );
        let c = limit_changes(&before, &after);
        assert_eq!(
            c,
            vec![
                (
                    "hammer_broker_refusals_total{reason=\"rate_limit\"}".to_owned(),
                    0.0,
                    3.0
                ),
                ("hammer_log_batches_dropped_total".to_owned(), 0.0, 2.0),
            ]
        );
    }
}
