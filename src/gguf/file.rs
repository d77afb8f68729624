//! [`GgufFile`]: a GGUF model mapped into memory once, with its validated header.
//!
//! Invariant: after [`GgufFile::open`] succeeds, every [`TensorInfo`] of the file describes bytes
//! that are inside the mapping, aligned to [`GgufFile::alignment`], non-overlapping, and exactly
//! as long as its dims and type require; [`GgufFile::tensor_bytes`] returns them without copying.
//! (The one caveat, a file modified by another process while mapped, is described at the
//! `unsafe` block below.)

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
    map: Mmap,
    header: GgufHeader,
}

impl GgufFile {
    /// Map the file at `path` and parse and validate its header and tensor table.
    /// Errors name the path.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
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
        let map = unsafe { MmapOptions::new().map(&file) }.map_err(|e| io("memory-map", e))?;
        let header = GgufHeader::parse(&map).map_err(|e| e.in_file(path))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            header,
        })
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

    /// File size in bytes (the size mapped).
    pub fn file_size(&self) -> u64 {
        self.header.file_size()
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
        let bytes = range.and_then(|(start, end)| self.map.get(start..end));
        debug_assert!(
            bytes.is_some(),
            "tensor {:?} is not from {}",
            t.name,
            self.path.display()
        );
        bytes.unwrap_or(&[])
    }

    /// The whole mapped file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.map
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
