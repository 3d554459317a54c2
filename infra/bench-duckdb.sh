#!/usr/bin/env bash
# A benchmark (not a test) of Sluice beside DuckDB on the same JSON files, one run
# after the other on this machine, printed as ratios (issue 21's goals 1 and 2):
#
#   one query   request_response_times over gateway.requests: `sluice run` with
#               only that SQL file (exactly-once commits to Delta), against DuckDB
#               computing it and writing it to Delta (delta-rs's Python writer).
#               Both read the gateway topic alone (issue 21's goal 1); then Sluice
#               reads every topic, as `sluice run --input` over the whole directory
#               does: it checks the other 23 for dead letters and keeps their
#               mirrors, work DuckDB's query does not do; then with the raw archive
#   full mix    `sluice run` with every SQL file, against DuckDB only parsing every
#               topic's JSON once into its own tables: the floor
#
#   infra/bench-duckdb.sh [--users 3000] [--hours 79] [--binary PATH] [--runs 2]
#
# 79 hours of 3,000 users are 3.7 M messages (1.16 GB), 1.7 M of them gateway
# requests. The input is generated into a temporary directory, removed afterwards.
# Times are wall-clock seconds of whole processes (DuckDB's includes Python's start);
# each is the best of --runs. Python (DuckDB, deltalake) is the tests' venv
# (infra/pyclients.sh).
set -euo pipefail
caller=$PWD
cd "$(dirname "$0")/.."

users=3000 hours=79 runs=2
binary="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}/release/sluice"
while [ $# -gt 0 ]; do
  case "$1" in
    --users|--hours|--binary|--runs)
      [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
      declare "${1#--}=$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$binary" in /*) ;; *) binary="$caller/$binary" ;; esac
[ -x "$binary" ] || { echo "no sluice binary at $binary (cargo build --release, or --binary PATH)" >&2; exit 1; }
python=$(infra/pyclients.sh | tail -n 1)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench-duckdb.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "generating $users users, $hours h into $tmp/in" >&2
"$binary" generate --users "$users" --hours "$hours" --out "$tmp/in" >/dev/null
mkdir -p "$tmp/one/monitoring/api_performance"
cp sql/monitoring/api_performance/request_response_times.sql "$tmp/one/monitoring/api_performance/"
mkdir "$tmp/gateway" && ln -s "$tmp/in/gateway.requests" "$tmp/gateway/gateway.requests"

# best_of CMD...: runs CMD --runs times on a fresh lake, prints the shortest wall time.
best_of() {
  local times=()
  for _ in $(seq "$runs"); do
    rm -rf "$tmp/lake"
    local start=$(date +%s%N)
    "$@" >/dev/null 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
    times+=($(( ($(date +%s%N) - start) / 1000000 )))
  done
  local best=$(printf '%s\n' "${times[@]}" | sort -n | head -n 1)
  printf '%d.%02d' $((best / 1000)) $((best % 1000 / 10))
}

one_gateway=$(best_of "$binary" run --input "$tmp/gateway" --lake "$tmp/lake" --sql "$tmp/one" --archive-retention off)
one_off=$(best_of "$binary" run --input "$tmp/in" --lake "$tmp/lake" --sql "$tmp/one" --archive-retention off)
one_on=$(best_of "$binary" run --input "$tmp/in" --lake "$tmp/lake" --sql "$tmp/one")
duck_one=$(best_of "$python" infra/bench_duckdb.py one-query "$tmp/in" "$tmp/lake")
mix_off=$(best_of "$binary" run --input "$tmp/in" --lake "$tmp/lake" --archive-retention off)
mix_on=$(best_of "$binary" run --input "$tmp/in" --lake "$tmp/lake")
duck_parse=$(best_of "$python" infra/bench_duckdb.py parse "$tmp/in")

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
echo "| run | Sluice | DuckDB | Sluice / DuckDB |"
echo "|---|---|---|---|"
echo "| one query, the gateway topic alone, no archive | $one_gateway s | $duck_one s | $(ratio "$one_gateway" "$duck_one")x |"
echo "| one query, every topic read, no archive | $one_off s | $duck_one s | $(ratio "$one_off" "$duck_one")x |"
echo "| one query, every topic read, with the raw archive | $one_on s | $duck_one s | $(ratio "$one_on" "$duck_one")x |"
echo "| full mix against parsing once, no archive | $mix_off s | $duck_parse s | $(ratio "$mix_off" "$duck_parse")x |"
echo "| full mix against parsing once, with the raw archive | $mix_on s | $duck_parse s | $(ratio "$mix_on" "$duck_parse")x |"
