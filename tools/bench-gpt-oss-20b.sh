#!/usr/bin/env bash
# Decode speed and memory of kvspool on the full-size random-weight GPT-OSS-20B GGUF
# (tools/make-random-gpt-oss-20b.sh), against llama.cpp in the same run where it fits.
#
#   tools/bench-gpt-oss-20b.sh [REPS] [CONTEXTS]      # default: 3 reps, "4096 32768 131072"
#
# kvspool:   bench decode --model M --context N -n 8 --threads 2 --json   (KV filled with synthetic
#            K/V at the model's geometry, then 8 real decode steps through all 24 layers)
#            at 4K with the default budget (every block resident), at 32K and 128K with
#            --kv-ram 512MiB (fp8; most blocks on disk). REPS runs each; medians reported.
# llama.cpp: llama-bench -m M -p 0 -n 8 -d 4096 -t 2 -r REPS (decode after a real 4096-token
#            prefill; b11434's llama-bench has no -nr flag, -r is repetitions). Only at 4K: a
#            32K prefill of the 20b takes llama.cpp tens of minutes on 2 cores, and 128K does not
#            fit its F16 KV next to the weights on a 16 GB machine.
# Memory: peak RSS (weights count: they are mmapped, the pages touched are resident) and the
# page cache growth during decode (the KV disk tier uses O_DIRECT, so it should be ~0).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KVSPOOL_CACHE:-$HOME/.cache/kvspool}"
MODEL="${KVSPOOL_MODELS:-$CACHE/models}/gpt-oss-20b-random.gguf"
REPS="${1:-3}"
CONTEXTS="${2:-4096 32768 131072}"
LB="$CACHE/llama.cpp-b11434/build/bin/llama-bench"
[ -f "$MODEL" ] || { echo "error: $MODEL missing; run tools/make-random-gpt-oss-20b.sh" >&2; exit 1; }
cargo build --release --quiet
KV=target/release/kvspool
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT

for ctx in $CONTEXTS; do
  extra=()
  [ "$ctx" -gt 4096 ] && extra=(--kv-ram 512MiB)
  for i in $(seq "$REPS"); do
    echo "kvspool: $KV bench decode --model $MODEL --context $ctx -n 8 --threads 2 ${extra[*]} --json" >&2
    "$KV" bench decode --model "$MODEL" --context "$ctx" -n 8 --threads 2 "${extra[@]}" --json > "$tmp/kv-$ctx-$i.json"
  done
done
if [ -x "$LB" ] && [[ " $CONTEXTS " == *" 4096 "* ]]; then
  echo "llama.cpp: $LB -m $MODEL -p 0 -n 8 -d 4096 -t 2 -r $REPS -o json" >&2
  "$LB" -m "$MODEL" -p 0 -n 8 -d 4096 -t 2 -r "$REPS" -o json > "$tmp/lb.json" 2>/dev/null
fi
python3 - "$tmp" "$REPS" "$CONTEXTS" <<'PY'
import json, os, statistics, sys
tmp, reps, ctxs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
lb = json.load(open(f"{tmp}/lb.json")) if os.path.exists(f"{tmp}/lb.json") else []
ld = statistics.median(lb[0]["samples_ts"]) if lb else None
gib = 1 << 30
print(f"\n| context | kvspool decode tok/s (median of {reps}) | median step ms | KV dtype / RAM budget | hit rate | KV read per token | peak RSS | page cache growth | llama.cpp tok/s | kvspool / llama.cpp |")
print("|---|---|---|---|---|---|---|---|---|---|")
for c in ctxs:
    runs = [json.load(open(f"{tmp}/kv-{c}-{i}.json")) for i in range(1, reps + 1)]
    ts = statistics.median(r["timings"]["decode_tok_s"] for r in runs)
    st = statistics.median(r["timings"]["median_step_ms"] for r in runs)
    k = runs[0]["kv"]
    rd = statistics.median(r["kv"]["bytes_read"] / r["steps"] for r in runs)
    rss = max(r["peak_rss_bytes"] for r in runs)
    pc = max(r["page_cache_growth_bytes"] for r in runs)
    lc = f"{ld:.2f}" if (ld and c == "4096") else "—"
    ratio = f"{ts/ld:.2f}" if (ld and c == "4096") else "—"
    print(f"| {c} | {ts:.2f} | {st:.0f} | {k['dtype']} / {k['ram_budget_bytes']/gib:.2f} GiB | {100*k['hit_rate']:.1f}% | {rd/2**20:.0f} MiB | {rss/gib:.2f} GiB | {pc/2**20:.0f} MiB | {lc} | {ratio} |")
PY
