#!/usr/bin/env bash
# The whole test suite, from a clean clone: fetches the test model (PyPI), checks formatting and
# lints, builds, and runs every test. `.ci/run` calls exactly this.
#
#   tools/test.sh
#
# Model files go to $KVSPOOL_CACHE/models (default ~/.cache/kvspool/models), never into the repo.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> fetching the test model"
tools/fetch-models.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "==> cargo test"
cargo test --locked --all-targets
cargo test --locked --doc
