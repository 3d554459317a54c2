#!/usr/bin/env bash
# The exactly-once test as a soak: many more SIGKILLs than CI's 20.
#   infra/soak.sh [KILLS]   # default 200
set -euo pipefail
cd "$(dirname "$0")/.."
SLUICE_KILLS="${1:-200}" exec infra/test.sh --test exactly_once --no-capture
