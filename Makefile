# Ringmesh: the two commands a new user needs are `make dev` and `make test`.
# Both install what is missing first (Debian packages, cargo tools), so they
# work on a fresh Debian machine with the Rust toolchain.

SHELL := /bin/bash
CARGO ?= cargo
DEV_PORT ?= 5060
DEV_USERS ?= 10
# Seconds of coverage-guided fuzzing in `make test` (docs/fuzzing.md).
FUZZ_SECONDS ?= 60

# Debian packages the build needs: etcd-client's build script runs protoc,
# which needs google/protobuf/*.proto from libprotobuf-dev.
BUILD_DEBS := protobuf-compiler libprotobuf-dev
# Debian packages the tests drive (real peers and servers, never mocks).
TEST_DEBS := $(BUILD_DEBS) sip-tester sipsak baresip-core etcd-server etcd-client prometheus kamailio procps iproute2 python3-venv openssl chromium libnss3-tools kamailio-tls-modules coturn debootstrap podman runc dnsmasq-base
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Installs the Debian packages in $(1) that are missing.
define apt_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

.PHONY: dev test test-fast build release softphone image deps-build deps-test lint ops soak upgrade fuzz bench clean help

help:
	@echo "make dev        build and run a local farm with demo subscribers"
	@echo "make test       install what is missing, then run every test (both tiers)"
	@echo "make test-fast  the fast tier only: needs nothing but the build's packages"

# Runs a suite and prints how long it took.
define timed
	@start=$$(date +%s); $(1); rc=$$?; \
	echo "== suite $(2): $$(( $$(date +%s) - start )) s (exit $$rc)"; exit $$rc
endef

## Run a local farm on the embedded default store with demo subscribers,
## and the browser softphone on https://127.0.0.1:$(DEV_PORT)+800.
dev: deps-build release softphone
	./target/release/ringmesh dev --sip-port $(DEV_PORT) --users $(DEV_USERS) --softphone services/softphone

build:
	$(CARGO) build --workspace --all-targets

release:
	$(CARGO) build --release -p ringmesh -p ringmesh-load

deps-build:
	$(call apt_missing,$(BUILD_DEBS))

## The browser softphone: its npm packages, pinned by package-lock.json,
## and its bundle (services/softphone/dist). Node.js and npm come from
## Debian when the machine has none.
softphone:
	@command -v npm >/dev/null || { $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm; }
	cd services/softphone && npm ci --no-audit --no-fund --loglevel=error && npm run build

## Install what the tests need, only what is missing.
deps-test:
	$(call apt_missing,$(TEST_DEBS))
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --quiet

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace

## Every test, both tiers: lint; the fast tier (unit, property, simulator
## and in-process tests) and the slow tier (`#[ignore = "slow: …"]`: real
## processes, sipp, baresip, etcd; the overload tests run the release build,
## as a carrier does), where a missing tool fails the run; the operations
## tests (chart, dashboards and alerts against a live farm and a real
## Prometheus, Terraform); then a bounded fuzzing run. Each suite's wall
## time is printed.
test: deps-test lint release softphone image
	$(call timed,$(CARGO) test --workspace --no-fail-fast -- --include-ignored,cargo test (both tiers))
	$(call timed,$(MAKE) ops,ops)
	$(call timed,$(MAKE) soak SOAK_MINUTES=3,soak (3 minutes))
	$(call timed,python3 loadtest/soak/rejoin.py --rounds 6,rejoin (6 restarts of the founder))
	$(call timed,$(MAKE) upgrade,rolling upgrade)
	$(call timed,$(MAKE) fuzz,fuzz)

## The chaos soak (loadtest/soak/soak.py): SOAK_MINUTES of steady load on
## a 5-node farm while a supernode is killed, frozen or restarted every
## minute (seeded); fails if a binding is lost or a node's memory grows.
## `make test` runs a 3-minute one.
SOAK_MINUTES ?= 30
soak: deps-test release
	python3 loadtest/soak/soak.py --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

## A rolling upgrade under load (loadtest/soak/soak.py --upgrade-from): a
## 5-node farm of the previous release (the commit in
## loadtest/upgrade/PREVIOUS_RELEASE, built from this clone's history)
## upgraded node by node to this build; fails if a binding is lost, a node
## is left behind, or an operation fails otherwise than with a 503.
upgrade: deps-test
	CARGO="$(CARGO)" loadtest/upgrade/build-previous.sh
	$(MAKE) release
	python3 loadtest/soak/soak.py --upgrade-from $${CARGO_TARGET_DIR:-target}/upgrade/bin --minutes 4 $(UPGRADE_ARGS)

## The container image, built here with no registry (docs/operations.md):
## a debootstrap'd Debian bookworm root and the release binary, imported
## into podman as localhost/ringmesh:VERSION, with its SPDX SBOM in
## target/image/. The slow tier runs a farm of its containers.
image: deps-test release
	helm/image/build.sh $${CARGO_TARGET_DIR:-target}

## The fast tier alone: `cargo test` needs only the build's Debian packages.
test-fast: deps-build
	$(call timed,$(CARGO) test --workspace --no-fail-fast,cargo test (fast tier))

## The Helm chart, dashboards, alerts and Terraform (helm/tests/run.sh); the
## dashboard pictures of docs/img are redrawn only with OPS_IMG=docs/img.
OPS_IMG ?= target/ops-img
ops:
	RINGMESH_OPS_IMG=$(OPS_IMG) helm/tests/run.sh

fuzz:
	services/sip/fuzz/run.sh $(FUZZ_SECONDS)

## Ringmesh vs Kamailio side by side (one node each, and a 3-node farm vs
## a 3-node Kamailio DMQ cluster): servers on CPU 1, load on CPU 0, at
## normal scheduling priority (as a pod runs), about 40 minutes; the table
## goes to docs/benchmarks.md. `make bench BENCH_ARGS=--quick` is an
## 8-minute smoke run. Then SIP over TLS against Kamailio's tls module
## (loadtest/bench/tls.py, about 5 minutes; TLS_BENCH_ARGS=--quick).
bench: deps-test release
	python3 loadtest/bench/bench.py $(BENCH_ARGS)
	python3 loadtest/bench/tls.py $(TLS_BENCH_ARGS)

clean:
	$(CARGO) clean
	rm -rf .dev
