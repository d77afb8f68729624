//! Errors of the GGUF reader and writer.
//!
//! Every message is one line that says what is wrong, where (byte offset, metadata key or
//! tensor name, and the file path when known) and what to do about it. Errors from
//! [`GgufFile::open`](super::GgufFile::open) are wrapped in [`GgufError::InFile`], which adds
//! the path; use [`GgufError::root`] to match on the underlying variant.

use std::path::{Path, PathBuf};

use super::types::GgmlType;

/// Why a GGUF file could not be read or is not acceptable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// Opening, sizing or mapping the file failed.
    #[error("cannot {op} {}: {source}; check the path and its permissions", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Another error, in the file at `path`.
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<GgufError>,
    },

    /// The first four bytes are not `GGUF`.
    #[error(
        "not a GGUF file: the first 4 bytes are {} ({}), expected 47 47 55 46 (\"GGUF\"); \
         check that this is a .gguf model and not e.g. safetensors, a git-lfs pointer or an HTML page",
        hex(found), ascii(found)
    )]
    NotGguf { found: Vec<u8> },

    /// Version other than 2 or 3.
    #[error("{}", version_message(*version))]
    UnsupportedVersion { version: u32 },

    /// A fixed-size field or payload runs past the end of the data.
    #[error(
        "file is truncated: {site} at byte {offset} needs {needed} bytes but only {available} remain; \
         re-download the file"
    )]
    Truncated {
        site: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    /// A tensor or metadata count that the remaining bytes cannot possibly hold.
    #[error(
        "corrupt header: {what} count {count} at byte {offset} exceeds the maximum {max} (what the \
         {remaining} bytes after it can hold, capped by kvspool's limit); the file is corrupt or \
         truncated, re-download it"
    )]
    CountTooLarge {
        what: &'static str,
        count: u64,
        offset: u64,
        remaining: u64,
        max: u64,
    },

    /// A string length larger than the bytes that remain.
    #[error(
        "corrupt header: {site} at byte {offset} claims a string of {len} bytes but only {remaining} \
         remain; the file is corrupt or truncated, re-download it"
    )]
    StringTooLong {
        site: String,
        offset: u64,
        len: u64,
        remaining: u64,
    },

    /// A string that is not UTF-8.
    #[error("corrupt header: {site} at byte {offset} is not valid UTF-8; the file is corrupt, re-download or re-convert it")]
    InvalidUtf8 { site: String, offset: u64 },

    /// An array length larger than the remaining bytes can hold.
    #[error(
        "corrupt header: array of metadata key {key:?} at byte {offset} claims {len} elements of type \
         {elem} (at least {min_size} bytes each) but only {remaining} bytes remain; the file is corrupt \
         or truncated, re-download it"
    )]
    ArrayTooLong {
        key: String,
        offset: u64,
        len: u64,
        elem: &'static str,
        min_size: u64,
        remaining: u64,
    },

    /// Metadata arrays hold more values in total than kvspool accepts.
    #[error(
        "metadata is too large: at key {key:?} (byte {offset}) the arrays hold more than {max} values \
         in total; real models need under a few million, so the file is corrupt or not a model"
    )]
    TooManyValues { key: String, offset: u64, max: u64 },

    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`](super::value::MAX_ARRAY_DEPTH).
    #[error(
        "corrupt header: metadata key {key:?} nests arrays deeper than {max} levels at byte {offset}; \
         the file is corrupt or hostile"
    )]
    TooDeep {
        key: String,
        offset: u64,
        max: usize,
    },

    /// A value type tag outside 0..=12.
    #[error(
        "corrupt header: metadata key {key:?} has unknown value type id {type_id} at byte {offset} \
         (valid ids are 0..=12); the file is corrupt or from a newer GGUF version"
    )]
    BadValueType {
        key: String,
        offset: u64,
        type_id: u32,
    },

    /// A bool byte other than 0 or 1.
    #[error("corrupt header: metadata key {key:?} has a bool byte {byte:#04x} at byte {offset}, expected 0 or 1; the file is corrupt")]
    BadBool { key: String, offset: u64, byte: u8 },

    /// The same metadata key twice.
    #[error("corrupt header: metadata key {key:?} appears twice (second at byte {offset}); the file is corrupt, re-convert it")]
    DuplicateKey { key: String, offset: u64 },

    /// `general.alignment` of the wrong type, zero or not a power of two.
    #[error(
        "invalid general.alignment = {value} ({ty}): it must be a u32 power of two of at most \
         16777216 (default 32); re-convert the file"
    )]
    BadAlignment { value: String, ty: &'static str },

    /// Two tensors with the same name.
    #[error("corrupt tensor table: tensor {name:?} appears twice (entries {first} and {second}); re-convert the file")]
    DuplicateTensor {
        name: String,
        first: u64,
        second: u64,
    },

    /// Number of dimensions outside 1..=4.
    #[error("corrupt tensor table: tensor {name:?} has {n_dims} dimensions at byte {offset}, expected 1 to 4; the file is corrupt")]
    BadDimCount {
        name: String,
        offset: u64,
        n_dims: u32,
    },

    /// A zero dimension.
    #[error("corrupt tensor table: tensor {name:?} has a zero dimension {dims:?}; every dimension must be at least 1")]
    ZeroDim { name: String, dims: Vec<u64> },

    /// Element or byte count does not fit in u64.
    #[error("corrupt tensor table: tensor {name:?} with dims {dims:?} has more elements or bytes than fit in 64 bits; the file is corrupt")]
    SizeOverflow { name: String, dims: Vec<u64> },

    /// Unknown ggml type id.
    #[error(
        "tensor {name:?} has unknown ggml type id {type_id} at byte {offset}; kvspool knows ids 0-3, 6-30, \
         34, 35, 39 (id 4/5 were removed Q4_2/Q4_3; Ollama's gpt-oss files use 4 for MXFP4 and are not \
         supported: use a ggml-org GGUF)"
    )]
    UnknownTensorType {
        name: String,
        offset: u64,
        type_id: u32,
    },

    /// Row length not a multiple of the type's block size.
    #[error(
        "corrupt tensor table: tensor {name:?} of type {ty} has rows of {ne0} elements, not a multiple \
         of the block size {block}; the file is corrupt"
    )]
    RowNotBlockMultiple {
        name: String,
        ty: GgmlType,
        ne0: u64,
        block: u64,
    },

    /// Data offset not a multiple of the alignment.
    #[error(
        "corrupt tensor table: tensor {name:?} has data offset {offset} (relative to the data section), \
         not a multiple of the alignment {alignment}; the file is corrupt"
    )]
    MisalignedOffset {
        name: String,
        offset: u64,
        alignment: u64,
    },

    /// Tensor data extends past the end of the file.
    #[error(
        "file is truncated: tensor {name:?} occupies bytes {start}..{end} but the file has {file_size} \
         bytes; re-download it"
    )]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        file_size: u64,
    },

    /// Two tensors share bytes.
    #[error(
        "corrupt tensor table: tensors {first:?} (bytes {first_start}..{first_end}) and {second:?} \
         (bytes {second_start}..{second_end}) overlap; the file is corrupt, re-convert it"
    )]
    OverlappingTensors {
        first: String,
        first_start: u64,
        first_end: u64,
        second: String,
        second_start: u64,
        second_end: u64,
    },

    /// A required metadata key is absent.
    /// A shard of a split model is missing, out of place, or inconsistent with the first one.
    #[error("split model: {reason}")]
    Split { reason: String },

    #[error("metadata key {key:?} is missing; the file is incomplete or not a model GGUF")]
    MissingKey { key: String },

    /// A metadata key has an unexpected type.
    #[error("metadata key {key:?} has type {found}, expected {expected}; the file is not a supported model GGUF")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
}

impl GgufError {
    /// The error without [`GgufError::InFile`] wrappers, for matching on the variant.
    pub fn root(&self) -> &GgufError {
        let mut e = self;
        while let GgufError::InFile { source, .. } = e {
            e = source;
        }
        e
    }

    /// The file path, if the error carries one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            GgufError::Io { path, .. } | GgufError::InFile { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Wrap in [`GgufError::InFile`] unless the error already names a path.
    pub(crate) fn in_file(self, path: &Path) -> GgufError {
        if self.path().is_some() {
            self
        } else {
            GgufError::InFile {
                path: path.to_path_buf(),
                source: Box::new(self),
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "(none: the file is empty)".to_string();
    }
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn ascii(b: &[u8]) -> String {
    let s: String = b
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '.'
            }
        })
        .collect();
    format!("{s:?}")
}

fn version_message(version: u32) -> String {
    match version {
        1 => "unsupported GGUF version 1 (an early 2023 format with 32-bit counts); kvspool reads versions 2 \
              and 3: re-convert the model with a current llama.cpp convert script"
            .to_string(),
        v if matches!(v.swap_bytes(), 2 | 3) => format!(
            "unsupported big-endian GGUF (version field reads {v:#010x}); kvspool reads little-endian \
             GGUF v2 and v3: use the little-endian file of this model"
        ),
        v => format!(
            "unsupported GGUF version {v}; kvspool reads versions 2 and 3 (if the file is from a newer \
             tool, re-convert it or update kvspool; if the version looks random, the file is corrupt)"
        ),
    }
}

/// Why a [`GgufWriter`](super::writer::GgufWriter) refused to write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufWriteError {
    /// File system error.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Error of the underlying writer (in-memory or caller-provided sink).
    #[error("write failed: {0}")]
    Sink(#[source] std::io::Error),
    /// Same key added twice.
    #[error("metadata key {0:?} was added twice")]
    DuplicateKey(String),
    /// A value the reader would reject.
    #[error("metadata key {key:?}: {reason}")]
    InvalidValue { key: String, reason: String },
    /// Same tensor name declared twice.
    #[error("tensor {0:?} was declared twice")]
    DuplicateTensor(String),
    /// A tensor the reader would reject.
    #[error("tensor {name:?}: {reason}")]
    InvalidTensor { name: String, reason: String },
    /// Tensor data written out of declaration order, too much or too little.
    #[error("tensor data out of order: {0}")]
    DataOrder(String),
}
