//! [`GgufFile`]: a GGUF model mapped into memory once, with its validated header.
//!
//! Invariant: after [`GgufFile::open`] succeeds, every [`TensorInfo`] of the file describes bytes
//! that are inside the mapping, aligned to [`GgufFile::alignment`], non-overlapping, and exactly
//! as long as its dims and type require; [`GgufFile::tensor_bytes`] returns them without copying.
//! (The one caveat, a file modified by another process while mapped, is described at the
//! `unsafe` block below.)
//!
//! Split models (`NAME-00001-of-0000N.gguf`, the way the 120b ships; gpt-oss-spec.md §1): opening
//! the first shard opens all of them. Every shard is a complete GGUF validated on its own; the
//! first carries the metadata; `split.no`/`split.count` must agree with the file names and
//! `split.tensors.count` with the tensors found. Each [`TensorInfo`] records its shard.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use super::error::GgufError;
use super::reader::{GgufHeader, TensorInfo};
use super::value::Value;

/// A memory-mapped, validated GGUF file. `Send + Sync`; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    /// One mapping per shard (one for single-file models).
    maps: Vec<Mmap>,
    header: GgufHeader,
    /// Total bytes of all shards.
    total_size: u64,
}

/// Map `path` read-only.
fn map_file(path: &Path) -> Result<Mmap, GgufError> {
    let io = |op, source| GgufError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| io("open", e))?;
    // SAFETY: `map` is undefined behaviour only if the file is changed while mapped: another
    // process truncating it makes later reads fault (SIGBUS), and rewriting it in place
    // changes bytes behind `&[u8]` slices that Rust assumes immutable and that were validated
    // once, here. kvspool never writes to model files (its own writer creates a new file and
    // renames it over the old path, which leaves this mapping intact), and users are told not
    // to edit a model while it is loaded. Every byte pattern is a valid `u8`, so reading the
    // mapping can never produce an invalid value, and the mapping is read-only.
    unsafe { MmapOptions::new().map(&file) }.map_err(|e| io("memory-map", e))
}

/// `(prefix, count)` of a shard name `PREFIX-00001-of-00003.gguf`.
fn split_name(path: &Path) -> Option<(String, u32, u32)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    if no.len() != 5 || count.len() != 5 {
        return None;
    }
    Some((prefix.to_string(), no.parse().ok()?, count.parse().ok()?))
}

fn meta_u64(h: &GgufHeader, key: &str) -> Option<u64> {
    match h.get(key)? {
        Value::U8(v) => Some(*v as u64),
        Value::U16(v) => Some(*v as u64),
        Value::U32(v) => Some(*v as u64),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

impl GgufFile {
    /// Map the file at `path` and parse and validate its header and tensor table.
    /// Errors name the path.
    ///
    /// The first shard of a split model opens every shard (named `PREFIX-0000K-of-0000N.gguf`
    /// beside it); opening a later shard is an error that names the first.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let map = map_file(path)?;
        let mut header = GgufHeader::parse(&map).map_err(|e| e.in_file(path))?;
        let mut total_size = map.len() as u64;
        let mut maps = vec![map];
        let count = meta_u64(&header, "split.count").unwrap_or(1);
        if count > 1 {
            let split_err = |reason: String| GgufError::Split { reason }.in_file(path);
            let no = meta_u64(&header, "split.no").unwrap_or(0);
            let Some((prefix, _, _)) = split_name(path) else {
                return Err(split_err(format!(
                    "the file says it is shard {} of {count}, but its name is not PREFIX-00001-of-{count:05}.gguf; keep the shards' original names",
                    no + 1
                )));
            };
            if no != 0 {
                return Err(split_err(format!(
                    "this is shard {} of {count}; open the first one, {prefix}-00001-of-{count:05}.gguf",
                    no + 1
                )));
            }
            if count > 1024 {
                return Err(split_err(format!("split.count {count} is implausible")));
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            for i in 1..count {
                let p = dir.join(format!("{prefix}-{:05}-of-{count:05}.gguf", i + 1));
                if !p.exists() {
                    return Err(split_err(format!(
                        "shard {} of {count} ({}) is missing; download every shard into the same directory",
                        i + 1,
                        p.display()
                    )));
                }
                let m = map_file(&p)?;
                let h = GgufHeader::parse(&m).map_err(|e| e.in_file(&p))?;
                let (hn, hc) = (meta_u64(&h, "split.no"), meta_u64(&h, "split.count"));
                if hn != Some(i) || hc != Some(count) {
                    return Err(GgufError::Split {
                        reason: format!(
                            "expected shard {} of {count}, the file says split.no {hn:?}, split.count {hc:?}",
                            i + 1
                        ),
                    }
                    .in_file(&p));
                }
                header
                    .absorb_shard(i as u32, h)
                    .map_err(|e| e.in_file(&p))?;
                total_size += m.len() as u64;
                maps.push(m);
            }
            if let Some(n) = meta_u64(&header, "split.tensors.count") {
                if n != header.tensors().len() as u64 {
                    return Err(split_err(format!(
                        "split.tensors.count is {n} but the {count} shards hold {} tensors",
                        header.tensors().len()
                    )));
                }
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            maps,
            header,
            total_size,
        })
    }

    /// Map every page of the model into this process now (`MADV_POPULATE_READ`: reads what is
    /// not in the page cache and fills the page tables in one call per shard), as a prefill that
    /// touches every weight would; returns false if the kernel refused (the pages are then
    /// simply faulted in on first use). Benchmarks call this so that timed decode steps measure
    /// the steady state, not first-touch page faults.
    pub fn populate(&self) -> bool {
        self.maps
            .iter()
            .all(|m| m.advise(memmap2::Advice::PopulateRead).is_ok())
    }

    /// Number of files (shards) of the model.
    pub fn n_shards(&self) -> usize {
        self.maps.len()
    }

    /// Ask the kernel to read the bytes `range` of tensor `t` ahead of use (`MADV_WILLNEED`);
    /// a hint only: errors are ignored, out-of-range parts are clipped.
    pub fn will_need(&self, t: &TensorInfo, range: std::ops::Range<usize>) {
        let Some(map) = self.maps.get(t.shard as usize) else {
            return;
        };
        let start = (t.offset as usize).saturating_add(range.start);
        let end = (t.offset as usize)
            .saturating_add(range.end)
            .min(t.end() as usize)
            .min(map.len());
        if start >= end {
            return;
        }
        let page = 4096;
        let s = start / page * page;
        let _ = map.advise_range(memmap2::Advice::WillNeed, s, end - s);
    }

    /// Parse and validate a whole GGUF image held in memory (the same code path as [`open`]:
    /// tensor bounds are checked against `bytes.len()`).
    ///
    /// [`open`]: GgufFile::open
    pub fn parse_bytes(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
        GgufHeader::parse(bytes)
    }

    /// The validated header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version()
    }

    /// Size in bytes of the model: all shards together (the size mapped).
    pub fn file_size(&self) -> u64 {
        self.total_size
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        self.header.metadata()
    }

    /// The value of metadata key `key` (hash lookup).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header.get(key)
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        self.header.tensors()
    }

    /// The tensor named `name` (hash lookup).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensor(name)
    }

    /// The mapped bytes of tensor `t`, without copying. `t` must come from this file (from
    /// [`tensors`](GgufFile::tensors) or [`tensor`](GgufFile::tensor)); a `TensorInfo` whose
    /// range lies outside the mapping yields an empty slice.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let range = usize::try_from(t.offset)
            .ok()
            .zip(usize::try_from(t.end()).ok());
        let bytes = range.and_then(|(start, end)| self.maps.get(t.shard as usize)?.get(start..end));
        debug_assert!(
            bytes.is_some(),
            "tensor {:?} is not from {}",
            t.name,
            self.path.display()
        );
        bytes.unwrap_or(&[])
    }

    /// The whole mapped file (the first shard of a split model).
    pub fn as_bytes(&self) -> &[u8] {
        &self.maps[0]
    }

    /// `general.architecture`; an error naming the path if it is missing or not a string.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.header
            .architecture()
            .map_err(|e| e.in_file(&self.path))
    }

    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.header.alignment()
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset()
    }
}
