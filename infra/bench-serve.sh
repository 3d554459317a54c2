#!/usr/bin/env bash
# A benchmark (not a test) of `sluice serve`, whose figures go into the README:
# dashboard queries over the Postgres wire protocol against `sluice query` and
# DuckDB on the same Delta tables, 1/4/N concurrent clients, and the cost of
# row-level security per role (pipeline/tests/serve/bench.py prints the Markdown).
#
#   infra/bench-serve.sh [--lake DIR] [--binary PATH] [--users N] [--hours N]
#                        [--clients 16] [--seconds 20] [--runs 200]
#
# Without --lake it builds one with `sluice demo` (3000 users, 36 h) in a temporary
# directory, removed afterwards. The binary defaults to the release build
# (cargo build --release). Its Python (psycopg, DuckDB with its Delta extension) is a
# venv of its own, ~/.cache/sluice/bench-venv, made like infra/pyclients.sh makes the
# tests' one, which stays as it is.
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."
command_line="infra/bench-serve.sh $*"

lake= built_by= users=3000 hours=36 clients=16 seconds=20 runs=200
binary="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}/release/sluice"
while [ $# -gt 0 ]; do
  case "$1" in
    --lake|--binary|--users|--hours|--clients|--seconds|--runs)
      [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
      declare "${1#--}=$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
absolute() { case "$1" in /*|'') echo "$1" ;; *) echo "$caller/$1" ;; esac; }
lake=$(absolute "$lake") binary=$(absolute "$binary")
[ -x "$binary" ] || { echo "no sluice binary at $binary (cargo build --release, or --binary PATH)" >&2; exit 1; }

# The venv, reinstalled only when missing or its package list changed. DuckDB is
# pinned to the release that duckdb-ext-delta (DuckDB's own signed Delta extension,
# packaged for pip) ships for: `INSTALL delta` would download it, and cannot offline.
cache="${SLUICE_CACHE:-$HOME/.cache/sluice}"
venv="$cache/bench-venv"
python="$venv/bin/python"
specs=('psycopg[binary]>=3.2' 'duckdb==1.4.4' 'duckdb-ext-delta==1.4.4.20260205' 'pytz')
spec="${specs[*]}"
log="$cache/bench-venv-install.log"
mkdir -p "$cache"
exec 9>"$cache/bench-venv.lock"
flock 9
if [ ! -x "$python" ] || [ "$(cat "$venv/.spec" 2>/dev/null)" != "$spec" ] \
  || ! "$python" -c 'import psycopg, duckdb, pytz' >/dev/null 2>&1; then
  echo "installing $spec into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >"$log" 2>&1 \
    || { echo "python3 -m venv failed (apt-get install python3-venv); see $log" >&2; exit 1; }
  "$python" -m pip install --quiet --disable-pip-version-check "${specs[@]}" >>"$log" 2>&1 \
    || { echo "pip install $spec failed; see $log" >&2; exit 1; }
  echo "$spec" >"$venv/.spec"
fi
exec 9>&-

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-serve.XXXXXX")
server=
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then kill "$server"; wait "$server" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

if [ -z "$lake" ]; then
  echo "building a lake: sluice demo --users $users --hours $hours" >&2
  "$binary" demo --lake "$tmp/lake" --input "$tmp/in" --users "$users" --hours "$hours" >"$tmp/demo.log" 2>&1 \
    || { tail -n 20 "$tmp/demo.log" >&2; echo "sluice demo failed" >&2; exit 1; }
  rm -rf "$tmp/in"
  lake="$tmp/lake" built_by="built by sluice demo --users $users --hours $hours, removed afterwards"
fi
[ -d "$lake" ] || { echo "$lake: not a directory (the benchmark reads the lake's files directly with DuckDB)" >&2; exit 1; }
lake=$(cd "$lake" && pwd)

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pg=$(free_port) http=$(free_port)
SLUICE_JWT_SECRET=$("$python" -c 'import secrets; print(secrets.token_hex(32))')
export SLUICE_JWT_SECRET
"$binary" serve --lake "$lake" --pg-addr "127.0.0.1:$pg" --http-addr "127.0.0.1:$http" >"$tmp/serve.log" 2>&1 &
server=$!
for _ in $(seq 600); do
  (exec 3<>"/dev/tcp/127.0.0.1/$pg") 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$tmp/serve.log" >&2; echo "sluice serve exited" >&2; exit 1; }
  sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$pg") 2>/dev/null || { cat "$tmp/serve.log" >&2; echo "sluice serve did not listen on $pg" >&2; exit 1; }

status=0
"$python" pipeline/tests/serve/bench.py --lake "$lake" --pg-port "$pg" --binary "$binary" --clients "$clients" \
  --seconds "$seconds" --runs "$runs" --server-pid "$server" --command "$command_line" ${built_by:+--built-by "$built_by"} || status=$?
if [ "$status" -ne 0 ]; then echo "--- sluice serve's log ---" >&2; tail -n 30 "$tmp/serve.log" >&2; fi
exit "$status"
