//! The HTTP(S) listeners: an accept loop of our own over hyper's HTTP/1 connection, so that
//! every connection is bounded:
//!
//! - at most `max_connections` open per listener and `max_connections_per_address` per
//!   source IP; a connection over either cap is closed at once and counted by reason (the
//!   per-address cap is what keeps `/healthz` answering while one address floods the port);
//! - a TLS handshake gets `handshake_timeout`, done in the connection's own task so that one
//!   idle client cannot stall the others;
//! - a request head must arrive within `header_read_timeout` (hyper's clock, which also runs
//!   while a keep-alive connection waits for its next request);
//! - a connection waiting on its client (no request being handled, or a handler waiting for
//!   more of the request body) with no byte moving either way for `idle_timeout` is closed:
//!   a body sent halfway, a client that stopped reading its response. A handler still
//!   working is never cut. Event streams write a comment at least every quarter of
//!   `idle_timeout` ([`sse_keep_alive`]), so they are not cut while the client reads;
//! - on stop: no more accepts, every connection finishes its request in flight (hyper's
//!   graceful shutdown) within `shutdown_grace`, then the rest are dropped.

use crate::config::HttpLimits;
pub use crate::http_stats::ListenerStats;
use crate::limits::Peer;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The bounds one listener applies, with the connection cap resolved.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub handshake_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl ConnLimits {
    /// `limits` with the connection cap sized from `nofile` (the soft open-file limit) when
    /// it is not set.
    pub fn resolve(limits: &HttpLimits, nofile: Option<u64>) -> ConnLimits {
        let max_connections = limits.max_connections.unwrap_or_else(|| {
            crate::limits::http_connection_cap(
                nofile.unwrap_or(crate::limits::MAX_HTTP_CONNECTIONS as u64 * 4),
            )
        });
        ConnLimits {
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            max_connections: max_connections.max(1),
            max_connections_per_address: limits.max_connections_per_address.max(1),
            handshake_timeout: limits.handshake_timeout,
            shutdown_grace: limits.shutdown_grace,
        }
    }
}

/// How often an event stream sends a keep-alive comment: 15 s, or a quarter of the idle
/// timeout when that is shorter, so a stream whose client reads is never idle.
pub fn sse_keep_alive(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(15))
}

/// Why a connection was refused or closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener had `max_connections` open.
    MaxConnections,
    /// The source address had `max_connections_per_address` open.
    MaxPerAddress,
}

/// Open connections of one listener, in total and by source address.
struct Slots {
    max_total: usize,
    max_per_address: usize,
    inner: Mutex<SlotsInner>,
    stats: Arc<ListenerStats>,
}

#[derive(Default)]
struct SlotsInner {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// One open connection's place; given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn new(max_total: usize, max_per_address: usize, stats: Arc<ListenerStats>) -> Arc<Slots> {
        Arc::new(Slots {
            max_total,
            max_per_address,
            inner: Mutex::new(SlotsInner::default()),
            stats,
        })
    }

    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.total >= self.max_total {
            return Err(Refusal::MaxConnections);
        }
        let n = g.by_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_address {
            return Err(Refusal::MaxPerAddress);
        }
        *n += 1;
        g.total += 1;
        self.stats.open.store(g.total, Relaxed);
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn counts(&self, ip: IpAddr) -> (usize, usize) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (g.total, g.by_ip.get(&ip).copied().unwrap_or(0))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.slots.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.total = g.total.saturating_sub(1);
        if let Some(n) = g.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.by_ip.remove(&self.ip);
            }
        }
        self.slots.stats.open.store(g.total, Relaxed);
    }
}

/// When a connection last moved a byte, how many of its requests are being handled, and
/// whether a handler is waiting for the client to send more of a request body.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    body_waiting: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            body_waiting: std::sync::atomic::AtomicBool::new(false),
        })
    }
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ms.load(Relaxed)))
    }
    /// Whether the connection waits on the client: no request being handled, or a handler
    /// waiting for more of the request body. A handler still working is not idle.
    fn waits_on_client(&self) -> bool {
        self.in_flight.load(Relaxed) == 0 || self.body_waiting.load(Relaxed)
    }
}

/// A request body that records whether its reader is waiting for the client.
struct WatchedBody {
    inner: Incoming,
    activity: Arc<Activity>,
}

impl hyper::body::Body for WatchedBody {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        self.activity.body_waiting.store(r.is_pending(), Relaxed);
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.activity.body_waiting.store(false, Relaxed);
    }
}

/// Counts a request in flight until dropped (the handler returned or was cancelled).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Relaxed);
        a.touch();
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        self.0.touch();
    }
}

/// A stream that records when bytes move.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `app` on `tcp` (TLS when `tls` is set) within `limits` until `stop` turns true;
/// `stats` counts what happens (see [`crate::http_stats::render_listeners`]).
pub async fn serve(
    tcp: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
    stats: Arc<ListenerStats>,
) -> io::Result<()> {
    let local = tcp.local_addr()?;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Slots::new(
        limits.max_connections,
        limits.max_connections_per_address,
        stats.clone(),
    );
    let limits = Arc::new(limits);
    let mut conns = JoinSet::new();
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let (sock, peer) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Relaxed);
                    if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        last_accept_warning = Some(Instant::now());
                        tracing::warn!(listener = stats.name, %local, error = %e, "accept failed (out of file descriptors? raise `ulimit -n` or lower --max-http-connections)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = stopped(&mut stop) => break,
        };
        let slot = match slots.try_acquire(peer.ip()) {
            Ok(s) => s,
            Err(reason) => {
                match reason {
                    Refusal::MaxConnections => &stats.refused_max_connections,
                    Refusal::MaxPerAddress => &stats.refused_per_address,
                }
                .fetch_add(1, Relaxed);
                tracing::debug!(listener = stats.name, %peer, ?reason, "connection refused: at the cap");
                drop(sock);
                continue;
            }
        };
        stats.accepted.fetch_add(1, Relaxed);
        conns.spawn(connection(
            sock,
            peer,
            acceptor.clone(),
            app.clone(),
            limits.clone(),
            stats.clone(),
            stop.clone(),
            slot,
        ));
    }
    drop(tcp);
    // Connections saw the stop too and are finishing their requests in flight.
    let grace = limits.shutdown_grace + Duration::from_secs(1);
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::info!(
            listener = stats.name,
            left = conns.len(),
            "closing connections still busy after the shutdown grace"
        );
    }
    conns.shutdown().await;
    Ok(())
}

/// Resolves once `stop` is true (without holding the watch's lock, so the future stays
/// `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: Arc<ConnLimits>,
    stats: Arc<ListenerStats>,
    mut stop: watch::Receiver<bool>,
    _slot: Slot,
) {
    let _ = sock.set_nodelay(true);
    match tls {
        None => drive(sock, peer, app, &limits, &stats, stop).await,
        Some(acceptor) => {
            let hs = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(sock));
            let s = tokio::select! {
                r = hs => r,
                _ = stopped(&mut stop) => return,
            };
            match s {
                Ok(Ok(s)) => drive(s, peer, app, &limits, &stats, stop).await,
                Ok(Err(e)) => {
                    stats.handshake_failures.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    stats.handshake_failures.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

async fn drive<S>(
    io: S,
    peer: SocketAddr,
    app: axum::Router,
    limits: &ConnLimits,
    stats: &ListenerStats,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(Tracked {
        inner: io,
        activity: activity.clone(),
    });
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(|inner| WatchedBody {
            inner,
            activity: act.clone(),
        });
        req.extensions_mut().insert(ConnectInfo(Peer(peer)));
        let guard = InFlight::new(&act);
        let app = app.clone();
        async move {
            let r = app.oneshot(req).await;
            drop(guard);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let tick = (limits.idle_timeout / 8).clamp(Duration::from_millis(20), Duration::from_secs(5));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining: Option<Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        stats.header_timeouts.fetch_add(1, Relaxed);
                        tracing::debug!(%peer, "closed: request head not received in time");
                    } else {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                return;
            }
            _ = stopped(&mut stop), if draining.is_none() => {
                conn.as_mut().graceful_shutdown();
                draining = Some(Instant::now());
            }
            _ = ticker.tick() => {
                if let Some(t) = draining {
                    if t.elapsed() >= limits.shutdown_grace {
                        tracing::debug!(%peer, "closed: still busy after the shutdown grace");
                        return;
                    }
                }
                if activity.waits_on_client() && activity.idle_for() >= limits.idle_timeout {
                    stats.idle_timeouts.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "closed: idle");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn slots_refuse_over_the_per_address_cap_and_free_on_drop() {
        let stats = ListenerStats::new("t");
        let slots = Slots::new(10, 2, stats.clone());
        let a = slots.try_acquire(ip("10.0.0.1")).unwrap();
        let _b = slots.try_acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(
            slots.try_acquire(ip("10.0.0.1")).err(),
            Some(Refusal::MaxPerAddress)
        );
        // Another address is unaffected.
        let _c = slots.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(stats.open.load(Relaxed), 3);
        drop(a);
        assert_eq!(slots.counts(ip("10.0.0.1")), (2, 1));
        assert!(slots.try_acquire(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn slots_refuse_over_the_total_cap_whatever_the_address() {
        let stats = ListenerStats::new("t");
        let slots = Slots::new(2, 5, stats.clone());
        let _a = slots.try_acquire(ip("10.0.0.1")).unwrap();
        let b = slots.try_acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(
            slots.try_acquire(ip("10.0.0.3")).err(),
            Some(Refusal::MaxConnections)
        );
        drop(b);
        assert_eq!(slots.counts(ip("10.0.0.2")), (1, 0));
        assert!(slots.try_acquire(ip("10.0.0.3")).is_ok());
        assert_eq!(stats.open.load(Relaxed), 1);
    }

    #[test]
    fn listener_counters_render_with_their_reason() {
        let stats = ListenerStats::new("api");
        stats.refused_per_address.fetch_add(3, Relaxed);
        let text = crate::http_stats::render_listeners(&[&stats]);
        assert!(text.contains(
            "hammer_http_connections_refused_total{listener=\"api\",reason=\"max_connections_per_address\"} 3"
        ), "{text}");
        assert!(
            text.contains("# TYPE hammer_http_connections_open gauge"),
            "{text}"
        );
    }

    #[test]
    fn event_stream_keep_alive_is_well_inside_the_idle_timeout() {
        assert_eq!(
            sse_keep_alive(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            sse_keep_alive(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        for secs in [1, 10, 59, 600] {
            let idle = Duration::from_secs(secs);
            assert!(sse_keep_alive(idle) * 2 < idle, "{secs}");
        }
    }

    #[test]
    fn unset_cap_is_sized_from_the_descriptor_budget() {
        let l = ConnLimits::resolve(&HttpLimits::default(), Some(1024));
        assert_eq!(l.max_connections, crate::limits::http_connection_cap(1024));
        let set = HttpLimits {
            max_connections: Some(7),
            ..HttpLimits::default()
        };
        assert_eq!(ConnLimits::resolve(&set, Some(1024)).max_connections, 7);
    }
}
