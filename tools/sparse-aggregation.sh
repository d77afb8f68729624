#!/usr/bin/env bash
# Aggregation: where sparse attention has to read many blocks for one answer.
#
#   tools/sparse-aggregation.sh [SPARSE_FLAG ...]
#
# One document of about TARGET tokens (default 4096, answer included): 40 lines "The colour of
# item N is C." (8 colours, fixed seed) spread evenly through the classic repeated filler, then
# two teacher-forced tasks (tools/sparse_accuracy.py make-aggregation):
#   list   "Question: what is the colour of each item, from item 1 to item 40?" answered with the
#          40 lines in order (~400 answer positions; each colour needs a different document line)
#   which  "Question: which items are red?" answered "Item N is red." for every red item (each
#          next number needs the next red line)
# and runs tools/sparse-accuracy.sh on them (CONTEXTS=full, the answer's positions compared,
# focus_* columns = the positions predicting a colour / an item number; dense_acc / sparse_acc =
# top-1 accuracy against the true answer) for BUDGETS (default "5% 12.5% 25% 50%") and MASSES
# (default "1.0 0.95"), plus the noise-floor runs (dense-step, dense-reorder; NOISE=0 skips
# them). Every other variable of
# sparse-accuracy.sh (BLOCK_TOKENS, KV_DTYPE, COMMON_FLAGS, LABEL, KVSPOOL_BIN, PYTHON) passes
# through; arguments are extra flags for the sparse runs. OUT defaults to
# $KVSPOOL_CACHE/tmp/sparse-aggregation.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KVSPOOL_CACHE:-$HOME/.cache/kvspool}"
export OUT="${OUT:-$CACHE/tmp/sparse-aggregation}"
TARGET="${TARGET:-4096}"
export BUDGETS="${BUDGETS:-5% 12.5% 25% 50%}"
export MASSES="${MASSES:-1.0 0.95}"
export CONTEXTS=full

if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python3
  if [[ -x "$CACHE/venv-tools/bin/python" ]] && "$CACHE/venv-tools/bin/python" -c 'import numpy' 2>/dev/null; then
    PYTHON="$CACHE/venv-tools/bin/python"
  fi
fi
export PYTHON
if [[ -z "${KVSPOOL_BIN:-}" ]]; then
  cargo build --release --locked -q
  KVSPOOL_BIN="${CARGO_TARGET_DIR:-target}/release/kvspool"
fi
export KVSPOOL_BIN

mkdir -p "$OUT/texts"
prefix="$OUT/texts/agg$TARGET"
if [[ ! -s "$prefix.which.tokens.json" ]]; then
  "$PYTHON" tools/sparse_accuracy.py make-aggregation "$KVSPOOL_BIN" "$TARGET" "$prefix"
fi
export TEXTS="$prefix.list.tokens.json $prefix.which.tokens.json"
exec tools/sparse-accuracy.sh "$@"
