//! Live app output while someone watches: lines from the backend are batched (one
//! `LogBatch` about every 200 ms, QoS 0) until `logs off` or a timeout (10 minutes).
//! Nothing runs while logs are off.

use hammer_protocol::{LogBatch, PROTOCOL_VERSION};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Longest line sent; longer lines are cut (on a char boundary).
pub const MAX_LINE: usize = 4096;
/// A batch is sent early once it holds this many bytes of text.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

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
