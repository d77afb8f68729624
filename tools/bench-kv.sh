#!/usr/bin/env bash
# KV-engine benchmarks of docs/BENCHMARKS.md: `kvspool bench decode --geometry gpt-oss-20b`
# (attention path alone at GPT-OSS-20B's shape, synthetic K/V, no weights).
#
#   speed       4K / 32K / 128K with everything in RAM and with --kv-ram 512MiB (prefetch on)
#   scan        128K with --kv-ram = 25% of the KV size (384MiB of the 1.5 GiB fp8 cache),
#               prefetch off: default policy (next-use) vs plain LRU; then prefetch on
#
# usage: tools/bench-kv.sh [speed|scan|all]   (default all)
# Prints one markdown row per run and appends the raw JSON to $OUT/results.jsonl.
# The disk tier goes to $KVSPOOL_BENCH_DIR (default <cache>/bench-kv); it needs ~2 GiB free.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
CACHE=${KVSPOOL_CACHE:-$HOME/.cache/kvspool}
OUT=${KVSPOOL_BENCH_DIR:-$CACHE/bench-kv}
mkdir -p "$OUT"
cargo build --release --locked -q
BIN=target/release/kvspool

ROWPY=$(cat <<'PY'
import json, sys
r = json.loads(sys.stdin.read())
kv, t = r["kv"], r["timings"]
gbs = kv["bytes_read"] / t["decode_s"] / 1e9
res = kv["hits"] / max(1, kv["blocks_read"]) * 100
cells = [
    str(r["context"]), sys.argv[1], kv["policy"], "on" if kv["prefetch"] else "off",
    f"{t['decode_tok_s']:.2f}", f"{t['median_step_ms']:.1f}", f"{kv['hit_rate'] * 100:.2f}%",
    f"{res:.2f}%", str(kv["prefetch_hits"]), str(kv["late"]), str(kv["misses"]),
    f"{kv['stall_s']:.3f}", f"{gbs:.2f}", f"{r['page_cache_growth_bytes'] >> 20} MiB",
    f"{r['peak_rss_bytes'] >> 20} MiB", f"{kv['ram_peak_bytes'] >> 20} MiB",
    f"{(kv['pinned_bytes'] + kv['bounds_bytes']) >> 20} MiB", f"{t['fill_s']:.1f}",
]
print("| " + " | ".join(cells) + " |")
PY
)
row() { python3 -c "$ROWPY" "$1"; }

bench() {
  local label=$1; shift
  echo "+ $BIN bench decode --geometry gpt-oss-20b $* --kv-disk $OUT --json" >&2
  "$BIN" bench decode --geometry gpt-oss-20b "$@" --kv-disk "$OUT" --json \
    | tee -a "$OUT/results.jsonl" | row "$label"
}

echo "| context | kv-ram | policy | pf | tok/s | median ms | hit rate | resident hits | pf hits | late | misses | stall s | disk GB/s | page cache | peak RSS | RAM peak | pinned+bounds | fill s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
if [ "$WHAT" = speed ] || [ "$WHAT" = all ]; then
  for ctx in 4096 32768 131072; do
    steps=8; [ "$ctx" = 131072 ] && steps=4
    bench "all" --context "$ctx" -n "$steps"
    bench "512MiB" --context "$ctx" -n "$steps" --kv-ram 512MiB
  done
fi
if [ "$WHAT" = scan ] || [ "$WHAT" = all ]; then
  bench "384MiB" --context 131072 -n 4 --kv-ram 384MiB --prefetch off
  bench "384MiB" --context 131072 -n 4 --kv-ram 384MiB --prefetch off --kv-policy lru
  bench "384MiB" --context 131072 -n 4 --kv-ram 384MiB --prefetch on
fi
