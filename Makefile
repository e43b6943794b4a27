# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# libtorch, the Cargo target folder and the demo corpus are cached under $(CACHE).
# Tests use PostgreSQL on 127.0.0.1:5432 (MIXPOOL_TEST_DATABASE_URL to point elsewhere) and
# an S3 server that scripts/s3.sh starts on 127.0.0.1:18333.

SHELL := bash
CACHE ?= $(HOME)/.cache/mixpool
export MIXPOOL_CACHE := $(CACHE)
export CARGO_TARGET_DIR ?= $(CACHE)/target
BIN := $(CARGO_TARGET_DIR)/release/mixpool
# Fetched once; later runs only check the version.
TORCH = export LIBTORCH=$$(scripts/libtorch.sh)
CORPUS = export MIXPOOL_CORPUS=$$(scripts/corpus.sh)

.PHONY: demo test experiment bench bench-service bench-sweep build install lint gpu-bundle chaos soak screenshots

build:
	$(TORCH) && cargo build --release

## `mixpool` on the PATH: $(PREFIX)/bin (default ~/.local/bin), with bash, zsh and fish
## completions. The binary keeps an rpath to the cached libtorch, so it runs from anywhere
## while $(CACHE) stays.
PREFIX ?= $(HOME)/.local
install: build
	install -D -m 755 $(BIN) $(PREFIX)/bin/mixpool
	mkdir -p $(PREFIX)/share/bash-completion/completions $(PREFIX)/share/zsh/site-functions $(PREFIX)/share/fish/vendor_completions.d
	$(PREFIX)/bin/mixpool completions bash > $(PREFIX)/share/bash-completion/completions/mixpool
	$(PREFIX)/bin/mixpool completions zsh > $(PREFIX)/share/zsh/site-functions/_mixpool
	$(PREFIX)/bin/mixpool completions fish > $(PREFIX)/share/fish/vendor_completions.d/mixpool.fish
	@echo "installed $(PREFIX)/bin/mixpool"

## The service on the demo corpus at http://127.0.0.1:8080 (PostgreSQL started where none
## answers; database mixpool_demo unless DATABASE_URL is set), left running.
demo: build
	scripts/postgres.sh
	$(CORPUS) && export DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/mixpool_demo} && \
	$(BIN) demo --data $(CACHE)/demo-service $(ARGS)

## The paper's protocol through the service on the eight-domain corpus; the report goes to
## docs/results/ (database mixpool_paper unless DATABASE_URL is set). ARGS="--preset
## base-130m --device cuda" is the GPU version.
experiment: build
	scripts/postgres.sh
	$(CORPUS) && export DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/mixpool_paper} && \
	$(BIN) experiment paper --listen 127.0.0.1:0 --data $(CACHE)/paper $(ARGS)

## Every test, on the CPU, against a real PostgreSQL (started here where none answers), a
## real S3 server (SeaweedFS on loopback, started for the run), the API checkers from PyPI
## (openapi-spec-validator, schemathesis; a venv made once in the cache) and headless
## Chromium for the dashboard (Debian's chromium and chromium-driver, installed once); then
## the deployment manifests checked offline (scripts/deploy-check.sh) and the chaos run's
## short form (4 kills, one of them of an API server; one restart of each backing server).
test:
	scripts/postgres.sh
	scripts/chromium.sh
	$(TORCH) && $(CORPUS) && S3=$$(scripts/s3.sh) && export MIXPOOL_TEST_S3_ENDPOINT=$$S3 && \
	export MIXPOOL_TEST_API_TOOLS=$$(scripts/api-tools.sh) && cargo test --release && \
	scripts/deploy-check.sh $(BIN) && \
	cargo build --release --example chaos && \
	MIXPOOL_BIN=$(BIN) MIXPOOL_WEED=$(CACHE)/s3-venv/bin/weed \
	$(CARGO_TARGET_DIR)/release/examples/chaos 4 2024 15; \
	status=$$?; scripts/postgres.sh cleanup; scripts/s3.sh stop; exit $$status

## The README's pictures: the dashboard's browser tests, saving their screenshots into
## docs/screenshots instead of the target folder.
screenshots:
	scripts/postgres.sh
	scripts/chromium.sh
	$(TORCH) && $(CORPUS) && export MIXPOOL_SCREENSHOTS=$(CURDIR)/docs/screenshots && \
	cargo test --release --test service dashboard::; \
	status=$$?; scripts/postgres.sh cleanup; exit $$status

## Engine throughput beside a Python PyTorch reference (sets up its venv once).
bench:
	$(TORCH) && $(CORPUS) && cargo bench --bench engine -- $(ARGS)

## What bench/gpu.sh needs on a GPU machine, compressed into gpu-bundle/ (ignored by git; a
## device's transfer is limited): the binaries, the corpus and this machine's PostgreSQL
## server packed with its libraries (once).
gpu-bundle:
	$(TORCH) && $(CORPUS) && cargo build --release --bins --example gpu_bench && \
	rm -rf gpu-bundle/bin && mkdir -p gpu-bundle/bin && \
	for b in sweep choices; do \
		exe=$$(cargo bench --bench $$b --no-run --message-format=json | python3 -c \
			'import json,sys; print(*[j["executable"] for j in map(json.loads, sys.stdin) if j.get("target",{}).get("name") == sys.argv[1] and j.get("executable")])' $$b) && \
		cp $$exe gpu-bundle/bin/$$b || exit 1; \
	done && \
	cp $(BIN) $(CARGO_TARGET_DIR)/release/examples/gpu_bench gpu-bundle/bin/ && \
	strip gpu-bundle/bin/* && tar -C gpu-bundle -cJf gpu-bundle/bin.tar.xz bin && rm -rf gpu-bundle/bin && \
	tar -C $$MIXPOOL_CORPUS/.. -cJf gpu-bundle/corpus.tar.xz $$(basename $$MIXPOOL_CORPUS)
	[ -f gpu-bundle/pg.tar.xz ] || scripts/pg-bundle.sh gpu-bundle/pg.tar.xz

## Cached score latency and throughput beside a bare axum endpoint (needs PostgreSQL).
bench-service:
	scripts/postgres.sh
	$(TORCH) && cargo bench --bench score -- $(ARGS)

## Sweep cost: 255 mixtures as one sweep, as one score job each, and by the earlier
## file-based steps, side by side (needs PostgreSQL).
bench-sweep:
	scripts/postgres.sh
	$(TORCH) && $(CORPUS) && cargo bench --bench sweep -- $(ARGS)

lint:
	$(TORCH) && cargo fmt --check && cargo clippy --release --all-targets -- -D warnings

## The chaos run (`make test` runs a short form): a pool built undisturbed, then again behind
## two API servers by two workers, with 100 SIGKILLs (one in four of an API server) while
## PostgreSQL restarts twice and the S3 server once (both the run's own, on ports of their
## own) under client requests; checks and prints the figures. ARGS="KILLS SEED DEADLINE_MIN".
chaos: build
	$(TORCH) && $(CORPUS) && cargo build --release --example chaos && \
	scripts/s3.sh >/dev/null && scripts/s3.sh stop && \
	MIXPOOL_BIN=$(BIN) MIXPOOL_WEED=$(CACHE)/s3-venv/bin/weed \
	$(CARGO_TARGET_DIR)/release/examples/chaos $(ARGS)

## The soak (not in `make test`): one API server and two workers on the machine's
## PostgreSQL (database chaos_soak, made anew) and a file store, under a steady mix of
## requests for MINUTES (default 30); prints requests per second, memory, open files and
## database connections every minute and the latency per route, and fails on a 5xx or on
## growth. ARGS="MINUTES CLIENTS" overrides both.
MINUTES ?= 30
soak: build
	scripts/postgres.sh
	$(TORCH) && $(CORPUS) && cargo build --release --example soak && \
	MIXPOOL_BIN=$(BIN) $(CARGO_TARGET_DIR)/release/examples/soak $(or $(ARGS),$(MINUTES))
