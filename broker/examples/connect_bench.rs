//! Connect benchmark of the broker front door (not a test).
//!
//! Run (release build, from the workspace root):
//!
//! ```text
//! cargo run --release -p hammer-broker --example connect_bench -- --devices 1000
//! cargo run --release -p hammer-broker --example connect_bench -- --devices 10000 --concurrency 500
//! ```
//!
//! Connects N device clients (rumqttc, real mTLS with one certificate each) to an in-process
//! broker and prints the time to connect them all, handshakes per second and the process RSS
//! (broker and clients share the process, so the RSS delta is an upper bound for the broker).
//! Then it does the same against a plain rumqttd: rumqttd's own TLS needs its `use-rustls`
//! feature, which this workspace keeps off (it would pull a second rustls/provider stack), so
//! the comparison is rumqttd over plain TCP with no front door. The ratio therefore shows the
//! cost of TLS plus the front door together. The soft file-descriptor limit is raised to the
//! hard limit; each device needs about 5 descriptors in this single-process setup.

use hammer_broker::{Broker, BrokerConfig};
use hammer_certs::{Ca, Issued, RevocationList};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, TlsConfiguration, Transport,
};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

static ERRORS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Args {
    devices: usize,
    concurrency: usize,
    skip_plain: bool,
}

fn args() -> Args {
    let mut a = Args {
        devices: 1000,
        concurrency: 200,
        skip_plain: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--devices" => a.devices = it.next().and_then(|v| v.parse().ok()).expect("--devices N"),
            "--concurrency" => {
                a.concurrency = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--concurrency N")
            }
            "--skip-plain" => a.skip_plain = true,
            other => {
                panic!("unknown argument {other}; use --devices N [--concurrency N] [--skip-plain]")
            }
        }
    }
    a
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn raise_fd_limit() -> u64 {
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            return lim.rlim_cur;
        }
    }
    0
}

/// Connects every option set, `concurrency` at a time; keeps the clients alive until `hold`
/// fires. Returns (connected, failed, elapsed).
async fn connect_all(
    opts: Vec<MqttOptions>,
    concurrency: usize,
) -> (usize, usize, Duration, Vec<oneshot::Sender<()>>) {
    let sem = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut waits = Vec::with_capacity(opts.len());
    let mut holds = Vec::with_capacity(opts.len());
    for o in opts {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let (done_tx, done_rx) = oneshot::channel::<Option<Duration>>();
        let (hold_tx, hold_rx) = oneshot::channel::<()>();
        holds.push(hold_tx);
        waits.push(done_rx);
        tokio::spawn(async move {
            let t0 = Instant::now();
            let (client, mut el) = AsyncClient::new(o, 10);
            // Under load some handshakes wait behind others; count them, don't time them out.
            el.network_options.set_connection_timeout(30);
            let mut done = Some(done_tx);
            let mut permit = Some(permit);
            let mut hold_rx = hold_rx;
            loop {
                tokio::select! {
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            permit.take();
                            if let Some(d) = done.take() {
                                let _ = d.send((ack.code == ConnectReturnCode::Success).then(|| t0.elapsed()));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if done.is_some()
                                && ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3
                            {
                                eprintln!("client error: {e}");
                            }
                            permit.take();
                            if let Some(d) = done.take() {
                                let _ = d.send(None);
                            }
                            break;
                        }
                    },
                    _ = &mut hold_rx => break,
                }
            }
            drop(client);
        });
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for w in waits {
        match w.await {
            Ok(Some(d)) => lat.push(d),
            _ => failed += 1,
        }
    }
    let took = start.elapsed();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "  per-client connect latency: p50={:.0} ms p99={:.0} ms max={:.0} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    (lat.len(), failed, took, holds)
}

fn report(
    label: &str,
    n: usize,
    ok: usize,
    failed: usize,
    took: Duration,
    rss_before: u64,
    rss_after: u64,
) {
    let secs = took.as_secs_f64().max(1e-9);
    println!(
        "{label:<28} devices={n} connected={ok} failed={failed} time={:.3}s rate={:.0}/s rss_before={} MiB rss_after={} MiB (+{:.1} KiB/device)",
        secs,
        ok as f64 / secs,
        rss_before / 1024,
        rss_after / 1024,
        (rss_after.saturating_sub(rss_before)) as f64 / n.max(1) as f64,
    );
}

fn main() {
    let a = args();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();
    let fds = raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(a, fds));
    // rumqttd threads never stop; leave without waiting for them.
    std::process::exit(0);
}

async fn run(a: Args, fds: u64) {
    hammer_certs::tls::install_default_provider();
    println!(
        "connect_bench: {} devices, {} connecting at a time, fd limit {fds}, {} CPUs",
        a.devices,
        a.concurrency,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let ca = Ca::create("bench fleet").expect("CA");
    let ca_pem = ca.cert().pem().to_owned();
    let server = ca
        .issue_server(
            &["localhost".into()],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Duration::from_secs(86_400),
        )
        .expect("server cert");
    let t = Instant::now();
    let certs: Vec<Issued> = (0..a.devices)
        .map(|i| {
            ca.issue_device(&format!("bench{i}"), "owner", Duration::from_secs(86_400))
                .expect("device cert")
        })
        .collect();
    println!(
        "issued {} device certificates in {:.2}s",
        a.devices,
        t.elapsed().as_secs_f64()
    );

    let mut config = BrokerConfig::new(
        ca_pem.clone(),
        server.cert_pem,
        server.key_pem.expect("server key"),
        Arc::new(RevocationList::in_memory()),
    );
    config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    config.max_connections = a.devices + 100;
    config.max_pending_per_ip = a.concurrency.max(256);
    let handle = Broker::start(config).await.expect("broker");
    let addr = handle.local_addr();

    let opts: Vec<MqttOptions> = certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let tls = hammer_certs::tls::client_config(
                &ca_pem,
                &c.cert_pem,
                c.key_pem.as_deref().unwrap(),
            )
            .expect("client config");
            let mut o = MqttOptions::new(format!("bench{i}"), "127.0.0.1", addr.port());
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
            o.set_keep_alive(Duration::from_secs(120));
            o.set_max_packet_size(hammer_protocol::MAX_PACKET, hammer_protocol::MAX_PACKET);
            o
        })
        .collect();
    let rss_before = rss_kib();
    let (ok, failed, took, holds) = connect_all(opts, a.concurrency).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib();
    report(
        "front door (mTLS)",
        a.devices,
        ok,
        failed,
        took,
        rss_before,
        rss_after,
    );
    let m = handle.metrics();
    println!(
        "  broker: sessions_open={} refusals={:?}",
        m.sessions_open,
        m.refusals
            .iter()
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>()
    );
    drop(holds);
    handle.shutdown();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    if a.skip_plain {
        return;
    }
    // Plain rumqttd, TCP, no front door, no auth.
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let plain_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut v4 = HashMap::new();
    v4.insert(
        "plain".to_owned(),
        rumqttd::ServerSettings {
            name: "plain".into(),
            listen: plain_addr,
            tls: None,
            next_connection_delay_ms: 0,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 10_000,
                max_payload_size: hammer_protocol::MAX_PACKET,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        },
    );
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: a.devices * 2 + 100,
            max_outgoing_packet_count: 200,
            max_segment_size: 256 * 1024,
            max_segment_count: 2,
            ..Default::default()
        },
        v4: Some(v4),
        ..Default::default()
    };
    std::thread::spawn(move || {
        let _ = rumqttd::Broker::new(config).start();
    });
    while std::net::TcpStream::connect(plain_addr).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let opts: Vec<MqttOptions> = (0..a.devices)
        .map(|i| {
            let mut o = MqttOptions::new(format!("plain{i}"), "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(120));
            o
        })
        .collect();
    let rss_before = rss_kib();
    let (ok, failed, took_plain, holds) = connect_all(opts, a.concurrency).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib();
    report(
        "plain rumqttd (TCP, no TLS)",
        a.devices,
        ok,
        failed,
        took_plain,
        rss_before,
        rss_after,
    );
    println!(
        "ratio front door / plain rumqttd connect time: {:.1}x",
        took.as_secs_f64() / took_plain.as_secs_f64().max(1e-9)
    );
    drop(holds);
}
