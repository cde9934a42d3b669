#!/usr/bin/env bash
# fuzz.sh [FUZZTIME]: runs every fuzz target of the module for FUZZTIME
# (default 10m), one after another. Targets are found, not listed: each
# package with a func Fuzz… in its tests is asked for its targets with
# go test -list, so a target added or moved to another package is fuzzed
# without editing this file. New crashers land in that package's
# testdata/fuzz and fail the run. Used by make fuzz and (briefly) .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${1:-${FUZZTIME:-10m}}
# Minimising a new interesting input re-runs the target many times without
# counting executions (the STOW target fsyncs each time, so a 1 MB input can
# take the whole default minute): bounded so a short run keeps fuzzing.
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-10s}

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# fuzz_target TARGET DIR runs one target. Go 1.26's fuzzing coordinator can
# fail a target with a bare "context deadline exceeded" when -fuzztime ends
# while a worker is mid-call (golang/go#75804, fixed in Go 1.27): no input
# is written and nothing failed in our code. Such a run, and only such a
# run, is repeated once; a second failure, or any failure that wrote an
# input or printed anything else, fails.
fuzz_target() {
  local target=$1 dir=$2 attempt
  for attempt in 1 2; do
    echo "fuzz: $target in ./$dir for $FUZZTIME" >&2
    if $GO test -run '^$' -fuzz "^$target\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" "./$dir" 2>&1 | tee "$log"; then
      return 0
    fi
    if [ "$attempt" = 1 ] && deadline_only "$log"; then
      echo "fuzz: $target: the Go fuzzing coordinator's deadline race (golang/go#75804), no failing input: running it once more" >&2
      continue
    fi
    return 1
  done
}

# deadline_only LOG: the run failed with "context deadline exceeded" as its
# only reason: no input written, no panic, no other failure message.
deadline_only() {
  grep -q '^    context deadline exceeded$' "$1" &&
    ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$1" &&
    [ "$(grep -cE '^    [^ ]' "$1")" = 1 ]
}

dirs=$(grep -lE '^func Fuzz[A-Z0-9_]' $(git ls-files '*_test.go' 2>/dev/null || find . -name '*_test.go') | xargs -n1 dirname | sort -u)
count=0
for dir in $dirs; do
  for target in $($GO test -list '^Fuzz' "./$dir" | grep -E '^Fuzz'); do
    fuzz_target "$target" "$dir"
    count=$((count + 1))
  done
done
[ "$count" -gt 0 ] || { echo "fuzz: no fuzz target found" >&2; exit 1; }
echo "fuzz: $count targets fuzzed for $FUZZTIME each" >&2
