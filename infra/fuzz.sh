#!/usr/bin/env bash
# The served lake's door under libFuzzer (cargo fuzz): the statement admission and
# allow-list, token verification and the API's query parameters, fed arbitrary
# bytes for 3 x SECONDS together (default 30; CI runs the default, a nightly run
# gives it an hour: infra/fuzz.sh 3600). The statement target gets two shares and
# the others half of one each: its corpus replay alone takes ~25 s (every input
# parsed twice, ~150/s), while token and params run 20,000-30,000 inputs a second.
# Installs cargo-fuzz if missing; builds with the stable toolchain (RUSTC_BOOTSTRAP
# lets cargo fuzz use its -Z flags).
#
#   infra/fuzz.sh [SECONDS] [TARGET...]     # targets: statement token params
#
# The corpus grows under $SLUICE_CACHE/fuzz; a crash, or an input that runs past
# 10 s (a denial of service, and libFuzzer's own limit would be 20 minutes), is
# written there too, and the script fails naming it. Copy the input into gate/fuzz/regressions/<target>/ and
# `cargo test -p sluice-gate` replays it for good.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(statement token params)
cache="${SLUICE_CACHE:-$HOME/.cache/sluice}/fuzz"
mkdir -p "$cache"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (once)" >&2
  cargo install cargo-fuzz --locked --quiet
fi
# libFuzzer is C++: it needs a C++ compiler (Debian's g++).
command -v c++ >/dev/null || { echo "fuzz: no C++ compiler (apt-get install g++, or infra/setup.sh --tests)" >&2; exit 1; }

export RUSTC_BOOTSTRAP=1
cd gate/fuzz
failed=()
for target in "${targets[@]}"; do
  corpus="$cache/corpus/$target" artifacts="$cache/artifacts/$target/"
  mkdir -p "$corpus" "$artifacts"
  # libFuzzer replays the whole corpus before it fuzzes, within the same time: a
  # corpus grown over many runs (9,000 inputs took a 30 s run's whole time) is
  # merged down to the inputs that add coverage first (-merge=1; ~3,300 of 9,000).
  if [ "$(find "$corpus" -type f | wc -l)" -gt 4000 ]; then
    echo "fuzz: merging $target's corpus down to the inputs that add coverage" >&2
    merged="$cache/corpus/$target.merged"
    rm -rf "$merged" && mkdir -p "$merged"
    if cargo fuzz run --target-dir "$cache/target" "$target" "$merged" "$corpus" -- -merge=1 -timeout=10 >"$cache/$target.merge.log" 2>&1; then
      rm -rf "$corpus" && mv "$merged" "$corpus"
    fi
  fi
  case "$target" in
    statement) share=$((seconds * 2)) ;;
    *) share=$(((seconds + 1) / 2)) ;;
  esac
  echo "fuzz: $target for ${share}s" >&2
  if ! cargo fuzz run --target-dir "$cache/target" "$target" "$corpus" "seeds/$target" -- \
      -max_total_time="$share" -timeout=10 -artifact_prefix="$artifacts" -print_final_stats=1 >"$cache/$target.log" 2>&1; then
    echo "fuzz: $target FOUND A CRASH OR A SLOW INPUT; see $cache/$target.log and the input in $artifacts" >&2
    tail -n 40 "$cache/$target.log" >&2
    failed+=("$target")
  else
    grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$cache/$target.log" | tr '\n' ' ' | sed "s/^/fuzz: $target: /" >&2
    echo >&2
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "fuzz: crashes in ${failed[*]}" >&2; exit 1; }
