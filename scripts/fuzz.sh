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

dirs=$(grep -lE '^func Fuzz[A-Z0-9_]' $(git ls-files '*_test.go' 2>/dev/null || find . -name '*_test.go') | xargs -n1 dirname | sort -u)
count=0
for dir in $dirs; do
  for target in $($GO test -list '^Fuzz' "./$dir" | grep -E '^Fuzz'); do
    echo "fuzz: $target in ./$dir for $FUZZTIME" >&2
    $GO test -run '^$' -fuzz "^$target\$" -fuzztime "$FUZZTIME" -fuzzminimizetime "$FUZZMINIMIZETIME" "./$dir"
    count=$((count + 1))
  done
done
[ "$count" -gt 0 ] || { echo "fuzz: no fuzz target found" >&2; exit 1; }
echo "fuzz: $count targets fuzzed for $FUZZTIME each" >&2
