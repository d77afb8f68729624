//! Rotary position embedding (RoPE), with YaRN, mirroring ggml's CPU kernel
//! ([LC] `ggml/src/ggml-cpu/ops.cpp`: `ggml_rope_cache_init`, `rope_yarn`, `rotate_pairs`;
//! `ggml/src/ggml.c`: `ggml_rope_yarn_corr_dims`).
//!
//! For pair `i` (`0 ≤ i < n_dims/2`) at position `p`, in f32 as ggml:
//! * `θ_ext` starts at `p` and is multiplied by `theta_scale = powf(freq_base, −2/n_dims)` once
//!   per pair (iteratively, not `p · base^(−2i/d)`), which is what makes us bit-near llama.cpp;
//! * without YaRN: `θ = θ_ext`, `c = cos θ`, `s = sin θ`;
//! * with YaRN (`freq_scale = 1/factor`): `θ_int = freq_scale · θ_ext`;
//!   `ramp = (1 − clamp((i − low)/max(0.001, high − low), 0, 1)) · ext_factor`;
//!   `θ = θ_int·(1 − ramp) + θ_ext·ramp`; `c, s = cos θ · m, sin θ · m` with
//!   `m = attn_factor · (1 + 0.1·ln(1/freq_scale))` (only when `ext_factor ≠ 0`, as ggml).
//! * `low, high` are the correction dims `n_dims · ln(N₀/(2π·β)) / (2 ln base)` for
//!   `β_fast, β_slow`, clamped to `[0, n_dims − 1]`. [`YarnRounding::LlamaCpp`] floors `low` and
//!   ceils `high` in f32 (llama.cpp); [`YarnRounding::Reference`] keeps them fractional, computed
//!   in f64 (OpenAI reference / HF with `truncate: false`). See gpt-oss-spec §6.1c.
//!
//! Rotation of the pair `(a, b)`: `a' = a·c − b·s`, `b' = a·s + b·c` (products and sums rounded
//! separately). [`RopeMode::Normal`] pairs dims `(2i, 2i+1)` (llama); [`RopeMode::Neox`] pairs
//! `(i, i + n_dims/2)` (gpt-oss). Dims `n_dims..head_dim` are left unchanged.

use std::f32::consts::PI;

/// Which dimensions form a rotated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// `(2i, 2i + 1)`: ggml `GGML_ROPE_TYPE_NORMAL`, llama-family models.
    Normal,
    /// `(i, i + n_dims/2)`: ggml `GGML_ROPE_TYPE_NEOX`, gpt-oss.
    Neox,
}

/// How the YaRN correction range is rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YarnRounding {
    /// Fractional `low`/`high` (the model's training-time reference).
    Reference,
    /// `floor(low)`, `ceil(high)` as llama.cpp does.
    LlamaCpp,
}

/// YaRN context extension parameters (llama.cpp names in brackets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnParams {
    /// Context scaling factor (`1/freq_scale`); gpt-oss: 32.
    pub factor: f32,
    /// Original training context `N₀` (`n_ctx_orig`); gpt-oss: 4096.
    pub original_ctx: usize,
    /// `β_fast` (`yarn_beta_fast`); gpt-oss: 32.
    pub beta_fast: f32,
    /// `β_slow` (`yarn_beta_slow`); gpt-oss: 1.
    pub beta_slow: f32,
    /// Extrapolation mix (`yarn_ext_factor`); 1.0 for YaRN, 0.0 disables the ramp and the
    /// magnitude correction (plain linear interpolation).
    pub ext_factor: f32,
    /// Extra magnitude factor (`yarn_attn_factor`); 1.0 for gpt-oss.
    pub attn_factor: f32,
    /// Rounding of the correction range.
    pub rounding: YarnRounding,
}

/// Rotary embedding parameters of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    /// Rotated dimensions per head (even, at most `head_dim`).
    pub n_dims: usize,
    /// Base `b` of the frequencies `b^(−2i/n_dims)`.
    pub freq_base: f32,
    /// Pairing of dimensions.
    pub mode: RopeMode,
    /// YaRN scaling, if any.
    pub yarn: Option<YarnParams>,
}

/// ggml's `ggml_rope_yarn_corr_dim`, in f32.
fn corr_dim_f32(n_dims: usize, n_ctx_orig: usize, n_rot: f32, base: f32) -> f32 {
    n_dims as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * PI)).ln() / (2.0 * base.ln())
}

/// The same formula in f64 (the Python references).
fn corr_dim_f64(n_dims: usize, n_ctx_orig: usize, n_rot: f32, base: f32) -> f64 {
    let pi = std::f64::consts::PI;
    n_dims as f64 * (n_ctx_orig as f64 / (n_rot as f64 * 2.0 * pi)).ln()
        / (2.0 * (base as f64).ln())
}

impl RopeParams {
    /// The YaRN correction range `[low, high]` (in pair indices), `None` without YaRN.
    pub fn yarn_corr_dims(&self) -> Option<[f32; 2]> {
        let y = self.yarn?;
        let (lo, hi) = match y.rounding {
            YarnRounding::LlamaCpp => (
                corr_dim_f32(self.n_dims, y.original_ctx, y.beta_fast, self.freq_base).floor(),
                corr_dim_f32(self.n_dims, y.original_ctx, y.beta_slow, self.freq_base).ceil(),
            ),
            YarnRounding::Reference => (
                corr_dim_f64(self.n_dims, y.original_ctx, y.beta_fast, self.freq_base) as f32,
                corr_dim_f64(self.n_dims, y.original_ctx, y.beta_slow, self.freq_base) as f32,
            ),
        };
        Some([lo.max(0.0), hi.min(self.n_dims as f32 - 1.0)])
    }

    /// `cos` and `sin` (magnitude-scaled) of every pair at position `pos`, as ggml's
    /// `ggml_rope_cache_init`. Panics (caller contract) unless both slices have `n_dims/2`
    /// elements.
    pub fn cos_sin(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let half = self.n_dims / 2;
        assert!(
            cos.len() == half && sin.len() == half,
            "cos_sin: need n_dims/2 = {half} slots"
        );
        let theta_scale = self.freq_base.powf(-2.0 / self.n_dims as f32);
        let (freq_scale, ext_factor, mut mscale, corr) = match self.yarn {
            Some(y) => (
                1.0 / y.factor,
                y.ext_factor,
                y.attn_factor,
                self.yarn_corr_dims().expect("yarn is set"),
            ),
            None => (1.0, 0.0, 1.0, [0.0, 0.0]),
        };
        if ext_factor != 0.0 {
            mscale *= 1.0 + 0.1 * (1.0 / freq_scale).ln();
        }
        let mut theta = pos as f32;
        for (i, (c, s)) in cos.iter_mut().zip(sin.iter_mut()).enumerate() {
            let theta_extrap = theta;
            let theta_interp = freq_scale * theta_extrap;
            let mut t = theta_interp;
            if ext_factor != 0.0 {
                let y = (i as f32 - corr[0]) / 0.001f32.max(corr[1] - corr[0]);
                let ramp_mix = (1.0 - y.clamp(0.0, 1.0)) * ext_factor;
                t = theta_interp * (1.0 - ramp_mix) + theta_extrap * ramp_mix;
            }
            *c = t.cos() * mscale;
            *s = t.sin() * mscale;
            theta *= theta_scale;
        }
    }

    fn check(&self, x_len: usize, head_dim: usize) {
        assert!(
            self.n_dims.is_multiple_of(2) && self.n_dims <= head_dim,
            "rope: n_dims {} must be even and at most head_dim {head_dim}",
            self.n_dims
        );
        assert!(
            head_dim > 0 && x_len.is_multiple_of(head_dim),
            "rope: {x_len} values are not whole heads of {head_dim}"
        );
    }
}

/// Rotate each `cos.len()`-pair of every head of `x` in place.
fn rotate(mode: RopeMode, cos: &[f32], sin: &[f32], x: &mut [f32], head_dim: usize) {
    let half = cos.len();
    for head in x.chunks_exact_mut(head_dim) {
        match mode {
            RopeMode::Normal => {
                for ((pair, &c), &s) in head[..2 * half].chunks_exact_mut(2).zip(cos).zip(sin) {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * c - b * s;
                    pair[1] = a * s + b * c;
                }
            }
            RopeMode::Neox => {
                let (lo, hi) = head[..2 * half].split_at_mut(half);
                for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                    let (x0, x1) = (*a, *b);
                    *a = x0 * c - x1 * s;
                    *b = x0 * s + x1 * c;
                }
            }
        }
    }
}

/// Largest `n_dims` whose cos/sin fit the on-stack buffer of [`rope_inplace`].
const STACK_DIMS: usize = 512;

/// Apply RoPE at position `pos` to `x`, laid out as heads of `head_dim` values (head-major).
///
/// Panics (caller contract) unless `n_dims` is even and ≤ `head_dim` and `x.len()` is a
/// multiple of `head_dim`. Allocation-free for `n_dims ≤ 512`.
pub fn rope_inplace(p: &RopeParams, x: &mut [f32], head_dim: usize, pos: usize) {
    p.check(x.len(), head_dim);
    let half = p.n_dims / 2;
    if p.n_dims <= STACK_DIMS {
        let mut buf = [0.0f32; STACK_DIMS];
        let (cos, sin) = buf.split_at_mut(STACK_DIMS / 2);
        p.cos_sin(pos, &mut cos[..half], &mut sin[..half]);
        rotate(p.mode, &cos[..half], &sin[..half], x, head_dim);
    } else {
        let mut cos = vec![0.0f32; half];
        let mut sin = vec![0.0f32; half];
        p.cos_sin(pos, &mut cos, &mut sin);
        rotate(p.mode, &cos, &sin, x, head_dim);
    }
}

/// Precomputed cos/sin for positions `0..len`, so the per-token cost is only the rotation.
/// Results are bit-identical to [`rope_inplace`]. Memory: `len · n_dims · 4` bytes.
#[derive(Debug, Clone)]
pub struct RopeCache {
    params: RopeParams,
    half: usize,
    len: usize,
    /// `[pos][cos(half) | sin(half)]`.
    table: Vec<f32>,
}

impl RopeCache {
    /// Tables for positions `0..len`.
    pub fn new(params: RopeParams, len: usize) -> RopeCache {
        let half = params.n_dims / 2;
        let mut table = vec![0.0f32; len * 2 * half];
        if half > 0 {
            for (pos, row) in table.chunks_exact_mut(2 * half).enumerate() {
                let (c, s) = row.split_at_mut(half);
                params.cos_sin(pos, c, s);
            }
        }
        RopeCache {
            params,
            half,
            len,
            table,
        }
    }

    /// Parameters the table was built from.
    pub fn params(&self) -> &RopeParams {
        &self.params
    }

    /// Number of positions covered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table covers no position.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Apply RoPE at `pos` (panics, caller contract, if `pos >= len()` or on the
    /// [`rope_inplace`] shape conditions).
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        self.params.check(x.len(), head_dim);
        assert!(
            pos < self.len,
            "rope cache covers {} positions, got {pos}",
            self.len
        );
        let row = &self.table[pos * 2 * self.half..(pos + 1) * 2 * self.half];
        let (c, s) = row.split_at(self.half);
        rotate(self.params.mode, c, s, x, head_dim);
    }
}
