//! [`GgufWriter`]: build GGUF v3 (or v2) files that the reader accepts.
//!
//! Declare metadata and tensors (name, dims, type) first; the writer lays the tensors out in
//! declaration order, each at a multiple of the alignment. Then stream the data tensor by tensor
//! (optionally in chunks), so a 12 GB file never has to be held in memory:
//!
//! ```no_run
//! # use kvspool::gguf::{GgufWriter, GgmlType, Value};
//! # fn main() -> Result<(), kvspool::gguf::GgufWriteError> {
//! let mut w = GgufWriter::new();
//! w.add_metadata("general.architecture", Value::String("llama".into()))?;
//! w.add_tensor("output_norm.weight", &[4], GgmlType::F32)?;
//! let mut f = w.create(std::path::Path::new("model.gguf"))?;
//! f.write_tensor("output_norm.weight", &[0u8; 16])?;
//! f.finish()?;
//! # Ok(()) }
//! ```
//!
//! Invariants: everything the writer accepts, the reader accepts (it refuses duplicate keys or
//! tensors, heterogeneous or too-deep arrays, bad alignment, bad dims); a file is written to a
//! temporary file in the destination directory and renamed into place only by
//! [`GgufFileWriter::finish`], so an error or a dropped writer never leaves a half-written file
//! at the destination.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::error::GgufWriteError;
use super::reader::{
    TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ALIGNMENT, MAX_METADATA_ENTRIES,
    MAX_METADATA_VALUES, MAX_TENSORS,
};
use super::types::GgmlType;
use super::value::{Value, ValueType, MAX_ARRAY_DEPTH};

/// Builder of a GGUF file: metadata and tensor declarations.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    values: u64,
    tensors: Vec<TensorInfo>,
    names: HashSet<String>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty GGUF v3 file with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            keys: HashSet::new(),
            values: 0,
            tensors: Vec::new(),
            names: HashSet::new(),
        }
    }

    /// Write GGUF version `version` (2 or 3; they share the same layout).
    pub fn set_version(&mut self, version: u32) -> Result<(), GgufWriteError> {
        if version != 2 && version != 3 {
            return Err(GgufWriteError::InvalidValue {
                key: "(version)".into(),
                reason: format!("version {version} cannot be written, only 2 or 3"),
            });
        }
        self.version = version;
        Ok(())
    }

    /// Set `general.alignment` (a power of two ≤ [`MAX_ALIGNMENT`]), replacing any earlier value.
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), GgufWriteError> {
        check_alignment(&Value::U32(alignment))?;
        self.alignment = u64::from(alignment);
        match self.metadata.iter_mut().find(|(k, _)| k == ALIGNMENT_KEY) {
            Some((_, v)) => *v = Value::U32(alignment),
            None => {
                self.keys.insert(ALIGNMENT_KEY.to_string());
                self.metadata
                    .push((ALIGNMENT_KEY.to_string(), Value::U32(alignment)));
            }
        }
        Ok(())
    }

    /// The alignment tensors will be written with.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Add a metadata entry. Arrays must be homogeneous and at most
    /// [`MAX_ARRAY_DEPTH`] deep; `general.alignment` must be a u32 nonzero power of two.
    pub fn add_metadata(
        &mut self,
        key: impl Into<String>,
        value: Value,
    ) -> Result<(), GgufWriteError> {
        let key = key.into();
        if self.keys.contains(&key) {
            return Err(GgufWriteError::DuplicateKey(key));
        }
        if self.metadata.len() as u64 >= MAX_METADATA_ENTRIES {
            return Err(GgufWriteError::InvalidValue {
                key,
                reason: format!("more than {MAX_METADATA_ENTRIES} metadata entries"),
            });
        }
        let mut values = self.values;
        if let Err(reason) = check_value(&value, 0, &mut values) {
            return Err(GgufWriteError::InvalidValue { key, reason });
        }
        if key == ALIGNMENT_KEY {
            self.alignment = check_alignment(&value)?;
        }
        self.values = values;
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(())
    }

    /// Declare a tensor (data is written later, in declaration order). `dims` are in ggml order
    /// (`dims[0]` = row length, a multiple of the type's block size).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ty: GgmlType,
    ) -> Result<(), GgufWriteError> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(GgufWriteError::DuplicateTensor(name));
        }
        let invalid = |reason: String| GgufWriteError::InvalidTensor {
            name: name.clone(),
            reason,
        };
        if self.tensors.len() as u64 >= MAX_TENSORS {
            return Err(invalid(format!("more than {MAX_TENSORS} tensors")));
        }
        if dims.is_empty() || dims.len() > 4 {
            return Err(invalid(format!(
                "{} dimensions, expected 1 to 4",
                dims.len()
            )));
        }
        if dims.contains(&0) {
            return Err(invalid(format!("zero dimension in {dims:?}")));
        }
        let ne0 = dims.first().copied().unwrap_or(0);
        let n_rows = dims.iter().skip(1).try_fold(1u64, |a, &d| a.checked_mul(d));
        let n_bytes = ty
            .row_bytes(ne0)
            .zip(n_rows)
            .and_then(|(r, n)| r.checked_mul(n))
            .filter(|_| {
                dims.iter()
                    .try_fold(1u64, |a, &d| a.checked_mul(d))
                    .is_some()
            });
        let Some(n_bytes) = n_bytes else {
            return Err(invalid(format!(
                "dims {dims:?} do not fit type {ty} (row length must be a multiple of {} and sizes must fit in 64 bits)",
                ty.block_size()
            )));
        };
        self.names.insert(name.clone());
        self.tensors.push(TensorInfo {
            name,
            dims: dims.to_vec(),
            ty,
            offset: 0,
            n_bytes,
            shard: 0,
        });
        Ok(())
    }

    /// Encode the header (including padding up to the data section) and compute every tensor's
    /// absolute offset.
    fn layout(&self) -> Result<(Vec<u8>, Vec<TensorInfo>), GgufWriteError> {
        let mut h = Vec::new();
        h.extend_from_slice(&GGUF_MAGIC);
        h.extend_from_slice(&self.version.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut h, k);
            h.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut h, v);
        }
        let mut rel = 0u64;
        let mut tensors = self.tensors.clone();
        for t in &mut tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&rel.to_le_bytes());
            t.offset = rel;
            rel = rel
                .checked_add(t.n_bytes)
                .and_then(|e| e.checked_next_multiple_of(self.alignment))
                .ok_or_else(|| GgufWriteError::InvalidTensor {
                    name: t.name.clone(),
                    reason: "the data section would exceed 2^64 bytes".into(),
                })?;
        }
        let data_offset = (h.len() as u64).next_multiple_of(self.alignment);
        h.resize(data_offset as usize, 0);
        for t in &mut tensors {
            t.offset =
                t.offset
                    .checked_add(data_offset)
                    .ok_or_else(|| GgufWriteError::InvalidTensor {
                        name: t.name.clone(),
                        reason: "offset exceeds 2^64".into(),
                    })?;
        }
        Ok((h, tensors))
    }

    /// Write the header to `w` and return a stream that takes the tensor data.
    pub fn write_to<W: Write>(&self, mut w: W) -> Result<TensorStream<W>, GgufWriteError> {
        let (header, tensors) = self.layout()?;
        w.write_all(&header).map_err(GgufWriteError::Sink)?;
        Ok(TensorStream {
            w,
            tensors,
            next: 0,
            written: 0,
            pos: header.len() as u64,
            alignment: self.alignment,
        })
    }

    /// The whole file in memory; `data[i]` is the data of the i-th declared tensor.
    pub fn to_bytes(&self, data: &[&[u8]]) -> Result<Vec<u8>, GgufWriteError> {
        let mut s = self.write_to(Vec::new())?;
        write_all_tensors(&mut s, data)?;
        s.finish()
    }

    /// Start writing the file `path`: the header goes to a temporary file in the same
    /// directory, which [`GgufFileWriter::finish`] renames to `path`.
    pub fn create(&self, path: &Path) -> Result<GgufFileWriter, GgufWriteError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| GgufWriteError::Io {
                op: "create",
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
            })?
            .to_string_lossy()
            .into_owned();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(".{file_name}.tmp-{}-{stamp}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| GgufWriteError::Io {
                op: "create",
                path: tmp.clone(),
                source,
            })?;
        // From here on `GgufFileWriter`'s Drop removes the temporary file on any error.
        let mut out = GgufFileWriter {
            stream: None,
            tmp,
            dest: path.to_path_buf(),
            committed: false,
        };
        let stream = self
            .write_to(BufWriter::with_capacity(1 << 20, file))
            .map_err(|e| out.io_error("write", e))?;
        out.stream = Some(stream);
        Ok(out)
    }

    /// Write the whole file `path` at once; `data[i]` is the data of the i-th declared tensor.
    pub fn write_file(&self, path: &Path, data: &[&[u8]]) -> Result<(), GgufWriteError> {
        if data.len() != self.tensors.len() {
            return Err(GgufWriteError::DataOrder(format!(
                "{} tensors declared but data given for {}",
                self.tensors.len(),
                data.len()
            )));
        }
        let mut f = self.create(path)?;
        for (t, d) in self.tensors.iter().zip(data) {
            f.write_tensor(&t.name, d)?;
        }
        f.finish()
    }
}

fn write_all_tensors<W: Write>(
    s: &mut TensorStream<W>,
    data: &[&[u8]],
) -> Result<(), GgufWriteError> {
    if data.len() != s.tensors.len() {
        return Err(GgufWriteError::DataOrder(format!(
            "{} tensors declared but data given for {}",
            s.tensors.len(),
            data.len()
        )));
    }
    let names: Vec<String> = s.tensors.iter().map(|t| t.name.clone()).collect();
    for (name, d) in names.iter().zip(data) {
        s.write_tensor(name, d)?;
    }
    Ok(())
}

fn check_alignment(v: &Value) -> Result<u64, GgufWriteError> {
    match v {
        Value::U32(a) if a.is_power_of_two() && *a <= MAX_ALIGNMENT => Ok(u64::from(*a)),
        _ => Err(GgufWriteError::InvalidValue {
            key: ALIGNMENT_KEY.into(),
            reason: format!(
                "{v} ({}) is not a u32 power of two of at most {MAX_ALIGNMENT}",
                v.type_name()
            ),
        }),
    }
}

/// Reject what the reader would reject: heterogeneous or too-deep arrays, too many values.
fn check_value(v: &Value, depth: usize, values: &mut u64) -> Result<(), String> {
    let Value::Array(a) = v else {
        return Ok(());
    };
    let depth = depth + 1;
    if depth > MAX_ARRAY_DEPTH {
        return Err(format!("arrays nest deeper than {MAX_ARRAY_DEPTH} levels"));
    }
    *values = values.saturating_add(a.len() as u64);
    if *values > MAX_METADATA_VALUES {
        return Err(format!(
            "more than {MAX_METADATA_VALUES} metadata values in total"
        ));
    }
    let elem = a.first().map(Value::value_type);
    for x in a {
        if Some(x.value_type()) != elem {
            return Err(format!(
                "array mixes {} and {} elements",
                elem.map_or("?", ValueType::name),
                x.type_name()
            ));
        }
        check_value(x, depth, values)?;
    }
    Ok(())
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

/// Value payload (without its type tag).
fn put_value(h: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(u8::from(*x)),
        Value::String(s) => put_str(h, s),
        Value::Array(a) => {
            // An empty array has no element to take the type from; u8 is as good as any.
            let elem = a.first().map_or(ValueType::U8, Value::value_type);
            h.extend_from_slice(&elem.id().to_le_bytes());
            h.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_value(h, x);
            }
        }
    }
}

/// Takes tensor data in declaration order after the header was written to `W`.
#[derive(Debug)]
pub struct TensorStream<W: Write> {
    w: W,
    /// Declared tensors with absolute offsets.
    tensors: Vec<TensorInfo>,
    /// Index of the tensor being written.
    next: usize,
    /// Bytes of `tensors[next]` written so far.
    written: u64,
    /// Bytes written to `w` so far.
    pos: u64,
    alignment: u64,
}

impl<W: Write> TensorStream<W> {
    /// Declared tensors, with the absolute offsets they are written at.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor whose data is expected next, `None` when all are complete.
    pub fn current_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.next)
    }

    /// Write all of tensor `name`'s data, which must be the next tensor in declaration order and
    /// have exactly its size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufWriteError> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(GgufWriteError::DataOrder(format!(
                "data for {name:?} given but all declared tensors are written"
            )));
        };
        if t.name != name || self.written != 0 {
            return Err(GgufWriteError::DataOrder(format!(
                "data for {name:?} given, but the next expected is {:?} (written {} of {} bytes)",
                t.name, self.written, t.n_bytes
            )));
        }
        if data.len() as u64 != t.n_bytes {
            return Err(GgufWriteError::DataOrder(format!(
                "tensor {name:?} needs {} bytes, got {}",
                t.n_bytes,
                data.len()
            )));
        }
        self.write_chunk(data)
    }

    /// Append `data` to the current tensor; it must not run past the tensor's size. When a
    /// tensor is complete, padding is written and the next tensor becomes current.
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), GgufWriteError> {
        let Some((offset, n_bytes)) = self.tensors.get(self.next).map(|t| (t.offset, t.n_bytes))
        else {
            return Err(GgufWriteError::DataOrder(format!(
                "{} bytes given but all declared tensors are written",
                data.len()
            )));
        };
        let left = n_bytes - self.written;
        if data.len() as u64 > left {
            let name = self.tensors.get(self.next).map_or("", |t| t.name.as_str());
            return Err(GgufWriteError::DataOrder(format!(
                "{} bytes given for tensor {name:?}, which has only {left} bytes left",
                data.len(),
            )));
        }
        if self.written == 0 {
            // Pad up to the tensor's offset (after the previous tensor's trailing padding this
            // is nothing; the header is already padded to the data section).
            self.zeros(offset.saturating_sub(self.pos))?;
        }
        self.w.write_all(data).map_err(GgufWriteError::Sink)?;
        self.pos += data.len() as u64;
        self.written += data.len() as u64;
        if self.written == n_bytes {
            self.next += 1;
            self.written = 0;
            let pad = self.pos.next_multiple_of(self.alignment) - self.pos;
            self.zeros(pad)?;
        }
        Ok(())
    }

    fn zeros(&mut self, n: u64) -> Result<(), GgufWriteError> {
        const Z: [u8; 4096] = [0; 4096];
        let mut left = n;
        while left > 0 {
            let k = left.min(Z.len() as u64) as usize;
            self.w
                .write_all(Z.get(..k).unwrap_or(&Z))
                .map_err(GgufWriteError::Sink)?;
            left -= k as u64;
        }
        self.pos += n;
        Ok(())
    }

    /// Check that every declared tensor is complete, flush, and return the sink.
    pub fn finish(mut self) -> Result<W, GgufWriteError> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(GgufWriteError::DataOrder(format!(
                "finished with tensor {:?} incomplete ({} of {} bytes) and {} more tensors unwritten",
                t.name,
                self.written,
                t.n_bytes,
                self.tensors.len() - self.next - 1
            )));
        }
        self.w.flush().map_err(GgufWriteError::Sink)?;
        Ok(self.w)
    }
}

/// A GGUF file being written: a temporary file that [`finish`](GgufFileWriter::finish) renames
/// into place; dropped unfinished (or after an error), the temporary file is deleted.
#[derive(Debug)]
pub struct GgufFileWriter {
    stream: Option<TensorStream<BufWriter<File>>>,
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl GgufFileWriter {
    fn io_error(&self, op: &'static str, e: GgufWriteError) -> GgufWriteError {
        match e {
            GgufWriteError::Sink(source) => GgufWriteError::Io {
                op,
                path: self.tmp.clone(),
                source,
            },
            other => other,
        }
    }

    fn stream(&mut self) -> Result<&mut TensorStream<BufWriter<File>>, GgufWriteError> {
        self.stream
            .as_mut()
            .ok_or_else(|| GgufWriteError::DataOrder("the writer was already finished".into()))
    }

    /// Declared tensors, with the absolute offsets they are written at.
    pub fn tensors(&self) -> &[TensorInfo] {
        self.stream.as_ref().map_or(&[], |s| s.tensors())
    }

    /// The tensor whose data is expected next.
    pub fn current_tensor(&self) -> Option<&TensorInfo> {
        self.stream.as_ref().and_then(|s| s.current_tensor())
    }

    /// See [`TensorStream::write_tensor`].
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufWriteError> {
        let r = self.stream()?.write_tensor(name, data);
        r.map_err(|e| self.io_error("write", e))
    }

    /// See [`TensorStream::write_chunk`].
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<(), GgufWriteError> {
        let r = self.stream()?.write_chunk(data);
        r.map_err(|e| self.io_error("write", e))
    }

    /// Check that all tensors were written, flush and fsync the temporary file, and rename it to
    /// the destination.
    pub fn finish(mut self) -> Result<(), GgufWriteError> {
        let stream = self
            .stream
            .take()
            .ok_or_else(|| GgufWriteError::DataOrder("the writer was already finished".into()))?;
        let buf = stream.finish().map_err(|e| self.io_error("write", e))?;
        let file = buf.into_inner().map_err(|e| GgufWriteError::Io {
            op: "write",
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(|source| GgufWriteError::Io {
            op: "sync",
            path: self.tmp.clone(),
            source,
        })?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|source| GgufWriteError::Io {
            op: "rename into place",
            path: self.dest.clone(),
            source,
        })?;
        self.committed = true;
        // Make the rename durable; failing here leaves a complete file, so report it.
        if let Some(dir) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| GgufWriteError::Io {
                    op: "sync directory of",
                    path: self.dest.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

impl Drop for GgufFileWriter {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the file is ours and unfinished; nothing else can be done in drop.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
