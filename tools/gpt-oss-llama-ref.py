#!/usr/bin/env python3
"""llama.cpp's logits on the tiny gpt-oss fixtures, for tests/gpt_oss_reference.rs and the
accuracy comparison in docs/BENCHMARKS.md.

    tools/gpt-oss-llama-ref.py [--settings exact|default|q8kv] [--fixtures DIR]

Runs the peer's C API through tools/llama-ref (built by tools/build-llama-cpp.sh) over each
fixture's golden tokens in one batch and writes every position's full logit row as float32
little-endian to NAME.llamacpp.f32 (settings exact: F32 K/V, flash attention off -- what the
tests compare against) or NAME.llamacpp-default.f32 (llama.cpp's defaults: F16 K/V, flash
attention auto) or NAME.llamacpp-q8kv.f32 (Q8_0 K/V). Needs numpy.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KVSPOOL_CACHE", Path.home() / ".cache" / "kvspool"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default="exact", choices=["exact", "default", "q8kv"])
    ap.add_argument("--fixtures", type=Path, default=REPO / "tests" / "fixtures" / "gpt_oss")
    a = ap.parse_args()
    ref = CACHE / "llama.cpp-b11434" / "build" / "bin" / "llama-ref"
    if not ref.exists():
        sys.exit(f"gpt-oss-llama-ref: {ref} missing: run tools/build-llama-cpp.sh")
    suffix = {"exact": "llamacpp", "default": "llamacpp-default", "q8kv": "llamacpp-q8kv"}[a.settings]
    for gj in sorted(a.fixtures.glob("*.golden.json")):
        if gj.name == "chat.golden.json":
            continue
        g = json.loads(gj.read_text())
        name = gj.name[: -len(".golden.json")]
        tf = a.fixtures / f".{name}.tokens.tmp"
        tf.write_text(json.dumps(g["tokens"]))
        env = dict(os.environ, LLAMA_REF_SETTINGS=a.settings)
        # NAME.gguf and, where it exists, NAME-f32.gguf (the same values stored as F32)
        for model in [name, name + "-f32"]:
            if not (a.fixtures / f"{model}.gguf").exists():
                continue
            r = subprocess.run([str(ref), "logits", str(a.fixtures / f"{model}.gguf"), str(tf),
                                str(g["n_vocab"])], capture_output=True, text=True, env=env)
            if r.returncode != 0 and a.settings == "q8kv" and "does not divide" in r.stderr:
                print(f"{model}: skipped (Q8_0 K/V needs head_dim % 32 == 0)")
                continue
            if r.returncode != 0:
                sys.exit(f"gpt-oss-llama-ref: llama-ref failed on {model}: {r.stderr.strip()[-400:]}")
            out = json.loads(r.stdout)
            n, v = len(g["tokens"]), g["n_vocab"]
            assert out["n_vocab"] == v and len(out["positions"]) == n
            L = np.zeros((n, v), np.float32)
            for p, row in enumerate(out["positions"]):
                for i, x in row["top"]:
                    L[p, i] = x
            (a.fixtures / f"{model}.{suffix}.f32").write_bytes(L.astype("<f4").tobytes())
            H = np.fromfile(a.fixtures / g["logits_file"], dtype="<f4").reshape(n, v)
            d = np.abs(L - H)
            print(f"{model}: llama.cpp ({a.settings}) vs HF golden: max |d| {d.max():.3e}, "
                  f"mean |d| {d.mean():.3e}, argmax agree {(L.argmax(1) == H.argmax(1)).mean():.4f}")
        tf.unlink()


if __name__ == "__main__":
    main()
