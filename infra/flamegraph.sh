#!/usr/bin/env bash
# A flame graph of `sluice bench` (the full mix by default), for the README's
# performance section: perf samples with DWARF call stacks, folded and drawn by
# inferno (installed into ~/.cache/sluice/tools on first use).
#
#   infra/flamegraph.sh OUT.svg [sluice bench arguments...]
#   infra/flamegraph.sh docs/flamegraph-bench.svg --users 3000 --hours 36
#
# Needs `perf` (linux-perf) and a release build (cargo build --release); the
# release profile keeps debug info, so the frames have names.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
out=$(realpath -m "$1"); shift
cd "$(dirname "$0")/.."
binary="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}/release/sluice"
[ -x "$binary" ] || { echo "no release build at $binary (cargo build --release)" >&2; exit 1; }
command -v perf >/dev/null || { echo "no perf (apt-get install linux-perf)" >&2; exit 1; }
tools="${SLUICE_CACHE:-$HOME/.cache/sluice}/tools"
[ -x "$tools/bin/inferno-flamegraph" ] || cargo install --quiet inferno --version 0.12.8 --root "$tools"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
args=("$@"); [ ${#args[@]} -gt 0 ] || args=(--users 3000 --hours 36)
perf record -F 499 --call-graph dwarf,32768 -o "$work/perf.data" -- "$binary" bench "${args[@]}" >&2
DEBUGINFOD_URLS= perf script --no-inline -i "$work/perf.data" 2>/dev/null | "$tools/bin/inferno-collapse-perf" > "$work/folded"
"$tools/bin/inferno-flamegraph" --title "sluice bench ${args[*]}" --width 1600 --minwidth 2 < "$work/folded" > "$out"
echo "wrote $out" >&2
