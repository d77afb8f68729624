//! The GGUF header parser: bytes in, validated [`GgufHeader`] out.
//!
//! This is the only code that interprets untrusted header bytes. It never panics and never
//! allocates from a length it has not first checked against the bytes that remain:
//!
//! - the magic is `GGUF`, the version is 2 or 3 (little-endian);
//! - `kv_count · 13 + tensor_count · 32` (the smallest possible encodings) fits in what remains,
//!   `kv_count` ≤ [`MAX_METADATA_ENTRIES`], `tensor_count` ≤ [`MAX_TENSORS`], and no list is
//!   preallocated beyond 65536 entries (memory follows the bytes actually parsed);
//! - a string length fits in what remains, and the string is UTF-8;
//! - an array's `count · min_size(element type)` fits in what remains, arrays nest at most
//!   [`MAX_ARRAY_DEPTH`] deep, and all arrays together hold at most [`MAX_METADATA_VALUES`] values;
//! - value type tags are 0..=12, bools are 0 or 1, keys are unique;
//! - `general.alignment`, if present, is a u32 power of two ≤ [`MAX_ALIGNMENT`] (else 32);
//! - tensor names are unique; 1..=4 dims, each nonzero; element and byte counts fit in u64;
//!   `ne0` is a multiple of the type's block size; the type id is known;
//! - each tensor's offset is a multiple of the alignment, its bytes
//!   `data_offset + offset .. + n_bytes` lie inside the file, and no two tensors overlap.
//!
//! So after [`GgufHeader::parse`] succeeds, every [`TensorInfo`] describes an in-bounds, aligned,
//! non-overlapping byte range whose length matches its dims and type.

use std::collections::HashMap;
use std::fmt;

use super::error::GgufError;
use super::types::GgmlType;
use super::value::{Value, ValueType, MAX_ARRAY_DEPTH};

/// `GGUF` as bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Largest accepted `general.alignment` (16 MiB, far above the 32 to 4096 used in practice), so
/// a hostile value cannot make tools that rewrite the file pad by gigabytes.
pub const MAX_ALIGNMENT: u32 = 1 << 24;
/// Most metadata values (array elements included) a file may hold. gpt-oss has about 850
/// thousand; the cap bounds the memory a hostile header can make the parser use (~32 bytes per
/// value).
pub const MAX_METADATA_VALUES: u64 = 1 << 23;
/// Most metadata entries a file may hold (real files: under 100).
pub const MAX_METADATA_ENTRIES: u64 = 1 << 16;
/// Most tensors a file may hold (gpt-oss-120b: 687).
pub const MAX_TENSORS: u64 = 1 << 20;
/// Largest up-front reservation for a list read from the file; longer lists grow as their
/// elements are actually parsed, so memory follows real bytes, not a claimed count.
const MAX_PREALLOC: u64 = 1 << 16;

/// Smallest encoding of a metadata record: key length (u64) + type (u32) + a u8 value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest encoding of a tensor record: name length + n_dims + one dim + type + offset.
const MIN_TENSOR_BYTES: u64 = 8 + 4 + 8 + 4 + 8;

/// One entry of the tensor table, validated against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml order: `dims[0]` = ne0 = the contiguous row length. 1 to 4 entries, all nonzero.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Absolute file offset of the first byte (data section start + the stored relative offset).
    pub offset: u64,
    /// Size of the data in bytes: `row_bytes() · n_rows()`.
    pub n_bytes: u64,
    /// Which file of a split model holds the data (0 for single-file models); `offset` is
    /// within that file.
    pub shard: u32,
}

impl TensorInfo {
    /// Product of all dims (saturating; exact for tensors returned by the parser).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Product of `dims[1..]`: how many rows of `dims[0]` elements (1 for a vector).
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Bytes of one row of `dims[0]` elements (0 if the dims are not valid for the type, which
    /// cannot happen for tensors returned by the parser).
    pub fn row_bytes(&self) -> u64 {
        self.dims
            .first()
            .and_then(|&ne0| self.ty.row_bytes(ne0))
            .unwrap_or(0)
    }

    /// Absolute end offset (exclusive) of the data.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.n_bytes)
    }
}

/// A parsed and validated GGUF header (metadata and tensor table), independent of where the
/// bytes came from.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    version: u32,
    file_size: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    header_size: u64,
    data_offset: u64,
}

impl GgufHeader {
    /// Parse and validate a whole GGUF file held in `bytes` (tensor data included: the bounds of
    /// every tensor are checked against `bytes.len()`).
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
        Parser {
            c: Cursor { buf: bytes, pos: 0 },
            values: 0,
        }
        .parse()
    }

    /// Add the tensors of shard `shard` of a split model (its own header, parsed and validated
    /// against its own file) to this one, the first shard's. Fails on a tensor name seen before.
    pub(crate) fn absorb_shard(&mut self, shard: u32, other: GgufHeader) -> Result<(), GgufError> {
        for mut t in other.tensors {
            if let Some(&first) = self.tensor_index.get(&t.name) {
                return Err(GgufError::DuplicateTensor {
                    name: t.name,
                    first: first as u64,
                    second: self.tensors.len() as u64,
                });
            }
            t.shard = shard;
            self.tensor_index.insert(t.name.clone(), self.tensors.len());
            self.tensors.push(t);
        }
        Ok(())
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Size in bytes of the data the header was parsed from.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of metadata key `key` (hash lookup).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|(_, v)| v)
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name` (hash lookup).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    /// `general.architecture`; an error if it is missing or not a string.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        const KEY: &str = "general.architecture";
        match self.get(KEY) {
            None => Err(GgufError::MissingKey { key: KEY.into() }),
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(GgufError::WrongType {
                key: KEY.into(),
                expected: "string",
                found: v.type_name(),
            }),
        }
    }

    /// Alignment of tensor data (`general.alignment`, default 32); a power of two.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset just past the tensor table (before the alignment padding).
    pub fn header_size(&self) -> u64 {
        self.header_size
    }

    /// Start of the data section: `header_size` rounded up to the alignment. May exceed
    /// `file_size` only for a file without tensors.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
}

/// Where in the header a read happens; rendered only when an error is built.
#[derive(Clone, Copy)]
enum Site<'a> {
    Header(&'static str),
    KeyName(u64),
    Value(&'a str),
    TensorName(u64),
    TensorField(&'a str, &'static str),
}

impl fmt::Display for Site<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Header(what) => f.write_str(what),
            Site::KeyName(i) => write!(f, "the key of metadata entry {i}"),
            Site::Value(key) => write!(f, "the value of metadata key {key:?}"),
            Site::TensorName(i) => write!(f, "the name of tensor entry {i}"),
            Site::TensorField(name, what) => write!(f, "the {what} of tensor {name:?}"),
        }
    }
}

/// Bounds-checked little-endian reader. Invariant: `pos <= buf.len()`.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn take(&mut self, n: u64, site: Site<'_>) -> Result<&'a [u8], GgufError> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n).map(|end| (n, end)))
            .and_then(|(n, end)| self.buf.get(self.pos..end).map(|s| (n, s)));
        match slice {
            Some((n, s)) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                site: site.to_string(),
                offset: self.offset(),
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    fn bytes<const N: usize>(&mut self, site: Site<'_>) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, site)?;
        Ok(fixed(s))
    }

    fn u8(&mut self, site: Site<'_>) -> Result<u8, GgufError> {
        Ok(self.bytes::<1>(site)?[0])
    }

    fn u32(&mut self, site: Site<'_>) -> Result<u32, GgufError> {
        self.bytes(site).map(u32::from_le_bytes)
    }

    fn u64(&mut self, site: Site<'_>) -> Result<u64, GgufError> {
        self.bytes(site).map(u64::from_le_bytes)
    }

    /// A gguf string: u64 length, then that many UTF-8 bytes.
    fn string(&mut self, site: Site<'_>) -> Result<String, GgufError> {
        let start = self.offset();
        let len = self.u64(site)?;
        let remaining = self.remaining();
        if len > remaining {
            return Err(GgufError::StringTooLong {
                site: site.to_string(),
                offset: start,
                len,
                remaining,
            });
        }
        let bytes = self.take(len, site)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                site: site.to_string(),
                offset: start,
            }),
        }
    }
}

/// Copy a slice known to have length `N` into an array (zero-filled otherwise; never panics).
fn fixed<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (d, v) in a.iter_mut().zip(s) {
        *d = *v;
    }
    a
}

struct Parser<'a> {
    c: Cursor<'a>,
    /// Metadata values read so far (array elements included), capped by MAX_METADATA_VALUES.
    values: u64,
}

impl Parser<'_> {
    fn parse(mut self) -> Result<GgufHeader, GgufError> {
        self.magic()?;
        let version = self.c.u32(Site::Header("the version"))?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { version });
        }
        let tensor_count_at = self.c.offset();
        let tensor_count = self.c.u64(Site::Header("the tensor count"))?;
        let kv_count_at = self.c.offset();
        let kv_count = self.c.u64(Site::Header("the metadata count"))?;

        let remaining = self.c.remaining();
        let max_kv = (remaining / MIN_KV_BYTES).min(MAX_METADATA_ENTRIES);
        if kv_count > max_kv {
            return Err(GgufError::CountTooLarge {
                what: "metadata",
                count: kv_count,
                offset: kv_count_at,
                remaining,
                max: max_kv,
            });
        }
        let max_tensors =
            ((remaining - kv_count * MIN_KV_BYTES) / MIN_TENSOR_BYTES).min(MAX_TENSORS);
        if tensor_count > max_tensors {
            return Err(GgufError::CountTooLarge {
                what: "tensor",
                count: tensor_count,
                offset: tensor_count_at,
                remaining,
                max: max_tensors,
            });
        }

        // Counts are now bounded by the file size and the caps above.
        let mut metadata = Vec::with_capacity(kv_count.min(MAX_PREALLOC) as usize);
        let mut key_index = HashMap::with_capacity(kv_count.min(MAX_PREALLOC) as usize);
        for i in 0..kv_count {
            let key_at = self.c.offset();
            let key = self.c.string(Site::KeyName(i))?;
            if key_index.contains_key(&key) {
                return Err(GgufError::DuplicateKey {
                    key,
                    offset: key_at,
                });
            }
            let value = self.value_with_tag(&key, 0)?;
            key_index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
        }

        let alignment = match key_index.get(ALIGNMENT_KEY).and_then(|&i| metadata.get(i)) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() && *a <= MAX_ALIGNMENT => u64::from(*a),
            Some((_, v)) => {
                return Err(GgufError::BadAlignment {
                    value: v.to_string(),
                    ty: v.type_name(),
                })
            }
        };

        let reserve = tensor_count.min(MAX_PREALLOC) as usize;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(reserve);
        let mut tensor_index: HashMap<String, usize> = HashMap::with_capacity(reserve);
        for i in 0..tensor_count {
            let t = self.tensor_info(i, alignment)?;
            if let Some(&first) = tensor_index.get(&t.name) {
                return Err(GgufError::DuplicateTensor {
                    name: t.name,
                    first: first as u64,
                    second: i,
                });
            }
            tensor_index.insert(t.name.clone(), tensors.len());
            tensors.push(t);
        }

        let header_size = self.c.offset();
        let file_size = self.c.buf.len() as u64;
        // header_size <= file_size and alignment <= 2^31, so this only fails on absurd sizes.
        let data_offset = header_size
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| GgufError::Truncated {
                site: "the data section".into(),
                offset: header_size,
                needed: alignment,
                available: 0,
            })?;

        for t in &mut tensors {
            let relative = t.offset;
            let start = data_offset.checked_add(relative);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_size => t.offset = start,
                _ => {
                    let start = data_offset.saturating_add(relative);
                    return Err(GgufError::TensorOutOfBounds {
                        name: std::mem::take(&mut t.name),
                        start,
                        end: start.saturating_add(t.n_bytes),
                        file_size,
                    });
                }
            }
        }

        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_unstable_by_key(|&i| tensors.get(i).map_or(0, |t| t.offset));
        for w in order.windows(2) {
            if let (Some(a), Some(b)) = (
                w.first().and_then(|&i| tensors.get(i)),
                w.get(1).and_then(|&i| tensors.get(i)),
            ) {
                if a.end() > b.offset {
                    return Err(GgufError::OverlappingTensors {
                        first: a.name.clone(),
                        first_start: a.offset,
                        first_end: a.end(),
                        second: b.name.clone(),
                        second_start: b.offset,
                        second_end: b.end(),
                    });
                }
            }
        }

        Ok(GgufHeader {
            version,
            file_size,
            metadata,
            key_index,
            tensors,
            tensor_index,
            alignment,
            header_size,
            data_offset,
        })
    }

    fn magic(&mut self) -> Result<(), GgufError> {
        let buf = self.c.buf;
        let found = buf.get(..4).unwrap_or(buf);
        if found.len() < 4 && GGUF_MAGIC.starts_with(found) {
            return Err(GgufError::Truncated {
                site: "the magic".into(),
                offset: 0,
                needed: 4,
                available: found.len() as u64,
            });
        }
        if found != GGUF_MAGIC {
            return Err(GgufError::NotGguf {
                found: found.to_vec(),
            });
        }
        self.c.pos = 4;
        Ok(())
    }

    /// A u32 value type tag followed by the value.
    fn value_with_tag(&mut self, key: &str, depth: usize) -> Result<Value, GgufError> {
        let at = self.c.offset();
        let type_id = self.c.u32(Site::Value(key))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| GgufError::BadValueType {
            key: key.into(),
            offset: at,
            type_id,
        })?;
        self.value(ty, key, depth)
    }

    /// A value of type `ty`; `depth` = number of arrays enclosing it.
    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value, GgufError> {
        let site = Site::Value(key);
        let c = &mut self.c;
        Ok(match ty {
            ValueType::U8 => Value::U8(c.u8(site)?),
            ValueType::I8 => Value::I8(i8::from_le_bytes(c.bytes(site)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(c.bytes(site)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(c.bytes(site)?)),
            ValueType::U32 => Value::U32(c.u32(site)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(c.bytes(site)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(c.bytes(site)?)),
            ValueType::U64 => Value::U64(c.u64(site)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(c.bytes(site)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(c.bytes(site)?)),
            ValueType::Bool => {
                let at = c.offset();
                match c.u8(site)? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    byte => {
                        return Err(GgufError::BadBool {
                            key: key.into(),
                            offset: at,
                            byte,
                        })
                    }
                }
            }
            ValueType::String => Value::String(c.string(site)?),
            ValueType::Array => self.array(key, depth + 1)?,
        })
    }

    /// An array body (element type, count, elements); `depth` = 1 for a top-level array.
    fn array(&mut self, key: &str, depth: usize) -> Result<Value, GgufError> {
        let site = Site::Value(key);
        let type_at = self.c.offset();
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::TooDeep {
                key: key.into(),
                offset: type_at,
                max: MAX_ARRAY_DEPTH,
            });
        }
        let type_id = self.c.u32(site)?;
        let elem = ValueType::from_id(type_id).ok_or_else(|| GgufError::BadValueType {
            key: key.into(),
            offset: type_at,
            type_id,
        })?;
        let len_at = self.c.offset();
        let len = self.c.u64(site)?;
        let min_size = elem.min_encoded_size() as u64;
        let remaining = self.c.remaining();
        if len > remaining / min_size {
            return Err(GgufError::ArrayTooLong {
                key: key.into(),
                offset: len_at,
                len,
                elem: elem.name(),
                min_size,
                remaining,
            });
        }
        self.values = self.values.saturating_add(len);
        if self.values > MAX_METADATA_VALUES {
            return Err(GgufError::TooManyValues {
                key: key.into(),
                offset: len_at,
                max: MAX_METADATA_VALUES,
            });
        }
        let mut out = Vec::with_capacity(len.min(MAX_PREALLOC) as usize);
        for _ in 0..len {
            out.push(self.value(elem, key, depth)?);
        }
        Ok(Value::Array(out))
    }

    /// One tensor-table record, validated except for file bounds and overlap (which need the
    /// data offset). The returned `offset` is still relative to the data section.
    fn tensor_info(&mut self, index: u64, alignment: u64) -> Result<TensorInfo, GgufError> {
        let name = self.c.string(Site::TensorName(index))?;
        let c = &mut self.c;
        let dims_at = c.offset();
        let n_dims = c.u32(Site::TensorField(&name, "dimension count"))?;
        if !(1..=4).contains(&n_dims) {
            return Err(GgufError::BadDimCount {
                name,
                offset: dims_at,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64(Site::TensorField(&name, "dimensions"))?);
        }
        let type_at = c.offset();
        let type_id = c.u32(Site::TensorField(&name, "type"))?;
        let offset = c.u64(Site::TensorField(&name, "data offset"))?;

        let Some(ty) = GgmlType::from_id(type_id) else {
            return Err(GgufError::UnknownTensorType {
                name,
                offset: type_at,
                type_id,
            });
        };
        if dims.contains(&0) {
            return Err(GgufError::ZeroDim { name, dims });
        }
        let n_elements = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let ne0 = dims.first().copied().unwrap_or(0);
        let block = ty.block_size() as u64;
        if n_elements.is_none() {
            return Err(GgufError::SizeOverflow { name, dims });
        }
        if !ne0.is_multiple_of(block) {
            return Err(GgufError::RowNotBlockMultiple {
                name,
                ty,
                ne0,
                block,
            });
        }
        let n_rows = dims.iter().skip(1).try_fold(1u64, |a, &d| a.checked_mul(d));
        let n_bytes = ty
            .row_bytes(ne0)
            .zip(n_rows)
            .and_then(|(row, rows)| row.checked_mul(rows));
        let Some(n_bytes) = n_bytes else {
            return Err(GgufError::SizeOverflow { name, dims });
        };
        if !offset.is_multiple_of(alignment) {
            return Err(GgufError::MisalignedOffset {
                name,
                offset,
                alignment,
            });
        }
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_bytes,
            shard: 0,
        })
    }
}
