//! A bounded pool of OS threads, each with its own synchronous `postgres::Client`.
//!
//! The [`Store`](crate::store::Store) trait is synchronous and is called from tokio tasks;
//! the synchronous client runs a runtime of its own and panics inside another one. So each
//! call is a closure sent over a bounded queue to one of the pool's threads, and the caller
//! waits for its answer (inside a multi-threaded runtime through `block_in_place`, so the
//! worker's other tasks move to another thread meanwhile).
//!
//! Bounds (docs/limits.md): `size` connections; at most `queue` calls waiting for one (a call
//! beyond fails at once: [`PoolStats::queue_full`]); a caller waits at most
//! `2 × statement_timeout` for its answer ([`PoolStats::timeouts`]). A lost connection is
//! reopened by the next call on that thread (at most one attempt per second per thread
//! unless another thread has connected since; meanwhile calls fail with the last connection
//! error). A read that failed because its
//! connection was lost is tried once more on a new connection; a write is not (it may have
//! been committed).

use super::target::{describe, Target};
use crate::store::{Result, StoreError};
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Least time between two connection attempts of one pool thread.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// Counters of one pool (`/metrics`: `hammer_database_*`).
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Calls refused because the queue was full.
    pub queue_full: AtomicU64,
    /// Calls whose answer did not come within the wait bound.
    pub timeouts: AtomicU64,
    /// Connections opened after the first one of a thread (the database went away).
    pub reconnects: AtomicU64,
    /// Calls that failed (any database error, including the above).
    pub errors: AtomicU64,
    /// Connections opened: a thread in its back-off tries again at once when another
    /// thread has connected since its own attempt failed (the database is back).
    pub connects: AtomicU64,
}

/// One open connection and the statements prepared on it.
pub struct Db {
    pub client: Client,
    stmts: HashMap<&'static str, Statement>,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Db {
    /// `sql` prepared on this connection (once; usable in its transactions).
    pub fn st(&mut self, sql: &'static str) -> std::result::Result<Statement, postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    pub fn query(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> std::result::Result<Vec<Row>, postgres::Error> {
        let s = self.st(sql)?;
        self.client.query(&s, p)
    }

    pub fn query_opt(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> std::result::Result<Option<Row>, postgres::Error> {
        let s = self.st(sql)?;
        self.client.query_opt(&s, p)
    }

    pub fn query_one(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> std::result::Result<Row, postgres::Error> {
        let s = self.st(sql)?;
        self.client.query_one(&s, p)
    }

    pub fn execute(
        &mut self,
        sql: &'static str,
        p: Params<'_>,
    ) -> std::result::Result<u64, postgres::Error> {
        let s = self.st(sql)?;
        self.client.execute(&s, p)
    }
}

/// What one pool thread has: its connection (when open) and its last connection failure.
pub struct Conn {
    target: Arc<Target>,
    stats: Arc<PoolStats>,
    client: Option<Db>,
    opened: u64,
    /// When the last attempt failed, with the error and `connects` at that moment.
    failed: Option<(Instant, String, u64)>,
}

impl Conn {
    /// The open connection, opening one when there is none (or the last one closed).
    fn client(&mut self) -> Result<&mut Db> {
        if self.client.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            if let Some((at, e, connects)) = &self.failed {
                let back = self.stats.connects.load(Relaxed) != *connects;
                if at.elapsed() < RECONNECT_BACKOFF && !back {
                    return Err(StoreError::Backend(e.clone()));
                }
            }
            match self.target.connect() {
                Ok(c) => {
                    self.failed = None;
                    self.stats.connects.fetch_add(1, Relaxed);
                    self.opened += 1;
                    if self.opened > 1 {
                        self.stats.reconnects.fetch_add(1, Relaxed);
                        tracing::info!(database = %self.target, "reconnected to the database");
                    }
                    self.client = Some(Db {
                        client: c,
                        stmts: HashMap::new(),
                    });
                }
                Err(e) => {
                    let connects = self.stats.connects.load(Relaxed);
                    self.failed = Some((Instant::now(), e.message(), connects));
                    return Err(e);
                }
            }
        }
        Ok(self.client.as_mut().expect("opened above"))
    }
}

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// Whether a call may run a second time after its connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A read, or a write that is the same when done twice.
    Once,
    /// A write that must not run twice.
    Never,
}

/// The pool: a queue and the threads taking calls from it.
pub struct Pool {
    tx: Mutex<Option<SyncSender<Job>>>,
    target: Arc<Target>,
    stats: Arc<PoolStats>,
    queue: usize,
    size: usize,
    wait: Duration,
}

impl Pool {
    /// Starts `size` threads (connections are opened by their first call).
    pub fn start(target: Arc<Target>, size: usize, queue: usize) -> Pool {
        let size = size.max(1);
        let (tx, rx) = sync_channel::<Job>(queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(PoolStats::default());
        for i in 0..size {
            let rx = rx.clone();
            let target = target.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name(format!("hammer-pg-{i}"))
                .spawn(move || worker(rx, target, stats))
                .expect("cannot start a database pool thread");
        }
        Pool {
            wait: target.statement_timeout.saturating_mul(2),
            tx: Mutex::new(Some(tx)),
            target,
            stats,
            queue: queue.max(1),
            size,
        }
    }

    /// The pool's counters.
    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }

    /// Runs `f` with a connection on one of the pool's threads and waits for its answer.
    pub fn run<T, F>(&self, retry: Retry, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Db) -> std::result::Result<T, Failure> + Send + 'static,
    {
        let r = self.call(retry, f);
        // A fenced write refused is the store's answer, not a database failure.
        if matches!(r, Err(StoreError::Backend(_))) {
            self.stats.errors.fetch_add(1, Relaxed);
        }
        r
    }

    fn call<T, F>(&self, retry: Retry, mut f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Db) -> std::result::Result<T, Failure> + Send + 'static,
    {
        let (reply_tx, reply_rx) = sync_channel::<Result<T>>(1);
        let target = self.target.clone();
        let job: Job = Box::new(move |conn: &mut Conn| {
            let mut attempt = |conn: &mut Conn| -> (Result<T>, bool) {
                let client = match conn.client() {
                    Ok(c) => c,
                    Err(e) => return (Err(e), false),
                };
                match f(client) {
                    Ok(v) => (Ok(v), false),
                    Err(e) => {
                        let lost = client.client.is_closed();
                        (Err(e.into_store_error(&target, lost)), lost)
                    }
                }
            };
            let (mut r, lost) = attempt(conn);
            if lost && retry == Retry::Once {
                r = attempt(conn).0;
            }
            let _ = reply_tx.send(r);
        });
        {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            let Some(tx) = tx.as_ref() else {
                return Err(StoreError::Backend("the database store is closed".into()));
            };
            match tx.try_send(job) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.stats.queue_full.fetch_add(1, Relaxed);
                    return Err(StoreError::Backend(format!(
                        "the database queue is full ({} calls waiting for {} connections to {}): the database is slower than the load; a larger --database-pool may help",
                        self.queue, self.size, self.target
                    )));
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(StoreError::Backend("the database store is closed".into()))
                }
            }
        }
        let wait = || reply_rx.recv_timeout(self.wait);
        let answer = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        match answer {
            Ok(r) => r,
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Relaxed);
                Err(StoreError::Backend(format!(
                    "the database ({}) did not answer within {} s",
                    self.target,
                    self.wait.as_secs()
                )))
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The threads end when the queue closes; their connections close with them.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

fn worker(rx: Arc<Mutex<Receiver<Job>>>, target: Arc<Target>, stats: Arc<PoolStats>) {
    let mut conn = Conn {
        target,
        stats,
        client: None,
        opened: 0,
        failed: None,
    };
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        job(&mut conn);
    }
}

/// Why a call failed: a database error, a record that does not read back, or the store's
/// own refusal (a fenced write).
#[derive(Debug)]
pub enum Failure {
    Db(postgres::Error),
    Other(String),
    /// Given to the caller as it is.
    Store(StoreError),
}

impl From<postgres::Error> for Failure {
    fn from(e: postgres::Error) -> Failure {
        Failure::Db(e)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Failure {
        Failure::Other(format!("a stored record does not read: {e}"))
    }
}

impl Failure {
    fn into_store_error(self, target: &Target, lost: bool) -> StoreError {
        match self {
            Failure::Db(e) if lost => StoreError::Backend(format!(
                "the connection to the database ({target}) was lost: {}; the next call reconnects",
                describe(&e, target)
            )),
            Failure::Db(e) => {
                StoreError::Backend(format!("database ({target}): {}", describe(&e, target)))
            }
            Failure::Other(m) => StoreError::Backend(m),
            Failure::Store(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_fails_with_a_sentence_without_the_password_and_is_counted() {
        // Port 9 on loopback: nothing listens, connecting fails at once.
        let target = Arc::new(
            Target::parse(
                "postgres://u:hunter2@127.0.0.1:9/db",
                Duration::from_secs(1),
            )
            .unwrap(),
        );
        let pool = Pool::start(target.clone(), 1, 1);
        let e = pool.run(Retry::Once, |_c| Ok(())).unwrap_err().message();
        assert!(e.contains("127.0.0.1:9"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // Within the back-off the same error comes back without a new attempt.
        let again = pool.run(Retry::Once, |_c| Ok(())).unwrap_err().message();
        assert_eq!(e, again);
        assert_eq!(pool.stats().errors.load(Relaxed), 2);
    }

    #[test]
    fn a_call_beyond_the_queue_fails_at_once_and_a_silent_database_within_the_wait_bound() {
        // A listener that never answers: connecting hangs until connect_timeout (3 s).
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "postgres://u:pw@{}/db?connect_timeout=3",
            silent.local_addr().unwrap()
        );
        let target = Arc::new(Target::parse(&url, Duration::from_millis(500)).unwrap());
        let pool = Arc::new(Pool::start(target, 1, 1));
        let busy = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.run(Retry::Never, |_db| Ok(())))
        };
        std::thread::sleep(Duration::from_millis(200));
        let queued = {
            let pool = pool.clone();
            std::thread::spawn(move || pool.run(Retry::Never, |_db| Ok(())))
        };
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let e = pool.run(Retry::Never, |_db| Ok(())).unwrap_err().message();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        assert!(
            e.contains("queue is full") && e.contains("--database-pool"),
            "{e}"
        );
        assert_eq!(pool.stats().queue_full.load(Relaxed), 1);
        // The caller stuck behind the connection attempt gives up after twice the
        // statement timeout.
        let e = busy.join().unwrap().unwrap_err().message();
        assert!(e.contains("did not answer within"), "{e}");
        assert!(queued.join().unwrap().is_err());
        assert!(pool.stats().timeouts.load(Relaxed) >= 1);
    }
}
