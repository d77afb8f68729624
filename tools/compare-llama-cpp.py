#!/usr/bin/env python3
"""Compare kvspool with llama.cpp on real prompts, and (re)write the reference fixtures.

  tools/build-llama-cpp.sh                      # once: builds the peer and tools/llama-ref
  tools/compare-llama-cpp.py --write-fixtures   # writes tests/fixtures/reference/*.json
  tools/compare-llama-cpp.py --kvspool target/release/kvspool   # + compares kvspool against them

For each prompt in tools/ref-prompts/*.txt (trailing newlines stripped; special tokens parsed, as
llama.cpp does by default) it records llama.cpp's token ids, the top-K logits at every position of
a teacher-forced pass (F32 KV cache, flash attention off, the whole prompt in one batch) and a
64-token greedy continuation with per-step top-K logits. With --kvspool it runs
`kvspool logits` and `kvspool run --temp 0` on the same ids/text and prints:
top-1 agreement overall and where llama.cpp's top-1/top-2 margin > 0.5, max/mean |delta logit| over
llama.cpp's top-10 ids, and how far the greedy generations agree. Needs only the Python stdlib.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KVSPOOL_CACHE") or Path.home() / ".cache" / "kvspool")
MODELS = Path(os.environ.get("KVSPOOL_MODELS") or CACHE / "models")
BUILD = CACHE / "llama.cpp-b11434" / "build" / "bin"
FIXTURES = REPO / "tests" / "fixtures" / "reference"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def llama_tokenize(model, text):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(text)
        name = f.name
    try:
        out = subprocess.run(
            [str(BUILD / "llama-tokenize"), "-m", str(model), "-f", name, "--ids", "--log-disable"],
            check=True, capture_output=True, text=True,
        ).stdout
    finally:
        os.unlink(name)
    line = [l for l in out.splitlines() if l.startswith("[")][-1]
    return json.loads(line)


def llama_ref(mode, model, ids, top_k, n_steps=0):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ids, f)
        name = f.name
    try:
        args = [str(BUILD / "llama-ref"), mode, str(model), name, str(top_k)]
        if mode == "generate":
            args.append(str(n_steps))
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(name)
    return json.loads(out)


def make_fixture(model, prompt_path, top_k, n_gen):
    text = prompt_path.read_text(encoding="utf-8").rstrip("\n")
    ids = llama_tokenize(model, text)
    lg = llama_ref("logits", model, ids, top_k)
    gen = llama_ref("generate", model, ids, top_k, n_gen)
    return {
        "source": "llama.cpp b11434 via tools/llama-ref (F32 K/V cache, flash attention off, one batch)",
        "model": model.name,
        "model_sha256": sha256(model),
        "prompt_file": f"tools/ref-prompts/{prompt_path.name}",
        "prompt_tokens": ids,
        "top_k": top_k,
        # per position p: llama.cpp's top-K (id, logit) after token p, sorted by logit
        "logits_top": [p["top"] for p in lg["positions"]],
        "greedy_tokens": gen["generated"],
        "greedy_top": [p["top"] for p in gen["positions"]],
    }


def margin(top):
    return top[0][1] - top[1][1]


def compare_logits(fx, rows):
    n = len(fx["logits_top"])
    agree = agree_conf = n_conf = 0
    dmax = dsum = 0.0
    dn = 0
    for p in range(n):
        top = fx["logits_top"][p]
        row = rows[p]
        mine = max(range(len(row)), key=lambda i: (row[i], -i))
        ok = mine == top[0][0]
        agree += ok
        if margin(top) > 0.5:
            n_conf += 1
            agree_conf += ok
        for tid, lv in top[:10]:
            d = abs(row[tid] - lv)
            dmax = max(dmax, d)
            dsum += d
            dn += 1
    return {
        "positions": n,
        "top1_agree": agree / n,
        "top1_agree_confident": agree_conf / max(n_conf, 1),
        "confident_positions": n_conf,
        "max_abs_dlogit_top10": dmax,
        "mean_abs_dlogit_top10": dsum / dn,
    }


def compare_greedy(fx, mine):
    ref = fx["greedy_tokens"]
    first_low = next((i for i, t in enumerate(fx["greedy_top"]) if margin(t) < 0.1), len(ref))
    same = 0
    while same < min(len(ref), len(mine)) and ref[same] == mine[same]:
        same += 1
    return {"matching_prefix": same, "first_low_margin_step": first_low,
            "ok": same >= min(first_low, len(ref))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--kvspool", type=Path, help="kvspool binary to compare")
    ap.add_argument("--write-fixtures", action="store_true")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--precision", default="exact", choices=["exact", "fast"],
                    help="kvspool logits --precision (fast = 8-bit activations like llama.cpp)")
    a = ap.parse_args()
    if not a.model.exists():
        sys.exit(f"error: model {a.model} not found; run tools/fetch-models.sh")
    prompts = sorted((REPO / "tools" / "ref-prompts").glob("*.txt"))
    fixtures = {}
    for p in prompts:
        fpath = FIXTURES / f"smollm2-{p.stem}.json"
        if a.write_fixtures:
            if not (BUILD / "llama-ref").exists():
                sys.exit("error: llama.cpp not built; run tools/build-llama-cpp.sh")
            fx = make_fixture(a.model, p, a.top_k, a.n_gen)
            if len(fx["prompt_tokens"]) < 200:
                sys.exit(f"error: {p.name} has only {len(fx['prompt_tokens'])} tokens; need >= 200")
            FIXTURES.mkdir(parents=True, exist_ok=True)
            tmp = fpath.with_suffix(".tmp")
            tmp.write_text(json.dumps(fx, separators=(",", ":")) + "\n")
            tmp.replace(fpath)
            print(f"wrote {fpath.relative_to(REPO)} ({len(fx['prompt_tokens'])} prompt tokens)")
        fixtures[p] = json.loads(fpath.read_text())
    if not a.kvspool:
        return
    all_ok = True
    tot = {"n": 0, "agree": 0.0, "conf_n": 0, "conf_agree": 0.0, "dmax": 0.0, "dsum": 0.0}
    for p, fx in fixtures.items():
        with tempfile.TemporaryDirectory() as d:
            tf = Path(d) / "tokens.json"
            tf.write_text(json.dumps(fx["prompt_tokens"]))
            out = Path(d) / "logits.json"
            subprocess.run([str(a.kvspool), "logits", "--model", str(a.model), "--tokens-file", str(tf),
                            "--out", str(out), "--precision", a.precision], check=True)
            rows = json.loads(out.read_text())["logits"]
            pf = Path(d) / "prompt.txt"
            pf.write_text(p.read_text(encoding="utf-8").rstrip("\n"), encoding="utf-8")
            run = json.loads(subprocess.run(
                [str(a.kvspool), "run", "--model", str(a.model), "--prompt-file", str(pf), "--temp", "0",
                 "-n", str(len(fx["greedy_tokens"])), "--json"], check=True, capture_output=True, text=True).stdout)
        c = compare_logits(fx, rows)
        if run["prompt_tokens"] != fx["prompt_tokens"]:
            print(f"  {p.name}: kvspool tokenized the prompt differently from llama.cpp")
            all_ok = False
        g = compare_greedy(fx, run["tokens"])
        ok = c["top1_agree"] >= 0.95 and c["top1_agree_confident"] >= 0.99 and g["ok"]
        all_ok &= ok
        tot["n"] += c["positions"]
        tot["agree"] += c["top1_agree"] * c["positions"]
        tot["conf_n"] += c["confident_positions"]
        tot["conf_agree"] += c["top1_agree_confident"] * c["confident_positions"]
        tot["dmax"] = max(tot["dmax"], c["max_abs_dlogit_top10"])
        tot["dsum"] += c["mean_abs_dlogit_top10"] * c["positions"]
        print(f"{p.stem:14} pos {c['positions']:4}  top1 {c['top1_agree']:.4f}  "
              f"top1|margin>0.5 {c['top1_agree_confident']:.4f} ({c['confident_positions']})  "
              f"|dlogit| max {c['max_abs_dlogit_top10']:.4f} mean {c['mean_abs_dlogit_top10']:.4f}  "
              f"greedy {g['matching_prefix']}/{len(fx['greedy_tokens'])} "
              f"(first margin<0.1 at {g['first_low_margin_step']})  {'OK' if ok else 'FAIL'}")
    print(f"{'all':14} pos {tot['n']:4}  top1 {tot['agree'] / tot['n']:.4f}  "
          f"top1|margin>0.5 {tot['conf_agree'] / max(tot['conf_n'], 1):.4f} ({tot['conf_n']})  "
          f"|dlogit| max {tot['dmax']:.4f} mean {tot['dsum'] / tot['n']:.4f}")
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
