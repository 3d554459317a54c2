#!/usr/bin/env bash
# A benchmark (not a test) of `sluice serve` under load with a hostile client among
# the others, whose figures go into the README: 64 clients (dashboard polling,
# REST calls, SQL over the Postgres protocol) measured alone and then beside one
# user sending the statements that used to abort the server, cross joins stopped
# by their time limit, silent sockets and garbage (pipeline/tests/serve/load.py).
#
#   infra/bench-hostile.sh [--lake DIR] [--binary PATH] [--seconds 180] [--clients 64] [--think 1.0]
#
# Without --lake it builds one with `sluice demo --users 3000 --hours 36` in a
# temporary directory, removed afterwards. The binary defaults to the release build.
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."

lake= seconds=180 clients=64 think=1.0
binary="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}/release/sluice"
while [ $# -gt 0 ]; do
  case "$1" in
    --lake|--binary|--seconds|--clients|--think)
      [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
      declare "${1#--}=$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
absolute() { case "$1" in /*|'') echo "$1" ;; *) echo "$caller/$1" ;; esac; }
lake=$(absolute "$lake") binary=$(absolute "$binary")
[ -x "$binary" ] || { echo "no sluice binary at $binary (cargo build --release, or --binary PATH)" >&2; exit 1; }
python=$(infra/pyclients.sh | tail -n 1)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-hostile.XXXXXX")
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
if [ -z "$lake" ]; then
  lake="$tmp/lake"
  echo "building a lake: sluice demo --users 3000 --hours 36" >&2
  "$binary" demo --users 3000 --hours 36 --lake "$lake" --input "$tmp/input" >/dev/null
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pg=$(free_port) http=$(free_port)
secret="bench-hostile-secret-0123456789"
SLUICE_JWT_SECRET=$secret RUST_BACKTRACE=0 SLUICE_LOG=warn "$binary" serve --lake "$lake" \
  --pg-addr "127.0.0.1:$pg" --http-addr "127.0.0.1:$http" >"$tmp/serve.log" 2>&1 &
server=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$http") 2>/dev/null && break; sleep 0.2; done
"$python" pipeline/tests/serve/load.py --lake "$lake" --pg-port "$pg" --http-port "$http" --secret "$secret" \
  --seconds "$seconds" --clients "$clients" --think "$think"
echo "server: peak RSS $(grep VmHWM /proc/$server/status | awk '{print $2/1024 " MiB"}')"
