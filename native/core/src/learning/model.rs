//! The saved Q-table: a versioned binary file, written so that a crash at any
//! moment leaves either the old file or the new one, never a mix.
//!
//! Layout, little-endian:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "EMFQ"
//! 4       2     format version (1)
//! 6       2     reserved, 0
//! 8       4     states per task class (99)
//! 12      4     task classes
//! 16      8     episodes learned
//! 24      4     number of agents N
//! 28      ...   N times: id length (u16), id bytes, then for every state
//!               (states x classes of them): value (f64), visits (u32)
//! end-4   4     CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Writing goes to `<path>.tmp`, which is fsynced, renamed over `<path>`, and
//! the directory fsynced (made first if missing).
//!
//! Reading accepts only a regular file (a FIFO or a device such as
//! `/dev/zero` is refused before anything is read, and the file is opened
//! without blocking), no larger than its header's agent count allows, with
//! every value finite.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use crate::error::FlowError;

use crate::learning::{IdRow, QConfig, STATES, SavedRow};

pub const MAGIC: &[u8; 4] = b"EMFQ";
pub const VERSION: u16 = 1;
const HEADER: usize = 28;
const CELL: usize = 12;
/// Most agent rows a model file may hold.
pub const MAX_ROWS: u32 = 1_000_000;

/// A decoded model.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub episodes: u64,
    /// Per agent id, (value, visits) for every state.
    pub rows: Vec<SavedRow>,
}

/// Encodes `rows` (ids up to 65 535 bytes; longer ones are skipped).
pub fn encode(config: &QConfig, rows: &[IdRow], episodes: u64) -> Vec<u8> {
    let rows: Vec<_> = rows
        .iter()
        .filter(|(id, _)| id.len() <= usize::from(u16::MAX))
        .collect();
    let row_len = config.row_len();
    let size = HEADER
        + rows
            .iter()
            .map(|(id, _)| 2 + id.len() + row_len * CELL)
            .sum::<usize>()
        + 4;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(STATES as u32).to_le_bytes());
    out.extend_from_slice(&config.classes().to_le_bytes());
    out.extend_from_slice(&episodes.to_le_bytes());
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for (id, row) in rows {
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id);
        for i in 0..row_len {
            out.extend_from_slice(&row.value(i).to_le_bytes());
            out.extend_from_slice(&row.visits(i).to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FlowError> {
        let end = self.pos.checked_add(n).ok_or(FlowError::Truncated)?;
        let s = self.bytes.get(self.pos..end).ok_or(FlowError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FlowError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

/// Decodes a model and checks it fits `config`.
pub fn decode(bytes: &[u8], config: &QConfig) -> Result<Model, FlowError> {
    if bytes.len() < 4 {
        return Err(FlowError::Truncated);
    }
    if bytes.len() >= 4 && &bytes[..4] != MAGIC {
        return Err(FlowError::BadMagic);
    }
    if bytes.len() < HEADER + 4 {
        return Err(FlowError::Truncated);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    // The checksum first, so that a damaged header reads as damage rather
    // than as another version or other dimensions.
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(FlowError::Checksum);
    }
    let mut r = Reader {
        bytes: body,
        pos: 4,
    };
    let version = u16::from_le_bytes(r.array()?);
    if version != VERSION {
        return Err(FlowError::UnsupportedVersion(version));
    }
    let _reserved = r.array::<2>()?;
    let file_states = u32::from_le_bytes(r.array()?);
    let file_classes = u32::from_le_bytes(r.array()?);
    let classes = config.classes();
    if file_states != STATES as u32 || file_classes != classes {
        return Err(FlowError::Incompatible {
            file_states,
            file_classes,
            states: STATES as u32,
            classes,
        });
    }
    let episodes = u64::from_le_bytes(r.array()?);
    let n = u32::from_le_bytes(r.array()?);
    if n > MAX_ROWS {
        return Err(FlowError::FileTooLarge(bytes.len() as u64));
    }
    let n = n as usize;
    let row_len = config.row_len();
    let mut rows = Vec::with_capacity(n.min(body.len() / (2 + row_len * CELL) + 1));
    for _ in 0..n {
        let len = u16::from_le_bytes(r.array()?) as usize;
        let id = r.take(len)?.to_vec();
        let cells = r.take(row_len * CELL)?;
        let row = cells
            .chunks_exact(CELL)
            .map(|c| {
                let mut v = [0u8; 8];
                v.copy_from_slice(&c[..8]);
                let mut k = [0u8; 4];
                k.copy_from_slice(&c[8..]);
                let v = f64::from_le_bytes(v);
                if v.is_finite() {
                    Ok((v, u32::from_le_bytes(k)))
                } else {
                    Err(FlowError::NonFinite)
                }
            })
            .collect::<Result<_, _>>()?;
        rows.push((id, row));
    }
    if r.pos != body.len() {
        return Err(FlowError::TrailingBytes);
    }
    Ok(Model { episodes, rows })
}

fn io_error(e: io::Error) -> FlowError {
    FlowError::Io(e.to_string())
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync
/// of the directory.
///
/// Only a regular file (or no file) is replaced: a device, a FIFO, a
/// directory or a symbolic link at `path` or at `<path>.tmp` is refused
/// (`NotRegular`) rather than renamed over or written through; a process
/// running as root must not replace `/dev/zero` because it was given that
/// path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FlowError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    for p in [path, tmp] {
        match fs::symlink_metadata(p) {
            Ok(m) if !m.file_type().is_file() => return Err(FlowError::NotRegular),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_error)?;
    }
    {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            // not through a link, and never blocking on a FIFO put there
            // since the check above
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        }
        let mut f = options.open(tmp).map_err(io_error)?;
        f.write_all(bytes).map_err(io_error)?;
        f.sync_all().map_err(io_error)?;
    }
    fs::rename(tmp, path).map_err(io_error)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Make the rename itself durable; some filesystems refuse to open a
    // directory for this, which loses nothing but that guarantee.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The largest file a model of `rows` agents can be: ids of at most 65 535
/// bytes (the format's u16 length).
fn max_size(rows: u64, config: &QConfig) -> u64 {
    let row = 2 + u64::from(u16::MAX) + config.row_len() as u64 * CELL as u64;
    (HEADER as u64 + 4).saturating_add(rows.saturating_mul(row))
}

/// Opens `path` for reading without blocking (a FIFO would block until a
/// writer came), and only if it is a regular file.
fn open_regular(path: &Path) -> Result<Option<File>, FlowError> {
    // `stat` first: opening a device or a FIFO may have effects of its own
    match fs::metadata(path) {
        Ok(m) if !m.is_file() => return Err(FlowError::NotRegular),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    }
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    match options.open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(e)),
    }
}

/// Reads a model file: `Ok(None)` when there is none. Only a regular file,
/// and no more bytes than its header's agent count allows, are read.
pub fn read(path: &Path, config: &QConfig) -> Result<Option<Model>, FlowError> {
    let Some(mut file) = open_regular(path)? else {
        return Ok(None);
    };
    // checked again on the open file: the path may have changed since `stat`
    let meta = file.metadata().map_err(io_error)?;
    if !meta.is_file() {
        return Err(FlowError::NotRegular);
    }
    let size = meta.len();
    let mut header = [0u8; HEADER];
    let got = read_up_to(&mut file, &mut header)?;
    if got >= 4 && &header[..4] != MAGIC {
        return Err(FlowError::BadMagic);
    }
    if got < HEADER {
        return Err(FlowError::Truncated);
    }
    let rows = u32::from_le_bytes([header[24], header[25], header[26], header[27]]);
    if rows > MAX_ROWS || size > max_size(u64::from(rows), config) {
        return Err(FlowError::FileTooLarge(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    bytes.extend_from_slice(&header);
    // never more than the size checked above, even if the file grows
    file.take(size.saturating_sub(HEADER as u64) + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > size {
        return Err(FlowError::TrailingBytes);
    }
    decode(&bytes, config).map(Some)
}

/// Reads into `buf` until it is full or the file ends; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> Result<usize, FlowError> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learning::QStore;

    fn sample() -> (QConfig, Vec<IdRow>) {
        let c = QConfig::default();
        let store = QStore::new(10);
        let a = store.checkout(b"a", &c);
        a.set(5, -1.25, 3);
        let b = store.checkout(b"bee", &c);
        b.set(98, 2.5, 1);
        (c, store.rows())
    }

    #[test]
    fn round_trip() {
        let (c, rows) = sample();
        let bytes = encode(&c, &rows, 1234);
        let m = decode(&bytes, &c).unwrap();
        assert_eq!(m.episodes, 1234);
        assert_eq!(m.rows.len(), 2);
        assert_eq!(m.rows[0].0, b"a");
        assert_eq!(m.rows[0].1[5], (-1.25, 3));
        assert_eq!(m.rows[1].1[98], (2.5, 1));
    }

    #[test]
    fn every_truncation_is_refused() {
        let (c, rows) = sample();
        let bytes = encode(&c, &rows, 1);
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], &c).is_err(), "accepted {n} bytes");
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let (c, rows) = sample();
        let bytes = encode(&c, &rows, 1);
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x5a;
            assert!(decode(&bad, &c).is_err(), "accepted a flip at {i}");
        }
    }

    #[test]
    fn other_dimensions_and_versions_are_refused() {
        let (c, rows) = sample();
        let bytes = encode(&c, &rows, 1);
        let two = QConfig {
            task_classes: 2,
            ..QConfig::default()
        };
        assert!(matches!(
            decode(&bytes, &two),
            Err(FlowError::Incompatible { .. })
        ));
        let mut v2 = bytes.clone();
        v2[4] = 2;
        let n = v2.len() - 4;
        let crc = crc32fast::hash(&v2[..n]).to_le_bytes();
        v2[n..].copy_from_slice(&crc);
        assert_eq!(decode(&v2, &c), Err(FlowError::UnsupportedVersion(2)));
        assert_eq!(
            decode(b"nope-not-a-model-file-at-all-really", &c),
            Err(FlowError::BadMagic)
        );
    }

    #[test]
    fn atomic_write_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.model");
        let (c, rows) = sample();
        assert_eq!(read(&path, &c), Ok(None));
        write_atomic(&path, &encode(&c, &rows, 9)).unwrap();
        assert_eq!(read(&path, &c).unwrap().unwrap().episodes, 9);
        assert!(!dir.path().join("q.model.tmp").exists());
    }

    #[test]
    fn non_finite_values_are_refused() {
        let (c, _) = sample();
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let store = QStore::new(10);
            store.checkout(b"a", &c).set(3, bad, 1);
            let bytes = encode(&c, &store.rows(), 1);
            assert_eq!(decode(&bytes, &c), Err(FlowError::NonFinite), "{bad}");
        }
    }

    #[test]
    #[cfg(unix)]
    fn only_regular_files_are_read() {
        let c = QConfig::default();
        assert_eq!(read(Path::new("/dev/zero"), &c), Err(FlowError::NotRegular));
        assert_eq!(read(Path::new("/tmp"), &c), Err(FlowError::NotRegular));
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path and a mode.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        assert_eq!(read(&fifo, &c), Err(FlowError::NotRegular));
    }

    #[test]
    fn a_file_larger_than_its_header_allows_is_refused_unread() {
        let (c, rows) = sample();
        let mut bytes = encode(&c, &rows, 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.model");
        bytes.resize(max_size(2, &c) as usize + 1, 0);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(&path, &c), Err(FlowError::FileTooLarge(_))));
        // a header claiming more rows than any model holds
        let mut many = encode(&c, &rows, 1);
        many[24..28].copy_from_slice(&(MAX_ROWS + 1).to_le_bytes());
        fs::write(&path, &many).unwrap();
        assert!(matches!(read(&path, &c), Err(FlowError::FileTooLarge(_))));
        // not a model at all: refused at its first bytes
        fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(read(&path, &c), Err(FlowError::BadMagic));
    }

    #[test]
    #[cfg(unix)]
    fn saving_never_replaces_a_special_file() {
        let (c, rows) = sample();
        let bytes = encode(&c, &rows, 1);
        assert_eq!(
            write_atomic(Path::new("/dev/null"), &bytes),
            Err(FlowError::NotRegular)
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(write_atomic(dir.path(), &bytes), Err(FlowError::NotRegular));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert_eq!(write_atomic(&link, &bytes), Err(FlowError::NotRegular));
        let target = dir.path().join("m");
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("m.tmp")).unwrap();
        assert_eq!(write_atomic(&target, &bytes), Err(FlowError::NotRegular));
        assert!(!target.exists());
    }

    #[test]
    fn saving_makes_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("deeper").join("q.model");
        let (c, rows) = sample();
        write_atomic(&path, &encode(&c, &rows, 3)).unwrap();
        assert_eq!(read(&path, &c).unwrap().unwrap().episodes, 3);
    }
}
