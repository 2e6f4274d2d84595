//! Live app output while someone watches: lines from the backend are batched (one
//! `LogBatch` about every 200 ms, QoS 0) until `logs off` or a timeout (10 minutes).
//! Nothing runs while logs are off.
//!
//! The stream keeps to [`MAX_BYTES_PER_SEC`] (burst [`BURST_BYTES`]), a quarter of what the
//! broker allows a device before it disconnects it: an app that prints faster loses lines,
//! not the device's connection, and the watcher sees a line saying how many were dropped.

use crate::pace::TokenBucket;
use hammer_protocol::{LogBatch, PROTOCOL_VERSION};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Longest line sent; longer lines are cut (on a char boundary).
pub const MAX_LINE: usize = 4096;
/// A batch is sent early once it holds this many bytes of text.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Live log bytes per second, sustained.
pub const MAX_BYTES_PER_SEC: u64 = 64 * 1024;
/// Live log bytes sent at once after a quiet moment.
pub const BURST_BYTES: u64 = 256 * 1024;

/// The byte budget of a stream, and the lines it refused.
#[derive(Debug, Clone)]
pub struct Budget {
    bucket: TokenBucket,
    /// Lines refused since the last batch.
    pub dropped: u64,
}

impl Budget {
    pub fn new(now: Instant) -> Budget {
        Budget {
            bucket: TokenBucket::new(MAX_BYTES_PER_SEC, BURST_BYTES, now),
            dropped: 0,
        }
    }

    /// Whether a line of `len` bytes may go out at `now` (else it is counted as dropped).
    pub fn admit(&mut self, len: usize, now: Instant) -> bool {
        let ok = self.bucket.admit(len as u64, now);
        if !ok {
            self.dropped += 1;
        }
        ok
    }
}

/// One live stream.
pub struct LogStream {
    rx: broadcast::Receiver<String>,
    lines: Vec<String>,
    bytes: usize,
    /// When the current batch goes out.
    pub flush_at: Option<Instant>,
    /// When streaming stops by itself.
    pub deadline: Instant,
    batch_every: Duration,
    budget: Budget,
}

/// What happened on the stream.
pub enum Step {
    /// A line was buffered; nothing to send yet.
    Buffered,
    /// The buffer is full: send it now.
    Full,
    /// The source ended.
    Closed,
}

impl LogStream {
    pub fn new(rx: broadcast::Receiver<String>, timeout: Duration, batch_every: Duration) -> Self {
        LogStream {
            rx,
            lines: Vec::new(),
            bytes: 0,
            flush_at: None,
            deadline: Instant::now() + timeout,
            batch_every,
            budget: Budget::new(Instant::now()),
        }
    }

    /// Waits for the next line and buffers it.
    pub async fn next(&mut self) -> Step {
        match self.rx.recv().await {
            Ok(mut line) => {
                if line.len() > MAX_LINE {
                    let mut cut = MAX_LINE;
                    while !line.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    line.truncate(cut);
                }
                if !self.budget.admit(line.len(), Instant::now()) {
                    if self.flush_at.is_none() {
                        self.flush_at = Some(Instant::now() + self.batch_every);
                    }
                    return Step::Buffered;
                }
                self.bytes += line.len();
                self.lines.push(line);
                if self.flush_at.is_none() {
                    self.flush_at = Some(Instant::now() + self.batch_every);
                }
                if self.bytes >= MAX_BATCH_BYTES {
                    Step::Full
                } else {
                    Step::Buffered
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.lines
                    .push(format!("[hammer-manager: {n} lines skipped]"));
                if self.flush_at.is_none() {
                    self.flush_at = Some(Instant::now() + self.batch_every);
                }
                Step::Buffered
            }
            Err(broadcast::error::RecvError::Closed) => Step::Closed,
        }
    }

    /// Takes the buffered lines as a batch (None if empty).
    pub fn take(&mut self) -> Option<LogBatch> {
        self.flush_at = None;
        self.bytes = 0;
        if self.budget.dropped > 0 {
            self.lines.push(format!(
                "[hammer-manager: {} lines dropped: the app printed more than {} KiB/s]",
                self.budget.dropped,
                MAX_BYTES_PER_SEC / 1024
            ));
            self.budget.dropped = 0;
        }
        if self.lines.is_empty() {
            return None;
        }
        Some(LogBatch {
            v: PROTOCOL_VERSION,
            time: hammer_protocol::now_ms(),
            lines: std::mem::take(&mut self.lines),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_burst_then_the_rate_and_counts_what_it_drops() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        let line = 4096;
        let burst_lines = (BURST_BYTES / line as u64) as usize;
        for _ in 0..burst_lines {
            assert!(b.admit(line, t0));
        }
        assert!(!b.admit(line, t0), "the burst is spent");
        assert_eq!(b.dropped, 1);
        // One second later: one second's worth more, no more.
        let t1 = t0 + Duration::from_secs(1);
        let per_sec = (MAX_BYTES_PER_SEC / line as u64) as usize;
        for _ in 0..per_sec {
            assert!(b.admit(line, t1));
        }
        assert!(!b.admit(line, t1));
        // A long quiet time refills only up to the burst.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..burst_lines {
            assert!(b.admit(line, t2));
        }
        assert!(!b.admit(line, t2));
        assert_eq!(b.dropped, 3);
    }

    #[tokio::test]
    async fn a_flooding_app_loses_lines_not_the_stream_and_the_watcher_is_told() {
        let (tx, rx) = broadcast::channel(100_000);
        let mut s = LogStream::new(rx, Duration::from_secs(60), Duration::from_millis(200));
        let line = "x".repeat(1000);
        let n = 2 * BURST_BYTES as usize / 1000;
        for _ in 0..n {
            tx.send(line.clone()).unwrap();
        }
        let mut sent = 0usize;
        let mut text = Vec::new();
        for _ in 0..n {
            if let Step::Full = s.next().await {
                let b = s.take().unwrap();
                sent += b.lines.iter().map(String::len).sum::<usize>();
                text.extend(b.lines);
            }
        }
        let b = s.take().unwrap();
        sent += b.lines.iter().map(String::len).sum::<usize>();
        text.extend(b.lines);
        assert!(sent as u64 <= BURST_BYTES + 200, "{sent} bytes went out");
        assert!(
            text.last().unwrap().contains("lines dropped"),
            "{:?}",
            text.last()
        );
    }
}
