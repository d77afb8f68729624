//! Model architectures behind one trait, with weights bound to the mmapped GGUF tensors.
//!
//! A [`Model`] computes logits for a batch of consecutive positions; it keeps no per-sequence
//! state itself: K/V go to the [`KvCache`] passed in. Weights are [`Weight`] handles (type,
//! shape, file offset) validated when the model is bound, so the forward pass never re-checks
//! shapes and never copies weights.

pub mod gpt_oss;
pub mod llama;

use crate::gguf::{GgmlType, GgufFile, ModelConfig};
use crate::kv::{KvCache, KvError, KvGeometry};
use std::path::Path;
use std::sync::Arc;

/// Arithmetic of the weight products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Weights decoded exactly, activations kept in f32 (the reference).
    #[default]
    Exact,
    /// Activations quantized to 8 bits per 32-block for Q4_0/Q4_1/Q8_0/MXFP4 weights, as llama.cpp
    /// does (`kernels::q8act`); other types as `Exact`.
    Fast,
}

/// Which positions of a forward pass need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every position of the batch.
    All,
    /// Only the last position.
    Last,
    /// None (pure prefill).
    None,
}

/// Errors of model binding and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file's tensors do not match what the architecture needs.
    #[error("{path}: {problems}; the file does not match its declared architecture — re-convert or re-download it")]
    Tensors {
        /// The model file.
        path: String,
        /// Every problem found, joined with "; ".
        problems: String,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is out of range: the vocabulary has {n_vocab} tokens")]
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// The architecture is recognised by the GGUF reader but not implemented here.
    #[error("architecture '{0}' is not supported for inference yet (supported: llama, gpt-oss)")]
    Unsupported(String),
    /// GGUF config problem.
    #[error(transparent)]
    Config(#[from] crate::gguf::ConfigError),
    /// GGUF file problem.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// KV cache problem.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// Weight decoding problem.
    #[error(transparent)]
    Quant(#[from] crate::quant::QuantError),
}

/// A model architecture.
pub trait Model: Send + Sync {
    /// The KV geometry for a context of `n_ctx` positions.
    fn kv_geometry(&self, n_ctx: usize) -> KvGeometry;
    /// Vocabulary size (length of a logits row).
    fn n_vocab(&self) -> usize;
    /// Context length the model was trained for.
    fn context_length(&self) -> usize;
    /// Run `tokens` at positions `pos0..pos0+n`, appending their K/V to `kv`, and write the
    /// logits rows selected by `want` (row-major, `n_vocab` each) into `logits`.
    fn forward(
        &self,
        tokens: &[u32],
        pos0: usize,
        kv: &mut dyn KvCache,
        want: LogitsFor,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError>;
}

/// A 2-D weight matrix in the mmapped file: `rows` rows of `cols` elements (ggml `ne1 × ne0`).
#[derive(Debug, Clone)]
pub struct Weight {
    /// Element type.
    pub ty: GgmlType,
    /// Output dimension (ne1).
    pub rows: usize,
    /// Input dimension (ne0).
    pub cols: usize,
    /// The tensor (None only for placeholders of a failed bind, never used).
    info: Option<crate::gguf::TensorInfo>,
    /// Bytes of one row.
    pub row_bytes: usize,
}

impl Weight {
    fn bytes<'f>(&self, f: &'f GgufFile) -> &'f [u8] {
        match &self.info {
            Some(t) => f.tensor_bytes(t),
            None => &[],
        }
    }

    /// `y (n × rows) = x (n × cols) · Wᵀ`.
    pub fn matmul(&self, f: &GgufFile, p: Precision, x: &[f32], n: usize, y: &mut [f32]) {
        let w = self.bytes(f);
        if p == Precision::Fast && crate::kernels::q8act::supports(self.ty) {
            crate::kernels::q8act::matmat_q8(self.ty, w, self.rows, self.cols, x, n, y);
        } else if n == 1 {
            crate::kernels::matvec(self.ty, w, self.rows, self.cols, x, y);
        } else {
            crate::kernels::matmat(self.ty, w, self.rows, self.cols, x, n, y);
        }
    }

    /// Decode row `r` to f32 (embedding lookup).
    pub fn row_f32(
        &self,
        f: &GgufFile,
        r: usize,
        out: &mut [f32],
    ) -> Result<(), crate::quant::QuantError> {
        let w = self.bytes(f);
        crate::quant::dequantize_row(
            self.ty,
            &w[r * self.row_bytes..(r + 1) * self.row_bytes],
            out,
        )
    }
}

/// The embedding rows of `tokens` (`tokens.len() × cols` of `tok_embd`), checking each id.
pub(crate) fn embed(
    f: &GgufFile,
    tok_embd: &Weight,
    tokens: &[u32],
    n_vocab: usize,
) -> Result<Vec<f32>, ModelError> {
    let e = tok_embd.cols;
    let mut x = vec![0.0f32; tokens.len() * e];
    for (t, &tok) in tokens.iter().enumerate() {
        if tok as usize >= n_vocab {
            return Err(ModelError::TokenOutOfRange {
                token: tok,
                n_vocab,
            });
        }
        tok_embd.row_f32(f, tok as usize, &mut x[t * e..(t + 1) * e])?;
    }
    Ok(x)
}

/// RMSNorm of every row of `x` (rows of `weight.len()` values) into `out`.
pub(crate) fn rmsnorm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let e = weight.len();
    for (xr, or) in x.chunks_exact(e).zip(out.chunks_exact_mut(e)) {
        crate::kernels::rmsnorm(xr, weight, eps, or);
    }
}

/// The output head: RMSNorm (`norm`, `eps`) then `output` over the rows of `x` (`n × cols`)
/// selected by `want`, into `logits` (row-major, `output.rows` each).
#[allow(clippy::too_many_arguments)]
pub(crate) fn head(
    f: &GgufFile,
    p: Precision,
    x: &[f32],
    n: usize,
    norm: &[f32],
    eps: f32,
    output: &Weight,
    want: LogitsFor,
    logits: &mut Vec<f32>,
) {
    let e = output.cols;
    let rows: Vec<usize> = match want {
        LogitsFor::All => (0..n).collect(),
        LogitsFor::Last => vec![n - 1],
        LogitsFor::None => Vec::new(),
    };
    let m = rows.len();
    let mut fin = vec![0.0f32; m * e];
    for (j, &t) in rows.iter().enumerate() {
        crate::kernels::rmsnorm(
            &x[t * e..(t + 1) * e],
            norm,
            eps,
            &mut fin[j * e..(j + 1) * e],
        );
    }
    logits.clear();
    logits.resize(m * output.rows, 0.0);
    if m > 0 {
        output.matmul(f, p, &fin, m, logits);
    }
}

/// Several mat-vecs of one input vector `x` (decode, one token) in a single parallel region:
/// `y_j = W_j · x` for each job. Same bits as [`Weight::matmul`] with `n = 1` and exact
/// precision (`kernels::matvec_serial` on row chunks); fusing saves the wake-up and join of a
/// parallel region per matrix, which dominates at small model sizes.
pub fn matvec_fused(f: &GgufFile, x: &[f32], jobs: Vec<(&Weight, &mut [f32])>) {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads().max(1);
    let total: usize = jobs.iter().map(|(w, _)| w.rows).sum();
    let chunk = total.div_ceil(threads * 4).max(16);
    let mut tasks: Vec<(&Weight, usize, &mut [f32])> = Vec::new();
    for (w, y) in jobs {
        assert!(
            y.len() == w.rows && x.len() == w.cols,
            "matvec_fused: shape mismatch"
        );
        for (ci, yc) in y.chunks_mut(chunk).enumerate() {
            tasks.push((w, ci * chunk, yc));
        }
    }
    tasks.into_par_iter().for_each(|(w, r0, yc)| {
        let bytes = &w.bytes(f)[r0 * w.row_bytes..(r0 + yc.len()) * w.row_bytes];
        crate::kernels::matvec_serial(w.ty, bytes, yc.len(), w.cols, x, yc);
    });
}

/// Binds tensors by name, checking shape and type, collecting every problem.
pub(crate) struct Binder<'f> {
    file: &'f GgufFile,
    problems: Vec<String>,
}

impl<'f> Binder<'f> {
    pub(crate) fn new(file: &'f GgufFile) -> Self {
        Binder {
            file,
            problems: Vec::new(),
        }
    }

    /// The tensor `name` if it exists with exactly the shape `dims` (ggml order); otherwise the
    /// problem is recorded and `None` returned.
    fn shaped(&mut self, name: &str, dims: &[u64]) -> Option<&'f crate::gguf::TensorInfo> {
        let file = self.file;
        let Some(t) = file.tensor(name) else {
            self.problems.push(format!("missing tensor {name}"));
            return None;
        };
        if t.dims.as_slice() != dims {
            self.problems.push(format!(
                "tensor {name} has shape {:?}, expected {dims:?}",
                t.dims
            ));
            return None;
        }
        Some(t)
    }

    /// Like [`Self::shaped`], and of a type the kernels compute with.
    pub(crate) fn computable(
        &mut self,
        name: &str,
        dims: &[u64],
    ) -> Option<&'f crate::gguf::TensorInfo> {
        let t = self.shaped(name, dims)?;
        if !t.ty.is_supported() {
            self.problems.push(format!(
                "tensor {name} has type {} which kvspool cannot compute with (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, MXFP4)",
                t.ty
            ));
            return None;
        }
        Some(t)
    }

    /// Every value of the tensor `name` of shape `dims`, decoded to f32 once (norm weights,
    /// biases, sinks: small tensors).
    pub(crate) fn values(&mut self, name: &str, dims: &[u64]) -> Vec<f32> {
        let Some(t) = self.shaped(name, dims) else {
            return Vec::new();
        };
        let mut out = vec![0.0f32; dims.iter().product::<u64>() as usize];
        if let Err(e) = crate::quant::dequantize_row(t.ty, self.file.tensor_bytes(t), &mut out) {
            self.problems.push(format!("tensor {name}: {e}"));
        }
        out
    }

    /// A matrix with `cols` inputs (ne0) and `rows` outputs (ne1).
    pub(crate) fn matrix(&mut self, name: &str, cols: usize, rows: usize) -> Weight {
        match self.computable(name, &[cols as u64, rows as u64]) {
            Some(t) => Weight {
                ty: t.ty,
                rows,
                cols,
                row_bytes: t.row_bytes() as usize,
                info: Some(t.clone()),
            },
            None => Weight {
                ty: GgmlType::F32,
                rows,
                cols,
                info: None,
                row_bytes: 0,
            },
        }
    }

    /// A 1-D tensor of `n` values, decoded to f32 once.
    pub(crate) fn vector(&mut self, name: &str, n: usize) -> Vec<f32> {
        self.values(name, &[n as u64])
    }

    pub(crate) fn finish(self) -> Result<(), ModelError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ModelError::Tensors {
                path: self.file.path().display().to_string(),
                problems: self.problems.join("; "),
            })
        }
    }
}

/// A GGUF file with its parsed configuration and bound model.
pub struct Loaded {
    /// The mapped file.
    pub file: Arc<GgufFile>,
    /// Its configuration.
    pub config: ModelConfig,
    /// The bound model.
    pub model: Box<dyn Model>,
}

/// Open, validate and bind a model file (exact arithmetic).
pub fn load(path: &Path) -> Result<Loaded, ModelError> {
    load_with(path, Precision::Exact)
}

/// Open, validate and bind a model file with the given arithmetic.
pub fn load_with(path: &Path, precision: Precision) -> Result<Loaded, ModelError> {
    load_opts(path, precision, crate::kernels::YarnRounding::Reference)
}

/// Open, validate and bind a model file with the given arithmetic and YaRN correction-range
/// rounding (`Reference`: the model's training-time reference, the default; `LlamaCpp`:
/// floor/ceil as llama.cpp, `--rope-compat llamacpp`; only models with YaRN use it).
pub fn load_opts(
    path: &Path,
    precision: Precision,
    rounding: crate::kernels::YarnRounding,
) -> Result<Loaded, ModelError> {
    let file = Arc::new(GgufFile::open(path)?);
    let config = ModelConfig::from_gguf(&file)?;
    let model: Box<dyn Model> = match &config {
        ModelConfig::Llama(c) => Box::new(llama::Llama::new(file.clone(), c.clone(), precision)?),
        ModelConfig::GptOss(c) => Box::new(gpt_oss::GptOss::new(
            file.clone(),
            c.clone(),
            precision,
            rounding,
        )?),
    };
    Ok(Loaded {
        file,
        config,
        model,
    })
}
