//! The PostgreSQL implementation of [`Store`] (`hammer serve --database postgres://…`): the
//! only module that touches PostgreSQL. Decision 0010 says why it looks like this.
//!
//! - [`pool`]: the calls run on a bounded pool of OS threads, each with its own synchronous
//!   connection; the trait stays synchronous and its callers unchanged.
//! - [`migrate`]: the schema as embedded versioned migrations (`migrations/*.sql`), applied
//!   on open; a newer schema than this build knows is refused.
//! - [`target`]: the URL (never shown with its password) and the TLS rule; [`tls`]: rustls
//!   (ring) under the client library.
//! - [`status`]: status events (exactly-once insert, acks, history, retention).
//! - The audit log: table `audit` (migration 5), appended and pruned per user in one
//!   transaction that holds a per-user advisory lock.
//! - Maintenance windows: table `windows` (migration 7), counted and inserted per user in one
//!   transaction that holds a per-user advisory lock.
//! - Webhooks: tables `webhooks` and `deliveries` (migration 6); a user's webhook inserts and
//!   delivery enqueues run under a per-user advisory lock (the bounds hold exactly); a claim
//!   is one statement (`FOR UPDATE SKIP LOCKED`, then `UPDATE … WHERE claimed_until <= now`
//!   re-checked under the lock), so two replicas never hold the same delivery.
//!
//! Records are stored whole as JSON (`rec`), with the columns the store looks them up, orders
//! or prunes by beside them. Every write is committed when the call returns (visible to every
//! process) without waiting for the disk; [`Store::flush`] waits, once, for all of them.
//! Concurrency holds across processes: unique keys
//! with `ON CONFLICT DO NOTHING` decide "is it new" (users, device names, status events),
//! `DELETE … RETURNING` gives an enrollment token to one caller, a version column makes
//! [`Store::update_device`] a compare-and-swap, one device's status inserts are
//! serialized on its `status_heads` row, a lease is taken by one conditional upsert of its
//! `leases` row, and a fenced write checks that row under a share lock in the transaction
//! that writes (a takeover waits for it, or the check sees the takeover).

pub mod migrate;
pub mod pool;
pub mod status;
pub mod target;
pub mod tls;

use super::*;
use pool::{Db, Failure, Pool, Retry};
use postgres::types::Json;
use postgres::Row;
use std::sync::{Arc, Mutex};
use target::Target;

/// How `hammer serve` reaches PostgreSQL (`--database` and its bounds).
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` — a secret: shown only redacted.
    pub url: String,
    /// Connections (pool threads), `--database-pool` (default 8).
    pub pool: usize,
    /// Calls waiting for a connection; beyond, a call fails at once (default 1,024).
    pub queue: usize,
    /// Bound of every statement, `--database-statement-timeout` (default 10 s); a caller
    /// waits at most twice this long for its answer.
    pub statement_timeout: Duration,
}

impl PgConfig {
    pub const DEFAULT_POOL: usize = 8;
    pub const DEFAULT_QUEUE: usize = 1024;
    pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

    /// `url` with the default bounds.
    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            pool: Self::DEFAULT_POOL,
            queue: Self::DEFAULT_QUEUE,
            statement_timeout: Self::DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &target::redact_url(&self.url))
            .field("pool", &self.pool)
            .field("queue", &self.queue)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// The store in a PostgreSQL database.
pub struct PgStore {
    pool: Pool,
    target: Arc<Target>,
    retention: Retention,
}

/// The pool counters of the store opened last in this process: they go to `/metrics`.
static IN_USE: Mutex<Option<Arc<pool::PoolStats>>> = Mutex::new(None);

/// `/metrics` lines of the PostgreSQL store in use (nothing with the sled store).
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let Some(t) = IN_USE.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
        return;
    };
    for (name, help, v) in [
        (
            "hammer_database_queue_full_total",
            "Store calls refused because every database connection was busy and the queue full.",
            &t.queue_full,
        ),
        (
            "hammer_database_timeouts_total",
            "Store calls the database did not answer in time.",
            &t.timeouts,
        ),
        (
            "hammer_database_reconnects_total",
            "Database connections opened again after one was lost.",
            &t.reconnects,
        ),
        (
            "hammer_database_errors_total",
            "Store calls that failed.",
            &t.errors,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Relaxed)
        );
    }
}

/// A u64 (epoch, seq) as a BIGINT that sorts the same way (shifted by 2^63).
fn o(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

/// The inverse of [`o`].
fn u(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// A time or position as BIGINT (values beyond i64 stay at its maximum).
fn ts(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The record in the first column of `row`.
fn json<T: serde::de::DeserializeOwned>(row: &Row) -> std::result::Result<T, Failure> {
    Ok(row.try_get::<_, Json<T>>(0)?.0)
}

/// A page from rows of `(ord, rec)` read newest first with one row more than `limit`: the
/// records (newest first) and, when there are more, the `ord` of the last one kept (the
/// cursor of the next, older, page).
fn newest_first_page<T: serde::de::DeserializeOwned>(
    rows: &[Row],
    limit: usize,
) -> std::result::Result<(Vec<T>, Option<u64>), Failure> {
    let mut items = Vec::with_capacity(limit.min(rows.len()));
    let mut next = None;
    for row in rows.iter().take(limit) {
        let ord: i64 = row.try_get(0)?;
        let rec: Json<T> = row.try_get(1)?;
        items.push(rec.0);
        next = Some(u64::try_from(ord).unwrap_or(0));
    }
    Ok((items, next.filter(|_| rows.len() > limit)))
}

fn one<T: serde::de::DeserializeOwned>(
    row: Option<Row>,
) -> std::result::Result<Option<T>, Failure> {
    row.as_ref().map(json).transpose()
}

fn all<T: serde::de::DeserializeOwned>(rows: Vec<Row>) -> std::result::Result<Vec<T>, Failure> {
    rows.iter().map(json).collect()
}

impl PgStore {
    /// Connects, applies the migrations the database lacks and starts the pool. Blocking:
    /// from async code call it on a blocking thread.
    pub fn open(cfg: &PgConfig, retention: Retention) -> Result<PgStore> {
        let target = Arc::new(Target::parse(&cfg.url, cfg.statement_timeout)?);
        let pool = Pool::start(target.clone(), cfg.pool, cfg.queue);
        let (from, to) = pool
            .run(Retry::Once, |db| migrate::migrate(db, migrate::MIGRATIONS))
            .map_err(|e| {
                StoreError::Backend(format!(
                    "cannot open the database {target}: {}",
                    e.message()
                ))
            })?;
        if from != to {
            tracing::info!(database = %target, from, to, "database schema migrated");
        }
        tracing::info!(database = %target, connections = cfg.pool.max(1), queue = cfg.queue.max(1), statement_timeout_ms = cfg.statement_timeout.as_millis() as u64, schema = to, "store: PostgreSQL");
        *IN_USE.lock().unwrap_or_else(|p| p.into_inner()) = Some(pool.stats());
        Ok(PgStore {
            pool,
            target,
            retention,
        })
    }

    /// The database as shown in logs: `user@host:port/db`.
    pub fn name(&self) -> String {
        self.target.to_string()
    }

    fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Db) -> std::result::Result<T, Failure> + Send + 'static,
    {
        self.pool.run(Retry::Once, f)
    }

    fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut Db) -> std::result::Result<T, Failure> + Send + 'static,
    {
        self.pool.run(Retry::Never, f)
    }

    /// Finished deployments that finished before this time (now, as BIGINT) are pruned.
    fn oldest_kept(&self) -> i64 {
        ts(hammer_protocol::now_ms().saturating_sub(self.retention.max_age_ms()))
    }
}

/// Writes a deployment (insert or replace); a new one prunes its owner's oldest finished
/// deployments older than `oldest_kept`.
const UPSERT_DEPLOYMENT: &str =
    "INSERT INTO deployments (id, owner, created_at, finished_at, running, rec) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, \
       created_at = EXCLUDED.created_at, finished_at = EXCLUDED.finished_at, \
       running = EXCLUDED.running, rec = EXCLUDED.rec \
     RETURNING (xmax = 0)";

/// Removes an owner's oldest finished deployments (at most [`PRUNE_BATCH`] checked) whose
/// finish is older than the retention age.
const PRUNE_DEPLOYMENTS: &str = "DELETE FROM deployments WHERE id IN ( \
       SELECT id FROM ( \
         SELECT id, created_at, finished_at, running FROM deployments \
         WHERE owner = $1 ORDER BY created_at, id LIMIT $3) oldest \
       WHERE created_at < $2 AND finished_at < $2 AND NOT running)";

/// Writes `d` with the prepared [`UPSERT_DEPLOYMENT`] and, when it is new, prunes with
/// [`PRUNE_DEPLOYMENTS`] (on a connection or within a transaction).
fn write_deployment(
    c: &mut impl postgres::GenericClient,
    upsert: &postgres::Statement,
    prune: &postgres::Statement,
    d: &DeploymentRecord,
    oldest_kept: i64,
) -> std::result::Result<(), Failure> {
    let finished = d.finished_at.map(ts);
    let running = d.state == DeploymentState::Running;
    let inserted: bool = c
        .query_opt(
            upsert,
            &[
                &d.id,
                &d.owner,
                &ts(d.created_at),
                &finished,
                &running,
                &Json(d),
            ],
        )?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(false);
    if inserted {
        let removed = c.execute(prune, &[&d.owner, &oldest_kept, &(PRUNE_BATCH as i64)])?;
        if removed > 0 {
            tracing::info!(owner = %d.owner, removed, "pruned old finished deployments");
        }
    }
    Ok(())
}

/// Removes `webhook`'s oldest finished deliveries beyond `bounds.max_finished_per_webhook`
/// (at most [`PRUNE_BATCH`]).
fn prune_deliveries(
    tx: &mut postgres::Transaction<'_>,
    webhook: &str,
    bounds: DeliveryBounds,
) -> std::result::Result<(), Failure> {
    tx.execute(
        "DELETE FROM deliveries WHERE ord IN ( \
           SELECT ord FROM deliveries WHERE webhook_id = $1 AND NOT pending \
           ORDER BY ord DESC OFFSET $2 LIMIT $3)",
        &[
            &webhook,
            &ts(bounds.max_finished_per_webhook),
            &n(PRUNE_BATCH),
        ],
    )?;
    Ok(())
}

/// Advisory lock key held by a session insert ("hmsess" in ASCII): the caps hold across
/// replicas.
const SESSIONS_LOCK: i64 = 0x68_6d_73_65_73_73;

/// A session from a row of (id_hash, user_id, token_hash, created_at, expires_at).
fn session_of(r: &Row) -> std::result::Result<SessionRecord, Failure> {
    Ok(SessionRecord {
        id_hash: r.try_get(0)?,
        user_id: r.try_get(1)?,
        token_hash: r.try_get(2)?,
        created_at: u64::try_from(r.try_get::<_, i64>(3)?).unwrap_or(0),
        expires_at: u64::try_from(r.try_get::<_, i64>(4)?).unwrap_or(0),
    })
}

/// A count or cap as BIGINT.
fn n(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A lease from a row of (name, holder, token, expires_at).
fn lease_of(r: &Row) -> std::result::Result<Lease, Failure> {
    Ok(Lease {
        name: r.try_get(0)?,
        holder: r.try_get(1)?,
        token: u64::try_from(r.try_get::<_, i64>(2)?).unwrap_or(0),
        expires_at: u64::try_from(r.try_get::<_, i64>(3)?).unwrap_or(0),
    })
}

/// Owned copies of a call's arguments, moved into the closure the pool runs.
fn s(v: &str) -> String {
    v.to_owned()
}

impl Store for PgStore {
    fn retention(&self) -> Retention {
        self.retention
    }

    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        // Every connection commits without waiting for the disk; this commit waits (it
        // writes a commit record, `txid_current`), and the WAL is one sequence: everything
        // committed before it, by any connection, is on disk (and on synchronous standbys)
        // when it returns. One wait per batch of writes instead of one per write.
        Box::pin(async move {
            self.read(|db| {
                db.client.batch_execute(
                    "BEGIN; SET LOCAL synchronous_commit = on; SELECT txid_current(); COMMIT",
                )?;
                Ok(())
            })
        })
    }

    fn insert_user(&self, user: &UserRecord) -> Result<bool> {
        let user = user.clone();
        self.write(move |db| {
            Ok(db.execute(
                "INSERT INTO users (id, name, rec) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&user.id, &user.name, &Json(&user)],
            )? == 1)
        })
    }

    fn user(&self, id: &str) -> Result<Option<UserRecord>> {
        let id = s(id);
        self.read(move |db| one(db.query_opt("SELECT rec FROM users WHERE id = $1", &[&id])?))
    }

    fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        let name = s(name);
        self.read(move |db| one(db.query_opt("SELECT rec FROM users WHERE name = $1", &[&name])?))
    }

    fn users(&self) -> Result<Vec<UserRecord>> {
        self.read(|db| all(db.query("SELECT rec FROM users ORDER BY id", &[])?))
    }

    fn update_user(
        &self,
        id: &str,
        f: &mut (dyn FnMut(&mut UserRecord) + Send),
    ) -> Result<Option<UserRecord>> {
        // Read, apply `f` here, write only over the record read; again on contention.
        loop {
            let key = s(id);
            let Some(old) = self.read(move |db| {
                let Some(row) = db.query_opt("SELECT rec FROM users WHERE id = $1", &[&key])?
                else {
                    return Ok(None);
                };
                let rec: Json<UserRecord> = row.try_get(0)?;
                Ok(Some(rec.0))
            })?
            else {
                return Ok(None);
            };
            let mut rec = old.clone();
            f(&mut rec);
            let (key, new) = (s(id), rec.clone());
            let written = self.write(move |db| {
                Ok(db.execute(
                    "UPDATE users SET rec = $3 WHERE id = $1 AND rec = $2",
                    &[&key, &Json(&old), &Json(&new)],
                )? == 1)
            })?;
            if written {
                return Ok(Some(rec));
            }
        }
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        let t = token.clone();
        self.read(move |db| {
            db.execute(
                "INSERT INTO tokens (hash, user_id, id, rec) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (hash) DO UPDATE \
                 SET user_id = EXCLUDED.user_id, id = EXCLUDED.id, rec = EXCLUDED.rec",
                &[&t.hash, &t.user_id, &t.id, &Json(&t)],
            )?;
            Ok(())
        })
    }

    fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        let hash = s(hash);
        let t: Option<TokenRecord> = self.read(move |db| {
            one(db.query_opt("SELECT rec FROM tokens WHERE hash = $1", &[&hash])?)
        })?;
        Ok(t.filter(TokenRecord::valid))
    }

    fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRecord>> {
        let user = s(user_id);
        let all: Vec<TokenRecord> = self.read(move |db| {
            all(db.query(
                "SELECT rec FROM tokens WHERE user_id = $1 ORDER BY id",
                &[&user],
            )?)
        })?;
        Ok(all.into_iter().filter(TokenRecord::valid).collect())
    }

    fn revoke_token(&self, user_id: &str, token_id: &str, now: u64) -> Result<Revoked> {
        let (user, id) = (s(user_id), s(token_id));
        self.write(move |db| {
            let mut tx = db.client.transaction()?;
            let found: Option<TokenRecord> = one(tx.query_opt(
                "SELECT rec FROM tokens WHERE user_id = $1 AND id = $2 FOR UPDATE",
                &[&user, &id],
            )?)?;
            let outcome = match found {
                None => Revoked::NoSuch,
                Some(t) if !t.valid() => Revoked::Earlier,
                Some(t) => {
                    let revoked = TokenRecord {
                        revoked_at: Some(now),
                        ..t
                    };
                    tx.execute(
                        "UPDATE tokens SET rec = $2 WHERE hash = $1",
                        &[&revoked.hash, &Json(&revoked)],
                    )?;
                    Revoked::Now
                }
            };
            let kept_since = ts(now.saturating_sub(REVOKED_TOKEN_KEPT_MS));
            tx.execute(
                "DELETE FROM tokens WHERE user_id = $1 \
                 AND (rec->>'revoked_at')::BIGINT < $2",
                &[&user, &kept_since],
            )?;
            tx.commit()?;
            Ok(outcome)
        })
    }

    fn insert_device(&self, device: &DeviceRecord) -> Result<bool> {
        let d = device.clone();
        self.write(move |db| {
            Ok(db.execute(
                "INSERT INTO devices (id, owner, name, rec) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[&d.id, &d.owner, &d.name, &Json(&d)],
            )? == 1)
        })
    }

    fn device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        let id = s(id);
        self.read(move |db| one(db.query_opt("SELECT rec FROM devices WHERE id = $1", &[&id])?))
    }

    fn device_by_name(&self, owner: &str, name: &str) -> Result<Option<DeviceRecord>> {
        let (owner, name) = (s(owner), s(name));
        self.read(move |db| {
            one(db.query_opt(
                "SELECT rec FROM devices WHERE owner = $1 AND name = $2",
                &[&owner, &name],
            )?)
        })
    }

    fn devices_of(&self, owner: &str) -> Result<Vec<DeviceRecord>> {
        let owner = s(owner);
        self.read(move |db| {
            all(db.query(
                "SELECT rec FROM devices WHERE owner = $1 ORDER BY name",
                &[&owner],
            )?)
        })
    }

    fn count_devices_of(&self, owner: &str) -> Result<u64> {
        let owner = s(owner);
        self.read(move |db| {
            let n: i64 = db
                .query_one("SELECT count(*) FROM devices WHERE owner = $1", &[&owner])?
                .try_get(0)?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn all_devices(&self) -> Result<Vec<DeviceRecord>> {
        self.read(|db| all(db.query("SELECT rec FROM devices ORDER BY id", &[])?))
    }

    fn update_device(
        &self,
        id: &str,
        f: &mut (dyn FnMut(&mut DeviceRecord) + Send),
    ) -> Result<Option<DeviceRecord>> {
        // Read, apply `f` here, write only over the version read; again on contention.
        loop {
            let key = s(id);
            let Some((version, mut rec)) = self.read(move |db| {
                let Some(row) =
                    db.query_opt("SELECT version, rec FROM devices WHERE id = $1", &[&key])?
                else {
                    return Ok(None);
                };
                let version: i64 = row.try_get(0)?;
                let rec: Json<DeviceRecord> = row.try_get(1)?;
                Ok(Some((version, rec.0)))
            })?
            else {
                return Ok(None);
            };
            f(&mut rec);
            let (key, new) = (s(id), rec.clone());
            let written = self.write(move |db| {
                Ok(db.execute(
                    "UPDATE devices SET rec = $3, version = version + 1 \
                     WHERE id = $1 AND version = $2",
                    &[&key, &version, &Json(&new)],
                )? == 1)
            })?;
            if written {
                return Ok(Some(rec));
            }
        }
    }

    fn delete_device(&self, id: &str) -> Result<Option<DeviceRecord>> {
        let id = s(id);
        self.write(move |db| {
            let del = db.st("DELETE FROM devices WHERE id = $1 RETURNING rec")?;
            let rest = [
                db.st("DELETE FROM status_events WHERE device_id = $1")?,
                db.st("DELETE FROM status_contig WHERE device_id = $1")?,
                db.st("DELETE FROM status_heads WHERE device_id = $1")?,
                db.st("DELETE FROM enrollments WHERE device_id = $1")?,
            ];
            let mut tx = db.client.transaction()?;
            let Some(row) = tx.query_opt(&del, &[&id])? else {
                return Ok(None);
            };
            let rec: DeviceRecord = json(&row)?;
            for st in &rest {
                tx.execute(st, &[&id])?;
            }
            tx.commit()?;
            Ok(Some(rec))
        })
    }

    fn insert_enrollment(&self, token_hash: &str, rec: &EnrollmentRecord) -> Result<()> {
        let (hash, rec) = (s(token_hash), rec.clone());
        self.read(move |db| {
            db.execute(
                "INSERT INTO enrollments (token_hash, device_id, rec) VALUES ($1, $2, $3) \
                 ON CONFLICT (token_hash) DO UPDATE \
                 SET device_id = EXCLUDED.device_id, rec = EXCLUDED.rec",
                &[&hash, &rec.device_id, &Json(&rec)],
            )?;
            Ok(())
        })
    }

    fn take_enrollment(&self, token_hash: &str) -> Result<Option<EnrollmentRecord>> {
        let hash = s(token_hash);
        self.write(move |db| {
            one(db.query_opt(
                "DELETE FROM enrollments WHERE token_hash = $1 RETURNING rec",
                &[&hash],
            )?)
        })
    }

    fn delete_enrollments_of(&self, device_id: &str) -> Result<()> {
        let dev = s(device_id);
        self.read(move |db| {
            db.execute("DELETE FROM enrollments WHERE device_id = $1", &[&dev])?;
            Ok(())
        })
    }

    fn put_deployment(&self, d: &DeploymentRecord) -> Result<()> {
        let d = d.clone();
        let oldest_kept = self.oldest_kept();
        self.read(move |db| {
            let (upsert, prune) = (db.st(UPSERT_DEPLOYMENT)?, db.st(PRUNE_DEPLOYMENTS)?);
            write_deployment(&mut db.client, &upsert, &prune, &d, oldest_kept)
        })
    }

    fn insert_session(
        &self,
        s: &SessionRecord,
        now_ms: u64,
        caps: SessionCaps,
    ) -> Result<SessionsEnded> {
        let s = s.clone();
        let now = ts(now_ms);
        let (per_user, total) = (n(caps.per_user.max(1)), n(caps.total.max(1)));
        // Not tried again: a lost answer after the commit would end one more session.
        self.write(move |db| {
            let lock = db.st("SELECT pg_advisory_xact_lock($1)")?;
            let expired = db.st("DELETE FROM sessions WHERE id_hash IN ( \
                   SELECT id_hash FROM sessions WHERE expires_at <= $1 \
                   ORDER BY expires_at LIMIT $2)")?;
            // Keeps the user's newest `per_user - 1`: room for the new one.
            let over_user = db.st("DELETE FROM sessions WHERE id_hash IN ( \
                   SELECT id_hash FROM sessions WHERE user_id = $1 \
                   ORDER BY seq DESC OFFSET $2)")?;
            let count = db.st("SELECT count(*) FROM sessions")?;
            // The user holding the most (the smallest id among equals), and `$1`'s count.
            let most = db.st(
                "SELECT user_id, count(*) AS n FROM sessions GROUP BY user_id \
                 ORDER BY n DESC, user_id LIMIT 1",
            )?;
            let own = db.st("SELECT count(*) FROM sessions WHERE user_id = $1")?;
            let oldest = db.st("DELETE FROM sessions WHERE id_hash = ( \
                   SELECT id_hash FROM sessions WHERE user_id = $1 ORDER BY seq LIMIT 1)")?;
            let insert = db.st(
                "INSERT INTO sessions (id_hash, user_id, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id_hash) DO UPDATE SET user_id = EXCLUDED.user_id, \
                   token_hash = EXCLUDED.token_hash, created_at = EXCLUDED.created_at, \
                   expires_at = EXCLUDED.expires_at",
            )?;
            let mut tx = db.client.transaction()?;
            tx.execute(&lock, &[&SESSIONS_LOCK])?;
            let mut ended = SessionsEnded {
                expired: tx.execute(&expired, &[&now, &(PRUNE_BATCH as i64)])? as usize,
                ..Default::default()
            };
            ended.over_user_cap = tx.execute(&over_user, &[&s.user_id, &(per_user - 1)])? as usize;
            while ended.table_full < PRUNE_BATCH {
                let stored: i64 = tx.query_one(&count, &[])?.try_get(0)?;
                if stored < total {
                    break;
                }
                let Some(top) = tx.query_opt(&most, &[])? else {
                    break;
                };
                let (top_user, top_n): (String, i64) = (top.try_get(0)?, top.try_get(1)?);
                let mine: i64 = tx.query_one(&own, &[&s.user_id])?.try_get(0)?;
                let victim = if mine >= top_n { &s.user_id } else { &top_user };
                if tx.execute(&oldest, &[victim])? == 0 {
                    break;
                }
                ended.table_full += 1;
            }
            tx.execute(
                &insert,
                &[
                    &s.id_hash,
                    &s.user_id,
                    &s.token_hash,
                    &ts(s.created_at),
                    &ts(s.expires_at),
                ],
            )?;
            tx.commit()?;
            Ok(ended)
        })
    }

    fn session(&self, id_hash: &str, now_ms: u64) -> Result<Option<SessionRecord>> {
        let (id, now) = (s(id_hash), ts(now_ms));
        self.read(move |db| {
            db.query_opt(
                "SELECT id_hash, user_id, token_hash, created_at, expires_at FROM sessions \
                 WHERE id_hash = $1 AND expires_at > $2",
                &[&id, &now],
            )?
            .map(|r| session_of(&r))
            .transpose()
        })
    }

    fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let id = s(id_hash);
        self.read(move |db| Ok(db.execute("DELETE FROM sessions WHERE id_hash = $1", &[&id])? > 0))
    }

    fn count_sessions_of(&self, user_id: &str, now_ms: u64) -> Result<u64> {
        let (user, now) = (s(user_id), ts(now_ms));
        self.read(move |db| {
            let c: i64 = db
                .query_one(
                    "SELECT count(*) FROM sessions WHERE user_id = $1 AND expires_at > $2",
                    &[&user, &now],
                )?
                .try_get(0)?;
            Ok(u64::try_from(c).unwrap_or(0))
        })
    }

    fn note_failure(&self, key: &str, now_ms: u64, window_ms: u64) -> Result<u32> {
        let key = s(key);
        let (now, end) = (ts(now_ms), ts(now_ms.saturating_add(window_ms.max(1))));
        // Not tried again: a lost answer after the commit would count the failure twice.
        self.write(move |db| {
            // Rows another call holds are left to a later call: no waiting, no deadlock.
            let prune = db.st("DELETE FROM failures WHERE key IN ( \
                   SELECT key FROM failures WHERE ends_at <= $1 ORDER BY ends_at LIMIT $2 \
                   FOR UPDATE SKIP LOCKED)")?;
            // One statement: a new row, a new window, or one more in the current window
            // (the row locked, as it is after any concurrent failure commits).
            let count = db.st(
                "INSERT INTO failures AS f (key, window_start, ends_at, count) \
                 VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (key) DO UPDATE SET \
                   window_start = CASE WHEN f.ends_at <= $2 THEN $2 ELSE f.window_start END, \
                   ends_at = CASE WHEN f.ends_at <= $2 THEN $3 ELSE f.ends_at END, \
                   count = CASE WHEN f.ends_at <= $2 THEN 1 ELSE f.count + 1 END \
                 RETURNING count",
            )?;
            // Two statements, each on its own: neither holds a row while it waits for another.
            let n: i64 = db
                .client
                .query_one(&count, &[&key, &now, &end])?
                .try_get(0)?;
            db.client.execute(&prune, &[&now, &(PRUNE_BATCH as i64)])?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }

    fn failures(&self, key: &str, now_ms: u64, _window_ms: u64) -> Result<u32> {
        let (key, now) = (s(key), ts(now_ms));
        self.read(move |db| {
            let n: Option<i64> = db
                .query_opt(
                    "SELECT count FROM failures WHERE key = $1 AND ends_at > $2",
                    &[&key, &now],
                )?
                .map(|r| r.try_get(0))
                .transpose()?;
            Ok(n.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)))
        })
    }

    fn put_deployment_fenced(&self, d: &DeploymentRecord, fence: &Fence) -> Result<()> {
        let (d, fence) = (d.clone(), fence.clone());
        let oldest_kept = self.oldest_kept();
        // Idempotent (the same record written again), so it may be tried again.
        self.read(move |db| {
            let (upsert, prune) = (db.st(UPSERT_DEPLOYMENT)?, db.st(PRUNE_DEPLOYMENTS)?);
            let check = db.st(
                "SELECT name, holder, token, expires_at FROM leases WHERE name = $1 FOR SHARE",
            )?;
            let mut tx = db.client.transaction()?;
            // The share lock keeps the row as read until the commit: a takeover
            // (`acquire_lease` updates the row) waits for this write, or this check sees it.
            let stored = tx
                .query_opt(&check, &[&fence.name])?
                .map(|r| lease_of(&r))
                .transpose()?;
            if !stored.as_ref().is_some_and(|l| l.admits(&fence)) {
                return Err(Failure::Store(Lease::fenced(&fence, stored.as_ref())));
            }
            write_deployment(&mut tx, &upsert, &prune, &d, oldest_kept)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<Lease>> {
        let (name, holder) = (s(name), s(holder));
        let (now, expires) = (ts(now_ms), ts(now_ms.saturating_add(ttl_ms)));
        // One statement: the insert, or the update of the row (locked, as it is after any
        // concurrent takeover commits) when `Lease::grant`'s rule allows it. Taken again
        // after a lost answer it is a renewal by the same holder: same token.
        self.read(move |db| {
            db.query_opt(
                "INSERT INTO leases AS l (name, holder, token, expires_at) \
                 VALUES ($1, $2, 1, $4) \
                 ON CONFLICT (name) DO UPDATE SET \
                   token = CASE WHEN l.holder = EXCLUDED.holder THEN l.token ELSE l.token + 1 END, \
                   holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
                 WHERE l.holder = EXCLUDED.holder OR l.expires_at <= $3 \
                 RETURNING name, holder, token, expires_at",
                &[&name, &holder, &now, &expires],
            )?
            .map(|r| lease_of(&r))
            .transpose()
        })
    }

    fn release_lease(&self, name: &str, holder: &str, token: u64) -> Result<()> {
        let (name, holder) = (s(name), s(holder));
        let token = ts(token);
        self.read(move |db| {
            db.execute(
                "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2 AND token = $3",
                &[&name, &holder, &token],
            )?;
            Ok(())
        })
    }

    fn lease(&self, name: &str) -> Result<Option<Lease>> {
        let name = s(name);
        self.read(move |db| {
            db.query_opt(
                "SELECT name, holder, token, expires_at FROM leases WHERE name = $1",
                &[&name],
            )?
            .map(|r| lease_of(&r))
            .transpose()
        })
    }

    fn deployment(&self, id: &str) -> Result<Option<DeploymentRecord>> {
        let id = s(id);
        self.read(move |db| one(db.query_opt("SELECT rec FROM deployments WHERE id = $1", &[&id])?))
    }

    fn deployments(&self) -> Result<Vec<DeploymentRecord>> {
        self.read(|db| all(db.query("SELECT rec FROM deployments ORDER BY id", &[])?))
    }

    fn deployments_of(
        &self,
        owner: &str,
        after: Option<&DeploymentCursor>,
        limit: usize,
    ) -> Result<Page<DeploymentRecord, DeploymentCursor>> {
        let owner = s(owner);
        let after = after.map(|c| (ts(c.created_at), c.id.clone()));
        let take = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let mut items: Vec<DeploymentRecord> = self.read(move |db| {
            all(match &after {
                Some((at, id)) => db.query(
                    "SELECT rec FROM deployments WHERE owner = $1 AND (created_at, id) < ($2, $3) \
                     ORDER BY created_at DESC, id DESC LIMIT $4",
                    &[&owner, at, id, &take],
                )?,
                None => db.query(
                    "SELECT rec FROM deployments WHERE owner = $1 \
                     ORDER BY created_at DESC, id DESC LIMIT $2",
                    &[&owner, &take],
                )?,
            })
        })?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = more
            .then(|| items.last())
            .flatten()
            .map(|d| DeploymentCursor {
                created_at: d.created_at,
                id: d.id.clone(),
            });
        Ok(Page { items, next })
    }

    fn insert_status(&self, st: &StoredStatus) -> Result<Inserted> {
        let mut rec = st.clone();
        cap_status(&mut rec.event);
        let bytes = serde_json::to_vec(&rec)
            .map_err(|e| StoreError::Backend(e.to_string()))?
            .len() as i64;
        let r = self.retention;
        self.write(move |db| status::insert(db, &rec, bytes, &r))
    }

    fn ack_of(&self, device_id: &str) -> Result<Option<(u64, u64)>> {
        let dev = s(device_id);
        self.read(move |db| status::ack_of(db, &dev))
    }

    fn statuses_of(&self, device_id: &str) -> Result<Vec<StoredStatus>> {
        let dev = s(device_id);
        self.read(move |db| status::all_of(db, &dev))
    }

    fn insert_webhook(&self, w: &WebhookRecord, max_per_owner: u64) -> Result<bool> {
        let w = w.clone();
        self.write(move |db| {
            let mut tx = db.client.transaction()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('hammer-webhooks:' || $1))",
                &[&w.owner],
            )?;
            let have: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM webhooks WHERE owner = $1",
                    &[&w.owner],
                )?
                .try_get(0)?;
            if have >= ts(max_per_owner) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO webhooks (id, owner, created_at, rec) VALUES ($1, $2, $3, $4)",
                &[&w.id, &w.owner, &ts(w.created_at), &Json(&w)],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn webhooks_of(&self, owner: &str) -> Result<Vec<WebhookRecord>> {
        let owner = s(owner);
        self.read(move |db| {
            all(db.query(
                "SELECT rec FROM webhooks WHERE owner = $1 ORDER BY created_at, id",
                &[&owner],
            )?)
        })
    }

    fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>> {
        let id = s(id);
        self.read(move |db| one(db.query_opt("SELECT rec FROM webhooks WHERE id = $1", &[&id])?))
    }

    fn delete_webhook(&self, owner: &str, id: &str) -> Result<bool> {
        let (owner, id) = (s(owner), s(id));
        self.write(move |db| {
            let n = db.execute(
                "DELETE FROM webhooks WHERE id = $1 AND owner = $2",
                &[&id, &owner],
            )?;
            Ok(n > 0)
        })
    }

    fn insert_delivery(&self, d: &DeliveryRecord, bounds: DeliveryBounds) -> Result<u64> {
        let d = d.clone();
        self.write(move |db| {
            let mut tx = db.client.transaction()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('hammer-webhooks:' || $1))",
                &[&d.owner],
            )?;
            let pending: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM deliveries WHERE owner = $1 AND pending",
                    &[&d.owner],
                )?
                .try_get(0)?;
            let over = pending - ts(bounds.max_pending_per_owner.max(1)) + 1;
            let dropped = if over > 0 {
                tx.execute(
                    "UPDATE deliveries SET pending = false, claimed_until = 0, \
                       rec = jsonb_set(rec, '{state}', '\"dropped\"') \
                     WHERE ord IN (SELECT ord FROM deliveries WHERE owner = $1 AND pending \
                       ORDER BY ord LIMIT $2)",
                    &[&d.owner, &over],
                )?
            } else {
                0
            };
            let pend = d.state == DeliveryState::Pending;
            tx.execute(
                "INSERT INTO deliveries (id, webhook_id, owner, pending, next_at, rec) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &d.id,
                    &d.webhook_id,
                    &d.owner,
                    &pend,
                    &ts(d.next_at),
                    &Json(&d),
                ],
            )?;
            prune_deliveries(&mut tx, &d.webhook_id, bounds)?;
            tx.commit()?;
            Ok(dropped)
        })
    }

    fn claim_deliveries(&self, now: u64, until: u64, limit: usize) -> Result<Vec<DeliveryRecord>> {
        self.write(move |db| {
            // Each webhook's oldest pending delivery, if due and free. Rows another claim
            // holds locked are skipped (it takes them), and a row it claimed meanwhile fails
            // the re-check under the lock; neither counts towards the limit, so concurrent
            // claims share the due deliveries without waiting and without overlap.
            let rows = db.query(
                "WITH heads AS ( \
                   SELECT DISTINCT ON (webhook_id) ord, next_at, claimed_until \
                   FROM deliveries WHERE pending ORDER BY webhook_id, ord), \
                 due AS ( \
                   SELECT d.ord FROM deliveries d JOIN heads h ON h.ord = d.ord \
                   WHERE h.next_at <= $1 AND h.claimed_until <= $1 \
                     AND d.pending AND d.claimed_until <= $1 \
                   ORDER BY h.next_at, h.ord LIMIT $3 \
                   FOR UPDATE OF d SKIP LOCKED) \
                 UPDATE deliveries d SET claimed_until = $2 FROM due \
                 WHERE d.ord = due.ord AND d.pending AND d.claimed_until <= $1 \
                 RETURNING d.ord, d.rec, d.next_at",
                &[&ts(now), &ts(until), &n(limit)],
            )?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                let ord: i64 = r.try_get(0)?;
                let mut d: DeliveryRecord = r.try_get::<_, Json<DeliveryRecord>>(1)?.0;
                d.seq = u64::try_from(ord).unwrap_or(0);
                d.claimed_until = until;
                v.push(d);
            }
            v.sort_by_key(|d| (d.next_at, d.seq));
            Ok(v)
        })
    }

    fn finish_delivery(&self, d: &DeliveryRecord, bounds: DeliveryBounds) -> Result<()> {
        let mut d = d.clone();
        d.claimed_until = 0;
        self.write(move |db| {
            let mut tx = db.client.transaction()?;
            let pend = d.state == DeliveryState::Pending;
            tx.execute(
                "UPDATE deliveries SET rec = $2, pending = $3, next_at = $4, claimed_until = 0 \
                 WHERE id = $1 AND pending",
                &[&d.id, &Json(&d), &pend, &ts(d.next_at)],
            )?;
            if !pend {
                prune_deliveries(&mut tx, &d.webhook_id, bounds)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn deliveries_of(&self, webhook_id: &str, limit: usize) -> Result<Vec<DeliveryRecord>> {
        let id = s(webhook_id);
        self.read(move |db| {
            let rows = db.query(
                "SELECT ord, rec, claimed_until FROM deliveries WHERE webhook_id = $1 \
                 ORDER BY ord DESC LIMIT $2",
                &[&id, &n(limit)],
            )?;
            let mut v = Vec::with_capacity(rows.len());
            for r in &rows {
                let ord: i64 = r.try_get(0)?;
                let mut d: DeliveryRecord = r.try_get::<_, Json<DeliveryRecord>>(1)?.0;
                d.seq = u64::try_from(ord).unwrap_or(0);
                d.claimed_until = u64::try_from(r.try_get::<_, i64>(2)?).unwrap_or(0);
                v.push(d);
            }
            Ok(v)
        })
    }

    fn count_pending_deliveries(&self) -> Result<u64> {
        self.read(|db| {
            let c: i64 = db
                .query_one("SELECT COUNT(*) FROM deliveries WHERE pending", &[])?
                .try_get(0)?;
            Ok(u64::try_from(c).unwrap_or(0))
        })
    }

    fn append_audit(&self, r: &AuditRecord) -> Result<()> {
        let rec = r.capped();
        let ret = self.retention;
        let oldest_kept = ts(rec.time.saturating_sub(ret.max_age_ms()));
        self.write(move |db| {
            let mut tx = db.client.transaction()?;
            // One user's appends run one at a time, so the count bound holds exactly.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('hammer-audit:' || $1))",
                &[&rec.owner],
            )?;
            tx.execute(
                "INSERT INTO audit (owner, time, rec) VALUES ($1, $2, $3)",
                &[&rec.owner, &ts(rec.time), &Json(&rec)],
            )?;
            tx.execute(
                "DELETE FROM audit WHERE ord IN ( \
                   SELECT ord FROM audit WHERE owner = $1 \
                     AND ord < (SELECT MAX(ord) FROM audit WHERE owner = $1) \
                     AND (time < $2 OR ord <= COALESCE((SELECT ord FROM audit \
                       WHERE owner = $1 ORDER BY ord DESC OFFSET $3 LIMIT 1), -1)) \
                   ORDER BY ord LIMIT $4)",
                &[
                    &rec.owner,
                    &oldest_kept,
                    &ts(ret.max_audit_per_user),
                    &(PRUNE_BATCH as i64),
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn audit_page(
        &self,
        owner: &str,
        before: Option<AuditCursor>,
        limit: usize,
    ) -> Result<Page<AuditRecord, AuditCursor>> {
        let owner = s(owner);
        let before = before.map_or(i64::MAX, ts);
        let take = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        self.read(move |db| {
            let rows = db.query(
                "SELECT ord, rec FROM audit WHERE owner = $1 AND ord < $2 \
                 ORDER BY ord DESC LIMIT $3",
                &[&owner, &before, &take],
            )?;
            let (items, next) = newest_first_page(&rows, limit)?;
            Ok(Page { items, next })
        })
    }

    fn insert_window(&self, w: &WindowRecord, max: usize) -> Result<bool> {
        let w = w.clone();
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.write(move |db| {
            let mut tx = db.client.transaction()?;
            // One user's inserts run one at a time, so the bound holds exactly.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('hammer-windows:' || $1))",
                &[&w.owner],
            )?;
            let have: i64 = tx
                .query_one("SELECT COUNT(*) FROM windows WHERE owner = $1", &[&w.owner])?
                .get(0);
            if have >= max {
                return Ok(false);
            }
            let n = tx.execute(
                "INSERT INTO windows (owner, id, created_at, rec) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
                &[&w.owner, &w.id, &ts(w.created_at), &Json(&w)],
            )?;
            tx.commit()?;
            Ok(n == 1)
        })
    }

    fn windows_of(&self, owner: &str) -> Result<Vec<WindowRecord>> {
        let owner = s(owner);
        self.read(move |db| {
            all(db.query(
                "SELECT rec FROM windows WHERE owner = $1 ORDER BY created_at, id",
                &[&owner],
            )?)
        })
    }

    fn delete_window(&self, owner: &str, id: &str) -> Result<bool> {
        let (owner, id) = (s(owner), s(id));
        self.write(move |db| {
            Ok(db.execute(
                "DELETE FROM windows WHERE owner = $1 AND id = $2",
                &[&owner, &id],
            )? > 0)
        })
    }

    fn history_page(
        &self,
        device_id: &str,
        before: Option<HistoryCursor>,
        limit: usize,
    ) -> Result<Page<StoredStatus, HistoryCursor>> {
        let dev = s(device_id);
        self.read(move |db| status::page(db, &dev, before, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_and_seqs_keep_their_order_as_bigint() {
        let vals = [
            0u64,
            1,
            2,
            1 << 62,
            (1 << 63) - 1,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ];
        for w in vals.windows(2) {
            assert!(o(w[0]) < o(w[1]), "{} {}", w[0], w[1]);
        }
        for v in vals {
            assert_eq!(u(o(v)), v);
        }
        // The contiguity query relies on the shift being linear: o(a) - o(b) == a - b.
        assert_eq!(o(10) - o(7), 3);
        assert_eq!(o(u64::MAX) - o(u64::MAX - 5), 5);
        assert_eq!(ts(u64::MAX), i64::MAX);
    }

    #[test]
    fn the_config_never_shows_the_password() {
        let c = PgConfig::new("postgres://hammer:hunter2@127.0.0.1:5432/hammer");
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && d.contains("hammer:***@"), "{d}");
    }
}
