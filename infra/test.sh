#!/usr/bin/env bash
# The whole test suite: unit tests, the end-to-end run checked against an
# independent model of the contract, and Delta conformance.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo nextest run --workspace --no-fail-fast "$@"
