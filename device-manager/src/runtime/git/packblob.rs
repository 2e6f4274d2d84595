//! Writing a big blob straight from its pack file into the release, in 64 KiB pieces.
//!
//! libgit2's checkout loads a packed blob whole into memory (`git_blob_lookup`: a buffer of
//! the blob's size; it has no read stream for packed objects), so a 100 MiB file cost 100 MiB
//! of resident memory. A blob stored whole in a pack (not as a delta) is one zlib stream after
//! a short header: this module finds it through the pack's `.idx` (version 2, read with
//! `pread`, a few KiB), inflates it into the file and checks its size and its id (SHA-1 of
//! `blob <size>\0` and the content) as it goes.
//!
//! A blob stored as a delta (OFS or REF, e.g. a changed file fetched in a thin pack) is
//! [`Found::Delta`]: [`write_delta_blob`] applies the delta in steps (decision 19) — the delta
//! inflated in 64 KiB pieces, each copy read by offset from the base, each insert taken from
//! the delta — into the file and the id's hash. The base is a file the caller names by its id
//! (the running release's copy, hashed first to be sure), or is rebuilt from the packs into an
//! unlinked temporary file (inflated in steps; a base that is a delta itself is rebuilt the
//! same way, at most [`MAX_DELTA_CHAIN`] deep). Anything else — a loose object, an index of
//! another version — is [`Found::No`], and the caller leaves the file to libgit2.
//!
//! Pack files are external input (they come from the server): every offset, count and length
//! read from them is checked, and a bad one is a [`PackBlobError`], never a panic.

use flate2::read::ZlibDecoder;
use flate2::{Decompress, FlushDecompress, Status};
use sha1::{Digest, Sha1};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Pieces read from the pack and written to the file.
const CHUNK: usize = 64 * 1024;
/// Object type of a blob in a pack entry header.
const OBJ_BLOB: u8 = 3;
/// Object types of deltas in a pack entry header.
const OBJ_OFS_DELTA: u8 = 6;
const OBJ_REF_DELTA: u8 = 7;
/// Deltas on deltas, at most this deep (git's own default depth is 50).
const MAX_DELTA_CHAIN: usize = 1000;
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
    /// Stored as a delta (OFS or REF) in a pack; `size` is the delta's result size (from the
    /// delta's own header): it can be rebuilt by streaming ([`write_delta_blob`]).
    Delta(Location),
    /// Not in a pack this module reads: libgit2 writes it.
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
        return Ok(match header.kind {
            OBJ_BLOB => Found::Whole(Location {
                pack,
                offset,
                size: header.size,
            }),
            OBJ_OFS_DELTA | OBJ_REF_DELTA => {
                let entry = delta_entry(&file, offset).map_err(|e| classify(&pack, e))?;
                let (_, size) = delta_sizes(&file, &entry).map_err(|e| classify(&pack, e))?;
                Found::Delta(Location { pack, offset, size })
            }
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

/// Where a delta's base is: at an offset of the same pack, or named by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Ofs(u64),
    Ref([u8; OID_LEN]),
}

/// A delta entry of a pack: its base, where its zlib data starts, and the size of that data
/// inflated (the delta itself, not its result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaEntry {
    pub base: Base,
    pub data: u64,
    pub delta_size: u64,
}

/// Reads the delta entry at `offset` (an `InvalidData` error if it is not a delta).
pub fn delta_entry(pack: &(impl ReadAt + ?Sized), offset: u64) -> io::Result<DeltaEntry> {
    let mut head = [0u8; MAX_ENTRY_HEADER + OID_LEN];
    let got = read_up_to(pack, &mut head, offset)?;
    let head = &head[..got];
    let header = parse_entry_header(head)?;
    let rest = &head[header.len..];
    let (base, extra) = match header.kind {
        OBJ_OFS_DELTA => {
            // Big-endian groups of 7 bits, each continuation adding one (git's encoding).
            let mut bytes = rest.iter();
            let mut c = *bytes
                .next()
                .ok_or_else(|| corrupt("a delta's base offset is truncated"))?;
            let mut back = u64::from(c & 0x7f);
            let mut used = 1;
            while c & 0x80 != 0 {
                c = *bytes
                    .next()
                    .ok_or_else(|| corrupt("a delta's base offset is truncated"))?;
                back = back
                    .checked_add(1)
                    .filter(|b| b.leading_zeros() >= 7)
                    .ok_or_else(|| corrupt("a delta's base offset does not fit 64 bits"))?;
                back = (back << 7) | u64::from(c & 0x7f);
                used += 1;
            }
            let base = offset
                .checked_sub(back)
                .filter(|_| back > 0)
                .ok_or_else(|| corrupt("a delta's base offset is out of the pack"))?;
            (Base::Ofs(base), used)
        }
        OBJ_REF_DELTA => {
            let id: [u8; OID_LEN] = rest
                .get(..OID_LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| corrupt("a delta's base id is truncated"))?;
            (Base::Ref(id), OID_LEN)
        }
        _ => return Err(corrupt("the pack entry is no longer a delta")),
    };
    let data = offset
        .checked_add((header.len + extra) as u64)
        .ok_or_else(|| corrupt("a pack entry's offset is out of range"))?;
    Ok(DeltaEntry {
        base,
        data,
        delta_size: header.size,
    })
}

/// Reads a pack by offset from a position on (for a zlib decoder).
struct PackReader<'a, R: ?Sized> {
    pack: &'a R,
    at: u64,
}

impl<R: ReadAt + ?Sized> Read for PackReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.pack.read_at(buf, self.at) {
                Ok(n) => {
                    self.at = self.at.saturating_add(n as u64);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// A delta's instructions, inflated in pieces, with a count of the bytes taken.
struct DeltaReader<'a, R: ?Sized> {
    z: BufReader<ZlibDecoder<PackReader<'a, R>>>,
    taken: u64,
}

impl<'a, R: ReadAt + ?Sized> DeltaReader<'a, R> {
    fn new(pack: &'a R, at: u64) -> Self {
        DeltaReader {
            z: BufReader::with_capacity(CHUNK, ZlibDecoder::new(PackReader { pack, at })),
            taken: 0,
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.z.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => corrupt("a delta ends early"),
            _ => zlib_error(e),
        })?;
        self.taken += buf.len() as u64;
        Ok(())
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.exact(&mut b)?;
        Ok(b[0])
    }

    /// A size in a delta's header: little-endian groups of 7 bits.
    fn varint(&mut self) -> io::Result<u64> {
        let (mut v, mut shift) = (0u64, 0u32);
        loop {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if shift >= 64 || (part << shift) >> shift != part {
                return Err(corrupt("a delta's header size does not fit 64 bits"));
            }
            v |= part << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
    }

    /// The zlib stream must end here.
    fn end(&mut self) -> io::Result<()> {
        let mut b = [0u8; 1];
        match self.z.read(&mut b).map_err(zlib_error)? {
            0 => Ok(()),
            _ => Err(corrupt("a delta inflates to more than its header says")),
        }
    }
}

fn zlib_error(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::InvalidData => e,
        io::ErrorKind::InvalidInput => corrupt(&format!("a delta's zlib data is corrupt: {e}")),
        _ => e,
    }
}

/// A delta's base size and result size, from its header.
pub fn delta_sizes(pack: &(impl ReadAt + ?Sized), entry: &DeltaEntry) -> io::Result<(u64, u64)> {
    let mut d = DeltaReader::new(pack, entry.data);
    Ok((d.varint()?, d.varint()?))
}

/// Applies the delta `entry` of `pack` to `base` (`base_size` bytes), handing the result to
/// `sink` in pieces of at most 64 KiB: the result's size. Every copy is checked against the
/// base's size and the result's, the instructions against the delta's size.
pub fn apply_delta(
    pack: &(impl ReadAt + ?Sized),
    entry: &DeltaEntry,
    base: &(impl ReadAt + ?Sized),
    base_size: u64,
    sink: &mut dyn FnMut(DeltaPiece) -> io::Result<()>,
) -> io::Result<u64> {
    let mut d = DeltaReader::new(pack, entry.data);
    if d.varint()? != base_size {
        return Err(corrupt(
            "a delta's base has another size than the delta says",
        ));
    }
    let result = d.varint()?;
    sink(DeltaPiece::Size(result))?;
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    while d.taken < entry.delta_size {
        let cmd = d.byte()?;
        if cmd & 0x80 != 0 {
            let (mut off, mut len) = (0u64, 0u64);
            for i in 0..4 {
                if cmd & (1 << i) != 0 {
                    off |= u64::from(d.byte()?) << (8 * i);
                }
            }
            for i in 0..3 {
                if cmd & (0x10 << i) != 0 {
                    len |= u64::from(d.byte()?) << (8 * i);
                }
            }
            if len == 0 {
                len = 0x10000;
            }
            let fits = off
                .checked_add(len)
                .is_some_and(|end| end <= base_size && written + len <= result);
            if !fits {
                return Err(corrupt(
                    "a delta copies from outside its base or past its result",
                ));
            }
            while len > 0 {
                let n = usize::try_from(len.min(CHUNK as u64)).unwrap_or(CHUNK);
                let piece = &mut buf[..n];
                read_exact(base, piece, off).map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        corrupt("a delta's base is shorter than it says")
                    }
                    _ => e,
                })?;
                sink(DeltaPiece::Bytes(piece))?;
                off += n as u64;
                len -= n as u64;
                written += n as u64;
            }
        } else if cmd != 0 {
            let n = usize::from(cmd);
            if written + n as u64 > result {
                return Err(corrupt("a delta inserts past its result"));
            }
            let piece = &mut buf[..n];
            d.exact(piece)?;
            sink(DeltaPiece::Bytes(piece))?;
            written += n as u64;
        } else {
            return Err(corrupt("a delta holds the reserved instruction 0"));
        }
    }
    if d.taken != entry.delta_size || written != result {
        return Err(corrupt("a delta does not add up to its header's sizes"));
    }
    d.end()?;
    Ok(result)
}

/// What [`apply_delta`] hands out: first the result's size, then its bytes.
pub enum DeltaPiece<'a> {
    Size(u64),
    Bytes(&'a [u8]),
}

/// Writes blob `oid` stored as the delta at `loc` into `out`, applying the delta in steps:
/// its base is a file of the running release when `known` names one whose content has the
/// base's id (checked by hashing it first), or else is rebuilt from the mirror's packs into a
/// temporary file in `objects_dir` (inflated in 64 KiB steps; a base that is a delta itself is
/// rebuilt the same way). The result's size and id are checked. On an error part of it may
/// have been written: the caller removes the file.
pub fn write_delta_blob(
    objects_dir: &Path,
    loc: &Location,
    oid: &[u8],
    known: &dyn Fn(&[u8]) -> Option<PathBuf>,
    out: &mut impl Write,
) -> Result<(), PackBlobError> {
    let pack = File::open(&loc.pack).map_err(|source| PackBlobError::Io {
        path: loc.pack.clone(),
        source,
    })?;
    let fail = |e| classify(&loc.pack, e);
    let entry = delta_entry(&pack, loc.offset).map_err(fail)?;
    let (base_size, _) = delta_sizes(&pack, &entry).map_err(fail)?;
    let from_release = match entry.base {
        Base::Ref(id) => known(&id).and_then(|path| {
            let file = File::open(&path).ok()?;
            let same = file.metadata().ok()?.len() == base_size
                && file_blob_id(&file, base_size).ok()? == id;
            same.then_some(file)
        }),
        Base::Ofs(_) => None,
    };
    let (base, kind, size) = match from_release {
        Some(file) => (file, OBJ_BLOB, base_size),
        None => rebuild_base(objects_dir, &loc.pack, &pack, &entry, 1)?,
    };
    if kind != OBJ_BLOB || size != base_size {
        return Err(fail(corrupt(
            "a blob's delta base is not a blob of its size",
        )));
    }
    let mut hash = Sha1::new();
    let result = apply_delta(&pack, &entry, &base, base_size, &mut |piece| {
        match piece {
            DeltaPiece::Size(n) => {
                if n != loc.size {
                    return Err(corrupt(&format!(
                        "a delta's result has {n} bytes, the index said {}",
                        loc.size
                    )));
                }
                hash.update(format!("blob {n}\0").as_bytes());
            }
            DeltaPiece::Bytes(b) => {
                hash.update(b);
                out.write_all(b)?;
            }
        }
        Ok(())
    })
    .map_err(fail)?;
    if result != loc.size || hash.finalize().as_slice() != oid {
        return Err(fail(corrupt("a blob's content does not match its id")));
    }
    Ok(())
}

/// The blob id of a file's content (`size` bytes), read in 64 KiB pieces.
fn file_blob_id(file: &File, size: u64) -> io::Result<[u8; OID_LEN]> {
    let mut hash = Sha1::new();
    hash.update(format!("blob {size}\0").as_bytes());
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        let n = read_up_to(file, &mut buf, at)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        at += n as u64;
    }
    if at != size {
        return Err(corrupt("a file changed size while it was read"));
    }
    Ok(hash.finalize().into())
}

/// The base of delta `entry` (of `pack`, at `pack_path`) rebuilt into a temporary file: the
/// file, its object type and size.
fn rebuild_base(
    objects_dir: &Path,
    pack_path: &Path,
    pack: &File,
    entry: &DeltaEntry,
    depth: usize,
) -> Result<(File, u8, u64), PackBlobError> {
    let (base_pack_path, base_off) = match entry.base {
        Base::Ofs(off) => (pack_path.to_path_buf(), off),
        Base::Ref(id) => {
            find_in_packs(objects_dir, pack_path, &id)?.ok_or_else(|| PackBlobError::Corrupt {
                path: pack_path.to_path_buf(),
                what: "a delta's base is in no pack of the mirror".into(),
            })?
        }
    };
    let opened;
    let base_pack = if base_pack_path == pack_path {
        pack
    } else {
        opened = File::open(&base_pack_path).map_err(|source| PackBlobError::Io {
            path: base_pack_path.clone(),
            source,
        })?;
        &opened
    };
    rebuild(objects_dir, &base_pack_path, base_pack, base_off, depth)
}

/// The object at `offset` of `pack` rebuilt into a temporary file in `objects_dir`.
fn rebuild(
    objects_dir: &Path,
    pack_path: &Path,
    pack: &File,
    offset: u64,
    depth: usize,
) -> Result<(File, u8, u64), PackBlobError> {
    let fail = |e| classify(pack_path, e);
    if depth > MAX_DELTA_CHAIN {
        return Err(fail(corrupt("a delta chain is too long (or loops)")));
    }
    let mut head = [0u8; MAX_ENTRY_HEADER];
    let got = read_up_to(pack, &mut head, offset).map_err(fail)?;
    let header = parse_entry_header(&head[..got]).map_err(fail)?;
    let tmp = unlinked_file(objects_dir).map_err(|source| PackBlobError::Io {
        path: objects_dir.to_path_buf(),
        source,
    })?;
    let mut out = io::BufWriter::with_capacity(CHUNK, &tmp);
    let (kind, size) = match header.kind {
        1..=4 => {
            let data = offset + header.len as u64;
            let mut z = ZlibDecoder::new(PackReader { pack, at: data });
            let n = io::copy(&mut (&mut z).take(header.size + 1), &mut out)
                .map_err(|e| fail(zlib_error(e)))?;
            if n != header.size {
                return Err(fail(corrupt(&format!(
                    "an object inflates to {n} bytes, its header says {}",
                    header.size
                ))));
            }
            (header.kind, header.size)
        }
        OBJ_OFS_DELTA | OBJ_REF_DELTA => {
            let entry = delta_entry(pack, offset).map_err(fail)?;
            let (base, kind, base_size) =
                rebuild_base(objects_dir, pack_path, pack, &entry, depth + 1)?;
            let size = apply_delta(pack, &entry, &base, base_size, &mut |piece| match piece {
                DeltaPiece::Size(_) => Ok(()),
                DeltaPiece::Bytes(b) => out.write_all(b),
            })
            .map_err(fail)?;
            (kind, size)
        }
        _ => return Err(fail(corrupt("a pack entry has an unknown type"))),
    };
    out.flush().map_err(|source| PackBlobError::Io {
        path: objects_dir.to_path_buf(),
        source,
    })?;
    drop(out);
    Ok((tmp, kind, size))
}

/// A new file in `dir`, readable and writable, already removed from the directory (its
/// blocks are freed when it is closed, whatever happens).
fn unlinked_file(dir: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let name = format!(
            ".hammer-delta-base-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => {
                std::fs::remove_file(&path)?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
}

/// The pack (its path) and offset of object `oid`: `prefer` (a pack path) first, then every
/// other pack of `objects_dir`.
fn find_in_packs(
    objects_dir: &Path,
    prefer: &Path,
    oid: &[u8],
) -> Result<Option<(PathBuf, u64)>, PackBlobError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackBlobError::Io { path, source }
    };
    let dir = objects_dir.join("pack");
    let mut idxs = vec![prefer.with_extension("idx")];
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let path = entry.map_err(io_err(&dir))?.path();
        if path.extension().and_then(|x| x.to_str()) == Some("idx") && path != idxs[0] {
            idxs.push(path);
        }
    }
    for idx in idxs {
        let file = File::open(&idx).map_err(io_err(&idx))?;
        if let Some(offset) = idx_lookup(&file, oid).map_err(|e| classify(&idx, e))? {
            return Ok(Some((idx.with_extension("pack"), offset)));
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

    fn varint(mut n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    /// Delta instructions: a copy from the base, or bytes to insert (at most 127).
    enum Op<'a> {
        Copy(u64, u64),
        Insert(&'a [u8]),
    }

    fn delta_of(base_size: u64, result_size: u64, ops: &[Op]) -> Vec<u8> {
        let mut d = varint(base_size);
        d.extend(varint(result_size));
        for op in ops {
            match op {
                Op::Copy(off, len) => {
                    let mut cmd = 0x80u8;
                    let mut args = Vec::new();
                    for i in 0..4 {
                        let b = (off >> (8 * i)) as u8;
                        if b != 0 {
                            cmd |= 1 << i;
                            args.push(b);
                        }
                    }
                    let len = if *len == 0x10000 { 0 } else { *len };
                    for i in 0..3 {
                        let b = (len >> (8 * i)) as u8;
                        if b != 0 {
                            cmd |= 0x10 << i;
                            args.push(b);
                        }
                    }
                    d.push(cmd);
                    d.extend(args);
                }
                Op::Insert(bytes) => {
                    d.push(bytes.len() as u8);
                    d.extend(*bytes);
                }
            }
        }
        d
    }

    /// A pack whose entry at 12 is a REF_DELTA (`delta`, zlib) on base id `[0xab; 20]`.
    fn ref_delta_pack(delta: &[u8]) -> Vec<u8> {
        let mut pack = b"PACK\0\0\0\x02\0\0\0\x01".to_vec();
        pack.extend(entry_header(OBJ_REF_DELTA, delta.len() as u64));
        pack.extend([0xab; OID_LEN]);
        pack.extend(zlib(delta));
        pack
    }

    fn apply(pack: &[u8], base: &[u8]) -> io::Result<Vec<u8>> {
        let entry = delta_entry(pack, 12)?;
        let mut out = Vec::new();
        apply_delta(pack, &entry, base, base.len() as u64, &mut |piece| {
            if let DeltaPiece::Bytes(b) = piece {
                out.extend_from_slice(b);
            }
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn a_delta_is_applied_in_steps_from_copies_and_inserts() {
        let base: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let ops = [
            Op::Copy(0, 0x10000),
            Op::Insert(b"four KiB changed here"),
            Op::Copy(0x10000 + 21, 100_000),
            Op::Copy(5, 1),
            Op::Insert(b"!"),
        ];
        let mut want = base[..0x10000].to_vec();
        want.extend(b"four KiB changed here");
        want.extend(&base[0x10000 + 21..0x10000 + 21 + 100_000]);
        want.push(base[5]);
        want.push(b'!');
        let delta = delta_of(base.len() as u64, want.len() as u64, &ops);
        let pack = ref_delta_pack(&delta);
        let entry = delta_entry(pack.as_slice(), 12).unwrap();
        assert_eq!(entry.base, Base::Ref([0xab; OID_LEN]));
        assert_eq!(entry.delta_size, delta.len() as u64);
        assert_eq!(
            delta_sizes(pack.as_slice(), &entry).unwrap(),
            (base.len() as u64, want.len() as u64)
        );
        assert!(apply(&pack, &base).unwrap() == want);
    }

    #[test]
    fn an_ofs_delta_names_its_base_by_a_backward_offset() {
        // git's offset encoding: 300 = (1 + 1) << 7 | 44 ... encoded as [0x81, 0x2c].
        let delta = delta_of(3, 3, &[Op::Copy(0, 3)]);
        let mut pack = vec![0u8; 400];
        pack.extend(entry_header(OBJ_OFS_DELTA, delta.len() as u64));
        pack.extend([0x81, 0x2c]);
        pack.extend(zlib(&delta));
        let entry = delta_entry(pack.as_slice(), 400).unwrap();
        assert_eq!(entry.base, Base::Ofs(400 - 300));
        let mut bad = vec![0u8; 10];
        bad.extend(entry_header(OBJ_OFS_DELTA, 3));
        bad.extend([0x81, 0x2c]);
        assert!(delta_entry(bad.as_slice(), 10).is_err(), "before the pack");
    }

    #[test]
    fn a_delta_that_reads_or_writes_out_of_bounds_is_an_error() {
        let base = b"0123456789".to_vec();
        let err = |ops: &[Op], base_size: u64, result: u64| {
            let pack = ref_delta_pack(&delta_of(base_size, result, ops));
            apply(&pack, &base).unwrap_err().to_string()
        };
        assert!(err(&[Op::Copy(8, 3)], 10, 3).contains("outside its base"));
        assert!(err(&[Op::Copy(0, 5)], 10, 4).contains("past its result"));
        assert!(err(&[Op::Insert(b"abc")], 10, 2).contains("past its result"));
        assert!(err(&[Op::Copy(0, 2)], 10, 3).contains("add up"));
        assert!(err(&[Op::Copy(0, 2)], 11, 2).contains("another size"));
        // The reserved instruction 0.
        let mut d = delta_of(10, 1, &[]);
        d.push(0);
        assert!(apply(&ref_delta_pack(&d), &base)
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        // A delta cut short inside an insert.
        let mut d = delta_of(10, 5, &[]);
        d.extend([5, b'a', b'b']);
        assert!(apply(&ref_delta_pack(&d), &base).is_err());
    }

    /// A way to name a delta base's file by its id (the running release's, in the checkout).
    type Known<'a> = &'a dyn Fn(&[u8]) -> Option<PathBuf>;

    /// An objects folder with one pack: `base` whole at 12, then a REF_DELTA on it (the base
    /// named by id, as in a thin pack fixed by libgit2) at the returned offset, both indexed.
    fn objects_with_delta(dir: &Path, base: &[u8], delta: &[u8], result_id: [u8; 20]) -> u64 {
        let base_id = blob_id(base);
        let mut pack = pack_of(base);
        let at = pack.len() as u64;
        pack.extend(entry_header(OBJ_REF_DELTA, delta.len() as u64));
        pack.extend(base_id);
        pack.extend(zlib(delta));
        std::fs::create_dir_all(dir.join("pack")).unwrap();
        std::fs::write(dir.join("pack/pack-1.pack"), &pack).unwrap();
        let idx = idx_of(&mut [(base_id, 12), (result_id, at)]);
        std::fs::write(dir.join("pack/pack-1.idx"), idx).unwrap();
        at
    }

    #[test]
    fn a_delta_blob_is_written_from_a_known_base_file_or_a_base_rebuilt_from_the_pack() {
        let tmp = tempfile::tempdir().unwrap();
        let objects = tmp.path().join("objects");
        let base: Vec<u8> = (0..150_000u32).map(|i| (i * 17 % 251) as u8).collect();
        let mut want = base.clone();
        want[70_000..70_010].copy_from_slice(b"0123456789");
        let ops = [
            Op::Copy(0, 70_000),
            Op::Insert(b"0123456789"),
            Op::Copy(70_010, 80_000 - 10),
        ];
        let delta = delta_of(base.len() as u64, want.len() as u64, &ops);
        let id = blob_id(&want);
        let at = objects_with_delta(&objects, &base, &delta, id);
        let found = locate(&objects, &id).unwrap();
        let loc = Location {
            pack: objects.join("pack/pack-1.pack"),
            offset: at,
            size: want.len() as u64,
        };
        assert_eq!(found, Found::Delta(loc.clone()));

        let good = tmp.path().join("release-copy");
        std::fs::write(&good, &base).unwrap();
        let mut wrong = base.clone();
        wrong[0] ^= 1;
        let changed = tmp.path().join("changed-copy");
        std::fs::write(&changed, &wrong).unwrap();
        let base_id = blob_id(&base);
        let none = |_: &[u8]| None;
        let from_good = |id: &[u8]| (id == base_id).then(|| good.clone());
        let from_changed = |id: &[u8]| (id == base_id).then(|| changed.clone());
        let known: [Known; 3] = [&none, &from_good, &from_changed];
        for k in known {
            let mut out = Vec::new();
            write_delta_blob(&objects, &loc, &id, k, &mut out).unwrap();
            assert!(out == want);
        }
        // No temporary base left in the objects folder.
        let left: Vec<_> = std::fs::read_dir(&objects).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");

        let err = write_delta_blob(&objects, &loc, &[7; 20], &none, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match its id"), "{err}");
        let short = Location {
            size: loc.size - 1,
            ..loc.clone()
        };
        let err = write_delta_blob(&objects, &short, &id, &none, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("the index said"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_delta_bytes_never_panic(
            delta in proptest::collection::vec(any::<u8>(), 0..512),
            base in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let pack = ref_delta_pack(&delta);
            let _ = apply(&pack, &base);
        }

        #[test]
        fn arbitrary_delta_entries_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            offset in 0u64..64,
        ) {
            if let Ok(entry) = delta_entry(bytes.as_slice(), offset) {
                let _ = delta_sizes(bytes.as_slice(), &entry);
            }
        }
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
