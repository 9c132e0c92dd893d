# nix-binary-cache: everyday commands. `make run` and `make test` work on a fresh machine.

CARGO ?= cargo
PORT ?= 8080
CACHE ?= tests/fixtures/cache-signed

.PHONY: run test deps check-fmt clippy unit build script-tests fixture bench static soak replicas clean

## Serve the small real cache shipped in the repo (signed with tests/fixtures/keys/test-key.pub).
run:
	$(CARGO) build --release
	@echo "trusted-public-keys = $$(cat tests/fixtures/keys/test-key.pub)"
	./target/release/nix-binary-cache $(CACHE) -p $(PORT)

## Everything CI checks: formatting, lints, unit, HTTP and real-Nix-client tests.
test: deps check-fmt clippy build script-tests
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --doc
	scripts/check-systemd-units.sh target/debug/nix-binary-cache
	scripts/check-landing.sh target/debug/nix-binary-cache
	NBC_BIN=target/debug/nix-binary-cache scripts/replicas-test.sh --quick
	scripts/fuzz-smoke.sh

## Install the real Nix client (Debian's nix-bin) when missing; fail clearly when we cannot.
deps:
	@scripts/ensure-deps.sh

## Unit tests of the Python under scripts/ (nix32/NAR helper, bench and soak reports): a second.
script-tests:
	python3 -m unittest discover -s scripts -t scripts

check-fmt:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path examples/embed/Cargo.toml -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --manifest-path examples/embed/Cargo.toml --target-dir target/embed -- -D warnings

build:
	$(CARGO) build --all-targets
	$(CARGO) build --manifest-path examples/embed/Cargo.toml --target-dir target/embed

## Rebuild tests/fixtures with the real `nix copy` (needs root and nix-bin).
fixture:
	scripts/make-fixture.sh

## Side-by-side benchmark against nginx on the same synthetic cache (not part of `make test`).
bench:
	scripts/bench.sh $(BENCH_ARGS)

## Ten minutes of mixed load with uploads and a concurrent `nix copy --to file://` (not in `make test`).
soak:
	$(CARGO) build --release
	scripts/soak.sh $(SOAK_ARGS) target/release/nix-binary-cache

## nginx in front of two replicas, driven by the real Nix client (the full version; `make test` runs --quick).
replicas:
	$(CARGO) build --release
	NBC_BIN=target/release/nix-binary-cache scripts/replicas-test.sh

## Fully static x86_64 binary (glibc, crt-static): target/x86_64-unknown-linux-gnu/static/nix-binary-cache
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile static --target x86_64-unknown-linux-gnu
	@ldd target/x86_64-unknown-linux-gnu/static/nix-binary-cache || true
	@ls -l target/x86_64-unknown-linux-gnu/static/nix-binary-cache

clean:
	$(CARGO) clean
