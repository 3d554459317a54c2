#!/usr/bin/env bash
# The whole test suite: unit tests, the end-to-end run checked against an
# independent model of the contract, Delta conformance, and the Kafka path against
# a real Kafka-protocol broker (Tansu) started here on loopback.
#
#   infra/test.sh [NEXTEST ARGS...]     # e.g. infra/test.sh --test hostile
#
# It sets itself up first (infra/setup.sh --tests: apt, pip, npm and cargo
# installs, each only when missing). The fuzzers run for a bounded time:
# SLUICE_FUZZ_SECONDS (default 45) for the SQL and wire fuzzers of the hostile
# test, and SLUICE_CARGO_FUZZ_SECONDS (default 30) per cargo-fuzz target; a
# nightly run gives them an hour each.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/setup.sh --tests
# Builds go outside the clone, shared with .ci/run, so runs after the first are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${SLUICE_CACHE:-$HOME/.cache/sluice}/target}"
# The UDFs of udfs/ once, into their cache outside the clone (the first build on a
# machine compiles the plugin's dependencies: minutes; later runs reuse it).
cargo build -p sluice --bin sluice
"$CARGO_TARGET_DIR/debug/sluice" udfs build
port="${SLUICE_TEST_BROKER_PORT:-19092}"
infra/broker.sh stop
SLUICE_KAFKA_BROKERS=$(infra/broker.sh start "$port")
export SLUICE_KAFKA_BROKERS
# Tests that need a broker of their own start this binary (installed by broker.sh).
export SLUICE_TANSU="${SLUICE_CACHE:-$HOME/.cache/sluice}/bin/tansu"
trap 'infra/broker.sh stop' EXIT
# Object stores: each test starts its own moto S3 server and Azurite blob service on
# free loopback ports, from the binaries these install (the first time: under a minute).
s3_port="${SLUICE_TEST_S3_PORT:-19000}"
az_port="${SLUICE_TEST_AZURITE_PORT:-10000}"
trap 'infra/broker.sh stop; infra/s3.sh stop "$s3_port"; infra/azurite.sh stop "$az_port"' EXIT
infra/s3.sh start "$s3_port" >/dev/null
infra/azurite.sh start "$az_port" >/dev/null
infra/s3.sh stop "$s3_port"
infra/azurite.sh stop "$az_port"
export SLUICE_MOTO="${SLUICE_CACHE:-$HOME/.cache/sluice}/moto/bin/moto_server"
export SLUICE_AZURITE="${SLUICE_CACHE:-$HOME/.cache/sluice}/azurite/node_modules/.bin/azurite-blob"
# `sluice serve`'s tests drive psycopg 3 and read the lake with delta-rs's Python
# package, from a venv this makes (the first time: under a minute).
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
