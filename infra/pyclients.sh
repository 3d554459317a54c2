#!/usr/bin/env bash
# The Python that `sluice serve`'s client tests run (pipeline/tests/serve/clients.py):
# psycopg 3 (a real Postgres client, with its own libpq in the binary wheel) and
# delta-rs's Python package `deltalake` with pyarrow (to read the lake as the
# independent ground truth), and DuckDB (with its Delta extension, packaged for pip so
# that nothing downloads at test time; the pin is the release it ships for) and polars,
# the readers analysts use (pipeline/tests/end_to_end/readers.py), and
# kubernetes-validate (deploy/k8s against Kubernetes' schemas); installed from PyPI
# into a venv cached outside the clone.
# Idempotent: reinstalls only when the venv is missing or its package list changed.
#
#   infra/pyclients.sh               # prints the venv's python path on its last line
set -euo pipefail

cache="${SLUICE_CACHE:-$HOME/.cache/sluice}"
venv="$cache/pyclients"
python="$venv/bin/python"
specs=('psycopg[binary]>=3.2' 'deltalake>=0.18' 'pyarrow>=14' 'duckdb==1.4.4' 'duckdb-ext-delta==1.4.4.20260205' 'polars>=1.0' 'kubernetes-validate==1.37.0')
spec="${specs[*]}"
log="$cache/pyclients-install.log"

mkdir -p "$cache"
# One installer at a time: two test binaries on a fresh cache would race on the venv.
exec 9>"$cache/pyclients.lock"
flock 9
if [ ! -x "$python" ] || [ "$(cat "$venv/.spec" 2>/dev/null)" != "$spec" ] \
  || ! "$python" -c 'import psycopg, deltalake, pyarrow, duckdb, polars' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv" >"$log" 2>&1 \
    || { echo "python3 -m venv failed (apt-get install python3-venv, or infra/setup.sh --tests); see $log" >&2; exit 1; }
  "$python" -m pip install --quiet --disable-pip-version-check "${specs[@]}" >>"$log" 2>&1 \
    || { echo "pip install $spec failed; see $log" >&2; exit 1; }
  "$python" -c 'import psycopg, deltalake, pyarrow, duckdb, polars' >>"$log" 2>&1 \
    || { echo "the venv's python cannot import psycopg, deltalake, pyarrow, duckdb and polars; see $log" >&2; exit 1; }
  echo "$spec" >"$venv/.spec"
fi
exec 9>&-
echo "$python"
