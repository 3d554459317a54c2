#!/usr/bin/env bash
# The whole test suite: unit tests, the end-to-end run checked against an
# independent model of the contract, Delta conformance, and the Kafka path against
# a real Kafka-protocol broker (Tansu) started here on loopback.
#
#   infra/test.sh [NEXTEST ARGS...]     # e.g. infra/test.sh --test hostile
#
# It sets itself up (infra/setup.sh --tests: apt, pip, npm and cargo installs,
# each only when missing) while the build compiles: on a fresh machine the one
# waits on the network and the other on the cores. The fuzzers run for a bounded time:
# SLUICE_FUZZ_SECONDS (default 45) for the SQL and wire fuzzers of the hostile
# test, and SLUICE_CARGO_FUZZ_SECONDS (default 30) per cargo-fuzz target (statement
# gets twice that, the others half: infra/fuzz.sh); a
# nightly run gives them an hour each.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SLUICE_CACHE:-$HOME/.cache/sluice}"
mkdir -p "$cache"
# What the build needs (a C compiler, make), then what the tests need, beside the
# build: the apt packages, the brokers and stores, the Python clients.
infra/setup.sh
installs="$cache/test-installs.log"
echo "setup: installing what the tests need during the build (log: $installs)" >&2
( infra/setup.sh --tests && infra/broker.sh install && infra/s3.sh install && infra/azurite.sh install \
    && infra/pyclients.sh ) >"$installs" 2>&1 &
installing=$!
# Builds go outside the clone, shared with .ci/run, so runs after the first are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
# The UDFs of udfs/ once, into their cache outside the clone (the first build on a
# machine compiles the plugin's dependencies: minutes; later runs reuse it).
cargo build -p sluice --bin sluice
"$CARGO_TARGET_DIR/debug/sluice" udfs build
wait "$installing" || { echo "setup: installing what the tests need failed:" >&2; tail -n 20 "$installs" >&2; exit 1; }
port="${SLUICE_TEST_BROKER_PORT:-19092}"
infra/broker.sh stop
SLUICE_KAFKA_BROKERS=$(infra/broker.sh start "$port")
export SLUICE_KAFKA_BROKERS
# Tests that need a broker of their own start this binary (installed by broker.sh).
export SLUICE_TANSU="$cache/bin/tansu"
trap 'infra/broker.sh stop' EXIT
# Object stores: each test starts its own moto S3 server and Azurite blob service on
# free loopback ports, from the binaries installed above.
export SLUICE_MOTO="$cache/moto/bin/moto_server"
export SLUICE_AZURITE="$cache/azurite/node_modules/.bin/azurite-blob"
# `sluice serve`'s tests drive psycopg 3 and read the lake with delta-rs's Python
# package, from the venv installed above.
SLUICE_PYCLIENTS=$(infra/pyclients.sh | tail -n 1)
export SLUICE_PYCLIENTS
# The hostile test's two fuzzers take twice SLUICE_FUZZ_SECONDS: past 240 s each they
# outrun the default profile's 10-minute limit (.config/nextest.toml).
profile=default
if [ "${SLUICE_FUZZ_SECONDS:-45}" -gt 240 ]; then profile=fuzz-long; fi
cargo nextest run --profile "$profile" --workspace --no-fail-fast "$@"
# Only for the whole suite (no arguments): every SQL file's fixtures, as an engineer
# runs them (`sluice test`), the deployment manifests, and the door's parsers under
# libFuzzer.
if [ $# -eq 0 ]; then
  cargo run --quiet -p sluice -- test
  # The Kubernetes manifests against the API's schemas (unknown fields are errors).
  "$(dirname "$SLUICE_PYCLIENTS")/kubernetes-validate" --strict deploy/k8s/*.yaml
  infra/fuzz.sh "${SLUICE_CARGO_FUZZ_SECONDS:-30}"
fi
