#!/usr/bin/env bash
# Accuracy of sparse attention against dense on real text: KL(dense || sparse) vs budget.
#
#   tools/sparse-accuracy.sh [SPARSE_FLAG ...]
#
# For every text in TEXTS and context N in CONTEXTS (skipped where the text is shorter than N
# tokens): the first N tokens of the text, teacher-forced logits of the last TAIL positions with
# `kvspool logits`, dense (cached per text/context/block size/COMMON_FLAGS) and sparse
# (`--attention sparse`: dense prefill up to the first requested position, then one decode step
# per position) for every budget in BUDGETS and mass in MASSES, plus two noise-floor runs:
# "dense-step" (`--attention sparse --sparse-budget N`: the same decode loop, every pass dense
# because the budget covers the context — decoding vs prefill; bit-identical, so 0) and "dense-reorder" (the same, with
# blocks of BLOCK_TOKENS/2: dense attention summed in another order, outputs equal up to f32
# rounding — what any change that is exact in real arithmetic costs; with the default fast
# precision, whose 8-bit activation rounding amplifies such differences, this floor is far from
# 0: compare sparse runs against it, or measure with COMMON_FLAGS="--precision exact").
# Per run: mean / max / p95 KL(dense || sparse) of the next-token softmax distributions, top-1
# agreement (also over the "decisive" positions only, where dense's top two logits differ by at
# least 0.1, and how many near ties there were), the fraction of sealed KV blocks the decode
# steps read (union over KV heads, from the run's --trace), the fraction of (block, KV head)
# pairs they computed, and the run's wall time. results.md ends with the runs pooled per label
# and context.
#
# Every kvspool run gets `--ctx N`: the cache sized to the context measured, as a job of N tokens
# would size it (`--sparse-unit auto` picks its unit from the cache's size).
#
# Arguments are extra kvspool flags for the sparse runs only (e.g. `--sparse-group max`), so any
# selection variant can be measured; give each variant its own LABEL. Environment:
#   TEXTS         "GPL-3 argparse typing"  names: GPL-3 Apache-2.0 MPL-2.0 GFDL-1.3
#                 (/usr/share/common-licenses), argparse typing difflib (/usr/lib/python3.11/NAME.py),
#                 licenses (GPL-3 + GFDL-1.3 + MPL-2.0 + Apache-2.0 concatenated, blank line
#                 between: 18.7K tokens), a path to any text file, or a path ending in
#                 .tokens.json: token ids already (with optional siblings NAME.focus.json, a JSON
#                 list of positions also reported on their own as focus_*, and NAME.tail, the
#                 number of final positions to compare instead of TAIL)
#   CONTEXTS      "2048 4096 8192"         token counts, or "full" (the whole text)
#   BUDGETS       "5% 10% 12.5% 25%"       a percentage of the context or a token count
#                                          (none: only the NOISE runs)
#   MASSES        "1.0 0.95"               --sparse-mass values (1.0 = the budget alone decides)
#   BLOCK_TOKENS  16                       --block-tokens (dense and sparse)
#   KV_DTYPE      f16                      --kv-dtype (dense and sparse)
#   TAIL          64                       positions compared (the last TAIL of each context)
#   COMMON_FLAGS  ""                       extra kvspool flags for dense and sparse runs
#   LABEL         default                  names the variant in the tables
#   NOISE         1                        0: skip the dense-step and dense-reorder runs; or a
#                                          list of them, and/or dense-fp8 (dense attention on an
#                                          fp8 KV cache: what the KV format alone costs) and
#                                          dense-f32 (on an f32 KV cache: what the f16 reference's
#                                          own rounding moves)
#   OUT           $KVSPOOL_CACHE/tmp/sparse-accuracy   output dir (results.csv, results.md)
#   KVSPOOL_BIN   (built with cargo build --release)   the kvspool binary to measure
#   PYTHON        $KVSPOOL_CACHE/venv-tools/bin/python if it has numpy, else python3
#
# Resumable: dense logits are cached in OUT/dense/, every finished sparse run leaves
# OUT/runs/KEY.json (KEY hashes label, text, context, budget, mass, block size, dtype, flags and
# the kvspool binary's sha256, so a rebuilt binary is measured again); rerunning skips what is
# done. results.csv / results.md cover every run in OUT/runs (all labels).
set -euo pipefail
cd "$(dirname "$0")/.."
SPARSE_FLAGS=("$@")

CACHE="${KVSPOOL_CACHE:-$HOME/.cache/kvspool}"
TEXTS="${TEXTS:-GPL-3 argparse typing}"
CONTEXTS="${CONTEXTS:-2048 4096 8192}"
BUDGETS="${BUDGETS:-5% 10% 12.5% 25%}"
MASSES="${MASSES:-1.0 0.95}"
BLOCK_TOKENS="${BLOCK_TOKENS:-16}"
KV_DTYPE="${KV_DTYPE:-f16}"
TAIL="${TAIL:-64}"
COMMON_FLAGS="${COMMON_FLAGS:-}"
LABEL="${LABEL:-default}"
NOISE="${NOISE:-1}"
OUT="${OUT:-$CACHE/tmp/sparse-accuracy}"
read -r -a COMMON <<< "$COMMON_FLAGS"

if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python3
  if [[ -x "$CACHE/venv-tools/bin/python" ]] && "$CACHE/venv-tools/bin/python" -c 'import numpy' 2>/dev/null; then
    PYTHON="$CACHE/venv-tools/bin/python"
  fi
fi
"$PYTHON" -c 'import numpy' 2>/dev/null || {
  echo "error: $PYTHON has no numpy: pip install numpy into it, or set PYTHON" >&2
  exit 1
}
HELPER=tools/sparse_accuracy.py

if [[ -z "${KVSPOOL_BIN:-}" ]]; then
  cargo build --release --locked -q
  KVSPOOL_BIN="${CARGO_TARGET_DIR:-target}/release/kvspool"
fi
[[ -x "$KVSPOOL_BIN" ]] || { echo "error: $KVSPOOL_BIN is not executable" >&2; exit 1; }
BIN_SHA="$(sha256sum "$KVSPOOL_BIN" | cut -c1-16)"

mkdir -p "$OUT"/{texts,tokens,dense,runs,work}
WORK="$(mktemp -d "$OUT/work/run.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

text_file() { # NAME -> path of the text
  local n="$1"
  case "$n" in
    GPL-3 | Apache-2.0 | MPL-2.0 | GFDL-1.3) echo "/usr/share/common-licenses/$n" ;;
    argparse | typing | difflib) echo "/usr/lib/python3.11/$n.py" ;;
    licenses)
      local f="$OUT/texts/licenses.txt"
      if [[ ! -s "$f" ]]; then
        local first=1
        for l in GPL-3 GFDL-1.3 MPL-2.0 Apache-2.0; do
          [[ $first == 1 ]] || printf '\n\n'
          cat "/usr/share/common-licenses/$l"
          first=0
        done > "$f.tmp"
        mv "$f.tmp" "$f"
      fi
      echo "$f"
      ;;
    *) [[ -f "$n" ]] && echo "$n" || { echo "error: unknown text $n" >&2; exit 1; } ;;
  esac
}

tokens_of() { # NAME -> path of its token ids (JSON)
  local name="$1" f id
  if [[ "$name" == *.tokens.json ]]; then
    echo "$name"
    return
  fi
  f="$(text_file "$name")"
  id="$(basename "$name")"
  if [[ ! -s "$OUT/tokens/$id.json" ]]; then
    "$KVSPOOL_BIN" tokenize --file "$f" > "$OUT/tokens/$id.json.tmp"
    mv "$OUT/tokens/$id.json.tmp" "$OUT/tokens/$id.json"
  fi
  echo "$OUT/tokens/$id.json"
}

budget_tokens() { # BUDGET CTX -> tokens
  case "$1" in
    *%) "$PYTHON" -c 'import sys; print(round(float(sys.argv[1][:-1]) / 100 * int(sys.argv[2])))' "$1" "$2" ;;
    *) echo "$1" ;;
  esac
}

timed() { # run a command, print its wall seconds
  local t0 t1
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  "$PYTHON" -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$t0" "$t1"
}

base=(--kv-dtype "$KV_DTYPE" --block-tokens "$BLOCK_TOKENS" "${COMMON[@]}")

for text in $TEXTS; do
  toks="$(tokens_of "$text")"
  tname="$(basename "$text" .tokens.json)"
  tail_n=$TAIL
  focus=()
  if [[ "$text" == *.tokens.json ]]; then
    [[ -f "${text%.tokens.json}.tail" ]] && tail_n=$(cat "${text%.tokens.json}.tail")
    [[ -f "${text%.tokens.json}.focus.json" ]] && focus=(--focus "${text%.tokens.json}.focus.json")
  fi
  n_text=$("$PYTHON" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$toks")
  for ctx in $CONTEXTS; do
    [[ "$ctx" == full ]] && ctx=$n_text
    if (( n_text < ctx )); then
      echo "skip: $tname has $n_text tokens < $ctx" >&2
      continue
    fi
    cut="$WORK/$tname.$ctx.json"
    "$PYTHON" -c 'import json, sys; json.dump(json.load(open(sys.argv[1]))[:int(sys.argv[2])], open(sys.argv[3], "w"))' "$toks" "$ctx" "$cut"
    positions=$(seq -s, $((ctx - tail_n)) $((ctx - 1)))
    # The cache is sized to the context measured (`--ctx`), as a job of that many tokens would
    # size it: `--sparse-unit auto` picks its unit from it.
    cbase=("${base[@]}" --ctx "$ctx")
    dkey="$(printf '%s|' "$tname" "$ctx" "$tail_n" "$(sha256sum < "$cut")" "${cbase[@]}" | sha256sum | cut -c1-16)"
    dense="$OUT/dense/$tname.$ctx.$dkey.npy"
    if [[ ! -s "$dense" ]]; then
      echo "dense: $tname ctx $ctx" >&2
      w=$(timed "$KVSPOOL_BIN" logits --tokens-file "$cut" --positions "$positions" \
        --out "$WORK/dense.json" "${cbase[@]}")
      "$PYTHON" "$HELPER" dense-npy "$WORK/dense.json" "$dense"
      echo "$w" > "$dense.wall_s"
      rm -f "$WORK/dense.json"
      echo "  dense wall ${w}s" >&2
    fi
    runs=()
    for b in ${BUDGETS/none/}; do
      for m in $MASSES; do runs+=("$b:$m"); done
    done
    case "$NOISE" in
      0) ;;
      1) runs+=("dense-step:-" "dense-reorder:-") ;;
      *) for n in $NOISE; do runs+=("$n:-"); done ;;
    esac
    for r in "${runs[@]}"; do
      b="${r%%:*}"
      m="${r#*:}"
      run_bt=$BLOCK_TOKENS
      run_dtype=$KV_DTYPE
      if [[ "$b" == dense-step ]]; then
        bt=$ctx
        flags=(--attention sparse --sparse-budget "$ctx")
      elif [[ "$b" == dense-reorder ]]; then
        bt=$ctx
        run_bt=$((BLOCK_TOKENS / 2))
        (( run_bt >= 1 )) || run_bt=2
        flags=(--attention sparse --sparse-budget "$ctx")
      elif [[ "$b" == dense-fp8 || "$b" == dense-f32 ]]; then
        bt=$ctx
        run_dtype=${b#dense-}
        flags=(--attention sparse --sparse-budget "$ctx")
      elif [[ "$b" == dense-* ]]; then
        echo "error: unknown NOISE run $b (dense-step, dense-reorder, dense-fp8, dense-f32)" >&2
        exit 1
      else
        bt=$(budget_tokens "$b" "$ctx")
        flags=(--attention sparse --sparse-budget "$bt" --sparse-mass "$m" "${SPARSE_FLAGS[@]}")
      fi
      run_base=(--kv-dtype "$run_dtype" --block-tokens "$run_bt" --ctx "$ctx" "${COMMON[@]}")
      key="$(printf '%s|' "$LABEL" "$tname" "$ctx" "$tail_n" "$(sha256sum < "$cut")" "$b" "$bt" "$m" "${run_base[@]}" "${flags[@]}" "$BIN_SHA" | sha256sum | cut -c1-16)"
      res="$OUT/runs/$key.json"
      [[ -s "$res" ]] && continue
      echo "sparse: $tname ctx $ctx budget $b ($bt tokens) mass $m ${SPARSE_FLAGS[*]}" >&2
      w=$(timed "$KVSPOOL_BIN" logits --tokens-file "$cut" --positions "$positions" \
        --out "$WORK/sparse.json" "${run_base[@]}" "${flags[@]}" --trace "$WORK/trace.jsonl")
      "$PYTHON" "$HELPER" metrics --dense "$dense" --sparse "$WORK/sparse.json" \
        --trace "$WORK/trace.jsonl" --block-tokens "$run_bt" --ctx "$ctx" \
        --tokens "$cut" "${focus[@]}" \
        --meta "label=$LABEL" --meta "text=$tname" --meta "ctx=$ctx" \
        --meta "block_tokens=$run_bt" --meta "budget=$b" --meta "budget_tokens=$bt" \
        --meta "mass=$m" --meta "wall_s=$w" --meta "dense_wall_s=$(cat "$dense.wall_s")" \
        --meta "kv_dtype=$run_dtype" --meta "binary_sha=$BIN_SHA" \
        --meta "flags=${COMMON_FLAGS}${COMMON_FLAGS:+ }${SPARSE_FLAGS[*]}" \
        --out "$res"
      rm -f "$WORK/sparse.json" "$WORK/trace.jsonl"
      "$PYTHON" -c 'import json, sys; r = json.load(open(sys.argv[1])); r["b"] = 100 * r["blocks_read_fraction"]; r["hb"] = 100 * r.get("head_blocks_fraction", float("nan")); r["t"] = 100 * r["top1_agreement"]; print("  mean KL %(mean_kl).4f max %(max_kl).3f top-1 %(t).1f%% blocks %(b).1f%% head-blocks %(hb).1f%% wall %(wall_s)ss" % r)' "$res" >&2
    done
  done
done

"$PYTHON" "$HELPER" report "$OUT/runs" "$OUT/results.csv" "$OUT/results.md"
echo "wrote $OUT/results.csv and $OUT/results.md" >&2
