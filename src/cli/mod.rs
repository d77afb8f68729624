//! Command-line parsing (clap) into validated settings, and output formatting.
//! The command contract is ../shared/docs/CLI.md; names, flags and JSON fields are stable.

mod bench;
mod kvopts;
mod profile;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kvopts::{kv_json, kv_table, CommonKv};
use kvspool::engine::sampler::SamplerParams;
use kvspool::engine::{generate_with, GenParams, Session};
use kvspool::gguf::{GgufFile, ModelConfig};
use kvspool::model::{self, Loaded, LogitsFor};
use kvspool::tokenizer::{ChatMessage, HarmonyIds, HarmonyParser, Tokenizer};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "kvspool",
    version,
    about = "LLM inference on CPU with an out-of-core KV cache"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt.
    Run(RunArgs),
    /// Write the logits of the model over a list of token ids (for reference comparisons).
    Logits(LogitsArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(TokenizeArgs),
    /// Print the text of comma-separated token ids.
    Detokenize(DetokenizeArgs),
    /// Describe a GGUF file: architecture, hyperparameters, tensors, KV memory.
    Inspect(InspectArgs),
    /// What fits on a machine with the given RAM: weights, KV RAM tier, disk tier, flags.
    Plan(PlanArgs),
    /// Benchmarks (`bench decode`).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Per-layer hit rates, miss reasons, bytes and stall time of a KV trace (`--trace`); --svg
    /// draws the timeline.
    Profile(profile::ProfileArgs),
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Context in tokens [default: the model's context_length].
    #[arg(long)]
    ctx: Option<u64>,
    /// RAM of the machine, e.g. 16GiB.
    #[arg(long)]
    ram: String,
    /// KV storage format.
    #[arg(long, default_value = "fp8", value_parser = ["f32", "f16", "fp8"])]
    kv_dtype: String,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 64)]
    block_tokens: u64,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ModelArg {
    /// GGUF model file [default: the cached SmolLM2-135M-Instruct, see tools/fetch-models.sh].
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Prompt text (used as is, no chat formatting).
    #[arg(long, group = "input")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long, group = "input")]
    prompt_file: Option<PathBuf>,
    /// A user message, wrapped in the model's chat template. For gpt-oss (harmony) models the
    /// reply is parsed into messages: the `final` channel is printed, the `analysis` channel
    /// only with --show-reasoning. `strftime_now` in templates reads SOURCE_DATE_EPOCH (Unix
    /// seconds) when it is set, for reproducible prompts.
    #[arg(long, group = "input")]
    chat: Option<String>,
    /// With --chat on a harmony (gpt-oss) model: also print the reasoning (`analysis` and
    /// `commentary` channels) to stderr.
    #[arg(long)]
    show_reasoning: bool,
    /// Maximum tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    n: usize,
    /// Sampling temperature; 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temp: f32,
    /// Nucleus sampling threshold (1 disables).
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 disables).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// RNG seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prompt tokens per forward pass during prefill.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// Do not stop at end-of-generation tokens (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
    /// Print timings and the per-layer KV table to stderr at the end.
    #[arg(long)]
    stats: bool,
    /// Print one JSON object on stdout instead of streaming text ("text": the answer; for
    /// harmony models also "reasoning" and "messages").
    #[arg(long)]
    json: bool,
    /// Write the logits the last token was sampled from to this file (a JSON array), to check
    /// that runs with different KV settings agree bit for bit.
    #[arg(long)]
    final_logits: Option<PathBuf>,
    /// YaRN correction range: reference (fractional, as the model was trained) or llamacpp
    /// (floor/ceil, to reproduce llama.cpp's outputs).
    #[arg(long, default_value = "reference", value_parser = ["reference", "llamacpp"])]
    rope_compat: String,
    #[command(flatten)]
    kv: CommonKv,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArg,
    /// JSON array of token ids.
    #[arg(long)]
    tokens_file: PathBuf,
    /// Which positions to write: all, last, or a comma-separated list of indices.
    #[arg(long, default_value = "all")]
    positions: String,
    /// Output JSON file.
    #[arg(long)]
    out: PathBuf,
    /// Prompt tokens per forward pass.
    #[arg(long, default_value_t = 512)]
    batch: usize,
    /// YaRN correction range: reference (fractional, as the model was trained) or llamacpp
    /// (floor/ceil, to reproduce llama.cpp's outputs).
    #[arg(long, default_value = "reference", value_parser = ["reference", "llamacpp"])]
    rope_compat: String,
    #[command(flatten)]
    kv: CommonKv,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("src").required(true).args(["text", "file"])))]
struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Text to tokenize.
    #[arg(long)]
    text: Option<String>,
    /// File whose contents to tokenize.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Recognise special tokens (like <|im_start|>) written in the text.
    #[arg(long)]
    special: bool,
}

#[derive(Args)]
struct DetokenizeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Comma-separated token ids, e.g. "1,2,3".
    #[arg(long)]
    ids: String,
}

#[derive(Args)]
struct InspectArgs {
    /// GGUF file.
    path: PathBuf,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

pub fn main() -> Result<()> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            // --help / --version print and succeed.
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || matches!(
                    e.kind(),
                    ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                )
            {
                e.exit();
            }
            // Usage errors: one line (clap's first line, plus a pointer to --help), exit 2.
            let text = e.render().to_string();
            let what: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let what = what.join(" ");
            let what = what.strip_prefix("error: ").unwrap_or(&what);
            eprintln!("error: {what}; see 'kvspool --help' or 'kvspool <command> --help'");
            std::process::exit(2);
        }
    };
    if std::env::var_os("KVSPOOL_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("KVSPOOL_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Logits(a) => logits(a),
        Cmd::Tokenize(a) => tokenize(a),
        Cmd::Detokenize(a) => detokenize(a),
        Cmd::Inspect(a) => inspect(a),
        Cmd::Plan(a) => plan(a),
        Cmd::Bench(b) => bench::main(b),
        Cmd::Profile(a) => profile::main(a),
    }
}

fn model_path(m: &ModelArg) -> Result<PathBuf> {
    match &m.model {
        Some(p) => {
            if !p.exists() {
                bail!(
                    "model file {} does not exist; check the --model path",
                    p.display()
                );
            }
            Ok(p.clone())
        }
        None => {
            let p = kvspool::paths::default_model();
            if !p.exists() {
                bail!(
                    "default model not found at {}; fetch it with tools/fetch-models.sh (or pass --model PATH)",
                    p.display()
                );
            }
            Ok(p)
        }
    }
}

fn rope_rounding(s: &str) -> kvspool::kernels::YarnRounding {
    if s == "llamacpp" {
        kvspool::kernels::YarnRounding::LlamaCpp
    } else {
        kvspool::kernels::YarnRounding::Reference
    }
}

/// A fingerprint of the model file for the disk tier header (size, tensor table).
fn fingerprint(file: &GgufFile) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h = (h ^ x as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    eat(&file.file_size().to_le_bytes());
    for t in file.tensors() {
        eat(t.name.as_bytes());
        eat(&t.n_bytes.to_le_bytes());
    }
    h
}

/// What `kvspool plan` would pick for this machine, context and bytes per KV value.
fn plan_for(loaded: &Loaded, n_ctx: usize, kv: &CommonKv, bpv: f64) -> kvspool::engine::plan::Plan {
    let ram = kvopts::machine_ram().unwrap_or(16 << 30);
    let input = kvspool::engine::plan::PlanInput {
        ram_bytes: ram,
        ctx: n_ctx as u64,
        kv_bytes_per_value: bpv,
        block_tokens: kv.block_tokens as u64,
    };
    kvspool::engine::plan::plan(&loaded.file, &loaded.config, &input)
}

/// The tiered KV cache for `loaded` at `n_ctx` positions, from the KV options (the budget
/// defaults to the plan's pick for this machine).
fn model_kv(
    kv: &CommonKv,
    loaded: &Loaded,
    n_ctx: usize,
    batch: usize,
) -> Result<(kvspool::kv::TieredKv, kvopts::TempDir)> {
    let geo = loaded.model.kv_geometry(n_ctx);
    let (dtype, ram) = match kv.explicit_dtype()? {
        Some(d) => {
            let bpv = kvopts::bytes_per_value(d);
            (
                d,
                kv.ram_bytes(|| plan_for(loaded, n_ctx, kv, bpv).kv_ram_bytes)?,
            )
        }
        None => {
            // Fast mode's default format: f16 when the whole context's KV fits the RAM budget
            // in f16 (no disk traffic to save, so keep the precision), else fp8 (half the bytes
            // on disk and per decode step).
            use kvspool::kv::format::KvDtype;
            let all16 = kvspool::kv::tiered::budget_for_all(&geo, kv.block_tokens, KvDtype::F16);
            match &kv.kv_ram {
                Some(_) => {
                    let ram = kv.ram_bytes(|| 0)?;
                    let d = if ram as usize >= all16 {
                        KvDtype::F16
                    } else {
                        KvDtype::Fp8
                    };
                    (d, ram)
                }
                None => {
                    let p16 = plan_for(loaded, n_ctx, kv, 2.0);
                    if p16.kv_ram_bytes >= p16.kv_total_bytes {
                        (KvDtype::F16, all16 as u64)
                    } else {
                        (KvDtype::Fp8, plan_for(loaded, n_ctx, kv, 1.0).kv_ram_bytes)
                    }
                }
            }
        }
    };
    kv.build_with(geo, dtype, ram, fingerprint(&loaded.file), batch)
}

fn set_threads(n: Option<usize>) -> Result<()> {
    if let Some(n) = n {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("could not start the thread pool")?;
    }
    Ok(())
}

fn load(
    m: &ModelArg,
    rope_compat: &str,
    precision: model::Precision,
) -> Result<(Loaded, Tokenizer)> {
    let path = model_path(m)?;
    let loaded = model::load_opts(&path, precision, rope_rounding(rope_compat))?;
    let tok = Tokenizer::from_gguf(&loaded.file)?;
    Ok((loaded, tok))
}

fn ctx_size(kv: &CommonKv, loaded: &Loaded) -> Result<usize> {
    let train = loaded.model.context_length();
    match kv.ctx {
        Some(0) => bail!("--ctx must be at least 1"),
        Some(n) => Ok(n),
        None => Ok(train),
    }
}

fn run(a: RunArgs) -> Result<()> {
    a.kv.validate()?;
    set_threads(a.kv.threads)?;
    if !(a.temp >= 0.0 && a.temp.is_finite()) {
        bail!("--temp must be a finite number >= 0, got {}", a.temp);
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1], got {}", a.top_p);
    }
    let (loaded, tok) = load(&a.model, &a.rope_compat, a.kv.precision())?;
    let n_ctx = ctx_size(&a.kv, &loaded)?;
    let prompt_ids = if let Some(c) = &a.chat {
        let msgs = [ChatMessage::user(c.clone())];
        tok.encode_chat(&msgs, source_date_epoch()?)?
    } else {
        let text = match (&a.prompt, &a.prompt_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read prompt file {}", f.display()))?,
            (None, None) => {
                bail!("give a prompt with --prompt TEXT, --prompt-file FILE or --chat TEXT")
            }
        };
        // Adds BOS when the vocabulary asks for it; special tokens in the text are recognised.
        tok.encode(&text, true)
    };
    // Chat with a harmony model (gpt-oss): the reply is a sequence of harmony messages.
    let mut harmony = match a.chat {
        Some(_) => HarmonyIds::from_tokenizer(&tok)
            .map(|ids| HarmonyParser::after_prompt(ids, &prompt_ids, &tok)),
        None => None,
    };
    let (kv, _tmp) = model_kv(&a.kv, &loaded, n_ctx, a.batch)?;
    let mut session = Session::new(&*loaded.model, Box::new(kv));
    let params = GenParams {
        max_tokens: a.n,
        sampler: SamplerParams {
            temp: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        prefill_chunk: a.batch,
        ignore_eog: a.ignore_eos,
    };
    let bar = if !a.json && std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(prompt_ids.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "prefill {bar:40} {pos}/{len} tokens {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut progress = |done: usize, _total: usize| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    };
    let stdout = std::io::stdout();
    let json = a.json;
    let show_reasoning = a.show_reasoning;
    let cleared = std::cell::Cell::new(false);
    let clear_bar = || {
        if !cleared.replace(true) {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
        }
    };
    let write_out = |s: &str, is_final: bool| {
        if json || s.is_empty() {
            return;
        }
        if is_final {
            let mut o = stdout.lock();
            let _ = o.write_all(s.as_bytes());
            let _ = o.flush();
        } else if show_reasoning {
            let mut e = std::io::stderr().lock();
            let _ = e.write_all(s.as_bytes());
            let _ = e.flush();
        }
    };
    let plain = harmony.is_none();
    // The channel of the last streamed harmony content (a newline separates messages on stderr).
    let mut last_final: Option<bool> = None;
    let mut on_token = |id: u32| {
        clear_bar();
        let Some(p) = harmony.as_mut() else { return };
        if let Some(d) = p.push_token(&tok, id) {
            let f = d.is_final();
            if last_final == Some(false) && f {
                write_out("\n", false);
            }
            last_final = Some(f);
            write_out(&d.text, f);
        }
    };
    let mut on_text = |s: &str| {
        clear_bar();
        if plain {
            write_out(s, true);
        }
    };
    let g = generate_with(
        &mut session,
        &tok,
        &prompt_ids,
        &params,
        &mut progress,
        &mut on_token,
        &mut on_text,
    )?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let parsed = harmony.map(|p| {
        let (tail, out) = p.finish();
        if let (Some(t), Some(m)) = (tail, out.messages.last()) {
            write_out(&t, m.is_final());
        }
        out
    });
    if let Some(p) = &a.final_logits {
        write_atomic(p, serde_json::to_string(&g.final_logits)?.as_bytes())?;
    }
    if json {
        let t = &g.timings;
        let mut v = json!({
            "prompt_tokens": g.prompt_tokens,
            "tokens": g.tokens,
            "text": g.text,
            "stop_reason": g.stop_reason.as_str(),
            "timings": {"prefill_s": t.prefill_s, "prefill_tok_s": t.prefill_tok_s,
                        "decode_s": t.decode_s, "decode_tok_s": t.decode_tok_s},
            "kv": session.kv().stats().map(|s| kv_json(&s)),
        });
        if let Some(out) = &parsed {
            v["text"] = json!(out.final_text());
            v["reasoning"] = json!(out.reasoning());
            v["messages"] = json!(out
                .messages
                .iter()
                .map(
                    |m| json!({"role": m.role, "channel": m.channel, "recipient": m.recipient,
                                "content_type": m.content_type, "content": m.content,
                                "end": m.end.as_str()})
                )
                .collect::<Vec<_>>());
        }
        println!("{v}");
    } else {
        println!();
        if let Some(out) = &parsed {
            if out.final_text().is_empty() {
                eprintln!(
                    "note: the model gave no final answer (stopped: {}); {}",
                    g.stop_reason.as_str(),
                    if a.show_reasoning {
                        "try a larger -n"
                    } else {
                        "see its reasoning with --show-reasoning, or try a larger -n"
                    }
                );
            }
        }
    }
    if a.stats {
        let t = &g.timings;
        eprintln!(
            "prompt {} tokens in {:.2}s ({:.1} tok/s); generated {} tokens in {:.2}s ({:.1} tok/s); stop: {}",
            g.prompt_tokens.len(),
            t.prefill_s,
            t.prefill_tok_s,
            g.tokens.len(),
            t.decode_s,
            t.decode_tok_s,
            g.stop_reason.as_str()
        );
        if let Some(s) = session.kv().stats() {
            eprint!("{}", kv_table(&s));
        }
    }
    Ok(())
}

/// `SOURCE_DATE_EPOCH` (Unix seconds), the date chat templates' `strftime_now` reports; unset
/// or empty = the clock.
fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse::<i64>().map(Some).with_context(|| {
            format!(
                "SOURCE_DATE_EPOCH={v:?} is not an integer number of seconds since 1970-01-01 UTC"
            )
        }),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("SOURCE_DATE_EPOCH is not valid UTF-8"),
    }
}

fn parse_ids(s: &str, what: &str) -> Result<Vec<u32>> {
    s.split(|c: char| c == ',' || c.is_whitespace() || c == '[' || c == ']')
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>().with_context(|| {
                format!("{what}: '{t}' is not a token id (expected non-negative integers)")
            })
        })
        .collect()
}

fn logits(a: LogitsArgs) -> Result<()> {
    a.kv.validate()?;
    set_threads(a.kv.threads)?;
    let text = std::fs::read_to_string(&a.tokens_file)
        .with_context(|| format!("cannot read --tokens-file {}", a.tokens_file.display()))?;
    let ids: Vec<u32> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected a JSON array of token ids",
            a.tokens_file.display()
        )
    })?;
    if ids.is_empty() {
        bail!("{}: the token list is empty", a.tokens_file.display());
    }
    let path = model_path(&a.model)?;
    let loaded = model::load_opts(&path, a.kv.precision(), rope_rounding(&a.rope_compat))?;
    let n_vocab = loaded.model.n_vocab();
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= n_vocab) {
        bail!(
            "{}: token id {bad} is out of range (vocabulary has {n_vocab})",
            a.tokens_file.display()
        );
    }
    let positions: Vec<usize> = match a.positions.as_str() {
        "all" => (0..ids.len()).collect(),
        "last" => vec![ids.len() - 1],
        s => parse_ids(s, "--positions")?
            .into_iter()
            .map(|p| p as usize)
            .collect(),
    };
    if let Some(p) = positions.iter().find(|&&p| p >= ids.len()) {
        bail!("--positions: {p} is beyond the {} tokens given", ids.len());
    }
    let n_ctx = ctx_size(&a.kv, &loaded)?.max(ids.len());
    let (kv, _tmp) = model_kv(&a.kv, &loaded, n_ctx, a.batch)?;
    let mut session = Session::new(&*loaded.model, Box::new(kv));
    let all = if a.kv.attention == "sparse" {
        // As `run` does: the tokens before the first requested position are a prompt, prefilled
        // densely; from there every position is a decode step (one token, sparse selection).
        let p0 = positions.iter().copied().min().unwrap_or(0);
        let mut all = if p0 > 0 {
            session.prefill(&ids[..p0], a.batch.max(2), LogitsFor::All, &mut |_, _| {})?
        } else {
            Vec::new()
        };
        for &t in &ids[p0..] {
            all.extend_from_slice(session.step(t)?);
        }
        all
    } else {
        session.prefill(&ids, a.batch, LogitsFor::All, &mut |_, _| {})?
    };
    let rows: Vec<&[f32]> = positions
        .iter()
        .map(|&p| &all[p * n_vocab..(p + 1) * n_vocab])
        .collect();
    let v = json!({"n_vocab": n_vocab, "positions": positions, "logits": rows});
    write_atomic(&a.out, v.to_string().as_bytes())?;
    Ok(())
}

/// Write a file via a temporary sibling and rename, so a failure leaves nothing half-written.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().context("--out must name a file")?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let path = model_path(&a.model)?;
    let file = GgufFile::open(&path)?;
    let tok = Tokenizer::from_gguf(&file)?;
    let text = match (&a.text, &a.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read --file {}", f.display()))?,
        (None, None) => bail!("give --text TEXT or --file FILE"),
    };
    let ids = tok.encode(&text, a.special);
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn detokenize(a: DetokenizeArgs) -> Result<()> {
    let path = model_path(&a.model)?;
    let file = GgufFile::open(&path)?;
    let tok = Tokenizer::from_gguf(&file)?;
    let ids = parse_ids(&a.ids, "--ids")?;
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= tok.n_vocab()) {
        bail!(
            "--ids: token id {bad} is out of range (vocabulary has {})",
            tok.n_vocab()
        );
    }
    let bytes = tok.decode(&ids);
    let mut o = std::io::stdout().lock();
    o.write_all(&bytes)?;
    o.write_all(b"\n")?;
    Ok(())
}

fn human(b: f64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < U.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b:.0} B")
    } else {
        format!("{x:.2} {}", U[i])
    }
}

fn rope_json(r: &kvspool::gguf::RopeScaling) -> serde_json::Value {
    use kvspool::gguf::RopeScaling;
    match r {
        RopeScaling::None => json!("none"),
        RopeScaling::Linear { factor } => json!({"type": "linear", "factor": factor}),
        RopeScaling::Yarn {
            factor,
            original_context_length,
            beta_fast,
            beta_slow,
            attn_factor,
        } => json!({
            "type": "yarn", "factor": factor, "original_context_length": original_context_length,
            "beta_fast": beta_fast, "beta_slow": beta_slow, "attn_factor": attn_factor}),
    }
}

/// Hyperparameters as an ordered JSON object (field names follow the config structs).
fn config_summary(cfg: &ModelConfig) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        m.insert(k.to_string(), v);
    };
    put("n_vocab", json!(cfg.n_vocab()));
    put("context_length", json!(cfg.context_length()));
    put("n_embd", json!(cfg.n_embd()));
    put("n_layer", json!(cfg.n_layer()));
    put("n_head", json!(cfg.n_head()));
    put("n_head_kv", json!(cfg.n_head_kv()));
    put("head_dim", json!(cfg.head_dim()));
    match cfg {
        ModelConfig::Llama(c) => {
            put("n_ff", json!(c.n_ff));
            put("rms_eps", json!(c.rms_eps));
            put("rope_freq_base", json!(c.rope_freq_base));
            put("rope_dim", json!(c.rope_dim));
            put("rope_scaling", rope_json(&c.rope_scaling));
        }
        ModelConfig::GptOss(c) => {
            put("n_expert", json!(c.n_expert));
            put("n_expert_used", json!(c.n_expert_used));
            put("n_ff_exp", json!(c.n_ff_exp));
            put("sliding_window", json!(c.sliding_window));
            put("swa_pattern", json!(c.swa_pattern));
            put("rms_eps", json!(c.rms_eps));
            put("rope_freq_base", json!(c.rope_freq_base));
            put("rope_dim", json!(c.rope_dim));
            put("rope_scaling", rope_json(&c.rope_scaling));
            put("attention_scale", json!(c.attention_scale));
        }
    }
    serde_json::Value::Object(m)
}

fn inspect(a: InspectArgs) -> Result<()> {
    if !a.path.exists() {
        bail!("{} does not exist; check the path", a.path.display());
    }
    let file = GgufFile::open(&a.path)?;
    let cfg = ModelConfig::from_gguf(&file)?;
    let mut by_type: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for t in file.tensors() {
        let e = by_type.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    let total: u64 = by_type.values().map(|v| v.1).sum();
    let full = cfg.full_attention_layers();
    let ctxs = [4096usize, 32768, 131072];
    let per_tok_f16 = cfg.kv_bytes_per_token(2.0);
    let per_tok_fp8 = cfg.kv_bytes_per_token(1.0);
    let name = file
        .get("general.name")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    if a.json {
        let v = json!({
            "path": a.path.display().to_string(),
            "file_bytes": file.file_size(),
            "gguf_version": file.version(),
            "architecture": cfg.arch_name(),
            "name": name,
            "config": config_summary(&cfg),
            "n_tensors": file.tensors().len(),
            "tensor_bytes": total,
            "bytes_by_type": by_type.iter().map(|(k, v)| (k.clone(), json!({"tensors": v.0, "bytes": v.1}))).collect::<serde_json::Map<_, _>>(),
            "kv": {
                "full_attention_layers": full,
                "bytes_per_token": {"f16": per_tok_f16, "fp8": per_tok_fp8},
                "bytes_at": ctxs.iter().map(|&c| json!({"ctx": c, "f16": per_tok_f16 * c as f64, "fp8": per_tok_fp8 * c as f64})).collect::<Vec<_>>(),
            }
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "file:          {} ({}, GGUF v{})",
        a.path.display(),
        human(file.file_size() as f64),
        file.version()
    );
    println!(
        "architecture:  {}{}",
        cfg.arch_name(),
        if name.is_empty() {
            String::new()
        } else {
            format!(" ({name})")
        }
    );
    println!("hyperparameters:");
    if let serde_json::Value::Object(m) = config_summary(&cfg) {
        for (k, v) in m {
            println!("  {k:<24} {v}");
        }
    }
    println!(
        "tensors:       {} ({})",
        file.tensors().len(),
        human(total as f64)
    );
    for (k, (n, b)) in &by_type {
        println!(
            "  {k:<8} {n:>5} tensors  {:>12}  {:5.1}%",
            human(*b as f64),
            100.0 * *b as f64 / total.max(1) as f64
        );
    }
    println!(
        "KV cache:      {} full-attention layers of {} ({} KV heads x {} dims)",
        full.len(),
        cfg.n_layer(),
        cfg.n_head_kv(),
        cfg.head_dim()
    );
    println!(
        "  per token      f16 {:>12}   fp8 {:>12}",
        human(per_tok_f16),
        human(per_tok_fp8)
    );
    for c in ctxs {
        println!(
            "  at {:>7} tok f16 {:>12}   fp8 {:>12}",
            c,
            human(per_tok_f16 * c as f64),
            human(per_tok_fp8 * c as f64)
        );
    }
    Ok(())
}

fn plan(a: PlanArgs) -> Result<()> {
    let ram = kvspool::units::parse_size(&a.ram).context("--ram")?;
    if a.block_tokens == 0 {
        bail!("--block-tokens must be at least 1");
    }
    let path = model_path(&a.model)?;
    let file = GgufFile::open(&path)?;
    let cfg = ModelConfig::from_gguf(&file)?;
    let ctx = a.ctx.unwrap_or(cfg.context_length() as u64);
    if ctx == 0 {
        bail!("--ctx must be at least 1");
    }
    let bpv = match a.kv_dtype.as_str() {
        "f32" => 4.0,
        "f16" => 2.0,
        _ => 1.0,
    };
    let input = kvspool::engine::plan::PlanInput {
        ram_bytes: ram,
        ctx,
        kv_bytes_per_value: bpv,
        block_tokens: a.block_tokens,
    };
    let p = kvspool::engine::plan::plan(&file, &cfg, &input);
    if a.json {
        let mut v = serde_json::to_value(&p)?;
        v["flags"] = json!(p.flags(&a.kv_dtype));
        v["model"] = json!(path.display().to_string());
        v["kv_dtype"] = json!(a.kv_dtype);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", p.report(&a.kv_dtype));
    }
    Ok(())
}
