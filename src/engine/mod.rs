//! Sessions, chunked prefill, the decode loop, stop rules and timings.
//!
//! A [`Session`] owns one sequence's KV cache and position; it feeds the model prompt tokens in
//! chunks (prefill) and then one token per step (decode). [`generate`] runs the whole job and
//! streams text through a callback as soon as it forms complete UTF-8.
//!
//! Invariant: `Session::pos()` equals the number of positions appended to every layer of the
//! KV cache; a failed forward leaves the session unusable (the caller gets the error).

pub mod plan;
pub mod sampler;

use crate::kv::{KvCache, KvError};
use crate::model::{LogitsFor, Model, ModelError};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use sampler::{Sampler, SamplerParams};
use std::time::Instant;

/// Errors while generating.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The prompt does not fit.
    #[error("prompt of {prompt} tokens does not fit in a context of {n_ctx}; pass a larger --ctx or a shorter prompt")]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Context size.
        n_ctx: usize,
    },
    /// Empty prompt.
    #[error("the prompt is empty; give some text with --prompt, --prompt-file or --chat")]
    EmptyPrompt,
}

/// One sequence: a model, its KV cache, the current position.
pub struct Session<'m> {
    model: &'m dyn Model,
    kv: Box<dyn KvCache + 'm>,
    pos: usize,
    logits: Vec<f32>,
}

impl<'m> Session<'m> {
    /// A new, empty session.
    pub fn new(model: &'m dyn Model, kv: Box<dyn KvCache + 'm>) -> Self {
        Session {
            model,
            kv,
            pos: 0,
            logits: Vec::new(),
        }
    }

    /// Positions processed so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The KV cache.
    pub fn kv(&self) -> &dyn KvCache {
        &*self.kv
    }

    /// Context size of the KV cache.
    pub fn n_ctx(&self) -> usize {
        self.kv.geometry().n_ctx
    }

    /// Run `tokens` in chunks of `chunk`, calling `progress(done, total)` after each chunk, and
    /// return the logits selected by `want` (for `LogitsFor::All`: one row per token, in order).
    pub fn prefill(
        &mut self,
        tokens: &[u32],
        chunk: usize,
        want: LogitsFor,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<f32>, EngineError> {
        let chunk = chunk.max(1);
        let mut all = Vec::new();
        let n_chunks = tokens.len().div_ceil(chunk);
        for (i, c) in tokens.chunks(chunk).enumerate() {
            let last = i + 1 == n_chunks;
            let w = match want {
                LogitsFor::All => LogitsFor::All,
                LogitsFor::Last if last => LogitsFor::Last,
                _ => LogitsFor::None,
            };
            self.model
                .forward(c, self.pos, &mut *self.kv, w, &mut self.logits)?;
            self.pos += c.len();
            if w != LogitsFor::None {
                all.extend_from_slice(&self.logits);
            }
            progress(self.pos.min(tokens.len()), tokens.len());
        }
        Ok(all)
    }

    /// Run one token and return its logits row.
    pub fn step(&mut self, token: u32) -> Result<&[f32], EngineError> {
        if self.pos >= self.n_ctx() {
            return Err(ModelError::Kv(KvError::ContextFull {
                n_ctx: self.n_ctx(),
            })
            .into());
        }
        self.model.forward(
            &[token],
            self.pos,
            &mut *self.kv,
            LogitsFor::Last,
            &mut self.logits,
        )?;
        self.pos += 1;
        Ok(&self.logits)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token was sampled.
    Eog,
    /// `max_tokens` were generated.
    Length,
    /// The context filled up.
    ContextFull,
}

impl StopReason {
    /// The name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eog => "eog",
            StopReason::Length => "length",
            StopReason::ContextFull => "context_full",
        }
    }
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenParams {
    /// Maximum new tokens.
    pub max_tokens: usize,
    /// Sampler settings.
    pub sampler: SamplerParams,
    /// Prompt tokens per forward pass during prefill.
    pub prefill_chunk: usize,
    /// Keep generating through end-of-generation tokens (benchmarks).
    pub ignore_eog: bool,
}

/// Wall-clock timings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Seconds spent in prefill.
    pub prefill_s: f64,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Seconds spent decoding.
    pub decode_s: f64,
    /// Generated tokens per second (tokens after the first, which comes from prefill).
    pub decode_tok_s: f64,
}

/// Result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt's token ids.
    pub prompt_tokens: Vec<u32>,
    /// Generated ids (including a final end-of-generation token, if one was sampled).
    pub tokens: Vec<u32>,
    /// Generated text (without the end-of-generation token's text).
    pub text: String,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Timings.
    pub timings: Timings,
    /// The logits the last token was sampled from.
    pub final_logits: Vec<f32>,
}

/// Prefill `prompt`, then sample up to `params.max_tokens` tokens, streaming text to `on_text`.
pub fn generate(
    session: &mut Session<'_>,
    tok: &Tokenizer,
    prompt: &[u32],
    params: &GenParams,
    progress: &mut dyn FnMut(usize, usize),
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, EngineError> {
    generate_with(session, tok, prompt, params, progress, &mut |_| {}, on_text)
}

/// [`generate`], also calling `on_token(id)` for every sampled token as soon as it is sampled
/// (including a final end-of-generation token; before `on_text` gets that token's text). Used
/// to parse structured output such as harmony messages while streaming.
pub fn generate_with(
    session: &mut Session<'_>,
    tok: &Tokenizer,
    prompt: &[u32],
    params: &GenParams,
    progress: &mut dyn FnMut(usize, usize),
    on_token: &mut dyn FnMut(u32),
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, EngineError> {
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let n_ctx = session.n_ctx();
    if session.pos() + prompt.len() > n_ctx {
        return Err(EngineError::PromptTooLong {
            prompt: prompt.len(),
            n_ctx,
        });
    }
    let mut sampler = Sampler::new(params.sampler);
    let t0 = Instant::now();
    let mut logits = session.prefill(prompt, params.prefill_chunk, LogitsFor::Last, progress)?;
    let prefill_s = t0.elapsed().as_secs_f64();

    let mut out = Vec::new();
    let mut text = String::new();
    let mut dec = StreamDecoder::new(false);
    let t1 = Instant::now();
    let mut stop = StopReason::Length;
    for i in 0..params.max_tokens {
        let next = sampler.sample(&logits);
        out.push(next);
        on_token(next);
        if tok.is_eog(next) && !params.ignore_eog {
            stop = StopReason::Eog;
            break;
        }
        let piece = dec.push(tok, next);
        if !piece.is_empty() {
            on_text(&piece);
            text.push_str(&piece);
        }
        if i + 1 == params.max_tokens {
            break;
        }
        if session.pos() >= n_ctx {
            stop = StopReason::ContextFull;
            break;
        }
        logits.clear();
        logits.extend_from_slice(session.step(next)?);
    }
    let rest = dec.finish();
    if !rest.is_empty() {
        on_text(&rest);
        text.push_str(&rest);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let steps = out.len().saturating_sub(1);
    Ok(Generation {
        prompt_tokens: prompt.to_vec(),
        tokens: out,
        text,
        stop_reason: stop,
        final_logits: logits,
        timings: Timings {
            prefill_s,
            prefill_tok_s: prompt.len() as f64 / prefill_s.max(1e-9),
            decode_s,
            decode_tok_s: if steps > 0 {
                steps as f64 / decode_s.max(1e-9)
            } else {
                0.0
            },
        },
    })
}
