# The two commands: `make dev` (try it) and `make test` (what CI runs).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: dev test build release install check-fmt lint bench bench-anchors bench-instructions bench-tcp bench-upgrade prereqs fuzz

prereqs:
	@./scripts/prereqs.sh

## run the gateway on an embedded default: dev issuer + demo backend, prints a curl command
dev: prereqs
	$(CARGO) run --bin cc-gateway -- dev

## unit, property and integration tests (real processes on loopback)
test: prereqs
	$(CARGO) test --all-targets

build: prereqs
	$(CARGO) build

release: prereqs
	$(CARGO) build --release

## put `cc-gateway` on the PATH (a release build in ~/.cargo/bin)
install: prereqs
	$(CARGO) install --path . --locked

lint: prereqs
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## benchmarks (not tests): see bench/README.md
bench: prereqs
	PREREQS_EXTRA="wrk nginx h2load:nghttp2-client openssl" ./scripts/prereqs.sh
	./bench/run.sh
	./bench/budgets.sh
	./bench/tls.sh

## cc-gateway next to nginx, hyper and HAProxy in the shared anchors harness, with the issue's
## ratios (BENCH_CACHE_OFF=1, BENCH_ACCESS_LOG=1, BENCH_TLS=1 for the other modes)
bench-anchors: prereqs
	./bench/anchors.sh

## requests lost while `run --upgrade` replaces the gateway under load (bench/upgrade.sh; must be 0)
bench-upgrade: prereqs
	PREREQS_EXTRA="wrk nginx" ./scripts/prereqs.sh
	./bench/upgrade.sh

## user-space instructions and simulated cache misses per request under callgrind (bench/instructions.sh)
bench-instructions: prereqs
	PREREQS_EXTRA="wrk nginx valgrind" ./scripts/prereqs.sh
	./bench/instructions.sh

## pgbench -S direct vs through an L4 route, `connect` and a tunnel (bench/tcp.sh)
bench-tcp: prereqs
	./bench/tcp.sh

## fuzz every parser we wrote for FUZZ_SECONDS each (default 60), or only FUZZ_TARGET
## (jwt_decode, jwks_parse, config_parse, sse_scan, traceparent_parse, proxy_header);
## needs nightly + cargo-fuzz
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $${FUZZ_TARGET:-$$(cargo +nightly fuzz list)}; do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$${FUZZ_SECONDS:-60} || exit 1; done
