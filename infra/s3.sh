#!/usr/bin/env bash
# An S3 endpoint on loopback for tests and trials: moto's server (in memory, accepts
# unsigned and signed requests alike), installed from PyPI into a venv cached outside
# the clone. Several may run at once, one per port.
#
#   infra/s3.sh install              # only installs moto (infra/test.sh, during the build)
#   infra/s3.sh start [PORT]         # default 19000; prints the endpoint URL
#   infra/s3.sh stop [PORT]
#   infra/s3.sh bucket ENDPOINT NAME # creates bucket NAME (already there is fine)
#
# moto before 5.2.1 answers a conditional put (If-None-Match: *) with 500.
set -euo pipefail

cache="${SLUICE_CACHE:-$HOME/.cache/sluice}"
venv="$cache/moto"
bin="$venv/bin/moto_server"
spec='moto[server]>=5.2.1'

install_moto() {
  mkdir -p "$cache"
  # One installer at a time: two starts on a fresh cache would race on the venv.
  exec 9>"$cache/moto.lock"
  flock 9
  if [ ! -x "$bin" ] || [ "$(cat "$venv/.spec" 2>/dev/null)" != "$spec" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >"$cache/moto-install.log" 2>&1 \
      || { echo "python3 -m venv failed (apt-get install python3-venv?); see $cache/moto-install.log" >&2; exit 1; }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$spec" \
      >>"$cache/moto-install.log" 2>&1 \
      || { echo "pip install $spec failed; see $cache/moto-install.log" >&2; exit 1; }
    echo "$spec" >"$venv/.spec"
  fi
  exec 9>&-
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case "${1:-}" in
  install)
    install_moto
    ;;
  start)
    port="${2:-19000}"
    install_moto
    pidfile="$cache/moto-$port.pid"
    log="$cache/moto-$port.log"
    answers "$port" && { echo "port $port on 127.0.0.1 is already in use (infra/s3.sh stop $port?)" >&2; exit 1; }
    "$bin" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    for _ in $(seq 100); do
      answers "$port" && { echo "http://127.0.0.1:$port"; exit 0; }
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "moto did not start on port $port; see $log" >&2
    exit 1
    ;;
  stop)
    port="${2:-19000}"
    pidfile="$cache/moto-$port.pid"
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      # Wait for it to go, so the port is free for a restart right after.
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    ;;
  bucket)
    [ $# -eq 3 ] || { echo "usage: infra/s3.sh bucket ENDPOINT NAME" >&2; exit 2; }
    python3 - "$2" "$3" <<'EOF'
import re, sys, urllib.request, urllib.error
endpoint, name = sys.argv[1].rstrip("/"), sys.argv[2]
req = urllib.request.Request(f"{endpoint}/{name}", method="PUT", data=b"")
try:
    urllib.request.urlopen(req, timeout=10).read()
except urllib.error.HTTPError as e:
    body = e.read().decode(errors="replace")
    if not (e.code == 409 and "BucketAlreadyOwnedByYou" in body):
        why = " ".join(re.findall(r"<(?:Code|Message)>([^<]*)<", body)) or body[:200]
        sys.exit(f"creating bucket {name} at {endpoint}: HTTP {e.code}: {why}")
except OSError as e:
    sys.exit(f"creating bucket {name} at {endpoint}: {e}")
EOF
    ;;
  *)
    echo "usage: infra/s3.sh install | start [PORT] | stop [PORT] | bucket ENDPOINT NAME" >&2
    exit 2
    ;;
esac
