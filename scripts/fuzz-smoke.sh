#!/usr/bin/env bash
# Short fuzz smoke run for `make test`: builds the cargo-fuzz targets in fuzz/ and runs each one
# briefly over a throw-away copy of its committed seed corpus, failing on any crash.
#
# Long runs (millions of executions) are described in fuzz/README.md; this only proves that the
# targets build, that every committed seed (including the regression inputs) still passes, and
# that a few thousand mutations of them do too.
#
# Environment:
#   FUZZ_RUNS     executions per target (default 200000)
#   FUZZ_SECONDS  time limit per target, in seconds (default 20)
#   FUZZ_TARGETS  targets to run (default: narinfo route range http_request)
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
RUNS=${FUZZ_RUNS:-200000}
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
TARGETS=${FUZZ_TARGETS:-narinfo route range http_request}

cd "$(dirname "$0")/.."

die() {
    echo "fuzz-smoke: $*" >&2
    exit 1
}

command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"

# cargo-fuzz needs a nightly compiler for -Zsanitizer and the libFuzzer instrumentation.
if ! cargo +nightly --version >/dev/null 2>&1; then
    die "the Rust nightly toolchain is missing; cargo fuzz needs it.
Install it with: rustup toolchain install nightly --profile minimal"
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io" >&2
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked ||
        die "could not install cargo-fuzz $CARGO_FUZZ_VERSION (cargo install cargo-fuzz --version $CARGO_FUZZ_VERSION --locked)"
fi

start=$(date +%s)
echo "fuzz-smoke: building fuzz targets ($(cargo fuzz --version))" >&2
cargo +nightly fuzz build

work=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-smoke.XXXXXX")
trap 'rm -rf "$work"' EXIT

for target in $TARGETS; do
    seeds=fuzz/corpus/$target
    [ -d "$seeds" ] || die "no seed corpus at $seeds"
    # libFuzzer adds new inputs to the first corpus directory: give it a copy, so the
    # committed corpus never grows from a smoke run.
    cp -r "$seeds" "$work/$target"
    echo "fuzz-smoke: $target: $RUNS runs or ${SECONDS_PER_TARGET}s over $(ls "$seeds" | wc -l) seeds" >&2
    if ! cargo +nightly fuzz run "$target" "$work/$target" -- \
        -runs="$RUNS" -max_total_time="$SECONDS_PER_TARGET" \
        -print_final_stats=1 >"$work/$target.log" 2>&1; then
        cat "$work/$target.log" >&2
        die "$target crashed; the input is under fuzz/artifacts/$target/ (reproduce with: cargo +nightly fuzz run $target <file>)"
    fi
    grep -a -E '^Done [0-9]+ runs' "$work/$target.log" | sed "s/^/fuzz-smoke: $target: /" >&2 || true
done

echo "fuzz-smoke: all targets passed in $(($(date +%s) - start))s" >&2
