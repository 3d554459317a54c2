#!/usr/bin/env bash
# The README's first command: installs what the build needs (infra/setup.sh), then
# generates traffic, runs every SQL file over it into ./lake and answers a query.
# Arguments go to `sluice demo` (e.g. --lake s3://bucket/lake, --hours 6).
set -euo pipefail
cd "$(dirname "$0")/.."
infra/setup.sh
exec cargo run --release -- demo "$@"
