# Targets carry ## help text: `make help` lists them.
GO ?= go
FUZZTIME ?= 10m
GOLANGCI_LINT_VERSION ?= v2.6.2

.PHONY: help build run test test-e2e test-short lint fmt bench bench-orthanc bench-transfer fuzz demo compose-check soak soak-ci

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/gateway
	$(GO) build -o bin/gateway ./cmd/gateway

run: ## run the gateway with the embedded default (./data, 127.0.0.1:8080)
	$(GO) run ./cmd/gateway serve

test: ## install and start redis-server + MinIO on loopback, vet, run every test with -race, stop them
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	scripts/testenv.sh $(GO) test -race -count=1 -timeout 45m ./...
	$(MAKE) test-e2e

test-e2e: ## browser test of the admin page against a real gateway pair (Debian chromium + playwright-core; installs them if missing)
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v firefox-esr >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq firefox-esr >/dev/null || echo "firefox-esr not installed: its smoke test is skipped"; }
	e2e/run.sh

test-short: ## tests without the race detector (faster), servers started as in make test
	scripts/testenv.sh $(GO) test -count=1 ./...

lint: ## go vet, gofmt, the import directions (scripts/depcheck.sh), golangci-lint $(GOLANGCI_LINT_VERSION) with .golangci.yml, go mod tidy check
	GO=$(GO) GOLANGCI_LINT_VERSION=$(GOLANGCI_LINT_VERSION) scripts/lint.sh

fmt: ## gofmt the tree
	gofmt -w $$(git ls-files '*.go')

bench: ## storage benchmarks against the real servers (figures in README)
	scripts/testenv.sh $(GO) test -run '^$$' -bench . -benchtime=3x ./storage/...

fuzz: ## run every fuzz target (found with go test -list) for FUZZTIME each (default 10m); new findings land in testdata/fuzz as corpus
	GO=$(GO) scripts/fuzz.sh $(FUZZTIME)

demo: build ## two centres on loopback (Redis + MinIO started here), sample studies stored at hampshire, one forwarded to surrey; DEMO_EXIT=1 to stop after the check
	scripts/testenv.sh $(GO) run ./cmd/demo -gateway bin/gateway

compose-check: ## validate docker-compose.yml (Debian's docker-compose, no engine needed)
	@command -v docker-compose >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
	docker-compose -f docker-compose.yml config -q

SOAK ?= 10m
soak: ## two gateways on their own Redis+MinIO under mixed traffic and injected faults for SOAK (default 10m); report on stdout
	scripts/testenv.sh $(GO) run ./cmd/soak -duration $(SOAK)

soak-ci: ## the 2-minute soak that CI runs
	scripts/testenv.sh $(GO) run ./cmd/soak -duration 2m

bench-orthanc: ## gateway (embedded, Redis+MinIO) vs Orthanc+DICOMweb on the same data: STOW, 1 GiB peak RSS, QIDO, WADO tables (~15-20 min; BENCH_FLAGS=-small for ~1 min)
	scripts/bench.sh $(BENCH_FLAGS)

bench-transfer: ## forward studies gateway→gateway and Orthanc→Orthanc on loopback and through a 20 ms / 1 Gbit/s WAN emulator, beside link, disk and MinIO rates (~3 min; BENCH_FLAGS=-big-mib=1024 ~8 min, BENCH_FLAGS=-small <1 min)
	$(GO) build -o bin/gateway ./cmd/gateway
	scripts/testenv.sh $(GO) run ./cmd/bench transfer -gateway bin/gateway $(BENCH_FLAGS)
