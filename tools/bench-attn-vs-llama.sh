#!/usr/bin/env bash
# All-in-RAM attention of one decode step of one full-attention layer at GPT-OSS-20B's shape
# (1 query token, 64 query heads, 8 KV heads x 64, sinks), kvspool vs llama.cpp's CPU flash
# attention, alternating in the same session (the machine's speed drifts between runs).
#
#   kvspool:   bench decode --geometry gpt-oss-20b --context N --trace: median dur_s of the
#              full-attention layers' attention calls (fp8 and f16 blocks, all resident)
#   llama.cpp: tools/bench-llama-flash-attn.sh harness (llama-fa), F16 and Q8_0 K/V, hot cache
#
# usage: tools/bench-attn-vs-llama.sh [ROUNDS=2]   (needs tools/build-llama-cpp.sh done)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
CACHE=${KVSPOOL_CACHE:-$HOME/.cache/kvspool}
FA="$CACHE/llama.cpp-b11434/build/bin/llama-fa"
[ -x "$FA" ] || { echo "error: $FA missing: run tools/bench-llama-flash-attn.sh once (it builds the harness)" >&2; exit 1; }
cargo build --release --locked -q
BIN=target/release/kvspool
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export LD_LIBRARY_PATH="$CACHE/llama.cpp-b11434/build/bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

ours() { # ctx dtype -> median ms per full-layer attention call
  "$BIN" bench decode --geometry gpt-oss-20b --context "$1" -n 16 --kv-dtype "$2" \
    --kv-disk "$TMP" --trace "$TMP/t.jsonl" --json > /dev/null
  python3 -c '
import json, statistics, sys
d = [json.loads(l) for l in open(sys.argv[1])]
print("%.3f" % (1e3 * statistics.median(x["dur_s"] for x in d if x["layer"] % 2 == 1)))' "$TMP/t.jsonl"
}

theirs() { # ctx type -> median ms per call
  "$FA" --kv "$1" --type "$2" --threads 2 --sinks 1 --cache hot --n-head 64 --n-head-kv 8 \
    --head-dim 64 --min-secs 1.0 --min-reps 10 --max-other 0.3 --retries 2 --retry-wait 5 \
    | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
print("%.3f" % rows[-1]["median_ms"])'
}

echo "| context | round | kvspool fp8 ms | kvspool f16 ms | llama.cpp f16 ms | llama.cpp q8_0 ms | f16/ours-fp8 | f16/ours-f16 |"
echo "|---|---|---|---|---|---|---|---|"
for ctx in 4096 32768; do
  for r in $(seq 1 "$ROUNDS"); do
    a=$(ours "$ctx" fp8); b=$(ours "$ctx" f16)
    c=$(theirs "$ctx" f16); d=$(theirs "$ctx" q8_0)
    python3 -c "import sys; a,b,c,d=map(float,sys.argv[3:]); print(f'| {sys.argv[1]} | {sys.argv[2]} | {a:.2f} | {b:.2f} | {c:.2f} | {d:.2f} | {c/a:.2f} | {c/b:.2f} |')" "$ctx" "$r" "$a" "$b" "$c" "$d"
  done
done
