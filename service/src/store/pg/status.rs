//! Status events in PostgreSQL: exactly-once insert, the ack position, history pages and
//! retention (the [`Store`](crate::store::Store) contract; see the parent module).

use super::pool::{Db, Failure};
use super::{json, newest_first_page, o, ts, u};
use crate::store::{HistoryCursor, Inserted, Page, Retention, StoredStatus, PRUNE_BATCH};
use postgres::types::Json;

/// Stores `rec` (already capped; `bytes` is its size as stored) once per (device, epoch,
/// seq), advances the contiguous position and prunes the device's oldest events beyond `r`:
/// one call of the schema's `hammer_insert_status` (one round trip, one transaction). It
/// locks the device's `status_heads` row first, so one device's inserts run one at a time
/// across processes and its counts and contiguous position stay exact; the unique key
/// (device, epoch, seq) with `ON CONFLICT DO NOTHING` is what makes the insert happen once.
pub fn insert(
    db: &mut Db,
    rec: &StoredStatus,
    bytes: i64,
    r: &Retention,
) -> Result<Inserted, Failure> {
    let oldest_kept = ts(rec.received_at.saturating_sub(r.max_age_ms()));
    let row = db.query_opt(
        "SELECT o_new, o_contiguous FROM hammer_insert_status($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &rec.device_id,
            &o(rec.event.epoch),
            &o(rec.event.seq),
            &ts(rec.received_at),
            &bytes,
            &Json(rec),
            &ts(r.max_events_per_device),
            &ts(r.max_bytes_per_device),
            &oldest_kept,
            &(PRUNE_BATCH as i32),
        ],
    )?;
    let row = row.ok_or_else(|| Failure::Other("hammer_insert_status answered no row".into()))?;
    let new: bool = row.try_get(0)?;
    let contiguous: i64 = row.try_get(1)?;
    Ok(Inserted {
        new,
        contiguous: u(contiguous),
    })
}

/// The device's current epoch and its highest contiguous stored seq.
pub fn ack_of(db: &mut Db, device: &str) -> Result<Option<(u64, u64)>, Failure> {
    let row = db.query_opt(
        "SELECT h.epoch, c.contiguous FROM status_heads h \
         LEFT JOIN status_contig c ON c.device_id = h.device_id AND c.epoch = h.epoch \
         WHERE h.device_id = $1 AND h.epoch IS NOT NULL",
        &[&device],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let epoch: i64 = row.try_get(0)?;
    let contiguous: Option<i64> = row.try_get(1)?;
    Ok(Some((u(epoch), contiguous.map_or(0, u))))
}

/// Every stored event of a device in (epoch, seq) order.
pub fn all_of(db: &mut Db, device: &str) -> Result<Vec<StoredStatus>, Failure> {
    db.query(
        "SELECT rec FROM status_events WHERE device_id = $1 ORDER BY epoch, seq",
        &[&device],
    )?
    .iter()
    .map(json)
    .collect()
}

/// The newest `limit` events stored before `before`, oldest first.
pub fn page(
    db: &mut Db,
    device: &str,
    before: Option<HistoryCursor>,
    limit: usize,
) -> Result<Page<StoredStatus, HistoryCursor>, Failure> {
    let before = before.map_or(i64::MAX, ts);
    let take = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
    let rows = db.query(
        "SELECT ord, rec FROM status_events WHERE device_id = $1 AND ord < $2 \
         ORDER BY ord DESC LIMIT $3",
        &[&device, &before, &take],
    )?;
    // Newest first from the query; a history page reads oldest first.
    let (mut items, next) = newest_first_page(&rows, limit)?;
    items.reverse();
    Ok(Page { items, next })
}
