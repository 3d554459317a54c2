#!/usr/bin/env bash
# An Azure Blob endpoint on loopback for tests and trials: Azurite 3.37 (blob service
# only), installed from npm into a prefix cached outside the clone. Several may run
# at once, one per port; each starts with an empty workspace.
#
#   infra/azurite.sh install                 # only installs Azurite (infra/test.sh, during the build)
#   infra/azurite.sh start [PORT]            # default 10000; prints the account URL
#   infra/azurite.sh stop [PORT]
#   infra/azurite.sh container NAME [PORT]   # creates container NAME (already there is fine)
#
# The account is Azurite's well-known devstoreaccount1; requests must be signed
# (SharedKey) with its published key, AZURITE_KEY below.
set -euo pipefail

cache="${SLUICE_CACHE:-$HOME/.cache/sluice}"
prefix="$cache/azurite"
bin="$prefix/node_modules/.bin/azurite-blob"
spec='azurite@3.37'

install_azurite() {
  mkdir -p "$cache"
  exec 9>"$cache/azurite.lock"
  flock 9
  if [ ! -x "$bin" ] || [ "$(cat "$prefix/.spec" 2>/dev/null)" != "$spec" ]; then
    rm -rf "$prefix"
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund "$spec" >"$cache/azurite-install.log" 2>&1 \
      || { echo "npm install $spec failed; see $cache/azurite-install.log" >&2; exit 1; }
    echo "$spec" >"$prefix/.spec"
  fi
  exec 9>&-
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case "${1:-}" in
  install)
    install_azurite
    ;;
  start)
    port="${2:-10000}"
    install_azurite
    pidfile="$cache/azurite-$port.pid"
    log="$cache/azurite-$port.log"
    work="$cache/azurite-$port.data"
    answers "$port" && { echo "port $port on 127.0.0.1 is already in use (infra/azurite.sh stop $port?)" >&2; exit 1; }
    rm -rf "$work" && mkdir -p "$work"
    # --disableTelemetry: Azurite otherwise reports to Application Insights, off this machine.
    "$bin" --blobHost 127.0.0.1 --blobPort "$port" --location "$work" \
      --skipApiVersionCheck --loose --disableTelemetry >"$log" 2>&1 &
    pid=$!
    echo "$pid" >"$pidfile"
    for _ in $(seq 150); do
      answers "$port" && { echo "http://127.0.0.1:$port/devstoreaccount1"; exit 0; }
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "azurite did not start on port $port; see $log" >&2
    exit 1
    ;;
  stop)
    port="${2:-10000}"
    pidfile="$cache/azurite-$port.pid"
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    ;;
  container)
    [ $# -ge 2 ] && [ $# -le 3 ] || { echo "usage: infra/azurite.sh container NAME [PORT]" >&2; exit 2; }
    python3 - "$2" "${3:-10000}" <<'EOF'
# PUT /devstoreaccount1/NAME?restype=container, signed with SharedKey (standard library only).
import base64, hashlib, hmac, re, sys, urllib.error, urllib.request
from email.utils import formatdate

ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
name, port = sys.argv[1], sys.argv[2]
headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
# VERB, then the 11 standard headers (all empty here: no body, so Content-Length is
# empty too), the x-ms-* headers, and the resource: the account, then the path (which
# on the emulator starts with the account again), then the query parameters.
to_sign = "\n".join(["PUT"] + [""] * 11
    + [f"{k}:{v}" for k, v in sorted(headers.items())]
    + [f"/{ACCOUNT}/{ACCOUNT}/{name}", "restype:container"])
sig = hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(), hashlib.sha256).digest()
headers["Authorization"] = f"SharedKey {ACCOUNT}:{base64.b64encode(sig).decode()}"
url = f"http://127.0.0.1:{port}/{ACCOUNT}/{name}?restype=container"
req = urllib.request.Request(url, method="PUT", headers=headers)  # no data: no Content-Type added
try:
    urllib.request.urlopen(req, timeout=10).read()
except urllib.error.HTTPError as e:
    body = e.read().decode(errors="replace")
    if not (e.code == 409 and "ContainerAlreadyExists" in body):
        why = " ".join(re.findall(r"<(?:Code|Message)>([^<]*)<", body)).split("\n")[0] or body[:200]
        sys.exit(f"creating container {name} at {url}: HTTP {e.code}: {why}")
except OSError as e:
    sys.exit(f"creating container {name} at {url}: {e}")
EOF
    ;;
  *)
    echo "usage: infra/azurite.sh install | start [PORT] | stop [PORT] | container NAME [PORT]" >&2
    exit 2
    ;;
esac
