//! A token bucket for what the manager sends, kept under the broker's per-device limits
//! (the broker disconnects a device that goes over them). Pure: the time is passed in.

use std::time::Duration;
use tokio::time::Instant;

/// `rate` tokens per second up to `burst`, starting full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: u64,
    burst: u64,
    tokens: u64,
    refilled_at: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate_per_sec: rate_per_sec.max(1),
            burst,
            tokens: burst,
            refilled_at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let add = (elapsed.as_millis() as u64).saturating_mul(self.rate_per_sec) / 1000;
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(self.burst);
            self.refilled_at = now;
        }
    }

    /// Takes `n` tokens at `now` if there are that many.
    pub fn admit(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        if n <= self.tokens {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// When `n` tokens will be there (now if they are).
    pub fn ready_at(&mut self, n: u64, now: Instant) -> Instant {
        self.refill(now);
        let missing = n.min(self.burst).saturating_sub(self.tokens);
        // Whole milliseconds, rounded up, plus one so the refill has happened by then.
        let ms = missing.saturating_mul(1000).div_ceil(self.rate_per_sec) + 1;
        now + Duration::from_millis(if missing == 0 { 0 } else { ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_never_more_than_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 100, t0);
        assert!(b.admit(100, t0));
        assert!(!b.admit(1, t0));
        assert_eq!(b.ready_at(1, t0), t0 + Duration::from_millis(101));
        let t1 = t0 + Duration::from_millis(500);
        assert!(b.admit(5, t1));
        assert!(!b.admit(1, t1));
        let t2 = t1 + Duration::from_secs(3600);
        assert!(b.admit(100, t2));
        assert!(!b.admit(1, t2));
        assert_eq!(b.ready_at(0, t2), t2);
    }
}
