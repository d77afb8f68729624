//! The generic disk tier suite, run against every backend, plus fault injection.

use kvspool::kv::disk::{
    open_backend, page_cache_resident, AlignedBuf, BackendKind, DiskError, DiskGeometry, DiskTier,
    Fault, FaultyBackend, IoMode, ReadReq, Trigger, DISK_ALIGN, HEADER_BYTES,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const BACKENDS: [BackendKind; 3] = [BackendKind::Pread, BackendKind::Mmap, BackendKind::Uring];

fn geo(payload: u32) -> DiskGeometry {
    DiskGeometry {
        fingerprint: 0x1234_5678_9abc_def0,
        n_layer: 12,
        n_head_kv: 8,
        head_dim: 64,
        block_tokens: 64,
        dtype_id: 2,
        payload_bytes: payload,
    }
}

/// A scratch directory on the real disk (never tmpfs, so O_DIRECT applies where it can).
fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/kvspool/tmp"))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn payload(slot: u64, n: usize) -> Vec<u8> {
    let mut r = ChaCha8Rng::seed_from_u64(slot * 7919 + 1);
    (0..n).map(|_| r.gen()).collect()
}

fn new_tier(dir: &Path, g: DiskGeometry, kind: BackendKind) -> DiskTier {
    DiskTier::create(&dir.join("kv.bin"), g, kind).unwrap()
}

#[test]
fn round_trip_random_order_and_batched_reads() {
    for kind in BACKENDS {
        let dir = scratch();
        // A payload that is not a multiple of 4096 so the trailer shares the last page.
        let g = geo(65536 - 100);
        let mut t = new_tier(dir.path(), g, kind);
        let n = 150u64;
        t.reserve(n).unwrap();
        assert!(t.capacity() >= n);
        let mut order: Vec<u64> = (0..n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        order.shuffle(&mut rng);
        for &s in &order {
            t.write_block(s, &payload(s, g.payload_bytes as usize))
                .unwrap();
        }
        order.shuffle(&mut rng);
        let mut buf = t.slot_buf();
        for &s in &order {
            t.read_block(s, &mut buf).unwrap();
            assert_eq!(
                &buf[..g.payload_bytes as usize],
                &payload(s, g.payload_bytes as usize)[..]
            );
        }
        // Batched: 16 at once, in random order.
        let mut bufs: Vec<AlignedBuf> = (0..16).map(|_| t.slot_buf()).collect();
        let slots: Vec<u64> = order[..16].to_vec();
        let mut reqs: Vec<ReadReq<'_>> = slots
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&slot, buf)| ReadReq { slot, buf })
            .collect();
        t.read_blocks(&mut reqs).unwrap();
        for (s, b) in slots.iter().zip(&bufs) {
            assert_eq!(
                &b[..g.payload_bytes as usize],
                &payload(*s, g.payload_bytes as usize)[..]
            );
        }
        t.prefetch(&slots);
        // Overwrite one slot and read the new contents.
        t.write_block(3, &payload(999, g.payload_bytes as usize))
            .unwrap();
        t.read_block(3, &mut buf).unwrap();
        assert_eq!(
            &buf[..g.payload_bytes as usize],
            &payload(999, g.payload_bytes as usize)[..]
        );
        eprintln!(
            "{kind:?}: backend {} mode {:?}",
            t.backend_name(),
            t.io_mode()
        );
        if kind != BackendKind::Mmap {
            assert_eq!(t.io_mode(), IoMode::Direct, "ext4 accepts O_DIRECT");
        }
    }
}

#[test]
fn reopen_and_verify_with_every_backend() {
    let dir = scratch();
    let g = geo(8192);
    let path = dir.path().join("kv.bin");
    {
        let mut t = DiskTier::create(&path, g, BackendKind::Pread).unwrap();
        t.reserve(40).unwrap();
        for s in 0..40 {
            t.write_block(s, &payload(s, 8192)).unwrap();
        }
        t.sync().unwrap();
    }
    for kind in BACKENDS {
        let mut t = DiskTier::open(&path, g, kind).unwrap();
        assert!(t.capacity() >= 40);
        let mut buf = t.slot_buf();
        for s in (0..40).rev() {
            t.read_block(s, &mut buf).unwrap();
            assert_eq!(&buf[..8192], &payload(s, 8192)[..]);
        }
        // A reserved but never written slot is an error, not zeros.
        if t.capacity() > 40 {
            let e = t.read_block(40, &mut buf).unwrap_err();
            assert!(e.to_string().contains("never written"), "{e}");
        }
        // Beyond capacity: a contract error.
        assert!(matches!(
            t.read_block(t.capacity() + 5, &mut buf),
            Err(DiskError::Contract(_))
        ));
    }
}

#[test]
fn flipped_byte_in_the_real_file_is_detected() {
    for kind in BACKENDS {
        let dir = scratch();
        let g = geo(16384);
        let path = dir.path().join("kv.bin");
        let mut t = DiskTier::create(&path, g, BackendKind::Pread).unwrap();
        t.reserve(8).unwrap();
        for s in 0..8 {
            t.write_block(s, &payload(s, 16384)).unwrap();
        }
        t.sync().unwrap();
        drop(t);
        // Flip one payload byte of slot 5 and one trailer byte of slot 6 in the file itself.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        for (slot, within) in [(5u64, 1000u64), (6, 16384 + 9)] {
            let off = HEADER_BYTES + slot * g.slot_bytes() + within;
            let mut b = [0u8];
            f.read_exact_at(&mut b, off).unwrap();
            b[0] ^= 0x01;
            f.write_all_at(&b, off).unwrap();
        }
        f.sync_all().unwrap();
        let mut t = DiskTier::open(&path, g, kind).unwrap();
        let mut buf = t.slot_buf();
        for slot in [5u64, 6] {
            let e = t.read_block(slot, &mut buf).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, DiskError::Corrupt { slot: s, .. } if s == slot),
                "{msg}"
            );
            assert!(
                msg.contains("kv.bin") && msg.contains(&format!("slot {slot}")),
                "{msg}"
            );
            assert!(msg.contains("Delete the file"), "{msg}");
            assert!(
                buf.iter().all(|&b| b == 0),
                "no unverified data left in the buffer"
            );
        }
        // Neighbours are fine; a batch containing the bad slot fails.
        t.read_block(4, &mut buf).unwrap();
        let mut b2 = t.slot_buf();
        let mut reqs = [
            ReadReq {
                slot: 4,
                buf: &mut buf,
            },
            ReadReq {
                slot: 5,
                buf: &mut b2,
            },
        ];
        assert!(t.read_blocks(&mut reqs).is_err());
        eprintln!("{kind:?}: {}", t.read_block(5, &mut buf).unwrap_err());
    }
}

#[test]
fn wrong_header_is_rejected() {
    let dir = scratch();
    let g = geo(4096);
    let path = dir.path().join("kv.bin");
    DiskTier::create(&path, g, BackendKind::Pread).unwrap();
    for kind in BACKENDS {
        // Other geometry or model.
        let mut other = g;
        other.head_dim = 128;
        let e = DiskTier::open(&path, other, kind).unwrap_err();
        assert!(matches!(e, DiskError::BadHeader { .. }), "{e}");
        let mut other = g;
        other.fingerprint ^= 1;
        assert!(matches!(
            DiskTier::open(&path, other, kind),
            Err(DiskError::BadHeader { .. })
        ));
    }
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Wrong version.
    f.write_all_at(&2u32.to_le_bytes(), 8).unwrap();
    let e = DiskTier::open(&path, g, BackendKind::Pread).unwrap_err();
    assert!(e.to_string().contains("version"), "{e}");
    // Wrong magic.
    f.write_all_at(b"NOTKVSPL", 0).unwrap();
    let e = DiskTier::open(&path, g, BackendKind::Mmap).unwrap_err();
    assert!(e.to_string().contains("magic"), "{e}");
    // Empty file.
    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        DiskTier::open(&empty, g, BackendKind::Pread),
        Err(DiskError::BadHeader { .. })
    ));
    eprintln!("{e}");
}

#[test]
fn read_only_directory_is_a_clear_error() {
    let dir = scratch();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o555);
    std::fs::set_permissions(&ro, perm).unwrap();
    // root ignores directory permissions: use sysfs, which refuses new files even to root.
    let target = if std::fs::File::create(ro.join("probe")).is_ok() {
        PathBuf::from("/sys/kernel")
    } else {
        ro.clone()
    };
    for kind in BACKENDS {
        let e = DiskTier::create(&target.join("kv.bin"), geo(4096), kind).unwrap_err();
        assert!(matches!(e, DiskError::NotWritable { .. }), "{e}");
        assert!(e.to_string().contains("not writable"), "{e}");
        eprintln!("{}: {e}", target.display());
    }
}

/// A tier over a fault-injecting wrapper of `kind`, with 8 written slots.
fn faulty_tier(dir: &Path, kind: BackendKind) -> (DiskTier, kvspool::kv::disk::FaultControl) {
    let g = geo(32768);
    let path = dir.join("kv.bin");
    DiskTier::create_header(&path, &g).unwrap();
    let (fb, ctl) = FaultyBackend::new(open_backend(kind, &path).unwrap(), &g);
    let mut t = DiskTier::with_backend(&path, g, Box::new(fb)).unwrap();
    t.reserve(8).unwrap();
    for s in 0..8 {
        t.write_block(s, &payload(s, 32768)).unwrap();
    }
    (t, ctl)
}

#[test]
fn injected_faults_are_errors_never_data() {
    for kind in BACKENDS {
        let dir = scratch();
        let (mut t, ctl) = faulty_tier(dir.path(), kind);
        let mut buf = t.slot_buf();
        let good = payload(2, 32768);

        // EIO on read of one slot.
        ctl.inject(Fault::ReadEio, Trigger::Slot(2));
        let e = t.read_block(2, &mut buf).unwrap_err();
        assert!(
            matches!(
                e,
                DiskError::Io {
                    op: "read",
                    slot: Some(2),
                    ..
                }
            ),
            "{e}"
        );
        assert!(buf.iter().all(|&b| b == 0));
        t.read_block(3, &mut buf).unwrap();
        ctl.clear();

        // A flipped byte on read: the checksum catches it.
        ctl.inject(Fault::FlipByte, Trigger::NthCall(ctl.reads()));
        let e = t.read_block(2, &mut buf).unwrap_err();
        assert!(matches!(e, DiskError::Corrupt { slot: 2, .. }), "{e}");
        assert!(buf.iter().all(|&b| b == 0));
        ctl.clear();

        // End of file mid-slot: an error, not a partial block.
        ctl.inject(Fault::EofRead, Trigger::Slot(4));
        let e = t.read_block(4, &mut buf).unwrap_err();
        assert!(matches!(e, DiskError::ShortRead { slot: 4, .. }), "{e}");
        ctl.clear();

        // Short reads and EINTR are completed/retried transparently and still verified.
        ctl.inject(Fault::ShortRead, Trigger::Always);
        t.read_block(2, &mut buf).unwrap();
        assert_eq!(&buf[..32768], &good[..]);
        ctl.clear();
        ctl.inject(Fault::Interrupted, Trigger::NthCall(ctl.reads()));
        t.read_block(2, &mut buf).unwrap();
        assert_eq!(&buf[..32768], &good[..]);
        ctl.clear();

        // A batch with one failing slot fails; the others still verify.
        ctl.inject(Fault::ReadEio, Trigger::Slot(6));
        let mut bufs: Vec<AlignedBuf> = (0..4).map(|_| t.slot_buf()).collect();
        let mut reqs: Vec<ReadReq<'_>> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, buf)| ReadReq {
                slot: 4 + i as u64,
                buf,
            })
            .collect();
        let e = t.read_blocks(&mut reqs).unwrap_err();
        assert!(matches!(e, DiskError::Io { slot: Some(6), .. }), "{e}");
        drop(reqs);
        assert!(bufs[2].iter().all(|&b| b == 0));
        assert_eq!(&bufs[0][..32768], &payload(4, 32768)[..]);
        ctl.clear();

        // EIO on write.
        ctl.inject(Fault::WriteEio, Trigger::Slot(1));
        let e = t.write_block(1, &payload(1, 32768)).unwrap_err();
        assert!(
            matches!(
                e,
                DiskError::Io {
                    op: "write",
                    slot: Some(1),
                    ..
                }
            ),
            "{e}"
        );
        ctl.clear();

        // A full disk at reservation time.
        ctl.inject(Fault::NoSpace, Trigger::Always);
        let cap = t.capacity();
        let e = t.reserve(cap + 1000).unwrap_err();
        assert!(matches!(e, DiskError::Full { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("disk tier full") && msg.contains("--ctx"),
            "{msg}"
        );
        assert_eq!(t.capacity(), cap);
        // Writing past the reservation is refused instead of hitting ENOSPC mid-write.
        assert!(matches!(
            t.write_block(cap, &payload(0, 32768)),
            Err(DiskError::Contract(_))
        ));
        ctl.clear();
        t.reserve(cap + 1).unwrap();
        assert!(ctl.fired() >= 8);
        eprintln!("{kind:?}: {msg}");
    }
}

fn meminfo_cached() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap();
    s.lines()
        .find(|l| l.starts_with("Cached:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
fn direct_io_leaves_the_page_cache_alone() {
    for kind in [BackendKind::Pread, BackendKind::Uring] {
        page_cache_case(kind);
    }
}

fn page_cache_case(kind: BackendKind) {
    let dir = scratch();
    let g = geo(65536 - 32);
    let mb: u64 = std::env::var("KV_DISK_PAGECACHE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let n = mb * 1024 * 1024 / g.slot_bytes();
    let mut t = new_tier(dir.path(), g, kind);
    assert_eq!(t.io_mode(), IoMode::Direct);
    t.reserve(n).unwrap();
    let p = payload(1, g.payload_bytes as usize);
    for s in 0..n {
        t.write_block(s, &p).unwrap();
    }
    t.sync().unwrap();
    let cached0 = meminfo_cached();
    let res0 = page_cache_resident(t.path()).unwrap();
    let mut order: Vec<u64> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(9));
    let mut bufs: Vec<AlignedBuf> = (0..8).map(|_| t.slot_buf()).collect();
    for chunk in order.chunks(8) {
        let mut reqs: Vec<ReadReq<'_>> = chunk
            .iter()
            .zip(bufs.iter_mut())
            .map(|(&slot, buf)| ReadReq { slot, buf })
            .collect();
        t.read_blocks(&mut reqs).unwrap();
    }
    let read = n * g.slot_bytes();
    let res1 = page_cache_resident(t.path()).unwrap();
    let cached1 = meminfo_cached();
    let fs = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir.path())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    eprintln!(
        "page cache ({kind:?} -> backend {}): fs {fs}, read {read} bytes ({n} slots); file resident before {res0} after {res1} \
         ({:.3}% of read); /proc/meminfo Cached delta {} bytes (system-wide, noisy)",
        t.backend_name(),
        res1 as f64 * 100.0 / read as f64,
        cached1 as i64 - cached0 as i64
    );
    assert!((res1 as f64) < 0.05 * read as f64);
    assert_eq!(DISK_ALIGN, 4096);
}

#[test]
fn tmpfs_works_direct_or_buffered() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("no /dev/shm: skipped");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    for kind in [BackendKind::Pread, BackendKind::Uring] {
        let g = geo(65536);
        let mut t = new_tier(dir.path(), g, kind);
        t.reserve(16).unwrap();
        for s in 0..16 {
            t.write_block(s, &payload(s, 65536)).unwrap();
        }
        let mut buf = t.slot_buf();
        for s in (0..16).rev() {
            t.read_block(s, &mut buf).unwrap();
            assert_eq!(&buf[..65536], &payload(s, 65536)[..]);
        }
        eprintln!(
            "tmpfs {kind:?}: backend {} mode {:?}",
            t.backend_name(),
            t.io_mode()
        );
        assert_ne!(t.io_mode(), IoMode::Mapped); // kernels >= 6.6 accept O_DIRECT on tmpfs
    }
}

/// 64 KiB random-read bandwidth on a 1 GiB file at several queue depths (run with --ignored).
#[test]
#[ignore]
fn probe_random_read_bandwidth() {
    let dir = scratch();
    let g = geo(65536 - 32);
    let n: u64 = 16384; // 1 GiB of 64 KiB slots
    let path = dir.path().join("kv.bin");
    {
        let mut t = DiskTier::create(&path, g, BackendKind::Pread).unwrap();
        t.reserve(n).unwrap();
        let p = payload(3, g.payload_bytes as usize);
        for s in 0..n {
            t.write_block(s, &p).unwrap();
        }
        t.sync().unwrap();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for kind in [BackendKind::Pread, BackendKind::Uring] {
        for qd in [1usize, 8, 32] {
            let mut t = DiskTier::open(&path, g, kind).unwrap();
            let mut bufs: Vec<AlignedBuf> = (0..qd).map(|_| t.slot_buf()).collect();
            let reads = 4096usize;
            let start = std::time::Instant::now();
            for _ in 0..reads / qd {
                let slots: Vec<u64> = (0..qd).map(|_| rng.gen_range(0..n)).collect();
                let mut reqs: Vec<ReadReq<'_>> = slots
                    .iter()
                    .zip(bufs.iter_mut())
                    .map(|(&slot, buf)| ReadReq { slot, buf })
                    .collect();
                t.read_blocks(&mut reqs).unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            let bytes = (reads / qd * qd) as f64 * g.slot_bytes() as f64;
            eprintln!(
                "probe: {} qd {qd}: {:.2} GB/s ({:.0} reads/s, verified)",
                t.backend_name(),
                bytes / secs / 1e9,
                (reads / qd * qd) as f64 / secs
            );
        }
    }
}

#[test]
fn buffered_mode_drops_the_pages_it_read() {
    let dir = scratch();
    let g = geo(65536 - 32);
    let path = dir.path().join("kv.bin");
    DiskTier::create_header(&path, &g).unwrap();
    let b = kvspool::kv::disk::PreadBackend::open_buffered(&path).unwrap();
    let mut t = DiskTier::with_backend(&path, g, Box::new(b)).unwrap();
    assert_eq!(t.io_mode(), IoMode::Buffered);
    let n = 512u64; // 32 MiB
    t.reserve(n).unwrap();
    let p = payload(1, g.payload_bytes as usize);
    for s in 0..n {
        t.write_block(s, &p).unwrap();
    }
    t.sync().unwrap();
    let mut buf = t.slot_buf();
    for s in 0..n {
        t.read_block(s, &mut buf).unwrap();
    }
    let read = n * g.slot_bytes();
    let res = page_cache_resident(&path).unwrap();
    eprintln!(
        "buffered: read {read} bytes, {res} resident afterwards ({:.3}%)",
        res as f64 * 100.0 / read as f64
    );
    assert!((res as f64) < 0.05 * read as f64);
}
