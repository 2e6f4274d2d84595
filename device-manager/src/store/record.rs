//! The outbox log's on-disk format: a header, then checksummed records, appended in seq order.
//! Pure: bytes in, records out; the files are [`super::files`]' business.
//!
//! ```text
//! header  "HMOUTBOX" (8 bytes) | version: u32 LE (= 1)
//! record  len: u32 LE | crc32(payload): u32 LE | payload (len bytes)
//! payload epoch: u64 LE | seq: u64 LE | body (the CBOR of the StatusEvent)
//! ```
//!
//! A record is written with one `pwrite` and made durable with `fdatasync` before the append
//! returns, so a crash can only leave a torn record at the end of the log. [`decode_log`]
//! returns the records up to the first one that is incomplete (the file ends inside it) or
//! does not check (bad length or checksum) and says which: the caller cuts the file there.
//! It never panics and never allocates more than the input holds.

/// The first bytes of every outbox log.
pub const MAGIC: &[u8; 8] = b"HMOUTBOX";
/// The format version after the magic.
pub const VERSION: u32 = 1;
/// Length of the header (magic + version).
pub const HEADER_LEN: usize = 12;
/// Length of a record's frame before its payload (len + crc).
pub const FRAME_LEN: usize = 8;
/// epoch + seq before the body.
const PAYLOAD_PREFIX: usize = 16;
/// Largest payload accepted: an event body is at most the protocol's payload limit.
pub const MAX_PAYLOAD: usize = PAYLOAD_PREFIX + hammer_protocol::MAX_PAYLOAD;

/// The header of a new log.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// One record as framed on disk.
pub fn encode_record(epoch: u64, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(PAYLOAD_PREFIX + body.len());
    payload.extend_from_slice(&epoch.to_le_bytes());
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(body);
    let mut out = Vec::with_capacity(FRAME_LEN + payload.len());
    // The caller keeps bodies under the protocol limit; a longer one would not decode again,
    // so it is refused by `append` before it gets here (see `files::OutboxLog::append`).
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// A record found in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub epoch: u64,
    pub seq: u64,
    pub body: &'a [u8],
    /// Where its frame starts in the input.
    pub offset: usize,
    /// Frame + payload length.
    pub len: usize,
}

/// How the log ends after its last good record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Exactly at the end of a record (or of the header).
    Clean,
    /// The input ends inside a record (a torn write): cut at `at`.
    Torn { at: usize },
    /// A record at `at` does not check (impossible length or wrong checksum): cut at `at`.
    Corrupt { at: usize, why: &'static str },
}

impl Tail {
    /// Where the good part ends (`total` when clean).
    pub fn cut_at(&self, total: usize) -> usize {
        match self {
            Tail::Clean => total,
            Tail::Torn { at } | Tail::Corrupt { at, .. } => *at,
        }
    }
}

/// A log whose header is not ours: nothing in it can be trusted or cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("it is not a hammer-manager outbox log (no HMOUTBOX header)")]
    NotALog,
    #[error("it is an outbox log of version {0}, this manager reads version {VERSION}")]
    Version(u32),
}

/// What [`decode_frame`] found at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole record that checks.
    Record(Record<'a>),
    /// The input ends exactly here.
    End,
    /// The input ends inside the record starting here.
    Torn,
    /// The record starting here does not check.
    Corrupt(&'static str),
}

/// The record framed at `at` in `bytes` (offsets are positions in `bytes`).
pub fn decode_frame(bytes: &[u8], at: usize) -> Frame<'_> {
    let rest = bytes.get(at..).unwrap_or_default();
    if rest.is_empty() {
        return Frame::End;
    }
    if rest.len() < FRAME_LEN {
        return Frame::Torn;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if !(PAYLOAD_PREFIX..=MAX_PAYLOAD).contains(&len) {
        return Frame::Corrupt("impossible record length");
    }
    let Some(payload) = rest.get(FRAME_LEN..FRAME_LEN + len) else {
        return Frame::Torn;
    };
    if crc32fast::hash(payload) != crc {
        return Frame::Corrupt("checksum mismatch");
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&payload[..8]);
    let epoch = u64::from_le_bytes(n);
    n.copy_from_slice(&payload[8..16]);
    let seq = u64::from_le_bytes(n);
    Frame::Record(Record {
        epoch,
        seq,
        body: &payload[PAYLOAD_PREFIX..],
        offset: at,
        len: FRAME_LEN + len,
    })
}

/// The good records of a log and how it ends. An input shorter than the header that is a
/// prefix of it (a crash while the log was created) is an empty log with a torn tail at 0.
pub fn decode_log(bytes: &[u8]) -> Result<(Vec<Record<'_>>, Tail), HeaderError> {
    if bytes.len() < HEADER_LEN {
        let h = header();
        return if h.starts_with(bytes) {
            let tail = if bytes.is_empty() {
                Tail::Clean
            } else {
                Tail::Torn { at: 0 }
            };
            Ok((Vec::new(), tail))
        } else {
            Err(HeaderError::NotALog)
        };
    }
    if &bytes[..8] != MAGIC {
        return Err(HeaderError::NotALog);
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(HeaderError::Version(version));
    }
    let mut records = Vec::new();
    let mut at = HEADER_LEN;
    loop {
        match decode_frame(bytes, at) {
            Frame::Record(r) => {
                at += r.len;
                records.push(r);
            }
            Frame::End => return Ok((records, Tail::Clean)),
            Frame::Torn => return Ok((records, Tail::Torn { at })),
            Frame::Corrupt(why) => return Ok((records, Tail::Corrupt { at, why })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log_of(records: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = header().to_vec();
        for (e, s, b) in records {
            out.extend(encode_record(*e, *s, b));
        }
        out
    }

    #[test]
    fn round_trip_and_clean_tail() {
        let recs = vec![
            (7, 1, b"one".to_vec()),
            (7, 2, Vec::new()),
            (7, 3, vec![0; 300]),
        ];
        let bytes = log_of(&recs);
        let (got, tail) = decode_log(&bytes).unwrap();
        assert_eq!(tail, Tail::Clean);
        let got: Vec<_> = got
            .iter()
            .map(|r| (r.epoch, r.seq, r.body.to_vec()))
            .collect();
        assert_eq!(got, recs);
        assert_eq!(decode_log(&header()).unwrap(), (Vec::new(), Tail::Clean));
        assert_eq!(decode_log(b"").unwrap(), (Vec::new(), Tail::Clean));
    }

    #[test]
    fn foreign_files_and_versions_are_errors_not_cuts() {
        assert_eq!(decode_log(b"{\"v\":1}").unwrap_err(), HeaderError::NotALog);
        assert_eq!(
            decode_log(b"HMOUTBOX\x02\0\0\0").unwrap_err(),
            HeaderError::Version(2)
        );
        assert_eq!(
            decode_log(b"HMOUT").unwrap(),
            (Vec::new(), Tail::Torn { at: 0 })
        );
    }

    #[test]
    fn a_flipped_bit_cuts_at_its_record() {
        let recs = vec![
            (1, 1, b"a".to_vec()),
            (1, 2, b"bb".to_vec()),
            (1, 3, b"c".to_vec()),
        ];
        let mut bytes = log_of(&recs);
        let (good, _) = decode_log(&bytes).unwrap();
        let second = good[1].offset;
        bytes[second + FRAME_LEN + 17] ^= 0x40;
        let (got, tail) = decode_log(&bytes).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            tail,
            Tail::Corrupt {
                at: second,
                why: "checksum mismatch"
            }
        );
    }

    fn records() -> impl Strategy<Value = Vec<(u64, u64, Vec<u8>)>> {
        prop::collection::vec(
            (
                any::<u64>(),
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..64),
            ),
            0..8,
        )
    }

    proptest! {
        /// Any cut of a good log decodes to exactly the records wholly before the cut, and says
        /// where to cut: never a panic, never a record that was not written.
        #[test]
        fn truncated_log_gives_the_whole_records_before_the_cut(recs in records(), cut in any::<prop::sample::Index>()) {
            let bytes = log_of(&recs);
            let n = cut.index(bytes.len() + 1);
            let (got, tail) = decode_log(&bytes[..n]).unwrap();
            let ends: Vec<usize> = got.iter().map(|r| r.offset + r.len).collect();
            let whole = log_of(&recs[..got.len()]).len();
            prop_assert!(whole <= n.max(HEADER_LEN));
            prop_assert_eq!(tail.cut_at(n), if n < HEADER_LEN { 0 } else { whole });
            prop_assert_eq!(ends.last().copied().unwrap_or(HEADER_LEN), whole);
            for (r, (e, s, b)) in got.iter().zip(&recs) {
                prop_assert_eq!((r.epoch, r.seq, r.body), (*e, *s, b.as_slice()));
            }
            if n == bytes.len() {
                prop_assert_eq!(got.len(), recs.len());
            }
        }

        /// Garbage after a good prefix (or overwriting part of it) yields a prefix of the
        /// written records, a cut point inside the input, and no panic.
        #[test]
        fn corrupt_bytes_give_a_prefix_of_the_records(
            recs in records(),
            at in any::<prop::sample::Index>(),
            junk in prop::collection::vec(any::<u8>(), 1..64),
        ) {
            let mut bytes = log_of(&recs);
            let start = HEADER_LEN + at.index(bytes.len() - HEADER_LEN + 1);
            for (i, b) in junk.iter().enumerate() {
                match bytes.get_mut(start + i) {
                    Some(x) => *x = *b,
                    None => bytes.push(*b),
                }
            }
            let (got, tail) = decode_log(&bytes).unwrap();
            prop_assert!(tail.cut_at(bytes.len()) <= bytes.len());
            for (r, (e, s, b)) in got.iter().zip(&recs) {
                if r.offset + r.len <= start {
                    prop_assert_eq!((r.epoch, r.seq, r.body), (*e, *s, b.as_slice()));
                }
            }
        }

        /// Arbitrary bytes: an error or records inside the input, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..512), with_header in any::<bool>()) {
            if with_header {
                let mut b = header().to_vec();
                b.append(&mut bytes);
                bytes = b;
            }
            if let Ok((recs, tail)) = decode_log(&bytes) {
                prop_assert!(tail.cut_at(bytes.len()) <= bytes.len());
                for r in recs {
                    prop_assert!(r.offset + r.len <= bytes.len());
                }
            }
        }
    }
}
