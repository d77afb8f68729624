//! The tiered KV cache: attention over the store equals the reference on the decoded values,
//! results are bit-identical whatever the RAM budget, backend, prefetcher and policy, RAM stays
//! within the budget, truncation rewinds exactly, and disk faults are errors, never data.

mod common;

use kvspool::kernels::attention::attend_reference;
use kvspool::kv::disk::{
    open_backend, BackendKind, DiskTier, Fault, FaultControl, FaultyBackend, Trigger,
};
use kvspool::kv::format::{decode_head, encode_token, BlockGeometry, KvDtype};
use kvspool::kv::prefetch::PrefetchMode;
use kvspool::kv::tiered::{LayerSet, SparseConfig};
use kvspool::kv::{AttnQuery, KvCache, KvGeometry, PolicyKind, TieredConfig, TieredKv};
use std::sync::{Arc, Mutex};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn f(&mut self) -> f32 {
        (self.next() as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * s).collect()
    }
}

fn cfg(dtype: KvDtype, bt: usize, ram: usize) -> TieredConfig {
    let mut c = TieredConfig::new(ram, common::kv_dir());
    c.dtype = dtype;
    c.block_tokens = bt;
    c
}

/// [`cfg`] with `--attention sparse` (default settings), so full layers keep key bounds.
fn sparse_cfg(dtype: KvDtype, bt: usize, ram: usize) -> TieredConfig {
    let mut c = cfg(dtype, bt, ram);
    c.sparse = Some(SparseConfig::default());
    c
}

/// Append positions `0..n` of `dat` to every layer of `kv`.
fn append_all(kv: &mut TieredKv, geo: &KvGeometry, dat: &Data, n: usize) {
    let row = geo.row_len();
    for l in 0..geo.n_layer {
        for t in 0..n {
            kv.append(
                l,
                &dat.k[l][t * row..(t + 1) * row],
                &dat.v[l][t * row..(t + 1) * row],
            )
            .unwrap();
        }
    }
}

/// K/V rows of every layer and position, and what the store holds after quantization.
struct Data {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

fn data(geo: &KvGeometry, n: usize, seed: u64) -> Data {
    let mut r = Rng(seed);
    let row = geo.row_len();
    Data {
        k: (0..geo.n_layer).map(|_| r.vec(n * row, 2.0)).collect(),
        v: (0..geo.n_layer).map(|_| r.vec(n * row, 1.0)).collect(),
    }
}

/// The values the store holds for one row: encoded and decoded with the block codec.
fn quantized(geo: &KvGeometry, dtype: KvDtype, k: &[f32], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let bg = BlockGeometry {
        block_tokens: 1,
        n_head_kv: geo.n_head_kv,
        head_dim: geo.head_dim,
    };
    let mut blk = vec![0u8; bg.block_bytes(dtype)];
    encode_token(&bg, dtype, &mut blk, 0, k, v, None).unwrap();
    let (mut kq, mut vq) = (Vec::new(), Vec::new());
    for h in 0..geo.n_head_kv {
        let (a, b) = decode_head(&bg, dtype, &blk, h, 1);
        kq.extend(a);
        vq.extend(b);
    }
    (kq, vq)
}

#[test]
fn attention_over_the_store_matches_the_reference() {
    // GQA 3:1, sinks, a sliding-window layer, awkward block sizes, prefill batches and single
    // steps, a budget far smaller than the data (most blocks come from disk).
    let mut geo = KvGeometry::dense(3, 2, 16, 400);
    geo.windows[1] = Some(37);
    let n_head = 6;
    let d = geo.head_dim;
    let row = geo.row_len();
    let n = 300;
    let dat = data(&geo, n, 3);
    for dtype in KvDtype::ALL {
        for (bt, ram) in [(5usize, 64usize << 10), (64, 1 << 30), (16, 40 << 10)] {
            let mut kv = TieredKv::new(geo.clone(), cfg(dtype, bt, ram)).unwrap();
            let mut r = Rng(9);
            let sinks: Vec<f32> = r.vec(n_head, 1.0);
            let mut pos = 0;
            for batch in [1usize, 7, 64, 1, 100, 3, 1, 1] {
                for l in 0..geo.n_layer {
                    for t in pos..pos + batch {
                        kv.append(
                            l,
                            &dat.k[l][t * row..(t + 1) * row],
                            &dat.v[l][t * row..(t + 1) * row],
                        )
                        .unwrap();
                    }
                    let q = r.vec(batch * n_head * d, 1.0);
                    let qy = AttnQuery {
                        q: &q,
                        n_tokens: batch,
                        pos0: pos,
                        n_head,
                        scale: 0.3,
                        sinks: Some(&sinks),
                        window: geo.windows[l],
                    };
                    let mut out = vec![0.0; q.len()];
                    kv.attend(l, &qy, &mut out).unwrap();
                    for t in 0..batch {
                        let p = pos + t;
                        let lo = geo.windows[l].map_or(0, |w| (p + 1).saturating_sub(w));
                        for h in 0..n_head {
                            let kvh = h / 3;
                            let (mut ks, mut vs) = (Vec::new(), Vec::new());
                            for j in lo..=p {
                                let (kq, vq) = quantized(
                                    &geo,
                                    dtype,
                                    &dat.k[l][j * row..(j + 1) * row],
                                    &dat.v[l][j * row..(j + 1) * row],
                                );
                                ks.extend_from_slice(&kq[kvh * d..(kvh + 1) * d]);
                                vs.extend_from_slice(&vq[kvh * d..(kvh + 1) * d]);
                            }
                            let mut want = vec![0.0; d];
                            attend_reference(
                                &q[(t * n_head + h) * d..][..d],
                                &ks,
                                &vs,
                                p + 1 - lo,
                                d,
                                0.3,
                                Some(sinks[h]),
                                &mut want,
                            );
                            let got = &out[(t * n_head + h) * d..][..d];
                            for j in 0..d {
                                assert!(
                                    (got[j] - want[j]).abs() < 2e-5,
                                    "{dtype} bt {bt} layer {l} pos {p} head {h}: {} vs {}",
                                    got[j],
                                    want[j]
                                );
                            }
                        }
                    }
                }
                pos += batch;
            }
            let s = kv.kv_stats();
            assert!(s.ram_peak_bytes <= s.ram_budget_bytes, "{s:?}");
            if ram < 1 << 20 {
                assert!(
                    s.bytes_read > 0 && s.misses + s.late + s.prefetch_hits > 0,
                    "{dtype} bt {bt}: {s:?}"
                );
            }
        }
    }
}

/// Every output of a fixed workload, as bits.
fn workload(mut kv: TieredKv, geo: &KvGeometry, dat: &Data, n: usize) -> (Vec<u32>, TieredKv) {
    let n_head = 4;
    let d = geo.head_dim;
    let row = geo.row_len();
    let mut r = Rng(5);
    let mut bits = Vec::new();
    let mut pos = 0;
    let mut batches = vec![40usize, 64, 13];
    batches.extend(std::iter::repeat_n(1, n - 117));
    for batch in batches {
        for l in 0..geo.n_layer {
            for t in pos..pos + batch {
                kv.append(
                    l,
                    &dat.k[l][t * row..(t + 1) * row],
                    &dat.v[l][t * row..(t + 1) * row],
                )
                .unwrap();
            }
            let q = r.vec(batch * n_head * d, 1.0);
            let qy = AttnQuery {
                q: &q,
                n_tokens: batch,
                pos0: pos,
                n_head,
                scale: 0.25,
                sinks: None,
                window: geo.windows[l],
            };
            let mut out = vec![0.0; q.len()];
            kv.attend(l, &qy, &mut out).unwrap();
            bits.extend(out.iter().map(|x| x.to_bits()));
        }
        pos += batch;
    }
    (bits, kv)
}

#[test]
fn results_are_bit_identical_for_every_budget_backend_prefetch_and_policy() {
    let geo = KvGeometry::dense(4, 2, 32, 200);
    let n = 160;
    let dat = data(&geo, n, 7);
    for dtype in KvDtype::ALL {
        let base = cfg(dtype, 8, 1 << 30);
        let (want, _) = workload(
            TieredKv::new(geo.clone(), base.clone()).unwrap(),
            &geo,
            &dat,
            n,
        );
        let slot = TieredKv::new(geo.clone(), base.clone())
            .unwrap()
            .kv_stats()
            .frame_bytes as usize;
        for ram in [0, slot, 3 * slot, 17 * slot, 64 << 10, 1 << 20] {
            for backend in [BackendKind::Pread, BackendKind::Uring, BackendKind::Mmap] {
                for prefetch in [true, false] {
                    let policies: &[PolicyKind] = if prefetch && backend == BackendKind::Uring {
                        &[PolicyKind::NextUse, PolicyKind::Lru]
                    } else {
                        &[PolicyKind::NextUse]
                    };
                    for &policy in policies {
                        let mut c = base.clone();
                        c.ram_bytes = ram;
                        c.backend = backend;
                        c.prefetch = if prefetch {
                            PrefetchMode::Sequential
                        } else {
                            PrefetchMode::Off
                        };
                        c.policy = policy;
                        let (got, kv) =
                            workload(TieredKv::new(geo.clone(), c).unwrap(), &geo, &dat, n);
                        let s = kv.kv_stats();
                        assert!(
                            got == want,
                            "{dtype} ram {ram} {backend:?} prefetch {prefetch} {policy:?}: outputs differ"
                        );
                        assert!(s.ram_peak_bytes <= ram as u64, "{s:?}");
                        if ram < 20 * slot {
                            assert!(s.misses + s.late + s.prefetch_hits > 0, "{s:?}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn truncate_rewinds_exactly() {
    let mut geo = KvGeometry::dense(2, 2, 16, 300);
    geo.windows[0] = Some(20);
    let n = 150;
    let dat = data(&geo, n, 11);
    let row = geo.row_len();
    let d = geo.head_dim;
    for dtype in [KvDtype::F32, KvDtype::Fp8] {
        for cut in [0usize, 37, 64, 100] {
            let mut a = TieredKv::new(geo.clone(), sparse_cfg(dtype, 8, 3 * 8192)).unwrap();
            append_all(&mut a, &geo, &dat, n);
            a.truncate(cut);
            assert_eq!(a.len(0), cut);
            let mut b = TieredKv::new(geo.clone(), sparse_cfg(dtype, 8, 1 << 30)).unwrap();
            for l in 0..2 {
                for t in 0..cut + 30 {
                    let (k, v) = (
                        &dat.k[l][t * row..(t + 1) * row],
                        &dat.v[l][t * row..(t + 1) * row],
                    );
                    if t >= cut {
                        a.append(l, k, v).unwrap();
                    }
                    b.append(l, k, v).unwrap();
                }
            }
            let q = Rng(1).vec(4 * d, 1.0);
            for l in 0..2 {
                let qy = AttnQuery {
                    q: &q,
                    n_tokens: 1,
                    pos0: cut + 29,
                    n_head: 4,
                    scale: 0.3,
                    sinks: None,
                    window: geo.windows[l],
                };
                let (mut oa, mut ob) = (vec![0.0; q.len()], vec![0.0; q.len()]);
                a.attend(l, &qy, &mut oa).unwrap();
                b.attend(l, &qy, &mut ob).unwrap();
                assert_eq!(oa, ob, "{dtype} cut {cut} layer {l}");
                // Key bounds of the rewritten tail (full layer 1) equal those of a fresh fill.
                let idx = (cut + 29) / 8;
                assert_eq!(a.key_bounds(l, idx), b.key_bounds(l, idx));
                assert_eq!(a.key_bounds(l, idx).is_some(), l == 1);
            }
        }
    }
}

#[test]
fn key_bounds_bound_the_scores_of_every_block() {
    let geo = KvGeometry::dense(1, 2, 16, 200);
    let dat = data(&geo, 150, 4);
    let row = geo.row_len();
    let mut kv = TieredKv::new(geo.clone(), sparse_cfg(KvDtype::Fp8, 16, 1 << 30)).unwrap();
    for t in 0..150 {
        kv.append(
            0,
            &dat.k[0][t * row..(t + 1) * row],
            &dat.v[0][t * row..(t + 1) * row],
        )
        .unwrap();
    }
    let q = Rng(2).vec(16, 1.0);
    for b in 0..10 {
        let kb = kv.key_bounds(0, b).expect("bounds");
        for t in b * 16..((b + 1) * 16).min(150) {
            let (kq, _) = quantized(
                &geo,
                KvDtype::Fp8,
                &dat.k[0][t * row..(t + 1) * row],
                &dat.v[0][t * row..(t + 1) * row],
            );
            for h in 0..2 {
                // Every stored key lies inside its block's box, channel by channel.
                for (j, &x) in kq[h * 16..(h + 1) * 16].iter().enumerate() {
                    assert!(
                        kb.min(h)[j] <= x && x <= kb.max(h)[j],
                        "block {b} t {t} head {h} channel {j}: {x} outside [{}, {}]",
                        kb.min(h)[j],
                        kb.max(h)[j]
                    );
                }
                let s: f32 = kq[h * 16..(h + 1) * 16]
                    .iter()
                    .zip(&q)
                    .map(|(a, b)| a * b)
                    .sum();
                assert!(
                    s <= kb.upper_bound_dot(h, &q) + 1e-4,
                    "block {b} t {t} head {h}"
                );
            }
        }
    }
    assert!(kv.key_bounds(0, 10).is_none());
}

/// A cache whose disk goes through a [`FaultyBackend`].
fn faulty(geo: &KvGeometry, c: TieredConfig) -> (TieredKv, FaultControl) {
    let ctl: Arc<Mutex<Option<FaultControl>>> = Arc::default();
    let slot = ctl.clone();
    let kv = TieredKv::new_with_disk(geo.clone(), c, move |path, dg, kind| {
        DiskTier::create_header(path, &dg)?;
        let inner =
            open_backend(kind, path).map_err(|source| kvspool::kv::disk::DiskError::Io {
                path: path.to_owned(),
                op: "open",
                slot: None,
                source,
            })?;
        let (fb, c) = FaultyBackend::new(inner, &dg);
        *slot.lock().unwrap() = Some(c);
        DiskTier::with_backend(path, dg, Box::new(fb))
    })
    .unwrap();
    let c = ctl.lock().unwrap().take().unwrap();
    (kv, c)
}

fn fill_and_attend(
    kv: &mut TieredKv,
    geo: &KvGeometry,
    dat: &Data,
    n: usize,
) -> Result<(), String> {
    let row = geo.row_len();
    for l in 0..geo.n_layer {
        for t in 0..n {
            kv.append(
                l,
                &dat.k[l][t * row..(t + 1) * row],
                &dat.v[l][t * row..(t + 1) * row],
            )
            .map_err(|e| e.to_string())?;
        }
    }
    let q = vec![0.5f32; 2 * geo.head_dim];
    for l in 0..geo.n_layer {
        let qy = AttnQuery {
            q: &q,
            n_tokens: 1,
            pos0: n - 1,
            n_head: 2,
            scale: 0.3,
            sinks: None,
            window: None,
        };
        let mut out = vec![0.0; q.len()];
        kv.attend(l, &qy, &mut out).map_err(|e| e.to_string())?;
        assert!(out.iter().all(|x| x.is_finite()));
    }
    Ok(())
}

#[test]
fn disk_faults_are_clear_errors_and_poison_the_cache() {
    let geo = KvGeometry::dense(2, 2, 16, 300);
    let dat = data(&geo, 256, 8);
    let cases: [(Fault, Trigger, &str); 5] = [
        (Fault::ReadEio, Trigger::Always, "read failed"),
        (Fault::EofRead, Trigger::Always, "truncated"),
        (Fault::FlipByte, Trigger::Always, "corrupt"),
        (Fault::WriteEio, Trigger::NthCall(3), "write failed"),
        (Fault::NoSpace, Trigger::Always, "disk tier full"),
    ];
    for (fault, when, want) in cases {
        // Two frames: nearly every block is read back from disk.
        let mut c = cfg(KvDtype::Fp8, 8, 0);
        c.ram_bytes = 2 * 8192;
        let (mut kv, ctl) = faulty(&geo, c);
        ctl.inject(fault, when);
        let res = fill_and_attend(&mut kv, &geo, &dat, 256);
        let err = res.expect_err(&format!(
            "{fault:?}: fault must surface: {:?}",
            kv.kv_stats()
        ));
        assert!(err.contains(want), "{fault:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
        // Poisoned: later calls fail too, and never panic.
        let row = geo.row_len();
        let again = kv.append(0, &dat.k[0][..row], &dat.v[0][..row]);
        assert!(again.is_err(), "{fault:?}: cache still usable after {err}");
    }
    // Transient faults the tier recovers from are not errors.
    for fault in [Fault::ShortRead, Fault::Interrupted] {
        let mut c = cfg(KvDtype::Fp8, 8, 0);
        c.ram_bytes = 2 * 8192;
        let (mut kv, ctl) = faulty(&geo, c);
        for n in [0, 3, 7, 20] {
            ctl.inject(fault, Trigger::NthCall(n));
        }
        fill_and_attend(&mut kv, &geo, &dat, 256).unwrap();
        assert!(ctl.fired() > 0);
    }
}

#[test]
fn a_flipped_byte_in_the_file_is_detected() {
    let geo = KvGeometry::dense(1, 2, 16, 300);
    let dat = data(&geo, 256, 12);
    let mut c = cfg(KvDtype::F16, 8, 0);
    c.ram_bytes = 0;
    c.backend = BackendKind::Pread;
    let mut kv = TieredKv::new(geo.clone(), c).unwrap();
    let row = geo.row_len();
    for t in 0..256 {
        kv.append(
            0,
            &dat.k[0][t * row..(t + 1) * row],
            &dat.v[0][t * row..(t + 1) * row],
        )
        .unwrap();
    }
    kv.flush().unwrap();
    // Flip one byte of slot 3's payload in the real file.
    let path = kv.path().to_owned();
    let mut bytes = std::fs::read(&path).unwrap();
    let slot_bytes = kv.kv_stats().frame_bytes as usize;
    bytes[4096 + 3 * slot_bytes + 100] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let q = vec![0.5f32; 2 * geo.head_dim];
    let qy = AttnQuery {
        q: &q,
        n_tokens: 1,
        pos0: 255,
        n_head: 2,
        scale: 0.3,
        sinks: None,
        window: None,
    };
    let mut out = vec![0.0; q.len()];
    let e = kv.attend(0, &qy, &mut out).expect_err("corrupt slot");
    assert!(e.to_string().contains("slot 3 is corrupt"), "{e}");
}

#[test]
fn a_read_only_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o555);
    std::fs::set_permissions(&ro, perm).unwrap();
    // root ignores directory permissions: use sysfs, which refuses new files even to root.
    let target = if std::fs::File::create(ro.join("probe")).is_ok() {
        std::path::PathBuf::from("/sys/kernel")
    } else {
        ro.clone()
    };
    let geo = KvGeometry::dense(1, 2, 16, 100);
    let mut c = cfg(KvDtype::Fp8, 8, 1 << 20);
    c.dir = target.clone();
    let e = TieredKv::new(geo, c).unwrap_err();
    assert!(
        e.to_string().contains("not writable"),
        "{}: {e}",
        target.display()
    );
}

#[test]
fn tier_files_of_dead_processes_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("kvspool-999999999-0.kvtier");
    let live = dir.path().join("kvspool-1-0.kvtier"); // pid 1 is always alive
    let other = dir.path().join("notes.txt");
    for p in [&dead, &live, &other] {
        std::fs::write(p, b"x").unwrap();
    }
    let mut c = cfg(KvDtype::Fp8, 8, 1 << 20);
    c.dir = dir.path().to_owned();
    let kv = TieredKv::new(KvGeometry::dense(1, 2, 16, 64), c).unwrap();
    assert!(!dead.exists(), "stale file of a dead process kept");
    assert!(live.exists() && other.exists());
    let own = kv.path().to_owned();
    assert!(own.exists());
    drop(kv);
    assert!(!own.exists(), "a cache removes its own file when dropped");
}

/// Key bounds (and summary rows) are kept only for the layers sparse attention applies to:
/// dense attention, layers outside `--sparse-layers` and the first `dense_layers` full layers
/// keep none, and attention over them is unchanged.
#[test]
fn only_sparse_layers_keep_key_bounds() {
    let mut geo = KvGeometry::dense(4, 2, 16, 300);
    geo.windows[0] = Some(20);
    let n = 150;
    let dat = data(&geo, n, 5);
    let fill = |c: TieredConfig| {
        let mut kv = TieredKv::new(geo.clone(), c).unwrap();
        append_all(&mut kv, &geo, &dat, n);
        kv
    };
    let kept = |kv: &TieredKv| -> Vec<bool> {
        (0..geo.n_layer)
            .map(|l| (0..n.div_ceil(16)).all(|b| kv.key_bounds(l, b).is_some()))
            .collect()
    };
    let mut dense = fill(cfg(KvDtype::Fp8, 16, 1 << 30));
    assert_eq!(kept(&dense), [false; 4]);
    let mut all = fill(sparse_cfg(KvDtype::Fp8, 16, 1 << 30));
    assert_eq!(kept(&all), [false, true, true, true]);
    let mut c = sparse_cfg(KvDtype::Fp8, 16, 1 << 30);
    c.sparse = Some(SparseConfig {
        layers: LayerSet::of([2, 3]).unwrap(),
        dense_layers: 2,
        ..SparseConfig::default()
    });
    let mut some = fill(c);
    assert_eq!(kept(&some), [false, false, false, true]);
    let bytes = |kv: &TieredKv| kv.stats().unwrap().bounds_bytes;
    assert!(bytes(&dense) < bytes(&some) && bytes(&some) < bytes(&all));
    // Dense passes (a prefill batch) over the same data agree whatever bounds are kept.
    let q = Rng(3).vec(2 * 4 * 16, 1.0);
    for l in 0..geo.n_layer {
        let qy = AttnQuery {
            q: &q,
            n_tokens: 2,
            pos0: n - 2,
            n_head: 4,
            scale: 0.25,
            sinks: None,
            window: geo.windows[l],
        };
        let mut outs = Vec::new();
        for kv in [&mut dense, &mut all, &mut some] {
            let mut o = vec![0.0; q.len()];
            kv.attend(l, &qy, &mut o).unwrap();
            outs.push(o);
        }
        assert_eq!(outs[0], outs[1], "layer {l}");
        assert_eq!(outs[0], outs[2], "layer {l}");
    }
}
