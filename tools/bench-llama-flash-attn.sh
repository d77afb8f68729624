#!/usr/bin/env bash
# Time llama.cpp's CPU flash attention (ggml GGML_OP_FLASH_ATTN_EXT) for ONE decode step at
# GPT-OSS-20B's attention shape, for comparison with kvspool's attention kernel.
#
#   tools/bench-llama-flash-attn.sh                 # defaults below; prints a markdown table
#   KVS=4096 TYPES=f16 THREADS=2 tools/bench-llama-flash-attn.sh
#
# Shape: 1 query token, 64 query heads, 8 KV heads (GQA 8), head_dim 64, F32 Q, scale 1/8,
# F16 zero mask (as llama.cpp passes), K/V as views of a [512, n_kv] KV-cache tensor (llama.cpp's
# layout), with/without attention sinks (ggml_flash_attn_ext_add_sinks).
#
# Environment (comma-separated lists):
#   KVS=4096,32768,131072  TYPES=f16,q8_0  THREADS=2,1  SINKS=1,0  CACHE_MODES=hot,cold
#   MIN_SECS=1.0 (timed seconds per configuration, at least MIN_REPS=10 calls)  EXTRA_ARGS=...
#   MAX_OTHER=0.2 RETRIES=3 RETRY_WAIT=15: a configuration during which other processes kept more
#   than MAX_OTHER cores busy is re-timed after RETRY_WAIT s, up to RETRIES times (the machine has
#   2 cores, so a concurrent build or benchmark distorts the numbers badly).
#   "hot": same K/V re-run back to back; "cold": cycles copies totalling >= 96 MiB (> 32 MiB L3).
#
# Needs the llama.cpp build from tools/build-llama-cpp.sh (links its libggml*.so). The harness
# tools/llama-fa/llama-fa.cpp is compiled into that build's bin/ (never into the repo).
# Output: markdown table on stdout; raw JSON lines kept in $KVSPOOL_CACHE/bench-llama-fa/.
set -euo pipefail

VERSION=11434
CACHE="${KVSPOOL_CACHE:-$HOME/.cache/kvspool}"
ROOT="$CACHE/llama.cpp-b$VERSION"
SRC="$ROOT/src"
BUILD="$ROOT/build"
HERE="$(cd "$(dirname "$0")" && pwd)"
HARNESS_SRC="$HERE/llama-fa/llama-fa.cpp"
BIN="$BUILD/bin/llama-fa"

KVS="${KVS:-4096,32768,131072}"
TYPES="${TYPES:-f16,q8_0}"
THREADS="${THREADS:-2,1}"
SINKS="${SINKS:-1,0}"
CACHE_MODES="${CACHE_MODES:-hot,cold}"
MIN_SECS="${MIN_SECS:-1.0}"
MIN_REPS="${MIN_REPS:-10}"
MAX_OTHER="${MAX_OTHER:-0.2}"
RETRIES="${RETRIES:-3}"
RETRY_WAIT="${RETRY_WAIT:-15}"
EXTRA_ARGS="${EXTRA_ARGS:-}"

die() { echo "error: $*" >&2; exit 1; }
command -v g++ >/dev/null 2>&1 || die "g++ not found (Debian: apt-get install -y g++)"
command -v python3 >/dev/null 2>&1 || die "python3 not found (Debian: apt-get install -y python3)"
[ -f "$HARNESS_SRC" ] || die "missing $HARNESS_SRC"
for f in "$SRC/ggml/include/ggml.h" "$SRC/ggml/include/ggml-cpu.h" \
         "$BUILD/bin/libggml.so" "$BUILD/bin/libggml-base.so" "$BUILD/bin/libggml-cpu.so"; do
  [ -e "$f" ] || die "llama.cpp b$VERSION build not found ($f missing); run tools/build-llama-cpp.sh first"
done

# GCC 12 miscompiles ggml's AMX kernels: keep AMX off for anything we compile (as build-llama-cpp.sh).
NOAMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
if [ ! -x "$BIN" ] || [ "$HARNESS_SRC" -nt "$BIN" ] || [ "$BUILD/bin/libggml-cpu.so" -nt "$BIN" ]; then
  echo "building $BIN" >&2
  g++ -O2 -std=c++17 $NOAMX -o "$BIN.tmp" "$HARNESS_SRC" \
    -I "$SRC/ggml/include" -L "$BUILD/bin" -lggml -lggml-cpu -lggml-base \
    -Wl,-rpath,"$BUILD/bin"
  mv "$BIN.tmp" "$BIN"
fi

OUTDIR="$CACHE/bench-llama-fa"
mkdir -p "$OUTDIR"
OUT="$OUTDIR/$(date +%Y%m%d-%H%M%S).jsonl"
CMD=("$BIN" --kv "$KVS" --type "$TYPES" --threads "$THREADS" --sinks "$SINKS" --cache "$CACHE_MODES"
     --n-head 64 --n-head-kv 8 --head-dim 64 --min-secs "$MIN_SECS" --min-reps "$MIN_REPS"
     --max-other "$MAX_OTHER" --retries "$RETRIES" --retry-wait "$RETRY_WAIT")
# shellcheck disable=SC2206
[ -n "$EXTRA_ARGS" ] && CMD+=($EXTRA_ARGS)

LOAD_BEFORE="$(cat /proc/loadavg)"
T0=$(date +%s)
"${CMD[@]}" > "$OUT"
T1=$(date +%s)
LOAD_AFTER="$(cat /proc/loadavg)"

python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if not rows:
    sys.exit("error: harness produced no results")
print("| shape (q heads/kv heads/head_dim) | kv length | K/V dtype | sinks | cache | threads | median ms | min ms | K+V GB/s @median | other procs (cores busy) | max abs err | reps |")
print("|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| 1x{r['n_head']}/{r['n_head_kv']}/{r['head_dim']} | {r['n_kv']} | {r['type_kv']} | "
          f"{'yes' if r['sinks'] else 'no'} | {r['cache']}{'' if r['copies'] == 1 else ' (x%d)' % r['copies']} | "
          f"{r['threads']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | {r['kv_gbps_at_median']:.1f} | "
          f"{r['other_cores_busy']:.2f}{' (perturbed)' if r['other_cores_busy'] > 0.2 else ''}"
          f"{'' if r.get('attempts', 1) == 1 else ' [try %d]' % r['attempts']} | "
          f"{r['max_abs_err']:.2g} | {r['reps']} |")
paths = sorted({(r['type_kv'], r['path']) for r in rows})
print()
print("K+V GB/s = bytes of the K and V views / median time (each K/V row is streamed once per query head")
print("of its GQA group by ggml, so actual traffic is higher). 'other procs' = cores kept busy by other")
print("processes during the timed loop (from /proc/stat minus this process); > 0.2 marks the row perturbed;")
print("[try N]: the row was re-timed N-1 times because earlier tries were perturbed.")
for t, p in paths:
    print(f"- ggml path for {t}: {p}")
PY
echo
echo "command: ${CMD[*]}"
echo "raw results: $OUT"
echo "loadavg before: $LOAD_BEFORE"
echo "loadavg after:  $LOAD_AFTER"
echo "wall time: $((T1 - T0)) s"
