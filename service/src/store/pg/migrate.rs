//! The schema, as embedded versioned migrations (`migrations/NNNN_*.sql`), applied in one
//! transaction when the store opens.
//!
//! `schema_migrations` lists the versions applied. A transaction-scoped advisory lock makes
//! processes that start together apply them once. A database whose schema is newer than this
//! build knows is refused: an older hammer must not write records a newer one reads
//! differently.

use super::pool::{Db, Failure};

/// Every migration, in order: (version, SQL). Versions are 1, 2, 3, … with no gap.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_leases.sql")),
    (3, include_str!("migrations/0003_sessions.sql")),
    (4, include_str!("migrations/0004_failures.sql")),
    (5, include_str!("migrations/0005_audit.sql")),
    (6, include_str!("migrations/0006_webhooks.sql")),
    // 6 is the webhooks' (another branch); this one stays 7 so both merge without renumbering.
    (7, include_str!("migrations/0007_windows.sql")),
];

/// Advisory lock key held while migrating ("hammer" in ASCII).
const LOCK: i64 = 0x68_61_6d_6d_65_72;

/// The schema version this build writes.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Applies the migrations `db` lacks; answers (version before, version after).
pub fn migrate(db: &mut Db, migrations: &[(i32, &str)]) -> Result<(i32, i32), Failure> {
    let known = migrations.last().map_or(0, |m| m.0);
    let mut tx = db.client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at BIGINT NOT NULL
        )",
    )?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .get(0);
    if current > known {
        return Err(Failure::Other(format!(
            "the database's schema is version {current}, newer than this hammer knows (version {known}): a newer hammer has used this database; upgrade hammer to at least that version"
        )));
    }
    let now = i64::try_from(hammer_protocol::now_ms()).unwrap_or(i64::MAX);
    for (version, sql) in migrations.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).map_err(|e| {
            Failure::Other(format!(
                "schema migration {version} failed: {}",
                e.as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string())
            ))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[version, &now],
        )?;
    }
    tx.commit()?;
    Ok((current, known.max(current)))
}
