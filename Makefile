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
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: setup
setup: ## Install host packages, users, and start libvirtd (idempotent)
	@scripts/host-setup.sh

.PHONY: build
build: ## Build every binary into bin/
	@mkdir -p bin
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/...

.PHONY: guest-image
guest-image: setup ## Build the bootable Debian guest the boot tests and the demo migrate (once; cached until its recipe changes)
	@scripts/guest-image.sh >/dev/null

# Every test agent shares one virtualisation decision per boot of the host (see
# agent/capacity/virt.go); deciding it before the tests keeps the first migrations from
# waiting for the probe.
VIRT_PROBE_FILE := $(or $(TMPDIR),/tmp)/hypersdk-test-virt-probe.json
define probe_virt
	@d=$$(mktemp -d) && bin/hypersdk-agent --probe-virtualization --storage-dir $$d --virt-probe-file $(VIRT_PROBE_FILE) \
		| sed 's/^/virtualisation: /'; rm -rf $$d
endef

.PHONY: test
test: setup build guest-image ## Run every test (unit, in-process cluster, real processes, libvirt, a migrated guest's boot)
	$(GO) vet ./...
	FUZZTIME=3s scripts/fuzz.sh
	$(probe_virt)
	HYPERSDK_GUEST_IMAGE=$$(scripts/guest-image.sh 2>/dev/null) HYPERSDK_BIN=$(CURDIR)/bin $(GO) test -timeout $(TEST_TIMEOUT) -count=1 ./...

.PHONY: test-guest
test-guest: setup build guest-image ## Convert a migrated guest with virt-v2v and boot it on virtio (7-15 min under TCG, a few with KVM)
	$(probe_virt)
	set -o pipefail; HYPERSDK_GUEST_CONVERSION=1 HYPERSDK_GUEST_IMAGE=$$(scripts/guest-image.sh 2>/dev/null) HYPERSDK_BIN=$(CURDIR)/bin \
		$(GO) test -count=1 -v -timeout 60m -run '^TestGuestConversion$$' ./test/ | grep --line-buffered -v 'TLS handshake error' | tee test-guest.out

.PHONY: fuzz
fuzz: ## Fuzz every decoder and parser longer (FUZZTIME=60s by default)
	FUZZTIME=$${FUZZTIME:-60s} scripts/fuzz.sh

.PHONY: demo
demo: setup build guest-image ## Migrate a simulated vSphere VM (a bootable Debian guest) to this machine and boot it
	@scripts/demo.sh

.PHONY: bench
bench: setup build guest-image ## Run the benchmarks (cluster throughput, queries, failover, transfers, guest build/conversion/boot)
	$(probe_virt)
	set -o pipefail; (HYPERSDK_GUEST_IMAGE=$$(scripts/guest-image.sh 2>/dev/null) HYPERSDK_BIN=$(CURDIR)/bin HYPERSDK_BENCH=1 $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./test/bench/... && \
		HYPERSDK_BENCH_SIZE_MB=1024 $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./agent/transfer/) | tee bench.out

.PHONY: chaos
chaos: setup build ## Long fault runs: chaos, partitions, broken transfers, restarts, 20k-job load (~10 min, root)
	set -o pipefail; HYPERSDK_BIN=$(CURDIR)/bin HYPERSDK_CHAOS=long $(GO) test -count=1 -v -timeout 60m \
		-run '^(TestChaos|TestPartitionLeader|TestPartitionAgent|TestBrokenTransfers|TestDiskFull|TestRestartSafety|TestLoad)$$' ./test/ \
		| grep --line-buffered -v 'TLS handshake error' | tee chaos.out

.PHONY: packages
packages: build ## Build the agent, controller and cli (hyperctl) .deb and .rpm packages into dist/
	$(GO) run ./packaging/cmd/mkpkg -root . -bin bin -out dist -version "$(VERSION)"

.PHONY: screenshot
screenshot: ## PNG of the dashboard: of URL=http://controller:8080, else of a test fleet (SCREENSHOT=file.png)
	set -o pipefail; HYPERSDK_SCREENSHOT=$(abspath $(or $(SCREENSHOT),controller/web/dashboard.png)) HYPERSDK_SCREENSHOT_URL=$(URL) \
		$(GO) test -count=1 -run '^$(if $(URL),TestDashboardURL,TestDashboardLive)$$' -v ./controller/web | grep -E 'screenshot|^(ok|FAIL|---)'

.PHONY: clean
clean: ## Remove build outputs
	rm -rf bin dist bench.out chaos.out test-guest.out
