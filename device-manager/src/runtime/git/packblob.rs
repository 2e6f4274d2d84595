//! Writing a big blob straight from its pack file into the release, in 64 KiB pieces.
//!
//! libgit2's checkout loads a packed blob whole into memory (`git_blob_lookup`: a buffer of
//! the blob's size; it has no read stream for packed objects), so a 100 MiB file cost 100 MiB
//! of resident memory. A blob stored whole in a pack (not as a delta) is one zlib stream after
//! a short header: this module finds it through the pack's `.idx` (version 2, read with
//! `pread`, a few KiB), inflates it into the file and checks its size and its id (SHA-1 of
//! `blob <size>\0` and the content) as it goes. Anything else — a delta, a loose object, an
//! index of another version — is [`Found::No`], and the caller leaves the file to libgit2.
//!
//! Pack files are external input (they come from the server): every offset, count and length
//! read from them is checked, and a bad one is a [`PackBlobError`], never a panic.

use flate2::{Decompress, FlushDecompress, Status};
use sha1::{Digest, Sha1};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Pieces read from the pack and written to the file.
const CHUNK: usize = 64 * 1024;
/// Object type of a blob in a pack entry header.
const OBJ_BLOB: u8 = 3;
/// The longest pack entry header: 4 + 9 × 7 bits cover a 64-bit size.
const MAX_ENTRY_HEADER: usize = 10;
/// A version 2 pack index starts with this.
const IDX_V2_MAGIC: [u8; 8] = [0xff, b't', b'O', b'c', 0, 0, 0, 2];
/// Length of a SHA-1 object id.
const OID_LEN: usize = 20;

/// Why a pack or its index could not be read, or a blob in it is not what its id says.
#[derive(Debug, thiserror::Error)]
pub enum PackBlobError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {what}")]
    Corrupt { path: PathBuf, what: String },
}

/// Where a blob is stored whole in a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub pack: PathBuf,
    /// Offset of the object's entry in the pack.
    pub offset: u64,
    /// The blob's size, from the entry header.
    pub size: u64,
}

/// What [`locate`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Stored whole in a pack: it can be streamed.
    Whole(Location),
    /// Not in a pack this module reads, or stored as a delta: libgit2 writes it.
    No,
}

/// Random-access reads: a file (`pread`), or bytes in memory (tests).
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`: how many were read, 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let rest = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..))
            .unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

/// Finds blob `oid` (20 bytes) stored whole in one of the packs of `objects_dir`
/// (`<objects>/pack/*.idx`).
pub fn locate(objects_dir: &Path, oid: &[u8]) -> Result<Found, PackBlobError> {
    let dir = objects_dir.join("pack");
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackBlobError::Io { path, source }
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::No),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for entry in entries {
        let idx = entry.map_err(io_err(&dir))?.path();
        if idx.extension().and_then(|x| x.to_str()) != Some("idx") {
            continue;
        }
        let file = File::open(&idx).map_err(io_err(&idx))?;
        let Some(offset) = idx_lookup(&file, oid).map_err(|e| classify(&idx, e))? else {
            continue;
        };
        let pack = idx.with_extension("pack");
        let file = File::open(&pack).map_err(io_err(&pack))?;
        let mut head = [0u8; MAX_ENTRY_HEADER];
        let got = read_up_to(&file, &mut head, offset).map_err(io_err(&pack))?;
        let header = parse_entry_header(&head[..got]).map_err(|e| classify(&pack, e))?;
        return Ok(match header {
            EntryHeader {
                kind: OBJ_BLOB,
                size,
                ..
            } => Found::Whole(Location { pack, offset, size }),
            _ => Found::No,
        });
    }
    Ok(Found::No)
}

/// Inflates the blob at `loc` into `out`, checking that it has the header's size and that its
/// id is `oid`. On an error part of it may have been written: the caller removes the file.
pub fn write_blob(loc: &Location, oid: &[u8], out: &mut impl Write) -> Result<(), PackBlobError> {
    let file = File::open(&loc.pack).map_err(|source| PackBlobError::Io {
        path: loc.pack.clone(),
        source,
    })?;
    stream(&file, loc.offset, oid, out).map_err(|e| classify(&loc.pack, e))
}

/// A parsed pack entry header: type, inflated size, and its own length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub kind: u8,
    pub size: u64,
    pub len: usize,
}

/// Parses the header of a pack entry (type in bits 4–6 of the first byte, size in 4 + 7·n
/// bits, little-endian groups, high bit = more).
pub fn parse_entry_header(bytes: &[u8]) -> io::Result<EntryHeader> {
    let mut size = 0u64;
    let mut kind = 0;
    for (i, &b) in bytes.iter().enumerate().take(MAX_ENTRY_HEADER) {
        if i == 0 {
            kind = (b >> 4) & 7;
            size = u64::from(b & 0x0f);
        } else {
            let shift = 4 + 7 * (i as u32 - 1);
            let part = u64::from(b & 0x7f);
            // The 10th byte may only hold the size's top bit.
            if shift >= 64 || (part << shift) >> shift != part {
                return Err(corrupt("a pack entry's size does not fit 64 bits"));
            }
            size |= part << shift;
        }
        if b & 0x80 == 0 {
            return Ok(EntryHeader {
                kind,
                size,
                len: i + 1,
            });
        }
    }
    Err(corrupt("a pack entry's header is truncated or too long"))
}

/// Looks `oid` up in a version 2 pack index: the object's offset in the pack. `Ok(None)`: not
/// in this index, or an index of another version (libgit2 reads those).
pub fn idx_lookup(idx: &(impl ReadAt + ?Sized), oid: &[u8]) -> io::Result<Option<u64>> {
    let Some(&first) = oid.first().filter(|_| oid.len() == OID_LEN) else {
        return Ok(None);
    };
    let mut head = [0u8; 8];
    read_exact(idx, &mut head, 0)?;
    if head != IDX_V2_MAGIC {
        return Ok(None);
    }
    let fanout = |i: u8| read_u32(idx, 8 + 4 * u64::from(i)).map(u64::from);
    let count = fanout(255)?;
    let mut lo = match first {
        0 => 0,
        n => fanout(n - 1)?,
    };
    let mut hi = fanout(first)?;
    if lo > hi || hi > count {
        return Err(corrupt("the pack index's fan-out table is not sorted"));
    }
    let names = 8 + 256 * 4;
    let offsets = names + (OID_LEN as u64 + 4) * count;
    let large = offsets + 4 * count;
    let mut name = [0u8; OID_LEN];
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        read_exact(idx, &mut name, names + OID_LEN as u64 * mid)?;
        match name.as_slice().cmp(oid) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => {
                let small = read_u32(idx, offsets + 4 * mid)?;
                if small & 0x8000_0000 == 0 {
                    return Ok(Some(u64::from(small)));
                }
                let at = large + 8 * u64::from(small & 0x7fff_ffff);
                let mut b = [0u8; 8];
                read_exact(idx, &mut b, at)?;
                return Ok(Some(u64::from_be_bytes(b)));
            }
        }
    }
    Ok(None)
}

/// Streams the whole blob at `offset` of `pack` into `out` (see [`write_blob`]).
pub fn stream(
    pack: &(impl ReadAt + ?Sized),
    offset: u64,
    oid: &[u8],
    out: &mut impl Write,
) -> io::Result<()> {
    let mut head = [0u8; MAX_ENTRY_HEADER];
    let got = read_up_to(pack, &mut head, offset)?;
    let header = parse_entry_header(&head[..got])?;
    if header.kind != OBJ_BLOB {
        return Err(corrupt("the pack entry is no longer a whole blob"));
    }
    let mut hash = Sha1::new();
    hash.update(format!("blob {}\0", header.size).as_bytes());
    let mut z = Decompress::new(true);
    let mut input = vec![0u8; CHUNK];
    let mut output = vec![0u8; CHUNK];
    let mut at = offset
        .checked_add(header.len as u64)
        .ok_or_else(|| corrupt("a pack entry's offset is out of range"))?;
    let (mut avail, mut used) = (0usize, 0usize);
    let mut written = 0u64;
    loop {
        if used == avail {
            avail = read_up_to(pack, &mut input, at)?;
            used = 0;
            at = at.saturating_add(avail as u64);
            if avail == 0 {
                return Err(corrupt("the pack ends inside a blob"));
            }
        }
        let (in_before, out_before) = (z.total_in(), z.total_out());
        let status = z
            .decompress(&input[used..avail], &mut output, FlushDecompress::None)
            .map_err(|e| corrupt(&format!("a blob's zlib data is corrupt: {e}")))?;
        let consumed = usize::try_from(z.total_in() - in_before)
            .map_err(|_| corrupt("zlib consumed more than it was given"))?;
        let produced = usize::try_from(z.total_out() - out_before)
            .map_err(|_| corrupt("zlib produced more than it was given room for"))?;
        used += consumed;
        let piece = output
            .get(..produced)
            .ok_or_else(|| corrupt("zlib produced more than it was given room for"))?;
        written += produced as u64;
        if written > header.size {
            return Err(corrupt(&format!(
                "a blob inflates to more than the {} bytes its header says",
                header.size
            )));
        }
        hash.update(piece);
        out.write_all(piece)?;
        match status {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError if consumed > 0 || produced > 0 => {}
            // No progress with input and room left: the stream cannot go on.
            _ if used < avail => return Err(corrupt("a blob's zlib data is corrupt")),
            _ => {}
        }
    }
    if written != header.size {
        return Err(corrupt(&format!(
            "a blob inflates to {written} bytes, its header says {}",
            header.size
        )));
    }
    if hash.finalize().as_slice() != oid {
        return Err(corrupt("a blob's content does not match its id"));
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes at `offset`, fewer only at the end of the data.
fn read_up_to(src: &(impl ReadAt + ?Sized), buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .ok_or_else(|| corrupt("an offset in the pack is out of range"))?;
        match src.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads exactly `buf.len()` bytes at `offset`; `UnexpectedEof` past the end.
fn read_exact(src: &(impl ReadAt + ?Sized), buf: &mut [u8], offset: u64) -> io::Result<()> {
    if read_up_to(src, buf, offset)? < buf.len() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn read_u32(src: &(impl ReadAt + ?Sized), offset: u64) -> io::Result<u32> {
    let mut b = [0u8; 4];
    read_exact(src, &mut b, offset)?;
    Ok(u32::from_be_bytes(b))
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Short reads and bad data are a corrupt file; other I/O errors stay I/O errors.
fn classify(path: &Path, e: io::Error) -> PackBlobError {
    match e.kind() {
        io::ErrorKind::InvalidData => PackBlobError::Corrupt {
            path: path.to_path_buf(),
            what: e.to_string(),
        },
        io::ErrorKind::UnexpectedEof => PackBlobError::Corrupt {
            path: path.to_path_buf(),
            what: "the file ends early".into(),
        },
        _ => PackBlobError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob_id(content: &[u8]) -> [u8; OID_LEN] {
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", content.len()).as_bytes());
        h.update(content);
        h.finalize().into()
    }

    fn entry_header(kind: u8, mut size: u64) -> Vec<u8> {
        let mut out = vec![(kind << 4) | (size & 0x0f) as u8];
        size >>= 4;
        while size > 0 {
            if let Some(last) = out.last_mut() {
                *last |= 0x80;
            }
            out.push((size & 0x7f) as u8);
            size >>= 7;
        }
        out
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    }

    /// A pack (12-byte header, then one entry at offset 12) holding `content` as a blob.
    fn pack_of(content: &[u8]) -> Vec<u8> {
        let mut pack = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
        pack.extend(entry_header(OBJ_BLOB, content.len() as u64));
        pack.extend(zlib(content));
        pack
    }

    /// A version 2 index of `objects` (id, offset), sorted by id; offsets of 2 GiB and more
    /// go to the large-offset table.
    fn idx_of(objects: &mut [([u8; OID_LEN], u64)]) -> Vec<u8> {
        objects.sort();
        let mut idx = IDX_V2_MAGIC.to_vec();
        for b in 0..=255u8 {
            let n = objects.iter().filter(|(id, _)| id[0] <= b).count() as u32;
            idx.extend(n.to_be_bytes());
        }
        for (id, _) in objects.iter() {
            idx.extend(id);
        }
        idx.extend(std::iter::repeat_n(0, 4 * objects.len())); // CRCs
        let mut large = Vec::new();
        for (_, off) in objects.iter() {
            if *off < 0x8000_0000 {
                idx.extend((*off as u32).to_be_bytes());
            } else {
                idx.extend((0x8000_0000 | large.len() as u32).to_be_bytes());
                large.push(*off);
            }
        }
        for off in large {
            idx.extend(off.to_be_bytes());
        }
        idx
    }

    #[test]
    fn a_whole_blob_is_found_and_streamed_with_its_id_checked() {
        let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let id = blob_id(&content);
        let pack = pack_of(&content);
        let mut objects = [(id, 12), ([0x00; 20], 99), ([0xff; 20], 5 << 32)];
        let idx = idx_of(&mut objects);
        assert_eq!(idx_lookup(idx.as_slice(), &id).unwrap(), Some(12));
        assert_eq!(
            idx_lookup(idx.as_slice(), &[0xff; 20]).unwrap(),
            Some(5 << 32)
        );
        assert_eq!(idx_lookup(idx.as_slice(), &[0x42; 20]).unwrap(), None);
        let mut out = Vec::new();
        stream(pack.as_slice(), 12, &id, &mut out).unwrap();
        assert_eq!(out, content);
    }

    #[test]
    fn a_wrong_id_size_or_type_is_an_error() {
        let content = b"hello\n".repeat(1000);
        let id = blob_id(&content);
        let pack = pack_of(&content);
        let err = |pack: &[u8], id: &[u8]| {
            stream(pack, 12, id, &mut Vec::new())
                .unwrap_err()
                .to_string()
        };
        assert!(err(&pack, &[0; 20]).contains("does not match its id"));
        // The header says one byte less, then one byte more.
        for size in [content.len() - 1, content.len() + 1] {
            let mut bad = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
            bad.extend(entry_header(OBJ_BLOB, size as u64));
            bad.extend(zlib(&content));
            assert!(err(&bad, &id).contains("its header says"), "{size}");
        }
        let mut delta = pack.clone();
        delta[12] = (delta[12] & 0x8f) | (6 << 4);
        assert!(err(&delta, &id).contains("no longer a whole blob"));
        let truncated = &pack[..pack.len() - 10];
        assert!(err(truncated, &id).contains("ends inside a blob"));
        let mut flipped = pack.clone();
        let mid = pack.len() - 8;
        flipped[mid] ^= 0x55;
        assert!(stream(flipped.as_slice(), 12, &id, &mut Vec::new()).is_err());
    }

    #[test]
    fn entry_headers_up_to_64_bit_sizes_parse_and_longer_ones_do_not() {
        for size in [0, 15, 16, 1 << 20, u64::from(u32::MAX) + 1, u64::MAX] {
            let h = entry_header(OBJ_BLOB, size);
            let parsed = parse_entry_header(&h).unwrap();
            assert_eq!(
                (parsed.kind, parsed.size, parsed.len),
                (OBJ_BLOB, size, h.len())
            );
        }
        assert!(parse_entry_header(&[0xb0; 11]).is_err());
        assert!(parse_entry_header(&[0xb0, 0x80]).is_err());
        assert!(parse_entry_header(&[]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_entry_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(h) = parse_entry_header(&bytes) {
                prop_assert!(h.len <= bytes.len() && h.len <= MAX_ENTRY_HEADER);
            }
        }

        #[test]
        fn arbitrary_indexes_never_panic(
            rest in proptest::collection::vec(any::<u8>(), 0..4096),
            magic in any::<bool>(),
            oid in proptest::array::uniform20(any::<u8>()),
        ) {
            let mut idx = if magic { IDX_V2_MAGIC.to_vec() } else { Vec::new() };
            idx.extend(rest);
            let _ = idx_lookup(idx.as_slice(), &oid);
        }

        #[test]
        fn an_index_with_a_valid_fanout_and_garbage_after_never_panics(
            counts in proptest::collection::vec(0u32..u32::MAX, 256),
            rest in proptest::collection::vec(any::<u8>(), 0..2048),
            oid in proptest::array::uniform20(any::<u8>()),
        ) {
            let mut counts = counts;
            counts.sort();
            let mut idx = IDX_V2_MAGIC.to_vec();
            for c in counts {
                idx.extend(c.to_be_bytes());
            }
            idx.extend(rest);
            let _ = idx_lookup(idx.as_slice(), &oid);
        }

        #[test]
        fn arbitrary_pack_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            offset in 0u64..64,
            oid in proptest::array::uniform20(any::<u8>()),
        ) {
            let mut out = Vec::new();
            prop_assert!(stream(bytes.as_slice(), offset, &oid, &mut out).is_err());
        }

        #[test]
        fn a_corrupted_blob_entry_is_an_error_never_a_panic(
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let content: Vec<u8> = (0..5000u32).map(|i| (i * 13 % 241) as u8).collect();
            let id = blob_id(&content);
            let mut pack = pack_of(&content);
            let i = 12 + at.index(pack.len() - 12);
            pack[i] ^= xor;
            let mut out = Vec::new();
            // Either an error, or (a flip that zlib cannot see, e.g. in an unused header bit)
            // exactly the content.
            match stream(pack.as_slice(), 12, &id, &mut out) {
                Ok(()) => prop_assert_eq!(out, content),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
