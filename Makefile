# minimesh: build, test and measure. `make help` lists the targets.

SHELL := /bin/bash
GO ?= go
MODULE := github.com/minimesh/minimesh
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X $(MODULE)/wellknown.Version=$(VERSION)
BIN_DIR := $(CURDIR)/bin
TOOLS_DIR := $(or $(MINIMESH_TOOLS_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/minimesh/tools)
TEST_TIMEOUT ?= 30m
FUZZTIME ?= 20s
BENCH_FLAGS ?=
# The harness's runs under make bench: the rate sweep of issue 16 with the
# HTTP_PROXY path, and the figures docs/benchmarks-latency.png and
# docs/benchmarks-cost.png; BENCH_FLAGS come after and override them
# (e.g. BENCH_FLAGS="-sweep '' -http-proxy=false -plot=false").
# The sidecar runs as injected (one P, GOGC=50: the harness's default
# -sidecar-env); "two-cores" is it with the peers' two workers, for the
# maximum rate.
BENCH_SWEEP_FLAGS ?= -sweep 100,1000,5000 -http-proxy -plot -plot-dir docs -variant two-cores=GOMAXPROCS=2
GOBENCH_FLAGS ?= -benchtime 1s
RESULTS_DIR := e2e/bench/results

# The e2e tests and the benchmark find minimesh's binaries and the tools
# through these (see e2e/internal/tools).
export MINIMESH_TOOLS_DIR := $(TOOLS_DIR)
export MINIMESH_BIN_DIR := $(BIN_DIR)
export PATH := $(TOOLS_DIR)/bin:$(PATH):/usr/local/sbin:/usr/sbin:/sbin

.PHONY: all build test e2e bench demo demo-cluster lint tools fuzz clean help cluster-up cluster-down

all: build

help:
	@echo 'build  bin/minimesh-proxy and bin/minimesh (static, VERSION=$(VERSION))'
	@echo 'image  dist/minimesh-image.tar and dist/minimesh-init-image.tar, the Dockerfile'"'"'s images without Docker ($(IMAGE_REF) and its -init), for ctr images import'
	@echo 'test   tools, build, go vet and every test with -race (the e2e ones too)'
	@echo 'e2e    only the end-to-end tests (./e2e/...)'
	@echo 'bench  the benchmark harness with its rate sweep and figures (BENCH_FLAGS=...), the Go benchmarks and the webhook figures'
	@echo 'demo   build bin/minimesh-demo and run it: the sidecar breaks a flaky upstream'"'"'s circuit (~1 min)'
	@echo 'demo-cluster  the demo'"'"'s story in a one-node cluster with the chart installed (root; ~2 min)'
	@echo 'lint   gofmt, go vet, staticcheck'
	@echo 'tools  install missing tools (scripts/tools.sh)'
	@echo 'fuzz   every Fuzz target for FUZZTIME (default 20s) each'
	@echo 'clean  remove build output (bin, dist, e2e/.work), stopping a cluster-up cluster first'
	@echo 'cluster-up    a one-node cluster that runs pods, minimesh image imported (root; prints KUBECONFIG)'
	@echo 'cluster-down  stop it and clean up the host'

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN_DIR)/minimesh-proxy ./proxy/cmd/minimesh-proxy
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN_DIR)/minimesh ./injector/cmd/minimesh

# The Dockerfile's images, built without Docker (e2e/internal/image): OCI
# layout tars for `ctr -n k8s.io images import`. The init image (the
# Dockerfile's init stage: iptables interception's minimesh-init) holds
# this host's Debian iptables (scripts/tools.sh installs it); the
# injector's default init image is the proxy image's repository + -init,
# same tag (docs/install.md).
IMAGE_REF ?= minimesh.local/minimesh:$(VERSION)
INIT_IMAGE_REF ?=
.PHONY: image
image: build
	CGO_ENABLED=0 $(GO) run ./e2e/internal/image/cmd/minimesh-image -bin $(BIN_DIR) -ref $(IMAGE_REF) -out dist/minimesh-image.tar \
		-init-ref "$(INIT_IMAGE_REF)" -init-out dist/minimesh-init-image.tar

tools:
	@bash scripts/tools.sh

# The outbound suites run again on each way out of the default data path:
# net/http's server alone (--server=std, not the lean loop), http.Transport
# for every request (--std-transport, not the fast path), and net.Conn's own
# reads and writes (--raw-io=false).
test: tools build
	$(GO) vet ./...
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...
	MINIMESH_TEST_SERVER=std CGO_ENABLED=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./proxy/outbound/ ./proxy/sidecar/
	MINIMESH_TEST_TRANSPORT=std CGO_ENABLED=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./proxy/outbound/ ./proxy/sidecar/
	MINIMESH_TEST_RAWIO=off CGO_ENABLED=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./proxy/outbound/ ./proxy/sidecar/

e2e: tools build
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./e2e/...

bench: build tools
	CGO_ENABLED=0 $(GO) run ./e2e/bench -out $(RESULTS_DIR)/latest.md $(BENCH_SWEEP_FLAGS) $(BENCH_FLAGS)
	mkdir -p $(RESULTS_DIR)
	set -o pipefail; $(GO) test -run '^$$' -bench . -benchmem $(GOBENCH_FLAGS) ./policy/... ./proxy/... \
		| tee $(RESULTS_DIR)/go-bench.txt
	set -o pipefail; CGO_ENABLED=0 $(GO) test -run '^$$' -bench PodCreate -benchtime 10x -count 5 ./e2e/injector/ \
		| tee $(RESULTS_DIR)/injector.txt
	set -o pipefail; CGO_ENABLED=0 $(GO) test -run '^$$' -bench ApplyToSidecar -benchtime 50x -count 5 ./e2e/controlplane/ \
		| tee $(RESULTS_DIR)/controlplane-apply.txt
	set -o pipefail; CGO_ENABLED=0 $(GO) test -run '^$$' -bench PushTo1000 -benchtime 10x -count 3 ./e2e/controlplane/ \
		| tee $(RESULTS_DIR)/controlplane-scale.txt
	set -o pipefail; CGO_ENABLED=0 $(GO) test -run '^$$' -bench EDSRollTo1000 -benchtime 3x -timeout 30m ./e2e/controlplane/ \
		| tee $(RESULTS_DIR)/controlplane-eds-roll.txt
	set -o pipefail; MINIMESH_CLUSTER_FIGURES=1 CGO_ENABLED=0 $(GO) test -count=1 -run 'TestClusterFigures|TestBalancingInACluster' -v ./e2e/cluster/ \
		| tee $(RESULTS_DIR)/cluster.txt

# The demo is built and exec'd rather than `go run`: go run passes no
# SIGTERM on, and the demo and its sidecar ran on after it died. exec
# makes the demo make's child itself, so that a SIGTERM to make (which
# make forwards) or to its child stops the demo, and the demo its sidecar.
demo: build
	$(GO) build -o $(BIN_DIR)/minimesh-demo ./demo
	exec $(BIN_DIR)/minimesh-demo -proxy-bin $(BIN_DIR)/minimesh-proxy

# The same story in Kubernetes: a one-node cluster of its own, the chart,
# an injected tenant and nominatim-service; the cluster stops at the end.
demo-cluster: tools build
	@mkdir -p $(CLUSTER_DIR)
	CGO_ENABLED=0 $(GO) build -o $(CLUSTER_DIR)/minimesh-cluster ./e2e/internal/cluster/cmd/minimesh-cluster
	$(CLUSTER_DIR)/minimesh-cluster demo -dir $(CLUSTER_DIR)

# lint runs every check and fails at the end if any failed.
lint:
	@bash scripts/tools.sh staticcheck
	@rc=0; \
	out="$$(find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*' -print0 | xargs -0 gofmt -l)"; \
	if [[ -n "$$out" ]]; then echo "gofmt: these files need formatting (gofmt -w):"; echo "$$out"; rc=1; fi; \
	echo "$(GO) vet ./..."; $(GO) vet ./... || rc=1; \
	echo "$(GO) vet -tags probe ./proxy/outbound ./proxy/leanhttp"; $(GO) vet -tags probe ./proxy/outbound ./proxy/leanhttp || rc=1; \
	echo "staticcheck ./..."; "$(TOOLS_DIR)/bin/staticcheck" ./... || rc=1; \
	exit $$rc

fuzz:
	@bash scripts/fuzz.sh $(FUZZTIME)

# e2e/.work holds a cluster-up cluster's data (etcd, containerd, the
# kubelet) and its pid file: removed under a cluster that runs, they left
# it running without them, and cluster-down unable to find it. So a
# cluster that runs from there (its pid file names a process whose
# arguments include the directory, made absolute as minimesh-cluster
# makes it) is stopped first, and nothing is removed if it does not stop.
clean:
	@pid="$$(cat $(CLUSTER_DIR)/pid 2>/dev/null)"; \
	if [[ -n "$$pid" ]] && grep -qzxF -- "$(abspath $(CLUSTER_DIR))" /proc/"$$pid"/cmdline 2>/dev/null; then \
		echo "make clean: the cluster of make cluster-up runs from $(CLUSTER_DIR) (pid $$pid): stopping it first"; \
		$(MAKE) --no-print-directory -f $(abspath $(firstword $(MAKEFILE_LIST))) cluster-down || { echo "make clean: the cluster did not stop, so nothing was removed: make cluster-down" >&2; exit 1; }; \
	fi
	rm -rf $(BIN_DIR) dist e2e/.work

# A one-node cluster that runs pods (e2e/internal/cluster), in the
# background; `make cluster-down` stops it and undoes its changes to the host.
CLUSTER_DIR ?= $(CURDIR)/e2e/.work/cluster

cluster-up: tools build
	@mkdir -p $(CLUSTER_DIR)
	CGO_ENABLED=0 $(GO) build -o $(CLUSTER_DIR)/minimesh-cluster ./e2e/internal/cluster/cmd/minimesh-cluster
	$(CLUSTER_DIR)/minimesh-cluster up -dir $(CLUSTER_DIR)

cluster-down:
	@if [[ -x $(CLUSTER_DIR)/minimesh-cluster ]]; then $(CLUSTER_DIR)/minimesh-cluster down -dir $(CLUSTER_DIR); \
	else $(GO) run ./e2e/internal/cluster/cmd/minimesh-cluster down -dir $(CLUSTER_DIR); fi
