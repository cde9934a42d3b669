#!/usr/bin/env bash
# lint.sh: every static rule of the project, the same for make lint and
# .ci/run: go vet, gofmt, the import directions (depcheck.sh), golangci-lint
# at the version pinned in the Makefile with the committed .golangci.yml, and
# go.mod/go.sum tidy. golangci-lint is built once with go install and cached
# outside the repo, like MinIO (scripts/testenv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
VERSION=${GOLANGCI_LINT_VERSION:-$(sed -n 's/^GOLANGCI_LINT_VERSION ?= *//p' Makefile)}
TOOLS=${GATEWAY_CI_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/gateway-ci}
LINT="$TOOLS/golangci-lint-$VERSION"

step() { printf 'lint: %s\n' "$*" >&2; }

step "go vet"
$GO vet ./...

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then echo "gofmt needed:"; echo "$unformatted"; exit 1; fi

step "import directions"
scripts/depcheck.sh

if [ ! -x "$LINT" ]; then
  step "building golangci-lint $VERSION (about a minute, once; cached in $TOOLS)"
  mkdir -p "$TOOLS/golangci-lint-build"
  GOBIN="$TOOLS/golangci-lint-build" GOFLAGS=-mod=mod $GO install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$VERSION"
  mv "$TOOLS/golangci-lint-build/golangci-lint" "$LINT"
fi
step "golangci-lint $VERSION (.golangci.yml)"
"$LINT" run ./...

step "go mod tidy"
if ! diff=$($GO mod tidy -diff); then
  echo "go.mod/go.sum are not tidy; run go mod tidy:"
  echo "$diff"
  exit 1
fi
step "all rules hold"
