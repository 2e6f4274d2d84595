//! Bounds under abuse: the descriptor budget (how many connections the front door may hold
//! without running the process out of file descriptors) and the per-identity rate limits
//! (token buckets on every packet a client sends after its CONNECT).
//!
//! The arithmetic here is pure: time and limits are passed in, nothing reads a clock or
//! touches the system except [`raise_nofile`] and [`soft_nofile`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Descriptors always left to the rest of the process (HTTP listeners and their clients,
/// sled, git, the router's channels): at least this many, or a tenth of the limit if more.
pub const MIN_RESERVE: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit in force
/// afterwards. Call it once at start, before [`crate::Broker::start`] (which sizes its
/// connection limits from the soft limit it finds). When the limit cannot be read or raised
/// the current soft limit (or 1024, Linux's usual default, if even that cannot be read) is
/// returned and a warning is logged: the broker then sizes itself to what it has.
pub fn raise_nofile() -> u64 {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read/write the struct we pass, which lives here.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, "cannot read the file descriptor limit (RLIMIT_NOFILE); assuming 1024");
            return 1024;
        }
        if lim.rlim_cur >= lim.rlim_max {
            return rlim(lim.rlim_cur);
        }
        let before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, soft = before, hard = lim.rlim_max, "cannot raise the file descriptor limit to the hard limit; raise LimitNOFILE= (systemd) or `ulimit -n`");
            return rlim(before);
        }
        tracing::info!(
            from = before,
            to = lim.rlim_cur,
            "raised the file descriptor limit"
        );
        rlim(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

/// `rlim_t` is `u64` on Linux but not on every unix.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)]
fn rlim(v: libc::rlim_t) -> u64 {
    v as u64
}

/// The soft `RLIMIT_NOFILE` in force now (1024 when it cannot be read; unlimited counts as
/// `u64::MAX`).
pub fn soft_nofile() -> u64 {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return 1024;
        }
        rlim(lim.rlim_cur)
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

/// The connection limits the front door runs with, sized from the descriptor limit.
///
/// Every accepted socket, whatever its state (waiting for its first byte, waiting for a
/// handshake slot of its address, in its TLS handshake or CONNECT, or an established
/// session), holds one of `max_connections` slots, so their total never exceeds it; the
/// per-address limits are sub-limits inside it. One more descriptor is used for a moment by
/// a connection accepted at the bound before it is refused; the reserve covers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// The soft `RLIMIT_NOFILE` the sizes were computed from.
    pub nofile: u64,
    /// Descriptors left to the rest of the process: `max(nofile / 10, 256)`.
    pub reserve: u64,
    /// Connections of every kind the front door holds at most.
    pub max_connections: usize,
    /// Connections of one source address in their TLS handshake or CONNECT at once.
    pub max_pending_per_ip: usize,
    /// Connections of one source address waiting for such a slot.
    pub max_waiting_per_ip: usize,
}

impl ConnectionLimits {
    /// The limits for a descriptor limit of `nofile` and the configured wishes: each
    /// configured value is kept when the budget (`nofile` minus the reserve) allows it and cut
    /// to the budget otherwise. Never less than one connection (a broker that accepts nothing
    /// is of no use; the service logs the sizes, and a budget that small asks for a higher
    /// `LimitNOFILE`).
    pub fn size(
        nofile: u64,
        max_connections: usize,
        max_pending_per_ip: usize,
        max_waiting_per_ip: usize,
    ) -> ConnectionLimits {
        let reserve = (nofile / 10).max(MIN_RESERVE);
        let budget = nofile.saturating_sub(reserve);
        let budget = usize::try_from(budget).unwrap_or(usize::MAX);
        let max_connections = max_connections.min(budget).max(1);
        ConnectionLimits {
            nofile,
            reserve,
            max_connections,
            max_pending_per_ip: max_pending_per_ip.min(max_connections).max(1),
            max_waiting_per_ip: max_waiting_per_ip.min(max_connections),
        }
    }
}

/// A per-identity rate limit: messages (every packet a client sends after its CONNECT) and
/// bytes per second, each with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Packets per second, sustained.
    pub messages_per_sec: u64,
    /// Packets allowed at once on top of an idle period (the bucket's size).
    pub message_burst: u64,
    /// Bytes (whole MQTT packets) per second, sustained.
    pub bytes_per_sec: u64,
    /// Bytes allowed at once (the bucket's size). Raised to the largest packet at start, or
    /// a maximal packet could never pass.
    pub byte_burst: u64,
}

impl RateLimit {
    /// The default for a device: 50 packets/s with a burst of 1,000, 256 KiB/s with a burst
    /// of 4 MiB.
    ///
    /// What a real device sends (device-manager): a presence on connect, three SUBSCRIBEs,
    /// a health report every 30 s, about ten status events per deployment spread over its
    /// steps, and while someone watches its logs one log batch about every 200 ms (more often
    /// only when a batch reaches 64 KiB). That is under 10 packets/s and, unless the app
    /// floods its output, well under 100 KiB/s: the sustained rates leave five times that.
    /// The bursts cover the one moment a device sends a lot at once: after every CONNACK it
    /// re-sends its whole unacked outbox (status events, each up to 256 KiB with its log
    /// tail); 1,000 events or 4 MiB of them pass at once. What a burst costs the broker is
    /// small (1,000 small messages are a few MB in the router at most), while the abuse this
    /// stops (300,000 messages in under 2 s, 7 GB of memory) is cut off after the burst.
    /// The bucket belongs to the identity, not the connection: reconnecting does not refill it.
    pub const DEVICE: RateLimit = RateLimit {
        messages_per_sec: 50,
        message_burst: 1_000,
        bytes_per_sec: 256 * 1024,
        byte_burst: 4 * 1024 * 1024,
    };
}

/// Nanos per second: token levels are kept in billionths of a token, so refills are exact
/// integers.
const NANO: u128 = 1_000_000_000;

/// A token bucket: `rate` tokens per second up to `burst`, starting full. Pure: the time is
/// passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens × 10⁹.
    level: u128,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate_per_sec: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: rate_per_sec,
            burst,
            level: burst as u128 * NANO,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // Time never runs backwards for the bucket: an earlier `now` adds nothing.
        if now > self.at {
            let dt = now.duration_since(self.at).as_nanos();
            let add = dt.saturating_mul(self.rate as u128);
            self.level = self
                .level
                .saturating_add(add)
                .min(self.burst as u128 * NANO);
            self.at = now;
        }
    }

    /// Takes `n` tokens at `now` if the bucket holds them (after refilling); otherwise takes
    /// nothing and returns false.
    pub fn try_take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let need = n as u128 * NANO;
        if self.level >= need {
            self.level -= need;
            true
        } else {
            false
        }
    }

    /// Whole tokens available at `now`.
    pub fn available(&self, now: Instant) -> u64 {
        let mut b = *self;
        b.refill(now);
        (b.level / NANO) as u64
    }

    /// Whether the bucket is full at `now` (then it is the same as a new one).
    pub fn is_full(&self, now: Instant) -> bool {
        let mut b = *self;
        b.refill(now);
        b.level >= self.burst as u128 * NANO
    }
}

/// Which bucket ran dry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Messages,
    Bytes,
}

/// The two buckets of one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limiter {
    pub limit: RateLimit,
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl Limiter {
    /// Full buckets at `now`.
    pub fn new(limit: RateLimit, now: Instant) -> Limiter {
        Limiter {
            limit,
            messages: TokenBucket::new(limit.messages_per_sec, limit.message_burst, now),
            bytes: TokenBucket::new(limit.bytes_per_sec, limit.byte_burst, now),
        }
    }

    /// Accounts one packet of `len` bytes at `now`. Over either limit: nothing is taken
    /// from the other bucket either, and the answer says which one ran dry.
    pub fn allow(&mut self, len: usize, now: Instant) -> Result<(), Exceeded> {
        let len = len as u64;
        if self.bytes.available(now) < len {
            return Err(Exceeded::Bytes);
        }
        if !self.messages.try_take(1, now) {
            return Err(Exceeded::Messages);
        }
        // Cannot fail: checked above at the same `now`.
        let _ = self.bytes.try_take(len, now);
        Ok(())
    }

    /// Whether both buckets are full at `now` (forgetting the limiter loses nothing).
    pub fn is_rested(&self, now: Instant) -> bool {
        self.messages.is_full(now) && self.bytes.is_full(now)
    }
}

/// The buckets of identities between their sessions, so that reconnecting does not refill
/// them. Only buckets that are not yet full are kept (a full bucket is the same as a new
/// one), so the map holds at most the identities that were busy lately.
#[derive(Debug, Default)]
pub struct RateStore<K> {
    parked: HashMap<K, Limiter>,
    prune_at: usize,
}

impl<K: std::hash::Hash + Eq> RateStore<K> {
    /// The limiter for a new session of `key`: the parked one if it has the same limit, else
    /// a full one.
    pub fn take(&mut self, key: &K, limit: RateLimit, now: Instant) -> Limiter {
        match self.parked.remove(key) {
            Some(l) if l.limit == limit => l,
            _ => Limiter::new(limit, now),
        }
    }

    /// Parks a session's limiter when it ends.
    pub fn put(&mut self, key: K, limiter: Limiter, now: Instant) {
        if limiter.is_rested(now) {
            self.parked.remove(&key);
            return;
        }
        self.parked.insert(key, limiter);
        if self.parked.len() > self.prune_at {
            self.parked.retain(|_, l| !l.is_rested(now));
            self.prune_at = 2 * self.parked.len() + 1024;
        }
    }

    /// Identities with a parked, not yet full, bucket.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    /// Whether no bucket is parked.
    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }
}

/// How often a repeated warning is logged at most (floods must not flood the log).
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bucket_starts_full_and_refuses_past_the_burst() {
        let t = Instant::now();
        let mut b = TokenBucket::new(10, 5, t);
        for _ in 0..5 {
            assert!(b.try_take(1, t));
        }
        assert!(!b.try_take(1, t));
        assert_eq!(b.available(t), 0);
    }

    #[test]
    fn bucket_refills_at_the_rate_and_never_past_the_burst() {
        let t = Instant::now();
        let mut b = TokenBucket::new(10, 5, t);
        assert!(b.try_take(5, t));
        // 100 ms at 10/s: exactly one token.
        assert!(!b.try_take(1, t + 99 * MS));
        assert!(b.try_take(1, t + 100 * MS));
        assert!(!b.try_take(1, t + 100 * MS));
        // An hour later it holds the burst, not 36,000.
        assert_eq!(b.available(t + 3600 * S), 5);
        assert!(b.is_full(t + 3600 * S));
        assert!(!b.try_take(6, t + 3600 * S));
        assert!(b.try_take(5, t + 3600 * S));
    }

    #[test]
    fn bucket_accumulates_fractions_exactly() {
        let t = Instant::now();
        let mut b = TokenBucket::new(3, 1, t);
        assert!(b.try_take(1, t));
        // 3/s: a token every 333.33 ms; three steps of 111,111,111 ns are one short.
        let step = Duration::from_nanos(111_111_111);
        assert!(!b.try_take(1, t + step));
        assert!(!b.try_take(1, t + 2 * step));
        assert!(!b.try_take(1, t + 3 * step));
        assert!(b.try_take(1, t + 3 * step + Duration::from_nanos(1)));
    }

    #[test]
    fn bucket_ignores_time_going_backwards() {
        let t = Instant::now() + S;
        let mut b = TokenBucket::new(10, 2, t);
        assert!(b.try_take(2, t));
        assert!(!b.try_take(1, t - S));
        assert!(b.try_take(1, t + 100 * MS));
    }

    #[test]
    fn bucket_with_zero_rate_never_refills_and_huge_values_do_not_overflow() {
        let t = Instant::now();
        let mut b = TokenBucket::new(0, 1, t);
        assert!(b.try_take(1, t));
        assert!(!b.try_take(1, t + 1_000_000 * S));
        let mut b = TokenBucket::new(u64::MAX, u64::MAX, t);
        assert!(b.try_take(u64::MAX, t));
        assert!(b.try_take(u64::MAX, t + 1_000_000 * S));
    }

    #[test]
    fn limiter_counts_messages_and_bytes_and_charges_nothing_on_refusal() {
        let t = Instant::now();
        let limit = RateLimit {
            messages_per_sec: 10,
            message_burst: 3,
            bytes_per_sec: 1000,
            byte_burst: 1000,
        };
        let mut l = Limiter::new(limit, t);
        assert_eq!(l.allow(600, t), Ok(()));
        // Too many bytes: refused, and the message was not charged either.
        assert_eq!(l.allow(600, t), Err(Exceeded::Bytes));
        assert_eq!(l.allow(100, t), Ok(()));
        assert_eq!(l.allow(100, t), Ok(()));
        assert_eq!(l.allow(1, t), Err(Exceeded::Messages));
        // 100 ms: one message, 100 bytes back.
        assert_eq!(l.allow(300, t + 100 * MS), Ok(()));
        assert!(!l.is_rested(t + 100 * MS));
        assert!(l.is_rested(t + 10 * S));
    }

    #[test]
    fn default_device_limit_passes_a_real_device_and_stops_a_flood() {
        let t = Instant::now();
        let mut l = Limiter::new(RateLimit::DEVICE, t);
        // Reconnect: presence, 3 subscribes and an outbox of 900 small status events at once.
        for i in 0..904 {
            assert_eq!(l.allow(300, t), Ok(()), "packet {i}");
        }
        // Then an hour of a watched log stream (5 batches/s of 8 KiB) and health every 30 s.
        let mut now = t;
        for i in 0..(3600 * 5) {
            now += 200 * MS;
            assert_eq!(l.allow(8 * 1024, now), Ok(()), "batch {i}");
            if i % 150 == 0 {
                assert_eq!(l.allow(200, now), Ok(()));
            }
        }
        // A maximal packet passes on its own.
        let later = now + 60 * S;
        assert_eq!(l.allow(hammer_protocol::MAX_PACKET, later), Ok(()));
        // The measured abuse: 300,000 presence messages of 12 bytes in 1.8 s.
        let mut l = Limiter::new(RateLimit::DEVICE, t);
        let step = Duration::from_nanos(1_800_000_000 / 300_000);
        let passed = (0..300_000u32)
            .take_while(|i| l.allow(12, t + step * *i).is_ok())
            .count();
        assert!(
            (1_000..1_200).contains(&passed),
            "{passed} passed before the cut"
        );
    }

    #[test]
    fn a_parked_bucket_is_not_refilled_by_reconnecting() {
        let t = Instant::now();
        let limit = RateLimit {
            messages_per_sec: 1,
            message_burst: 2,
            bytes_per_sec: 1_000_000,
            byte_burst: 1_000_000,
        };
        let mut store = RateStore::default();
        let mut l = store.take(&"d1", limit, t);
        assert!(l.allow(1, t).is_ok() && l.allow(1, t).is_ok());
        store.put("d1", l, t);
        assert_eq!(store.len(), 1);
        let mut again = store.take(&"d1", limit, t + 10 * MS);
        assert_eq!(again.allow(1, t + 10 * MS), Err(Exceeded::Messages));
        // Another identity has its own bucket.
        let mut other = store.take(&"d2", limit, t);
        assert!(other.allow(1, t).is_ok());
        // A rested bucket is not kept; a changed limit starts afresh.
        store.put("d1", again, t + 10 * S);
        assert!(store.is_empty());
        store.put("d2", other, t);
        let bigger = RateLimit {
            message_burst: 5,
            ..limit
        };
        let mut fresh = store.take(&"d2", bigger, t);
        for _ in 0..5 {
            assert!(fresh.allow(1, t).is_ok());
        }
    }

    #[test]
    fn the_store_forgets_rested_buckets_as_it_grows() {
        let t = Instant::now();
        let limit = RateLimit {
            messages_per_sec: 1,
            message_burst: 1,
            bytes_per_sec: 1,
            byte_burst: 1,
        };
        let mut store = RateStore::default();
        // An identity every millisecond, each leaving a drained bucket: a bucket is full
        // again one second later, so at most about 1,000 are busy at any time.
        for i in 0..5_000u32 {
            let now = t + MS * i;
            let mut l = store.take(&i, limit, now);
            assert!(l.allow(1, now).is_ok());
            store.put(i, l, now);
            assert!(store.len() <= 3_100, "{} parked at {i}", store.len());
        }
        assert!(store.len() > 1_000);
    }

    #[test]
    fn sizes_keep_a_reserve_and_fit_the_budget() {
        // systemd's default soft limit: 1024 - 256 reserved.
        let l = ConnectionLimits::size(1024, 20_000, 256, 4096);
        assert_eq!(l.reserve, 256);
        assert_eq!(l.max_connections, 768);
        assert_eq!(l.max_pending_per_ip, 256);
        assert_eq!(l.max_waiting_per_ip, 768);
        // A tenth when that is more than 256.
        let l = ConnectionLimits::size(65_536, 20_000, 256, 4096);
        assert_eq!(l.reserve, 6553);
        assert_eq!(l.max_connections, 20_000);
        assert_eq!(l.max_waiting_per_ip, 4096);
        let l = ConnectionLimits::size(16_384, 20_000, 256, 4096);
        assert_eq!(l.max_connections, 16_384 - 1638);
        // The configured values are kept when the budget allows them.
        let l = ConnectionLimits::size(524_288, 64, 256, 4096);
        assert_eq!(
            (
                l.max_connections,
                l.max_pending_per_ip,
                l.max_waiting_per_ip
            ),
            (64, 64, 64)
        );
        // Unlimited, and a limit below the reserve (one connection, never zero).
        let l = ConnectionLimits::size(u64::MAX, 20_000, 256, 4096);
        assert_eq!(l.max_connections, 20_000);
        let l = ConnectionLimits::size(100, 20_000, 256, 4096);
        assert_eq!((l.max_connections, l.max_pending_per_ip), (1, 1));
        assert_eq!(l.max_waiting_per_ip, 1);
        // Whatever the input, the connections fit in nofile - reserve (when that is >= 1).
        for nofile in [300u64, 1024, 4096, 10_000, 1 << 20] {
            for wanted in [1usize, 64, 20_000, usize::MAX] {
                let l = ConnectionLimits::size(nofile, wanted, wanted, wanted);
                assert!(l.max_connections as u64 + l.reserve <= nofile, "{l:?}");
                assert!(l.max_pending_per_ip <= l.max_connections);
                assert!(l.max_waiting_per_ip <= l.max_connections);
            }
        }
    }
}
