//! The disk tier of the KV cache: one file of fixed-size, checksummed block slots.
//!
//! # File layout (format version 1, all integers little-endian)
//!
//! ```text
//! offset 0      header, 4096 bytes:
//!               0  magic  b"KVSPDISK"          8  version u32       12 header bytes u32 (4096)
//!               16 model fingerprint u64       24 n_layer u32       28 n_head_kv u32
//!               32 head_dim u32                36 block_tokens u32  40 dtype id u32
//!               44 payload bytes u32           48 slot bytes u32    52 crc32 of bytes 0..52
//! offset 4096 + i * slot_bytes   slot i (slot_bytes = payload + trailer rounded up to 4096):
//!               payload (payload bytes), then the 32-byte trailer:
//!               0 magic b"KVBL"  4 payload bytes u32  8 slot index u64  16 generation u64
//!               24 crc32 of payload + trailer bytes 0..24   28 zero
//!               then zero padding up to slot_bytes.
//! ```
//!
//! Every slot read is verified (trailer magic, slot index, length and checksum) before the
//! caller sees a byte of it; a mismatch is an error naming the file and the slot. The header is
//! written to a temporary file, fsynced, and renamed into place, so a file either has a complete
//! header or does not exist. Capacity is reserved with `fallocate` in chunks as the context grows,
//! so a full disk is reported by [`DiskTier::reserve`], never in the middle of a block write.
//!
//! The I/O itself goes through a [`DiskBackend`]: [`PreadBackend`] (O_DIRECT pread/pwrite),
//! [`UringBackend`] (io_uring, batched reads, queue depth 32, falls back to pread when
//! io_uring cannot be set up), [`MmapBackend`] (memmap2 with MADV_RANDOM / MADV_WILLNEED) or [`FaultyBackend`], which wraps
//! another backend and injects faults for tests. Where the filesystem refuses O_DIRECT (tmpfs),
//! the pread backend falls back to buffered I/O and drops the pages it used with
//! `posix_fadvise(DONTNEED)`; [`DiskTier::io_mode`] says which mode is active.

use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Alignment of O_DIRECT buffers, offsets and lengths.
pub const DISK_ALIGN: usize = 4096;
/// Bytes of the file header (slots start here).
pub const HEADER_BYTES: u64 = 4096;
/// Bytes of the per-slot trailer that follows the payload.
pub const TRAILER_BYTES: usize = 32;
/// File magic.
pub const FILE_MAGIC: [u8; 8] = *b"KVSPDISK";
/// File format version.
pub const FORMAT_VERSION: u32 = 1;
const SLOT_MAGIC: [u8; 4] = *b"KVBL";
/// Slots reserved at least per growth step (64 KiB blocks: 4 MiB).
pub const RESERVE_CHUNK_SLOTS: u64 = 64;

fn round_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

// ---------------------------------------------------------------------------------------------
// Aligned buffers
// ---------------------------------------------------------------------------------------------

/// A zero-initialised heap buffer aligned to [`DISK_ALIGN`], as O_DIRECT requires: either its
/// own allocation, or one of the equal parts of a slab ([`AlignedBuf::slab`]) that is freed when
/// its last part is dropped.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    /// The slab this buffer is a part of (`None`: the buffer owns its allocation).
    slab: Option<Arc<Slab>>,
}

/// One anonymous mapping shared by the parts of a slab (unmapped when the last part is dropped).
struct Slab {
    _map: memmap2::MmapMut,
}

// SAFETY: AlignedBuf owns its bytes exclusively, like a Vec<u8> (the parts of a slab are
// disjoint ranges of it).
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (capacity rounded up to [`DISK_ALIGN`]).
    pub fn zeroed(len: usize) -> Self {
        let cap = round_up(len.max(1) as u64, DISK_ALIGN as u64) as usize;
        let layout = Layout::from_size_align(cap, DISK_ALIGN).expect("aligned buffer layout");
        // SAFETY: layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len,
            cap,
            slab: None,
        }
    }

    /// `n` zeroed buffers of `len` bytes carved from one anonymous mapping (each starting on a
    /// [`DISK_ALIGN`] boundary). The kernel maps its pages lazily, so they cost memory only once
    /// written, and there is no per-buffer allocator slack (an aligned heap allocation per
    /// buffer can cost a page each). `None` if the size overflows or the mapping fails.
    pub fn slab(n: usize, len: usize) -> Option<Vec<AlignedBuf>> {
        if n == 0 {
            return Some(Vec::new());
        }
        let cap = round_up(len.max(1) as u64, DISK_ALIGN as u64) as usize;
        let total = cap.checked_mul(n)?;
        // An anonymous mapping: page aligned, zero-filled by the kernel on first touch (the
        // allocator's zeroed allocation with 4 KiB alignment would write every page up front).
        let mut map = memmap2::MmapMut::map_anon(total).ok()?;
        let base = NonNull::new(map.as_mut_ptr())?;
        let owner = Arc::new(Slab { _map: map });
        Some(
            (0..n)
                .map(|i| AlignedBuf {
                    // SAFETY: i * cap < total, inside the mapping, which lives as long as any
                    // part (each part holds `owner`); the result is non-null.
                    ptr: unsafe { NonNull::new_unchecked(base.as_ptr().add(i * cap)) },
                    len,
                    cap,
                    slab: Some(owner.clone()),
                })
                .collect(),
        )
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.slab.is_some() {
            return; // the slab frees the memory when its last part is dropped
        }
        let layout = Layout::from_size_align(self.cap, DISK_ALIGN).expect("aligned buffer layout");
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry, header, errors
// ---------------------------------------------------------------------------------------------

/// What a disk tier file stores: it must match exactly when a file is reopened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskGeometry {
    /// Fingerprint of the model the cache belongs to.
    pub fingerprint: u64,
    /// Layers.
    pub n_layer: u32,
    /// KV heads per layer.
    pub n_head_kv: u32,
    /// Dimension of one head.
    pub head_dim: u32,
    /// Positions per block.
    pub block_tokens: u32,
    /// Id of the block codec (f32, f16, fp8...).
    pub dtype_id: u32,
    /// Bytes of one block payload.
    pub payload_bytes: u32,
}

impl DiskGeometry {
    /// Bytes of one slot on disk: payload + trailer, rounded up to [`DISK_ALIGN`].
    pub fn slot_bytes(&self) -> u64 {
        round_up(
            self.payload_bytes as u64 + TRAILER_BYTES as u64,
            DISK_ALIGN as u64,
        )
    }

    /// File offset of slot `slot`.
    pub fn slot_offset(&self, slot: u64) -> u64 {
        HEADER_BYTES + slot * self.slot_bytes()
    }

    fn encode_header(&self) -> AlignedBuf {
        let mut h = AlignedBuf::zeroed(HEADER_BYTES as usize);
        h[0..8].copy_from_slice(&FILE_MAGIC);
        h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_BYTES as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.fingerprint.to_le_bytes());
        let fields = [
            self.n_layer,
            self.n_head_kv,
            self.head_dim,
            self.block_tokens,
            self.dtype_id,
            self.payload_bytes,
            self.slot_bytes() as u32,
        ];
        for (i, f) in fields.iter().enumerate() {
            h[24 + 4 * i..28 + 4 * i].copy_from_slice(&f.to_le_bytes());
        }
        let crc = crc32fast::hash(&h[..52]);
        h[52..56].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode_header(h: &[u8]) -> Result<DiskGeometry, String> {
        if h.len() < 56 {
            return Err(format!(
                "file is too short for a header ({} bytes)",
                h.len()
            ));
        }
        if h[0..8] != FILE_MAGIC {
            return Err("wrong magic: not a kvspool disk tier file".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this build reads version {FORMAT_VERSION}"
            ));
        }
        if u32_at(52) != crc32fast::hash(&h[..52]) {
            return Err("header checksum mismatch (corrupt header)".into());
        }
        if u32_at(12) as u64 != HEADER_BYTES {
            return Err(format!("header size {} != {HEADER_BYTES}", u32_at(12)));
        }
        let g = DiskGeometry {
            fingerprint: u64::from_le_bytes(h[16..24].try_into().unwrap()),
            n_layer: u32_at(24),
            n_head_kv: u32_at(28),
            head_dim: u32_at(32),
            block_tokens: u32_at(36),
            dtype_id: u32_at(40),
            payload_bytes: u32_at(44),
        };
        if u32_at(48) as u64 != g.slot_bytes() {
            return Err(format!(
                "slot size {} does not match payload {} bytes",
                u32_at(48),
                g.payload_bytes
            ));
        }
        Ok(g)
    }
}

/// Errors of the disk tier. Every message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// An I/O call failed.
    #[error("KV disk tier {path}: {op} failed{}: {source}; check the disk and the kernel log (dmesg), or pass another --kv-disk", slot.map(|s| format!(" at slot {s}")).unwrap_or_default())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The slot, if any.
        slot: Option<u64>,
        /// The OS error.
        source: io::Error,
    },
    /// A read returned fewer bytes than a whole slot (end of file).
    #[error("KV disk tier {path}: slot {slot} is truncated (read {got} of {want} bytes); the file was cut short: delete it and re-run to rebuild the cache")]
    ShortRead {
        /// The file.
        path: PathBuf,
        /// The slot.
        slot: u64,
        /// Bytes read.
        got: usize,
        /// Bytes wanted.
        want: usize,
    },
    /// A slot failed verification: its data is never returned.
    #[error("KV disk tier {path}: slot {slot} is corrupt ({what}); the data was not used. Delete the file and re-run to rebuild the cache; if it recurs, check the disk")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The slot.
        slot: u64,
        /// What failed (checksum, slot index, magic...).
        what: String,
    },
    /// The header does not match this build or this model.
    #[error("KV disk tier {path}: {reason}; delete the file (or pass another --kv-disk) to start a new cache")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The disk cannot hold the reserved capacity.
    #[error("disk tier full: {path} could not reserve {bytes} bytes ({slots} slots): {source}; free space or pass a smaller --ctx / another --kv-disk")]
    Full {
        /// The file.
        path: PathBuf,
        /// Slots requested in total.
        slots: u64,
        /// Bytes requested in total.
        bytes: u64,
        /// The OS error.
        source: io::Error,
    },
    /// The directory of the file cannot be written.
    #[error("KV disk tier: cannot create {path}: {source}; the directory is not writable: pass --kv-disk with a writable directory")]
    NotWritable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The caller broke the interface contract (a bug, reported instead of panicking).
    #[error("KV disk tier misuse: {0}")]
    Contract(String),
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// Whether the page cache is bypassed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// O_DIRECT: the page cache is not used.
    Direct,
    /// Buffered I/O (O_DIRECT refused by the filesystem), pages dropped after use.
    Buffered,
    /// Memory-mapped.
    Mapped,
}

/// Which backend to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// O_DIRECT pread/pwrite.
    Pread,
    /// memmap2 with madvise.
    Mmap,
    /// io_uring, batched (falls back to pread if io_uring is unavailable).
    Uring,
}

/// One read of a batch at the backend level. `res` is filled by the backend: bytes read (may be
/// short; the tier completes short reads) or the error.
#[derive(Debug)]
pub struct RawRead<'a> {
    /// File offset.
    pub off: u64,
    /// Destination.
    pub buf: &'a mut [u8],
    /// Result of the read.
    pub res: Option<io::Result<usize>>,
}

/// Raw positioned I/O on the tier file. Single calls may be short or interrupted (like
/// pread/pwrite); [`DiskTier`] retries and verifies.
pub trait DiskBackend: Send {
    /// A short name for logs ("pread", "mmap", ...).
    fn name(&self) -> &'static str;
    /// Whether the page cache is bypassed.
    fn io_mode(&self) -> IoMode;
    /// One read at `off` (may be short; `Ok(0)` at end of file).
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// One write at `off` (may be short).
    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<usize>;
    /// Many reads: submit all, complete all. The default runs them one after another.
    fn read_batch(&mut self, reqs: &mut [RawRead<'_>]) {
        for r in reqs.iter_mut() {
            r.res = Some(self.read_at(r.off, r.buf));
        }
    }
    /// Make sure the file is at least `len` bytes with the space reserved on disk.
    fn allocate(&mut self, len: u64) -> io::Result<()>;
    /// Make written data durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Hint that `off..off+len` will be read soon.
    fn will_need(&mut self, _off: u64, _len: u64) {}
    /// Called after a completed read of `off..off+len` (buffered mode drops those pages).
    fn done_with(&mut self, _off: u64, _len: u64) {}
}

fn fallocate_file(file: &File, len: u64) -> io::Result<()> {
    let cur = file.metadata()?.len();
    if cur >= len {
        return Ok(());
    }
    let fd = file.as_raw_fd();
    // SAFETY: fd is an open file descriptor owned by `file`; fallocate takes plain integers.
    let r = unsafe { libc::fallocate(fd, 0, cur as libc::off_t, (len - cur) as libc::off_t) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    // SAFETY: as above; posix_fallocate emulates the reservation by writing zeros.
    let r = unsafe { libc::posix_fallocate(fd, cur as libc::off_t, (len - cur) as libc::off_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

fn fadvise(file: &File, off: u64, len: u64, advice: libc::c_int) {
    // SAFETY: fd is open and owned by `file`; posix_fadvise only reads its integer arguments.
    let _ = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            off as libc::off_t,
            len as libc::off_t,
            advice,
        )
    };
}

fn open_rw(path: &Path, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

/// pread/pwrite with O_DIRECT, or buffered with `posix_fadvise(DONTNEED)` where O_DIRECT is
/// refused (EINVAL at open or on the first I/O).
#[derive(Debug)]
pub struct PreadBackend {
    file: File,
    path: PathBuf,
    mode: IoMode,
}

impl PreadBackend {
    /// Open an existing file.
    pub fn open(path: &Path) -> io::Result<Self> {
        match open_rw(path, true) {
            Ok(file) => Ok(PreadBackend {
                file,
                path: path.to_owned(),
                mode: IoMode::Direct,
            }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(path = %path.display(), "O_DIRECT refused by the filesystem; using buffered I/O with fadvise(DONTNEED)");
                Ok(PreadBackend {
                    file: open_rw(path, false)?,
                    path: path.to_owned(),
                    mode: IoMode::Buffered,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Open with buffered I/O (what the fallback uses; also for tests of that path).
    pub fn open_buffered(path: &Path) -> io::Result<Self> {
        Ok(PreadBackend {
            file: open_rw(path, false)?,
            path: path.to_owned(),
            mode: IoMode::Buffered,
        })
    }

    /// Switch to buffered I/O after the filesystem rejected an O_DIRECT transfer.
    fn fall_back(&mut self) -> io::Result<()> {
        tracing::info!(path = %self.path.display(), "O_DIRECT I/O rejected (EINVAL); using buffered I/O with fadvise(DONTNEED)");
        self.file = open_rw(&self.path, false)?;
        self.mode = IoMode::Buffered;
        Ok(())
    }

    fn is_einval(&self, r: &io::Result<usize>) -> bool {
        self.mode == IoMode::Direct && matches!(r, Err(e) if e.raw_os_error() == Some(libc::EINVAL))
    }
}

impl DiskBackend for PreadBackend {
    fn name(&self) -> &'static str {
        "pread"
    }
    fn io_mode(&self) -> IoMode {
        self.mode
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.file.read_at(buf, off);
        if self.is_einval(&r) {
            self.fall_back()?;
            return self.file.read_at(buf, off);
        }
        r
    }
    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<usize> {
        let r = self.file.write_at(buf, off);
        if self.is_einval(&r) {
            self.fall_back()?;
            return self.file.write_at(buf, off);
        }
        r
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        fallocate_file(&self.file, len)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn done_with(&mut self, off: u64, len: u64) {
        if self.mode == IoMode::Buffered {
            fadvise(&self.file, off, len, libc::POSIX_FADV_DONTNEED);
        }
    }
}

/// Reads from a shared read-only mapping (MADV_RANDOM; WILLNEED for prefetches), writes with
/// pwrite through the same page cache. The map is rebuilt when the file grows.
#[derive(Debug)]
pub struct MmapBackend {
    file: File,
    map: Option<memmap2::Mmap>,
}

impl MmapBackend {
    /// Open an existing file.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut b = MmapBackend {
            file: open_rw(path, false)?,
            map: None,
        };
        b.remap()?;
        Ok(b)
    }

    fn remap(&mut self) -> io::Result<()> {
        let len = self.file.metadata()?.len();
        if len == 0 {
            self.map = None;
            return Ok(());
        }
        // SAFETY: the file is owned by this tier; it is only grown (never truncated) while
        // mapped, and reads are bounds-checked against the mapping's length. Concurrent
        // external truncation would be a misuse of the cache directory.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(len as usize)
                .map(&self.file)?
        };
        map.advise(memmap2::Advice::Random)?;
        self.map = Some(map);
        Ok(())
    }
}

impl DiskBackend for MmapBackend {
    fn name(&self) -> &'static str {
        "mmap"
    }
    fn io_mode(&self) -> IoMode {
        IoMode::Mapped
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Some(map) = &self.map else { return Ok(0) };
        let off = off as usize;
        if off >= map.len() {
            return Ok(0);
        }
        let n = buf.len().min(map.len() - off);
        buf[..n].copy_from_slice(&map[off..off + n]);
        Ok(n)
    }
    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<usize> {
        self.file.write_at(buf, off)
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        let before = self.file.metadata()?.len();
        fallocate_file(&self.file, len)?;
        if self.file.metadata()?.len() != before {
            self.remap()?;
        }
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn will_need(&mut self, off: u64, len: u64) {
        if let Some(map) = &self.map {
            let off = off as usize;
            if off < map.len() {
                let len = (len as usize).min(map.len() - off);
                let _ = map.advise_range(memmap2::Advice::WillNeed, off, len);
            }
        }
    }
}

/// Queue depth of the io_uring backend.
pub const URING_QUEUE_DEPTH: u32 = 32;

/// io_uring reads of whole slots, many in flight (O_DIRECT, same fallback as [`PreadBackend`]);
/// writes, reservation and fsync go through the pread path.
pub struct UringBackend {
    pread: PreadBackend,
    ring: io_uring::IoUring,
    depth: usize,
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UringBackend(depth {}, {:?})",
            self.depth, self.pread.mode
        )
    }
}

impl UringBackend {
    /// Open an existing file. If io_uring cannot be set up (old kernel, seccomp, EPERM in a
    /// container), returns a [`PreadBackend`] instead and logs why.
    pub fn open_or_pread(path: &Path) -> io::Result<Box<dyn DiskBackend>> {
        let pread = PreadBackend::open(path)?;
        match io_uring::IoUring::new(URING_QUEUE_DEPTH) {
            Ok(ring) => Ok(Box::new(UringBackend {
                pread,
                ring,
                depth: URING_QUEUE_DEPTH as usize,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring is not available; the uring KV backend falls back to pread");
                Ok(Box::new(pread))
            }
        }
    }

    /// Wait for completions; retries interruptions. Any other failure while reads are in flight
    /// would leave the kernel writing into buffers we no longer own, so it aborts.
    fn wait(&mut self, want: usize) {
        loop {
            match self.ring.submit_and_wait(want) {
                Ok(_) => return,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => {
                    eprintln!("kvspool: io_uring_enter failed with reads in flight: {e}");
                    std::process::abort();
                }
            }
        }
    }
}

impl DiskBackend for UringBackend {
    fn name(&self) -> &'static str {
        "uring"
    }
    fn io_mode(&self) -> IoMode {
        self.pread.mode
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut r = [RawRead {
            off,
            buf,
            res: None,
        }];
        self.read_batch(&mut r);
        r[0].res.take().unwrap_or(Ok(0))
    }
    fn read_batch(&mut self, reqs: &mut [RawRead<'_>]) {
        let fd = self.pread.file.as_raw_fd();
        let (mut next, mut inflight) = (0usize, 0usize);
        while next < reqs.len() || inflight > 0 {
            while inflight < self.depth && next < reqs.len() {
                let r = &mut reqs[next];
                let len = r.buf.len().min(u32::MAX as usize) as u32;
                let e =
                    io_uring::opcode::Read::new(io_uring::types::Fd(fd), r.buf.as_mut_ptr(), len)
                        .offset(r.off)
                        .build()
                        .user_data(next as u64);
                // SAFETY: the buffer is borrowed mutably for the whole of read_batch, and we
                // do not return before every submitted read has completed (see `wait`).
                if unsafe { self.ring.submission().push(&e) }.is_err() {
                    if inflight == 0 {
                        // Cannot happen with depth <= ring size, but never wait on nothing.
                        r.res = Some(Err(io::Error::other("io_uring submission queue full")));
                        next += 1;
                        continue;
                    }
                    break;
                }
                next += 1;
                inflight += 1;
            }
            if inflight == 0 {
                continue;
            }
            self.wait(1);
            for cqe in self.ring.completion() {
                let i = cqe.user_data() as usize;
                let res = cqe.result();
                reqs[i].res = Some(if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                });
                inflight -= 1;
            }
        }
        // O_DIRECT refused on this filesystem: switch to buffered and redo with pread.
        if reqs
            .iter()
            .any(|r| self.pread.is_einval(r.res.as_ref().unwrap_or(&Ok(0))))
        {
            for r in reqs.iter_mut() {
                r.res = Some(self.pread.read_at(r.off, r.buf));
            }
        }
    }
    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<usize> {
        self.pread.write_at(off, buf)
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.pread.allocate(len)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.pread.sync()
    }
    fn done_with(&mut self, off: u64, len: u64) {
        self.pread.done_with(off, len)
    }
}

// ---------------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------------

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The read fails with EIO.
    ReadEio,
    /// The write fails with EIO.
    WriteEio,
    /// The read returns half the bytes (rounded down to 4096; the tier must complete it).
    ShortRead,
    /// The read returns 0 bytes (end of file).
    EofRead,
    /// The read is interrupted (EINTR; the tier must retry).
    Interrupted,
    /// `allocate` fails with ENOSPC.
    NoSpace,
    /// One byte of the data read is flipped (within its first 64 bytes: inside the payload).
    FlipByte,
}

/// When a fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Every call touching this slot.
    Slot(u64),
    /// The n-th call (0-based) of the fault's kind (reads, writes or allocations).
    NthCall(u64),
    /// Every call.
    Always,
}

#[derive(Debug, Default)]
struct FaultState {
    rules: Vec<(Fault, Trigger)>,
    reads: u64,
    writes: u64,
    allocs: u64,
    fired: u64,
}

/// Handle to change the faults of a [`FaultyBackend`] after the tier took ownership of it.
#[derive(Debug, Clone, Default)]
pub struct FaultControl(Arc<Mutex<FaultState>>);

impl FaultControl {
    /// Add a fault.
    pub fn inject(&self, fault: Fault, when: Trigger) {
        self.0.lock().unwrap().rules.push((fault, when));
    }
    /// Remove every fault.
    pub fn clear(&self) {
        self.0.lock().unwrap().rules.clear();
    }
    /// Read calls seen so far (the index the next read gets for [`Trigger::NthCall`]).
    pub fn reads(&self) -> u64 {
        self.0.lock().unwrap().reads
    }
    /// How many faults fired so far.
    pub fn fired(&self) -> u64 {
        self.0.lock().unwrap().fired
    }
}

/// Wraps a backend and injects [`Fault`]s at the raw I/O level, so the tier's real retry,
/// short-read and checksum logic is what handles them.
pub struct FaultyBackend {
    inner: Box<dyn DiskBackend>,
    ctl: FaultControl,
    slot_bytes: u64,
}

impl FaultyBackend {
    /// Wrap `inner` (a backend of a tier with `geo`); returns the backend and its control.
    pub fn new(inner: Box<dyn DiskBackend>, geo: &DiskGeometry) -> (Self, FaultControl) {
        let ctl = FaultControl::default();
        (
            FaultyBackend {
                inner,
                ctl: ctl.clone(),
                slot_bytes: geo.slot_bytes(),
            },
            ctl,
        )
    }

    fn slot_of(&self, off: u64) -> Option<u64> {
        off.checked_sub(HEADER_BYTES).map(|o| o / self.slot_bytes)
    }

    /// The faults among `kinds` that fire for this call; counts the call.
    fn firing(
        &self,
        kinds: &[Fault],
        off: Option<u64>,
        counter: fn(&mut FaultState) -> &mut u64,
    ) -> Vec<Fault> {
        let mut st = self.ctl.0.lock().unwrap();
        let n = *counter(&mut st);
        *counter(&mut st) += 1;
        let slot = off.and_then(|o| self.slot_of(o));
        let hits: Vec<Fault> = st
            .rules
            .iter()
            .filter(|(f, t)| {
                kinds.contains(f)
                    && match t {
                        Trigger::Always => true,
                        Trigger::NthCall(k) => *k == n,
                        Trigger::Slot(s) => slot == Some(*s),
                    }
            })
            .map(|(f, _)| *f)
            .collect();
        st.fired += hits.len() as u64;
        hits
    }
}

const READ_FAULTS: [Fault; 5] = [
    Fault::ReadEio,
    Fault::ShortRead,
    Fault::EofRead,
    Fault::Interrupted,
    Fault::FlipByte,
];

impl DiskBackend for FaultyBackend {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn io_mode(&self) -> IoMode {
        self.inner.io_mode()
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let hits = self.firing(&READ_FAULTS, Some(off), |s| &mut s.reads);
        if hits.contains(&Fault::ReadEio) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if hits.contains(&Fault::Interrupted) {
            return Err(io::Error::from_raw_os_error(libc::EINTR));
        }
        if hits.contains(&Fault::EofRead) {
            return Ok(0);
        }
        let want = if hits.contains(&Fault::ShortRead) {
            ((buf.len() / 2) / DISK_ALIGN * DISK_ALIGN).max(buf.len().min(DISK_ALIGN))
        } else {
            buf.len()
        };
        let n = self.inner.read_at(off, &mut buf[..want])?;
        if hits.contains(&Fault::FlipByte) && n > 0 {
            buf[(n / 2).min(63)] ^= 0x10;
        }
        Ok(n)
    }
    fn write_at(&mut self, off: u64, buf: &[u8]) -> io::Result<usize> {
        if !self
            .firing(&[Fault::WriteEio], Some(off), |s| &mut s.writes)
            .is_empty()
        {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.write_at(off, buf)
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        if !self
            .firing(&[Fault::NoSpace], None, |s| &mut s.allocs)
            .is_empty()
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.inner.allocate(len)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn will_need(&mut self, off: u64, len: u64) {
        self.inner.will_need(off, len)
    }
    fn done_with(&mut self, off: u64, len: u64) {
        self.inner.done_with(off, len)
    }
}

// ---------------------------------------------------------------------------------------------
// The tier file
// ---------------------------------------------------------------------------------------------

/// One request of [`DiskTier::read_blocks`]: `buf` is a slot-sized [`AlignedBuf`]; on success its
/// first `payload_bytes` bytes are the verified payload.
#[derive(Debug)]
pub struct ReadReq<'a> {
    /// The slot to read.
    pub slot: u64,
    /// Destination, [`DiskGeometry::slot_bytes`] long.
    pub buf: &'a mut AlignedBuf,
}

/// A disk tier file: header + checksummed slots, over a [`DiskBackend`].
pub struct DiskTier {
    path: PathBuf,
    geo: DiskGeometry,
    backend: Box<dyn DiskBackend>,
    capacity: u64,
    generation: u64,
    scratch: AlignedBuf,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("path", &self.path)
            .field("backend", &self.backend.name())
            .field("mode", &self.backend.io_mode())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Open the backend of `kind` on an existing file.
pub fn open_backend(kind: BackendKind, path: &Path) -> io::Result<Box<dyn DiskBackend>> {
    Ok(match kind {
        BackendKind::Pread => Box::new(PreadBackend::open(path)?),
        BackendKind::Mmap => Box::new(MmapBackend::open(path)?),
        BackendKind::Uring => UringBackend::open_or_pread(path)?,
    })
}

impl DiskTier {
    /// Create (or replace) the file at `path` with a fresh header, then open it with `kind`.
    pub fn create(path: &Path, geo: DiskGeometry, kind: BackendKind) -> Result<Self, DiskError> {
        Self::create_header(path, &geo)?;
        let backend = open_backend(kind, path).map_err(|source| DiskError::Io {
            path: path.to_owned(),
            op: "open",
            slot: None,
            source,
        })?;
        Self::with_backend(path, geo, backend)
    }

    /// Write the header of a new file atomically (temp file, fsync, rename, fsync directory).
    pub fn create_header(path: &Path, geo: &DiskGeometry) -> Result<(), DiskError> {
        if geo.payload_bytes == 0 {
            return Err(DiskError::Contract("block payload of 0 bytes".into()));
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let io_err = |op, source| DiskError::Io {
            path: path.to_owned(),
            op,
            slot: None,
            source,
        };
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM) => {
                    DiskError::NotWritable {
                        path: path.to_owned(),
                        source,
                    }
                }
                _ => io_err("create", source),
            })?;
        f.write_all_at(&geo.encode_header(), 0)
            .map_err(|e| io_err("write header", e))?;
        f.sync_all().map_err(|e| io_err("fsync header", e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| io_err("rename header", e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Open an existing file, checking that its header matches `geo`.
    pub fn open(path: &Path, geo: DiskGeometry, kind: BackendKind) -> Result<Self, DiskError> {
        let backend = open_backend(kind, path).map_err(|source| DiskError::Io {
            path: path.to_owned(),
            op: "open",
            slot: None,
            source,
        })?;
        Self::with_backend(path, geo, backend)
    }

    /// Use `backend` (already opened on `path`, e.g. a [`FaultyBackend`]); checks the header.
    pub fn with_backend(
        path: &Path,
        geo: DiskGeometry,
        mut backend: Box<dyn DiskBackend>,
    ) -> Result<Self, DiskError> {
        let bad = |reason: String| DiskError::BadHeader {
            path: path.to_owned(),
            reason,
        };
        let mut h = AlignedBuf::zeroed(HEADER_BYTES as usize);
        let got = read_full(backend.as_mut(), 0, &mut h).map_err(|source| DiskError::Io {
            path: path.to_owned(),
            op: "read header",
            slot: None,
            source,
        })?;
        let found = DiskGeometry::decode_header(&h[..got]).map_err(bad)?;
        if found != geo {
            return Err(bad(format!(
                "file was written for {found:?}, this run needs {geo:?}"
            )));
        }
        let len = std::fs::metadata(path)
            .map_err(|source| DiskError::Io {
                path: path.to_owned(),
                op: "stat",
                slot: None,
                source,
            })?
            .len();
        let capacity = len.saturating_sub(HEADER_BYTES) / geo.slot_bytes();
        Ok(DiskTier {
            path: path.to_owned(),
            scratch: AlignedBuf::zeroed(geo.slot_bytes() as usize),
            geo,
            backend,
            capacity,
            generation: 0,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Its geometry.
    pub fn geometry(&self) -> &DiskGeometry {
        &self.geo
    }
    /// Backend name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
    /// Whether the page cache is bypassed.
    pub fn io_mode(&self) -> IoMode {
        self.backend.io_mode()
    }
    /// Slots reserved on disk.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    /// A slot-sized buffer for reads.
    pub fn slot_buf(&self) -> AlignedBuf {
        AlignedBuf::zeroed(self.geo.slot_bytes() as usize)
    }

    /// Reserve room for at least `n_slots` slots (grown in chunks of
    /// [`RESERVE_CHUNK_SLOTS`] or doubling); a full disk is reported here.
    pub fn reserve(&mut self, n_slots: u64) -> Result<(), DiskError> {
        if n_slots <= self.capacity {
            return Ok(());
        }
        let target = n_slots
            .max(self.capacity + RESERVE_CHUNK_SLOTS)
            .max(self.capacity.saturating_mul(5) / 4);
        let try_alloc = |b: &mut Box<dyn DiskBackend>, slots: u64| {
            b.allocate(HEADER_BYTES + slots * self.geo.slot_bytes())
        };
        // Prefer the chunked target, but settle for exactly what was asked.
        let res = try_alloc(&mut self.backend, target)
            .map(|_| target)
            .or_else(|_| try_alloc(&mut self.backend, n_slots).map(|_| n_slots));
        match res {
            Ok(c) => {
                self.capacity = c;
                Ok(())
            }
            Err(source) if source.raw_os_error() == Some(libc::ENOSPC) => Err(DiskError::Full {
                path: self.path.clone(),
                slots: n_slots,
                bytes: HEADER_BYTES + n_slots * self.geo.slot_bytes(),
                source,
            }),
            Err(source) => Err(DiskError::Io {
                path: self.path.clone(),
                op: "reserve (fallocate)",
                slot: None,
                source,
            }),
        }
    }

    fn check_slot(&self, slot: u64) -> Result<(), DiskError> {
        if slot >= self.capacity {
            return Err(DiskError::Contract(format!(
                "slot {slot} is beyond the reserved capacity of {} slots of {}; call reserve first",
                self.capacity,
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Write `payload` (exactly `payload_bytes`) to `slot` with its trailer.
    pub fn write_block(&mut self, slot: u64, payload: &[u8]) -> Result<(), DiskError> {
        self.check_slot(slot)?;
        let p = self.geo.payload_bytes as usize;
        if payload.len() != p {
            return Err(DiskError::Contract(format!(
                "write of {} bytes to slot {slot}; blocks are {p} bytes",
                payload.len()
            )));
        }
        self.generation += 1;
        let s = &mut self.scratch;
        s[..p].copy_from_slice(payload);
        s[p..].fill(0);
        let t = &mut s[p..p + TRAILER_BYTES];
        t[0..4].copy_from_slice(&SLOT_MAGIC);
        t[4..8].copy_from_slice(&(p as u32).to_le_bytes());
        t[8..16].copy_from_slice(&slot.to_le_bytes());
        t[16..24].copy_from_slice(&self.generation.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&s[..p + 24]);
        let crc = h.finalize();
        s[p + 24..p + 28].copy_from_slice(&crc.to_le_bytes());
        let off = self.geo.slot_offset(slot);
        let mut done = 0;
        let mut interrupted = 0;
        while done < s.len() {
            match self.backend.write_at(off + done as u64, &s[done..]) {
                Ok(0) => {
                    return Err(DiskError::Io {
                        path: self.path.clone(),
                        op: "write",
                        slot: Some(slot),
                        source: io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes"),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted && interrupted < MAX_EINTR => {
                    interrupted += 1;
                }
                Err(source) => {
                    return Err(DiskError::Io {
                        path: self.path.clone(),
                        op: "write",
                        slot: Some(slot),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Read and verify `slot` into `buf` (slot-sized); the payload is `buf[..payload_bytes]`.
    pub fn read_block(&mut self, slot: u64, buf: &mut AlignedBuf) -> Result<(), DiskError> {
        self.read_blocks(&mut [ReadReq { slot, buf }])
    }

    /// Read and verify many slots: all are submitted to the backend at once, short reads are
    /// completed, and the first failure is returned (the buffers of failed reads hold no
    /// verified data and must not be used).
    pub fn read_blocks(&mut self, reqs: &mut [ReadReq<'_>]) -> Result<(), DiskError> {
        self.read_blocks_each(reqs)?
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Like [`Self::read_blocks`], with one result per request (in order). The outer error is a
    /// misuse (bad slot or buffer) found before any I/O.
    pub fn read_blocks_each(
        &mut self,
        reqs: &mut [ReadReq<'_>],
    ) -> Result<Vec<Result<(), DiskError>>, DiskError> {
        let sb = self.geo.slot_bytes() as usize;
        for r in reqs.iter() {
            self.check_slot(r.slot)?;
            if r.buf.len() != sb {
                return Err(DiskError::Contract(format!(
                    "read buffer of {} bytes for slot {}; slots are {sb} bytes (use slot_buf)",
                    r.buf.len(),
                    r.slot
                )));
            }
        }
        let geo = self.geo;
        let mut raw: Vec<RawRead<'_>> = reqs
            .iter_mut()
            .map(|r| RawRead {
                off: geo.slot_offset(r.slot),
                buf: &mut r.buf[..],
                res: None,
            })
            .collect();
        self.backend.read_batch(&mut raw);
        let mut results = Vec::with_capacity(raw.len());
        for r in raw.iter_mut() {
            let slot = reqs_slot(&geo, r.off);
            let res = match r.res.take() {
                Some(Ok(n)) => Ok(n),
                Some(Err(e)) => Err(e),
                None => Ok(0),
            };
            let got = match res {
                Ok(n) if n >= sb => Ok(n),
                Ok(n) => read_full(self.backend.as_mut(), r.off + n as u64, &mut r.buf[n..])
                    .map(|m| n + m),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    read_full(self.backend.as_mut(), r.off, r.buf)
                }
                Err(e) => Err(e),
            };
            let checked = match got {
                Err(source) => Err(DiskError::Io {
                    path: self.path.clone(),
                    op: "read",
                    slot: Some(slot),
                    source,
                }),
                Ok(n) if n < sb => Err(DiskError::ShortRead {
                    path: self.path.clone(),
                    slot,
                    got: n,
                    want: sb,
                }),
                Ok(_) => verify_slot(&self.path, &geo, slot, r.buf),
            };
            self.backend.done_with(r.off, sb as u64);
            if checked.is_err() {
                // Never leave unverified bytes where a caller might use them.
                r.buf.fill(0);
            }
            results.push(checked);
        }
        Ok(results)
    }

    /// Hint that `slots` will be read soon (mmap: MADV_WILLNEED).
    pub fn prefetch(&mut self, slots: &[u64]) {
        for &s in slots {
            if s < self.capacity {
                self.backend
                    .will_need(self.geo.slot_offset(s), self.geo.slot_bytes());
            }
        }
    }

    /// Make every completed write durable.
    pub fn sync(&mut self) -> Result<(), DiskError> {
        self.backend.sync().map_err(|source| DiskError::Io {
            path: self.path.clone(),
            op: "fsync",
            slot: None,
            source,
        })
    }
}

fn reqs_slot(geo: &DiskGeometry, off: u64) -> u64 {
    (off - HEADER_BYTES) / geo.slot_bytes()
}

/// Read until `buf` is full, retrying EINTR and short reads; returns the bytes read (less than
/// `buf.len()` only at end of file).
fn read_full(b: &mut dyn DiskBackend, off: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    let mut interrupted = 0;
    while done < buf.len() {
        match b.read_at(off + done as u64, &mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted && interrupted < MAX_EINTR => {
                interrupted += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Interruptions (EINTR) retried in a row before one is reported as an error.
const MAX_EINTR: u32 = 100;

fn verify_slot(path: &Path, geo: &DiskGeometry, slot: u64, s: &[u8]) -> Result<(), DiskError> {
    let p = geo.payload_bytes as usize;
    let t = &s[p..p + TRAILER_BYTES];
    let corrupt = |what: String| DiskError::Corrupt {
        path: path.to_owned(),
        slot,
        what,
    };
    if t[0..4] != SLOT_MAGIC {
        return Err(if t.iter().all(|&b| b == 0) {
            corrupt("the slot was never written (no trailer)".into())
        } else {
            corrupt("bad trailer magic".into())
        });
    }
    let u32_at = |o: usize| u32::from_le_bytes(t[o..o + 4].try_into().unwrap());
    let stored_slot = u64::from_le_bytes(t[8..16].try_into().unwrap());
    if u32_at(4) as usize != p {
        return Err(corrupt(format!("trailer says {} payload bytes", u32_at(4))));
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&s[..p + 24]);
    let crc = h.finalize();
    if crc != u32_at(24) {
        return Err(corrupt(format!(
            "checksum mismatch: stored {:08x}, computed {crc:08x}",
            u32_at(24)
        )));
    }
    if stored_slot != slot {
        return Err(corrupt(format!(
            "it holds the block of slot {stored_slot} (misplaced write)"
        )));
    }
    Ok(())
}

/// Bytes of `path` resident in the page cache (mmap + mincore), for tests and reports.
pub fn page_cache_resident(path: &Path) -> io::Result<u64> {
    let f = File::open(path)?;
    let len = f.metadata()?.len() as usize;
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: a read-only mapping used only for its address range with mincore; no byte of it
    // is dereferenced, so concurrent changes to the file cannot cause undefined behaviour.
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(&f)? };
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let n = len.div_ceil(page);
    let mut vec = vec![0u8; n];
    // SAFETY: map.as_ptr() is the page-aligned start of a live mapping of `len` bytes, and
    // `vec` holds one byte per page of it as mincore requires.
    let r = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page as u64)
}
