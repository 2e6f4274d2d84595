//! Status events in PostgreSQL: exactly-once insert, the ack position, history pages and
//! retention (the [`Store`](crate::store::Store) contract; see the parent module).

use super::pool::{Db, Failure};
use super::{json, o, ts, u};
use crate::store::{HistoryCursor, Inserted, Page, Retention, StoredStatus, PRUNE_BATCH};
use postgres::types::Json;

/// Stores `rec` (already capped; `bytes` is its size as stored) once per (device, epoch,
/// seq), advances the contiguous position and prunes the device's oldest events beyond
/// `r`. The device's `status_heads` row is locked first: one device's inserts run one at a
/// time across processes, so the counts and the contiguous position stay exact; the unique
/// key (device, epoch, seq) with `ON CONFLICT DO NOTHING` is what makes the insert happen
/// once.
pub fn insert(
    db: &mut Db,
    rec: &StoredStatus,
    bytes: i64,
    r: &Retention,
) -> Result<Inserted, Failure> {
    let dev = rec.device_id.as_str();
    let (epoch, seq) = (o(rec.event.epoch), o(rec.event.seq));
    let ensure =
        db.st("INSERT INTO status_heads (device_id) VALUES ($1) ON CONFLICT DO NOTHING")?;
    let lock = db.st("SELECT count, bytes FROM status_heads WHERE device_id = $1 FOR UPDATE")?;
    let contig =
        db.st("SELECT contiguous FROM status_contig WHERE device_id = $1 AND epoch = $2")?;
    let add = db.st(
        "INSERT INTO status_events (device_id, epoch, seq, received_at, size, rec) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )?;
    // The longest run of seqs after `$3` with no gap: rows where seq - row_number() is
    // still `$3` (seq is shifted by a constant, so the difference is the same).
    let advance = db.st("SELECT COALESCE(MAX(seq), $3) FROM ( \
           SELECT seq, seq - ROW_NUMBER() OVER (ORDER BY seq) AS base FROM status_events \
           WHERE device_id = $1 AND epoch = $2 AND seq > $3) s \
         WHERE base = $3")?;
    let set_contig = db.st(
        "INSERT INTO status_contig (device_id, epoch, contiguous) VALUES ($1, $2, $3) \
         ON CONFLICT (device_id, epoch) DO UPDATE \
         SET contiguous = GREATEST(status_contig.contiguous, EXCLUDED.contiguous)",
    )?;
    let oldest = db.st(
        "SELECT ord, size, received_at FROM status_events WHERE device_id = $1 \
         ORDER BY ord LIMIT $2",
    )?;
    let drop_upto = db.st("DELETE FROM status_events WHERE device_id = $1 AND ord <= $2")?;
    let set_head =
        db.st("UPDATE status_heads SET epoch = $2, count = $3, bytes = $4 WHERE device_id = $1")?;

    let mut tx = db.client.transaction()?;
    tx.execute(&ensure, &[&dev])?;
    let head = tx.query_one(&lock, &[&dev])?;
    let (mut count, mut size_sum): (i64, i64) = (head.try_get(0)?, head.try_get(1)?);
    let start: i64 = tx
        .query_opt(&contig, &[&dev, &epoch])?
        .map(|row| row.try_get(0))
        .transpose()?
        .unwrap_or(o(0));
    if seq <= start {
        // Stored before (and maybe pruned since): a resend, not a new event.
        tx.commit()?;
        return Ok(Inserted {
            new: false,
            contiguous: u(start),
        });
    }
    let received = ts(rec.received_at);
    let new = tx.execute(&add, &[&dev, &epoch, &seq, &received, &bytes, &Json(rec)])? == 1;
    let contiguous: i64 = tx
        .query_one(&advance, &[&dev, &epoch, &start])?
        .try_get(0)?;
    if contiguous != start {
        tx.execute(&set_contig, &[&dev, &epoch, &contiguous])?;
    }
    if new {
        count += 1;
        size_sum += bytes;
        // Remove the oldest events while over a bound (at most PRUNE_BATCH; the newest stays).
        let oldest_kept = ts(rec.received_at.saturating_sub(r.max_age_ms()));
        let over_size = |c: i64, b: i64| {
            c as u64 > r.max_events_per_device || b as u64 > r.max_bytes_per_device
        };
        let mut limit: i64 = if over_size(count, size_sum) {
            PRUNE_BATCH as i64
        } else {
            1
        };
        loop {
            let rows = tx.query(&oldest, &[&dev, &limit])?;
            let (mut c, mut b, mut upto) = (count, size_sum, None);
            for row in &rows {
                let (ord, sz, at): (i64, i64, i64) =
                    (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
                if c <= 1 || !(over_size(c, b) || at < oldest_kept) {
                    break;
                }
                c -= 1;
                b -= sz;
                upto = Some(ord);
            }
            // Only the oldest was read and it is too old: read a whole batch.
            if limit == 1 && upto.is_some() {
                limit = PRUNE_BATCH as i64;
                continue;
            }
            if let Some(ord) = upto {
                let removed = tx.execute(&drop_upto, &[&dev, &ord])?;
                tracing::debug!(device = dev, removed, "pruned old status events");
                count = c;
                size_sum = b;
            }
            break;
        }
        tx.execute(&set_head, &[&dev, &epoch, &count, &size_sum])?;
    }
    tx.commit()?;
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
    let more = rows.len() > limit;
    let mut items = Vec::with_capacity(limit.min(rows.len()));
    let mut next = None;
    for row in rows.iter().take(limit) {
        let ord: i64 = row.try_get(0)?;
        let rec: Json<StoredStatus> = row.try_get(1)?;
        items.push(rec.0);
        next = Some(ord as u64);
    }
    items.reverse();
    Ok(Page {
        items,
        next: if more { next } else { None },
    })
}
