# HyperSDK fleet. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/hypersdk/hypersdk/shared/version.Version=$(VERSION) -X github.com/hypersdk/hypersdk/shared/version.Commit=$(COMMIT)
BINARIES := $(notdir $(wildcard cmd/*))
TEST_TIMEOUT ?= 18m

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: setup
setup: ## Install host packages, users, and start libvirtd (idempotent)
	@scripts/host-setup.sh

.PHONY: build
build: ## Build every binary into bin/
	@mkdir -p bin
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/...

.PHONY: test
test: setup build ## Run every test (unit, in-process cluster, real processes, libvirt)
	$(GO) vet ./...
	FUZZTIME=3s scripts/fuzz.sh
	HYPERSDK_BIN=$(CURDIR)/bin $(GO) test -timeout $(TEST_TIMEOUT) -count=1 ./...

.PHONY: fuzz
fuzz: ## Fuzz every decoder and parser longer (FUZZTIME=60s by default)
	FUZZTIME=$${FUZZTIME:-60s} scripts/fuzz.sh

.PHONY: demo
demo: setup build ## Migrate a simulated vSphere VM to a libvirt domain on this machine
	@scripts/demo.sh

.PHONY: bench
bench: setup build ## Run the benchmarks (cluster throughput, queries, failover, transfers)
	HYPERSDK_BIN=$(CURDIR)/bin HYPERSDK_BENCH=1 $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./test/bench/... | tee bench.out

.PHONY: chaos
chaos: setup build ## Long fault runs: chaos, partitions, broken transfers, restarts, 20k-job load (~10 min, root)
	set -o pipefail; HYPERSDK_BIN=$(CURDIR)/bin HYPERSDK_CHAOS=long $(GO) test -count=1 -v -timeout 60m \
		-run '^(TestChaos|TestPartitionLeader|TestPartitionAgent|TestBrokenTransfers|TestDiskFull|TestRestartSafety|TestLoad)$$' ./test/ \
		| grep --line-buffered -v 'TLS handshake error' | tee chaos.out

.PHONY: packages
packages: build ## Build the agent and controller .deb and .rpm packages into dist/
	$(GO) run ./packaging/cmd/mkpkg -root . -bin bin -out dist -version "$(VERSION)"

.PHONY: screenshot
screenshot: ## PNG of the dashboard: of URL=http://controller:8080, else of a test fleet (SCREENSHOT=file.png)
	set -o pipefail; HYPERSDK_SCREENSHOT=$(abspath $(or $(SCREENSHOT),controller/web/dashboard.png)) HYPERSDK_SCREENSHOT_URL=$(URL) \
		$(GO) test -count=1 -run '^$(if $(URL),TestDashboardURL,TestDashboardLive)$$' -v ./controller/web | grep -E 'screenshot|^(ok|FAIL|---)'

.PHONY: clean
clean: ## Remove build outputs
	rm -rf bin dist bench.out chaos.out
