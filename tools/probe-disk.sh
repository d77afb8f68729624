#!/usr/bin/env bash
# Measure this machine's disk 64 KiB random-read bandwidth with fio (O_DIRECT), as a reference
# for kvspool's out-of-core KV-cache reads.
#
#   tools/probe-disk.sh            # installs fio via apt-get if missing and we are root
#   SIZE=4G RUNTIME=15 DEPTHS="1 8 32" ENGINES="io_uring psync" tools/probe-disk.sh
#
# Test file: $KVSPOOL_CACHE/fio-probe/probe.dat (KVSPOOL_CACHE defaults to ~/.cache/kvspool),
# written once sequentially, then deleted on exit (also on error / Ctrl-C).
# io_uring: one job, iodepth = 1, 8, 32.  psync is synchronous (one I/O in flight per job), so its
# "depth" N is numjobs=N threads each at iodepth 1 (same number of I/Os in flight).
# Each run: bs=64k rw=randread direct=1, ramp 2 s (not counted) + RUNTIME s measured.
# Output: a markdown table on stdout, with the read traffic other processes put on the same
# device during each run (from /proc/diskstats), and the exact fio commands.
set -euo pipefail

CACHE="${KVSPOOL_CACHE:-$HOME/.cache/kvspool}"
DIR="$CACHE/fio-probe"
FILE="$DIR/probe.dat"
SIZE="${SIZE:-4G}"
RUNTIME="${RUNTIME:-15}"
RAMP="${RAMP:-2}"
DEPTHS="${DEPTHS:-1 8 32}"
ENGINES="${ENGINES:-io_uring psync}"

die() { echo "error: $*" >&2; exit 1; }
if ! command -v fio >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing fio (apt-get)" >&2
    { apt-get update -qq && apt-get install -y -qq fio; } >/dev/null || die "apt-get install fio failed"
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    { sudo apt-get update -qq && sudo apt-get install -y -qq fio; } >/dev/null || die "sudo apt-get install fio failed"
  else
    die "fio not found; install it (Debian: apt-get install -y fio)"
  fi
fi
command -v python3 >/dev/null 2>&1 || die "python3 not found (Debian: apt-get install -y python3)"

mkdir -p "$DIR"
need_kb=$(python3 -c "import sys;s=sys.argv[1].upper();m={'K':1,'M':1<<10,'G':1<<20,'T':1<<30};print(int(float(s[:-1])*m[s[-1]]) if s[-1] in m else int(s)//1024)" "$SIZE")
avail_kb=$(df -Pk "$DIR" | awk 'NR==2{print $4}')
[ "$avail_kb" -gt $((need_kb + 1048576)) ] || die "not enough free space in $DIR (need $SIZE + 1 GiB)"

TMPJSON="$(mktemp -d)"
cleanup() { rm -f "$FILE"; rm -rf "$TMPJSON"; rmdir "$DIR" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# Block device behind $DIR (for /proc/diskstats), e.g. /dev/vda -> vda; partitions are fine too.
SRCDEV="$(df -P "$DIR" | awk 'NR==2{print $1}')"
DEV="$(basename "$(readlink -f "$SRCDEV")")"
grep -qw "$DEV" /proc/diskstats || DEV=""
# "sectorsread,sectorswritten" (512-byte units) of $DEV
read_sectors() { if [ -n "$DEV" ]; then awk -v d="$DEV" '$3==d{print $6","$10; exit}' /proc/diskstats; else echo "0,0"; fi; }

echo "laying out $FILE ($SIZE) ..." >&2
LAYOUT=(fio --name=layout --filename="$FILE" --size="$SIZE" --rw=write --bs=1M --direct=1
        --ioengine=psync --end_fsync=1 --output-format=terse)
"${LAYOUT[@]}" >/dev/null

CMDS=()
RESULTS=()
LOAD_BEFORE="$(cat /proc/loadavg)"
for eng in $ENGINES; do
  for d in $DEPTHS; do
    if [ "$eng" = psync ]; then par=(--iodepth=1 --numjobs="$d" --thread); else par=(--iodepth="$d" --numjobs=1); fi
    CMD=(fio --name=randread-"$eng"-"$d" --filename="$FILE" --size="$SIZE" --rw=randread --bs=64k
         --direct=1 --ioengine="$eng" "${par[@]}" --group_reporting --time_based
         --runtime="$RUNTIME" --ramp_time="$RAMP" --randrepeat=0 --norandommap --output-format=json)
    CMDS+=("${CMD[*]}")
    out="$TMPJSON/$eng-$d.json"
    s0=$(read_sectors); t0=$(date +%s.%N)
    if "${CMD[@]}" > "$out" 2> "$out.err"; then
      s1=$(read_sectors); t1=$(date +%s.%N)
      RESULTS+=("$eng $d $out $s0 $s1 $t0 $t1 $(cut -d' ' -f1 /proc/loadavg)")
    else
      echo "warning: fio $eng depth $d failed: $(head -c 300 "$out.err")" >&2
      RESULTS+=("$eng $d FAILED 0,0 0,0 0 0 -")
    fi
  done
done
LOAD_AFTER="$(cat /proc/loadavg)"

python3 - "$RUNTIME" "$RAMP" "${RESULTS[@]}" <<'PY'
import json, sys
runtime, ramp = float(sys.argv[1]), float(sys.argv[2])
print("| engine | in flight (iodepth x jobs) | GB/s | GiB/s | IOPS | clat p50 us | clat p99 us | other reads / writes on device (MB/s) | load1 after |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for rec in sys.argv[3:]:
    eng, d, path, s0, s1, t0, t1, load = rec.split()
    if path == "FAILED":
        print(f"| {eng} | {d} | failed | | | | | | |"); continue
    j = json.load(open(path))
    r = j["jobs"][0]["read"]
    bw = r["bw_bytes"]
    pct = r.get("clat_ns", {}).get("percentile", {})
    p50 = pct.get("50.000000", 0) / 1e3; p99 = pct.get("99.000000", 0) / 1e3
    inflight = f"{d} x 1" if eng != "psync" else f"1 x {d} jobs"
    # fio's own bytes over the whole wall window ~= bw * (runtime) (+ ramp traffic at a similar rate)
    wall = float(t1) - float(t0)
    (r0, w0), (r1, w1) = (map(int, s0.split(","))), (map(int, s1.split(",")))
    # fio's own reads over the window ~= bw * (ramp + runtime); the rest is other processes
    other_r = max(0.0, (r1 - r0) * 512 - bw * (runtime + ramp)) / wall / 1e6 if wall > 0 and r1 else float("nan")
    other_w = (w1 - w0) * 512 / wall / 1e6 if wall > 0 and r1 else float("nan")
    print(f"| {eng} | {inflight} | {bw/1e9:.3f} | {bw/2**30:.3f} | {r['iops']:.0f} | {p50:.0f} | {p99:.0f} | {other_r:.0f} / {other_w:.0f} | {load} |")
PY
echo
echo "layout: ${LAYOUT[*]}"
for c in "${CMDS[@]}"; do echo "command: $c"; done
echo "device: ${DEV:-unknown} (${SRCDEV}); loadavg before: $LOAD_BEFORE; after: $LOAD_AFTER"
