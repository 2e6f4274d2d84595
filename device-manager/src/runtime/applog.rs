//! App output: a size-bounded, rotated log file (`app.log`, `app.log.1`), an in-memory ring
//! buffer of the last lines, and a broadcast of live lines while logs are on.
//!
//! The file rotates when it would pass `max_bytes`, so the two files together hold at most
//! about twice that. Lines are numbered so a failure report can take the tail of one app
//! instance only.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::broadcast;

/// Lines kept in memory.
pub const RING_LINES: usize = 200;
/// Lines sent with a failure report.
pub const TAIL_LINES: usize = 20;
/// Longer lines are cut (and a line without newline is split) at this many bytes.
const MAX_LINE: usize = 4096;

struct Inner {
    ring: VecDeque<(u64, String)>,
    next: u64,
    file: Option<File>,
    written: u64,
}

/// Shared app output sink. Cheap to clone.
#[derive(Clone)]
pub struct AppLog {
    inner: Arc<Mutex<Inner>>,
    path: PathBuf,
    max_bytes: u64,
    live_on: Arc<AtomicBool>,
    live: broadcast::Sender<String>,
}

impl AppLog {
    pub fn new(path: PathBuf, max_bytes: u64) -> AppLog {
        let written = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let (live, _) = broadcast::channel(1024);
        AppLog {
            inner: Arc::new(Mutex::new(Inner {
                ring: VecDeque::with_capacity(RING_LINES),
                next: 0,
                file: None,
                written,
            })),
            path,
            max_bytes: max_bytes.max(1024),
            live_on: Arc::new(AtomicBool::new(false)),
            live,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number the next line will get; pass it to [`AppLog::tail_since`].
    pub fn mark(&self) -> u64 {
        self.lock().next
    }

    /// Records one line (also used for the manager's own notes about the app).
    pub fn push(&self, line: String) {
        let mut inner = self.lock();
        let n = inner.next;
        inner.next += 1;
        if let Err(e) = self.write_file(&mut inner, &line) {
            tracing::warn!("app log file {}: {e}", self.path.display());
            inner.file = None;
        }
        if inner.ring.len() == RING_LINES {
            inner.ring.pop_front();
        }
        if self.live_on.load(Ordering::Relaxed) && self.live.receiver_count() > 0 {
            let _ = self.live.send(line.clone());
        }
        inner.ring.push_back((n, line));
    }

    fn write_file(&self, inner: &mut Inner, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if inner.written > 0 && inner.written + len > self.max_bytes {
            inner.file = None;
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            std::fs::rename(&self.path, rotated)?;
            inner.written = 0;
        }
        if inner.file.is_none() {
            inner.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        if let Some(f) = inner.file.as_mut() {
            f.write_all(line.as_bytes())?;
            f.write_all(b"\n")?;
            inner.written += len;
        }
        Ok(())
    }

    /// The last `n` lines numbered `from` or later.
    pub fn tail_since(&self, from: u64, n: usize) -> Vec<String> {
        let inner = self.lock();
        let lines: Vec<String> = inner
            .ring
            .iter()
            .filter(|(i, _)| *i >= from)
            .map(|(_, l)| l.clone())
            .collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// Turns live streaming on or off.
    pub fn set_live(&self, on: bool) {
        self.live_on.store(on, Ordering::Relaxed);
    }

    /// A receiver of live lines (only sent while live streaming is on).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.live.subscribe()
    }

    /// Reads `stream` line by line into the log until it closes; each line also goes to
    /// `tail` (without the prefix) when given.
    pub async fn pump<R: AsyncRead + Unpin>(
        self,
        stream: R,
        prefix: &'static str,
        tail: Option<Tail>,
    ) {
        let mut reader = BufReader::new(stream);
        let mut line: Vec<u8> = Vec::new();
        while let Ok(buf) = reader.fill_buf().await {
            if buf.is_empty() {
                break;
            }
            let (used, complete) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            let take = if complete { used - 1 } else { used };
            line.extend_from_slice(&buf[..take.min(room)]);
            reader.consume(used);
            if complete || line.len() >= MAX_LINE {
                self.emit(prefix, &line, tail.as_ref());
                line.clear();
            }
        }
        if !line.is_empty() {
            self.emit(prefix, &line, tail.as_ref());
        }
    }

    fn emit(&self, prefix: &str, bytes: &[u8], tail: Option<&Tail>) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches('\r');
        if let Some(tail) = tail {
            tail.push(text.to_string());
        }
        self.push(format!("{prefix}{text}"));
    }
}

/// The last lines of one process's output, apart from the shared ring buffer (which the
/// running app may fill meanwhile): what a failed install reports. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Tail {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Tail {
    fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last [`TAIL_LINES`] lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_tail_and_rotation() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.log");
        let log = AppLog::new(path.clone(), 1024);
        for i in 0..10 {
            log.push(format!("early {i}"));
        }
        let mark = log.mark();
        for i in 0..300 {
            log.push(format!("line {i:03} {}", "x".repeat(40)));
        }
        let tail = log.tail_since(mark, TAIL_LINES);
        assert_eq!(tail.len(), TAIL_LINES);
        assert!(tail[TAIL_LINES - 1].starts_with("line 299"));
        assert!(log.tail_since(0, RING_LINES + 50).len() <= RING_LINES);
        let size = std::fs::metadata(&path).expect("log").len();
        let rotated = std::fs::metadata(dir.path().join("app.log.1"))
            .expect("rotated")
            .len();
        assert!(size <= 1024 && rotated <= 1024, "{size} {rotated}");
    }

    #[tokio::test]
    async fn a_tail_keeps_the_last_lines_of_its_own_stream_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = AppLog::new(dir.path().join("app.log"), 1 << 20);
        let tail = Tail::default();
        let text: String = (0..30).map(|i| format!("step {i}\n")).collect();
        log.push("the running app says hi".into());
        log.clone()
            .pump(text.as_bytes(), "[install] ", Some(tail.clone()))
            .await;
        let lines = tail.lines();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[0], "step 10");
        assert_eq!(lines[TAIL_LINES - 1], "step 29");
        let all = log.tail_since(0, 100);
        assert_eq!(all[0], "the running app says hi");
        assert_eq!(all[1], "[install] step 0");
    }
}
