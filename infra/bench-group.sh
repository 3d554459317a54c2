#!/usr/bin/env bash
# Events per second of a consumer group (`sluice run --group`) with 1, 2 and 3
# instances, and of one process without a group, over the same traffic in Tansu
# (every topic with 6 partitions). Release build.
#
#   infra/bench-group.sh [USERS] [HOURS]     # default 3000 users, 24 h
#
# Each run drains the whole backlog with --stop-when-idle 5s; its time runs from
# the group's first assignment (the run's first log line without a group) to its
# last commit, less the 5 s the last commit waits for, read from the logs. Tansu
# runs the eager protocol here: its cooperative rebalances never finish (README,
# Several instances).
set -euo pipefail
cd "$(dirname "$0")/.."
users="${1:-3000}"
hours="${2:-24}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
cargo build --release -p sluice >&2
sluice="$CARGO_TARGET_DIR/release/sluice"
work="$(mktemp -d)"
port=19393
brokers="$(infra/broker.sh start "$port")"
trap 'infra/broker.sh stop; rm -rf "$work"' EXIT

mkdir -p "$work/schemas"
for f in schemas/*.toml; do
  sed 's/^partitions.*/partitions = 6/' "$f" >"$work/schemas/$(basename "$f")"
done
"$sluice" generate --kafka "$brokers" --users "$users" --hours "$hours" --schemas "$work/schemas" 2>&1 | tail -n 1
messages=$("$sluice" generate --out "$work/in" --users "$users" --hours "$hours" --schemas "$work/schemas" 2>&1 | sed -n 's/^generated \([0-9]*\) messages.*/\1/p')

# "SECONDS MESSAGES/S": from the first assignment (the first log line without a
# group) to the last commit, less the idle wait before it.
elapsed() {
  python3 - "$messages" "$@" <<'EOF'
import re, sys
from datetime import datetime
assigned, lines, commits = [], [], []
for log in sys.argv[2:]:
    for line in open(log):
        m = re.match(r"(\S+Z) ", line)
        if not m:
            continue
        t = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
        lines.append(t)
        if "gave this instance shards" in line and "shards=[]" not in line:
            assigned.append(t)
        if "committed epoch" in line:
            commits.append(t)
seconds = max(commits) - min(assigned or lines) - 5
print(f"{seconds:.1f} {int(sys.argv[1]) / seconds:.0f}")
EOF
}

run() { # LAKE LOG [ARGS...]
  local lake="$1" log="$2"
  shift 2
  "$sluice" run --kafka "$brokers" --lake "$lake" --schemas "$work/schemas" --sql sql \
    --stop-when-idle 5s -X partition.assignment.strategy=roundrobin "$@" 2>"$log"
}

# Events of request_response_times (repartitioned in a group) in its windows plus
# those late for it: one process's and each group's must be equal.
counted() { # LAKE
  local q="SELECT (SELECT sum(requests) FROM monitoring.api_performance.request_response_times)
    + (SELECT count(*) FROM monitoring.integration_health.late_events
       WHERE \"table\" = 'monitoring/api_performance/request_response_times') AS events"
  "$sluice" query --lake "$1" "$q" 2>/dev/null | grep -o '[0-9][0-9]*' | tail -n 1
}

printf '%-22s %9s %9s %12s\n' run messages seconds messages/s
run "$work/lake-alone" "$work/alone.log"
read -r s rate <<<"$(elapsed "$work/alone.log")"
printf '%-22s %9s %9s %12s\n' "one process, no group" "$messages" "$s" "$rate"
for n in 1 2 3; do
  logs=()
  for i in $(seq "$n"); do
    run "$work/lake-$n" "$work/g$n-$i.log" --group "bench$n" --instance "i$i" &
    logs+=("$work/g$n-$i.log")
  done
  wait
  read -r s rate <<<"$(elapsed "${logs[@]}")"
  printf '%-22s %9s %9s %12s\n' "group, $n instance(s)" "$messages" "$s" "$rate"
  # The repartitioned tables (`-- sluice: repartition`) read gateway.requests.
  bytes=$(cat "${logs[@]}" | sed -n 's/.*repartition topics: sent by this shard partials=[0-9]* bytes=\([0-9]*\).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
  events=$(cat "$work"/in/gateway.requests/*.jsonl | wc -l)
  echo "  repartition topics: ${bytes:-0} bytes for $events gateway.requests events: $(( ${bytes:-0} / events )) bytes per event"
  echo "  request_response_times: $(counted "$work/lake-$n") events in windows or late; one process: $(counted "$work/lake-alone")"
done
