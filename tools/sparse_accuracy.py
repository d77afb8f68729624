#!/usr/bin/env python3
"""Helper of tools/sparse-accuracy.sh (needs numpy): compares teacher-forced logits of sparse and
dense attention and writes the tables.

  sparse_accuracy.py dense-npy LOGITS.json OUT.npy
      `kvspool logits` JSON -> float32 array [positions, vocab] (the cached dense reference)
  sparse_accuracy.py metrics --dense D.npy --sparse S.json [--trace T.jsonl --block-tokens B
                             --ctx N] --meta KEY=VALUE ... --out M.json
      mean/max KL(dense || sparse) of the next-token softmax distributions, top-1 agreement, and,
      from the KV trace of the sparse run, the fraction of sealed blocks the decode steps read
      with --tokens T.json: also top-1 accuracy against the text (dense and sparse argmax == the
      next token); with --focus F.json (a JSON list of positions): the same numbers over those
      positions only (focus_*)
  sparse_accuracy.py report RUNS_DIR CSV MD
      every M.json under RUNS_DIR -> one CSV row and one markdown table row each
  sparse_accuracy.py make-aggregation KVSPOOL_BIN TARGET OUT_PREFIX
      the aggregation texts of tools/sparse-aggregation.sh (see there), pre-tokenized:
      OUT_PREFIX.{list,which}.tokens.json and .focus.json
"""

import glob
import json
import os
import random
import subprocess
import sys

import numpy as np


def load_logits(path):
    with open(path) as f:
        d = json.load(f)
    return np.asarray(d["logits"], dtype=np.float32), d["positions"]


def log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def cmd_dense_npy(src, dst):
    a, _ = load_logits(src)
    tmp = dst + ".tmp.npy"
    np.save(tmp, a)
    os.replace(tmp, dst)


def blocks_fraction(trace, bt, ctx, n_pos):
    """Fraction of sealed blocks read by the decode steps (n_tokens == 1) of the sparse run,
    union over the KV heads, summed over layers and steps. Decode step k is position
    ctx - n_pos + k; after its append, (pos + 1) // bt blocks are sealed (the tail being filled
    lives in RAM and is not counted by the trace's blocks_read). Also the fraction of (block, KV
    head) pairs the sparse passes computed (tail blocks included)."""
    steps = {}
    head_att = head_cand = 0
    with open(trace) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r["n_tokens"] != 1:
                continue
            steps.setdefault(r["step"], []).append(r["blocks_read"])
            head_att += r.get("sparse_head_attended", 0)
            head_cand += r.get("sparse_head_candidates", 0)
    order = sorted(steps)
    if len(order) != n_pos:
        raise SystemExit(f"{trace}: {len(order)} decode steps, expected {n_pos}")
    read = cand = 0
    for k, s in enumerate(order):
        pos = ctx - n_pos + k
        read += sum(steps[s])
        cand += len(steps[s]) * ((pos + 1) // bt)
    frac = read / cand if cand else float("nan")
    return frac, (head_att / head_cand if head_cand else float("nan"))


# Dense top-1 vs top-2 logit gap (nats) under which a position counts as a near tie.
TIE_MARGIN = 0.1


def cmd_metrics(args):
    opts = {"meta": {}}
    i = 0
    while i < len(args):
        k = args[i]
        if k == "--meta":
            key, _, val = args[i + 1].partition("=")
            opts["meta"][key] = val
        else:
            opts[k.lstrip("-").replace("-", "_")] = args[i + 1]
        i += 2
    d = np.load(opts["dense"])
    s, positions = load_logits(opts["sparse"])
    if d.shape != s.shape:
        raise SystemExit(f"shape mismatch: dense {d.shape} vs sparse {s.shape}")
    ld, ls = log_softmax(d), log_softmax(s)
    kl = (np.exp(ld) * (ld - ls)).sum(axis=-1)
    da, sa = d.argmax(axis=-1), s.argmax(axis=-1)
    top2 = np.sort(d, axis=-1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    m = dict(opts["meta"])

    def stats(prefix, idx):
        k = kl[idx]
        m[prefix + "n_positions"] = int(len(k))
        m[prefix + "mean_kl"] = float(k.mean())
        m[prefix + "max_kl"] = float(k.max())
        m[prefix + "p95_kl"] = float(np.percentile(k, 95))
        m[prefix + "top1_agreement"] = float((da[idx] == sa[idx]).mean())
        # Near ties: dense's top two logits closer than TIE_MARGIN; any perturbation may swap
        # them, so top-1 agreement is also reported over the decisive positions only.
        decisive = margin[idx] >= TIE_MARGIN
        m[prefix + "near_ties"] = int((~decisive).sum())
        if decisive.any():
            m[prefix + "decisive_top1_agreement"] = float((da[idx][decisive] == sa[idx][decisive]).mean())
        # Where the top token differs: the position and dense's top-1/top-2 gap there (how
        # close a tie each flip was).
        flips = [i for i in idx if da[i] != sa[i]]
        m[prefix + "flips"] = [[int(positions[i]), round(float(margin[i]), 4)] for i in flips]
        if "tokens" in opts:
            with open(opts["tokens"]) as f:
                toks = json.load(f)
            nxt = np.array([toks[positions[i] + 1] if positions[i] + 1 < len(toks) else -1 for i in idx])
            ok = nxt >= 0
            if ok.any():
                m[prefix + "dense_acc"] = float((da[idx][ok] == nxt[ok]).mean())
                m[prefix + "sparse_acc"] = float((sa[idx][ok] == nxt[ok]).mean())

    stats("", np.arange(len(positions)))
    if opts.get("focus"):
        with open(opts["focus"]) as f:
            focus = set(json.load(f))
        idx = np.array([i for i, p in enumerate(positions) if p in focus], dtype=int)
        if len(idx):
            stats("focus_", idx)
    if opts.get("trace"):
        m["blocks_read_fraction"], m["head_blocks_fraction"] = blocks_fraction(
            opts["trace"], int(opts["block_tokens"]), int(opts["ctx"]), len(positions)
        )
    tmp = opts["out"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(m, f, indent=1, sort_keys=True)
    os.replace(tmp, opts["out"])


COLS = [
    "label",
    "text",
    "ctx",
    "block_tokens",
    "budget",
    "budget_tokens",
    "mass",
    "mean_kl",
    "max_kl",
    "p95_kl",
    "top1_agreement",
    "near_ties",
    "decisive_top1_agreement",
    "dense_acc",
    "sparse_acc",
    "focus_n_positions",
    "focus_mean_kl",
    "focus_max_kl",
    "focus_top1_agreement",
    "focus_dense_acc",
    "focus_sparse_acc",
    "blocks_read_fraction",
    "head_blocks_fraction",
    "wall_s",
    "flags",
]


def fmt(k, v):
    if v is None or v == "":
        return ""
    if k.endswith("_kl"):
        return f"{float(v):.4f}"
    if k.endswith(("top1_agreement", "_acc", "_fraction")):
        return f"{100 * float(v):.1f}%"
    if k == "wall_s":
        return f"{float(v):.0f}"
    return str(v)


def cmd_report(runs, csv_path, md_path):
    rows = []
    for p in glob.glob(os.path.join(runs, "*.json")):
        with open(p) as f:
            rows.append(json.load(f))

    def num(v, default):
        try:
            return float(v)
        except (TypeError, ValueError):
            return default

    def key(r):
        dense_step = r.get("budget") in ("dense-step", "dense-reorder", "dense-fp8")
        return (
            r.get("label", ""),
            r.get("text", ""),
            int(r.get("ctx", 0)),
            int(r.get("block_tokens", 0)),
            dense_step,
            -num(r.get("mass"), 0.0),
            num(r.get("budget_tokens"), 0.0),
        )

    rows.sort(key=key)
    with open(csv_path + ".tmp", "w") as f:
        f.write(",".join(COLS) + "\n")
        for r in rows:
            vals = [str(r.get(c, "")) for c in COLS]
            f.write(",".join('"' + v.replace('"', '""') + '"' if "," in v or " " in v else v for v in vals) + "\n")
    os.replace(csv_path + ".tmp", csv_path)
    # Columns no row has are left out of the markdown table.
    md_cols = [c for c in COLS[:-1] if any(r.get(c) not in (None, "") for r in rows)]
    with open(md_path + ".tmp", "w") as f:
        f.write("| " + " | ".join(md_cols) + " |\n")
        f.write("|" + "---|" * len(md_cols) + "\n")
        for r in rows:
            f.write("| " + " | ".join(fmt(c, r.get(c)) for c in md_cols) + " |\n")
        pooled = {}
        for r in rows:
            n = int(r.get("n_positions", 0) or 0)
            if not n or r.get("top1_agreement") in (None, ""):
                continue
            k = (r.get("label", ""), int(r.get("ctx", 0)), r.get("budget", ""), r.get("mass", ""), r.get("flags", ""))
            p = pooled.setdefault(k, [0, 0, 0.0, 0, 0, []])
            ties = int(r.get("near_ties", 0) or 0)
            p[0] += n
            p[1] += round(float(r["top1_agreement"]) * n)
            p[2] += float(r["mean_kl"]) * n
            if r.get("decisive_top1_agreement") not in (None, ""):
                p[3] += n - ties
                p[4] += round(float(r["decisive_top1_agreement"]) * (n - ties))
            p[5].append(r.get("text", ""))
        f.write("\npooled per label, context, budget and mass (positions of all its texts):\n\n")
        f.write("| label | ctx | budget | mass | texts | positions | mean_kl | top1_agreement | decisive_top1_agreement |\n")
        f.write("|---|---|---|---|---|---|---|---|---|\n")
        for (label, ctx, budget, mass, _), p in sorted(pooled.items(), key=lambda kv: kv[0][:2]):
            dec = f"{100 * p[4] / p[3]:.1f}% ({p[4]}/{p[3]})" if p[3] else ""
            f.write(
                f"| {label} | {ctx} | {budget} | {mass} | {' '.join(p[5])} | {p[0]} | {p[2] / p[0]:.4f} | "
                f"{100 * p[1] / p[0]:.1f}% ({p[1]}/{p[0]}) | {dec} |\n"
            )
        flags = sorted({r.get("flags", "") for r in rows})
        f.write("\nflags of the sparse runs (besides text/ctx/budget/mass/block size): ")
        f.write("; ".join(f"`{x}`" if x else "(none)" for x in flags) + "\n")
    os.replace(md_path + ".tmp", md_path)
    sys.stdout.write(open(md_path).read())


COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
AGG_INTRO = (
    "Below is an inventory of 40 items hidden in a long text. Each item has a colour. "
    "Read it carefully: you will be asked about the colours of the items."
)
AGG_FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def cmd_make_aggregation(binary, target, prefix):
    """Two teacher-forced tasks over one document: 40 lines "The colour of item N is C." spread
    evenly through the classic filler, about TARGET tokens in all with the answer.
      list:  "Question: what is the colour of each item, from item 1 to item 40?" and the answer
             "The colour of item 1 is C1." ... (40 lines); focus = the positions that predict a
             colour (each needs a different line of the document)
      which: "Question: which items are red?" and "Item N is red." for every red item;
             focus = the positions that predict an item number's first digit (each needs the
             next red line: the selection must follow many blocks)"""
    target = int(target)
    rnd = random.Random(5)
    colours = [rnd.choice(COLOURS) for _ in range(40)]
    cache = {}

    def tok(text):
        if text not in cache:
            out = subprocess.run([binary, "tokenize", "--text", text], check=True, capture_output=True, text=True)
            cache[text] = json.loads(out.stdout)
        return list(cache[text])

    def line(n, c, lead="\nThe colour of item"):
        # -> tokens, offset of the colour token within them
        head = tok(lead) + tok(f" {n}") + tok(" is")
        return head + tok(f" {c}") + tok("."), len(head)

    item_lines = [line(n + 1, c)[0] for n, c in enumerate(colours)]
    filler = tok(AGG_FILLER)
    tasks = {}
    q_list = tok("\n\nQuestion: what is the colour of each item, from item 1 to item 40?\nAnswer:")
    ans, focus_off = [], []
    for n, c in enumerate(colours):
        t, off = line(n + 1, c)
        focus_off.append(len(ans) + off - 1)
        ans += t
    tasks["list"] = (q_list, ans, focus_off)
    q_which = tok("\n\nQuestion: which items are red?\nAnswer:")
    ans, focus_off = [], []
    for n, c in enumerate(colours):
        if c == "red":
            t = tok("\nItem") + tok(f" {n + 1}") + tok(" is red.")
            focus_off.append(len(ans) + len(tok("\nItem")) + len(tok(" ")) - 1)
            ans += t
    tasks["which"] = (q_which, ans, focus_off)
    intro = tok(AGG_INTRO)
    for name, (q, ans, focus_off) in tasks.items():
        room = target - len(intro) - sum(map(len, item_lines)) - len(q) - len(ans)
        n_units = room // len(filler)
        doc = list(intro)
        for i, il in enumerate(item_lines):
            # filler units before line i: evenly spread, none after the last line's share
            units = (n_units * (i + 1)) // len(item_lines) - (n_units * i) // len(item_lines)
            for _ in range(units):
                doc += filler
            doc += il
        toks = doc + q + ans
        start = len(doc) + len(q)
        focus = [start + o for o in focus_off]
        with open(f"{prefix}.{name}.tokens.json", "w") as f:
            json.dump(toks, f)
        with open(f"{prefix}.{name}.focus.json", "w") as f:
            json.dump(focus, f)
        with open(f"{prefix}.{name}.tail", "w") as f:
            f.write(f"{len(ans) + 1}\n")
        print(f"{name}: {len(toks)} tokens, answer {len(ans)} tokens, {len(focus)} focus positions", file=sys.stderr)


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "dense-npy":
        cmd_dense_npy(*rest)
    elif cmd == "metrics":
        cmd_metrics(rest)
    elif cmd == "make-aggregation":
        cmd_make_aggregation(*rest)
    elif cmd == "report":
        cmd_report(*rest)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
