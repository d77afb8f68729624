#!/usr/bin/env bash
# Tiering is exact: run SmolLM2 greedy on the 2,038-token prompt for every combination of
# --kv-ram (64KiB, 1MiB, 1GiB) x --kv-backend (pread, uring, mmap) x --prefetch (on, off), per
# --kv-dtype, and check that the generated tokens and the final logits are bit-identical within
# each dtype. Also checks ram_peak_bytes <= --kv-ram and prints one line per run.
#
# usage: tools/check-tiering-exact.sh [N_NEW=64]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-64}
BIN=target/release/kvspool
cargo build --release --locked -q
PROMPT=tests/fixtures/prompts/long-2k.txt
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
fail=0
for dtype in f32 f16 fp8; do
  ref=""
  for ram in 1GiB 1MiB 64KiB; do
    for backend in uring pread mmap; do
      for prefetch in on off; do
        tag="$dtype-$ram-$backend-$prefetch"
        "$BIN" run --prompt-file "$PROMPT" -n "$N" --temp 0 --ignore-eos --ctx 2200 \
          --kv-dtype "$dtype" --kv-ram "$ram" --kv-backend "$backend" --prefetch "$prefetch" \
          --json --final-logits "$OUT/$tag.logits.json" > "$OUT/$tag.json"
        python3 - "$OUT" "$tag" "$ram" "${ref:-$tag}" <<'EOF' || fail=1
import json, sys
out, tag, ram, ref = sys.argv[1:5]
units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
budget = int(ram[:-3]) * units[ram[-3:]]
r = json.load(open(f"{out}/{tag}.json"))
kv = r["kv"]
ok = kv["ram_peak_bytes"] <= budget
same = True
if ref != tag:
    a = json.load(open(f"{out}/{ref}.json"))
    same = a["tokens"] == r["tokens"] and open(f"{out}/{ref}.logits.json").read() == open(f"{out}/{tag}.logits.json").read()
print(f"{tag:24} tokens={'same' if same else 'DIFFERENT'} peak={kv['ram_peak_bytes']:>10} "
      f"hit_rate={kv['hit_rate']:.3f} read={kv['bytes_read'] >> 20:>6}MiB stall={kv['stall_s']:.2f}s "
      f"prefill={r['timings']['prefill_tok_s']:.0f}tok/s decode={r['timings']['decode_tok_s']:.1f}tok/s"
      + ("" if ok else "  RAM PEAK OVER BUDGET"))
sys.exit(0 if same and ok else 1)
EOF
        ref=${ref:-$tag}
      done
    done
  done
done
if [ "$fail" = 0 ]; then echo "all runs bit-identical within each dtype"; else echo "MISMATCH"; exit 1; fi
