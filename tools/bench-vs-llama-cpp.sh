#!/usr/bin/env bash
# Prefill and decode speed of kvspool vs llama.cpp on the same GGUF, measured in one run.
#
#   tools/bench-vs-llama-cpp.sh [MODEL] [REPS]     # default: SmolLM2-135M-Instruct Q4_1, 5 reps
#
# llama.cpp: llama-bench -p 512 -n 128 -t 2 -r REPS (b11434 has no -nr flag; -r is repetitions).
# kvspool:   run --prompt-file P (512 tokens) -n 128 --ignore-eos --temp 0 --threads 2 --json,
#            REPS times; the median of prefill_tok_s and decode_tok_s is reported.
# Both print tokens/s; the table gives kvspool/llama.cpp ratios. Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KVSPOOL_CACHE:-$HOME/.cache/kvspool}"
MODEL="${1:-${KVSPOOL_MODELS:-$CACHE/models}/SmolLM2-135M-Instruct.Q4_1.gguf}"
REPS="${2:-5}"
LB="$CACHE/llama.cpp-b11434/build/bin/llama-bench"
[ -x "$LB" ] || { echo "error: $LB missing; run tools/build-llama-cpp.sh" >&2; exit 1; }
[ -f "$MODEL" ] || { echo "error: $MODEL missing; run tools/fetch-models.sh" >&2; exit 1; }
cargo build --release --quiet
KV=target/release/kvspool
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT

# A 512-token prompt of real text: the reference prompts, cut to 512 tokens.
cat tools/ref-prompts/*.txt > "$tmp/all.txt"
ids="$("$KV" tokenize --model "$MODEL" --file "$tmp/all.txt" | python3 -c 'import json,sys; print(",".join(map(str, json.load(sys.stdin)[:512])))')"
"$KV" detokenize --model "$MODEL" --ids "$ids" > "$tmp/p512.txt"
truncate -s -1 "$tmp/p512.txt"   # detokenize adds a newline

echo "llama.cpp: $LB -m $MODEL -p 512 -n 128 -t 2 -r $REPS -o json"
"$LB" -m "$MODEL" -p 512 -n 128 -t 2 -r "$REPS" -o json > "$tmp/lb.json" 2>/dev/null
for i in $(seq "$REPS"); do
  "$KV" run --model "$MODEL" --prompt-file "$tmp/p512.txt" -n 128 --ignore-eos --temp 0 --threads 2 --json > "$tmp/kv$i.json"
done
echo "kvspool:   $KV run --model $MODEL --prompt-file <512 tokens> -n 128 --ignore-eos --temp 0 --threads 2 --json  (x$REPS)"
python3 - "$tmp" "$REPS" <<'PY'
import json, statistics, sys
tmp, reps = sys.argv[1], int(sys.argv[2])
lb = json.load(open(f"{tmp}/lb.json"))
def lb_ts(kind):
    for t in lb:
        if kind == "pp" and t["n_prompt"] > 0 and t["n_gen"] == 0: return statistics.median(t["samples_ts"])
        if kind == "tg" and t["n_gen"] > 0 and t["n_prompt"] == 0: return statistics.median(t["samples_ts"])
runs = [json.load(open(f"{tmp}/kv{i}.json")) for i in range(1, reps + 1)]
n_prompt = len(runs[0]["prompt_tokens"]); n_gen = len(runs[0]["tokens"])
kp = statistics.median(r["timings"]["prefill_tok_s"] for r in runs)
kd = statistics.median(r["timings"]["decode_tok_s"] for r in runs)
lp, ld = lb_ts("pp"), lb_ts("tg")
print(f"\n| test | llama.cpp tok/s (median of {reps}) | kvspool tok/s (median of {reps}) | kvspool / llama.cpp |")
print("|---|---|---|---|")
print(f"| prefill {n_prompt} tokens | {lp:.1f} | {kp:.1f} | {kp/lp:.2f} |")
print(f"| decode {n_gen} tokens | {ld:.1f} | {kd:.1f} | {kd/ld:.2f} |")
PY
