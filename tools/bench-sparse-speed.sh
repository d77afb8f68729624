#!/usr/bin/env bash
# The sparse-speed bar of issue 5 in one command: decode at 128K with a 512 MiB RAM tier and
# `--attention sparse`, against the same engine's 4K-context dense decode, runs alternated
# (4K, then every sparse variant, REPS times) so that a noisy host shifts all of them alike.
#
#   tools/bench-sparse-speed.sh [geometry|model]     (default geometry)
#
#   geometry  `bench decode --geometry gpt-oss-20b` (the attention path alone, synthetic K/V)
#   model     `bench decode --model $MODEL` (the whole random gpt-oss-20b layer stack; make it
#             with tools/make-random-gpt-oss-20b.sh)
#
# Environment: REPS (3), STEPS (64 geometry / 48 model), VARIANTS (the sparse flag sets, `;`
# between them; default: the union budget and union-own, both with the default --prefetch
# auto), MODEL (<cache>/models/gpt-oss-20b-random.gguf), KVSPOOL_BIN (built if unset).
# Prints one line per run, then per configuration the median step, median tok/s and the ratio
# to 4K dense (by median tok/s); raw JSON goes to $OUT/sparse-speed.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-geometry}
CACHE=${KVSPOOL_CACHE:-$HOME/.cache/kvspool}
OUT=${KVSPOOL_BENCH_DIR:-$CACHE/bench-kv}
REPS=${REPS:-3}
VARIANTS=${VARIANTS:-"--sparse-budget-scope union;--sparse-budget-scope union-own"}
mkdir -p "$OUT"
if [[ -z "${KVSPOOL_BIN:-}" ]]; then
  cargo build --release --locked -q
  KVSPOOL_BIN="${CARGO_TARGET_DIR:-target}/release/kvspool"
fi
case "$WHAT" in
  geometry) SRC=(--geometry gpt-oss-20b); STEPS=${STEPS:-64} ;;
  model)
    MODEL=${MODEL:-$CACHE/models/gpt-oss-20b-random.gguf}
    [[ -f "$MODEL" ]] || { echo "error: $MODEL is missing: run tools/make-random-gpt-oss-20b.sh" >&2; exit 1; }
    SRC=(--model "$MODEL"); STEPS=${STEPS:-48} ;;
  *) echo "usage: $0 [geometry|model]" >&2; exit 2 ;;
esac
IFS=';' read -r -a VARS <<< "$VARIANTS"
RES="$(mktemp)"
trap 'rm -f "$RES"' EXIT
run() { # label, flags...
  local label=$1; shift
  local json
  json="$("$KVSPOOL_BIN" bench decode "${SRC[@]}" -n "$STEPS" --kv-ram 512MiB --kv-disk "$OUT" --json "$@")"
  echo "$json" >> "$OUT/sparse-speed.jsonl"
  python3 - "$label" "$json" <<'PY' | tee -a "$RES"
import json, sys
label, r = sys.argv[1], json.loads(sys.argv[2])
t, kv = r["timings"], r["kv"]
sp = kv.get("sparse") or {}
print(json.dumps({"label": label, "step_ms": t["median_step_ms"], "tok_s": t["decode_tok_s"],
                  "hit": kv["hit_rate"], "stall_s": kv["stall_s"],
                  "blocks": sp.get("blocks_read_fraction"), "head_blocks": sp.get("head_blocks_fraction"),
                  "pf_used": (kv.get("prediction") or {}).get("prefetch_used_fraction")}))
PY
}
for rep in $(seq "$REPS"); do
  echo "# rep $rep $(date -u +%H:%M:%S)" >&2
  run "4K dense" --context 4096
  for v in "${VARS[@]}"; do
    read -r -a F <<< "$v"
    run "128K sparse $v" --context 131072 --attention sparse "${F[@]}"
  done
done
python3 - "$RES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
labels = list(dict.fromkeys(r["label"] for r in rows))
med = lambda k, l: statistics.median(r[k] for r in rows if r["label"] == l)
base = med("tok_s", labels[0])
print("\n| configuration | runs | median step ms | median tok/s | vs 4K dense | hit rate | prefetched used | blocks read | head-blocks computed |")
print("|---|---|---|---|---|---|---|---|---|")
for l in labels:
    n = sum(r["label"] == l for r in rows)
    b = [r for r in rows if r["label"] == l][0]
    fr = lambda x: "—" if x is None else f"{x * 100:.1f}%"
    print(f"| {l} | {n} | {med('step_ms', l):.1f} | {med('tok_s', l):.2f} | {med('tok_s', l) / base * 100:.1f}% "
          f"| {med('hit', l) * 100:.1f}% | {fr(b['pf_used'])} | {fr(b['blocks'])} | {fr(b['head_blocks'])} |")
PY
