#!/usr/bin/env bash
# The real-Nix side of scripts/soak.sh, run in its own process group until WORK/stop exists:
# each round builds two fresh store paths (scripts/soak/copy.nix), writes them with the real
# `nix copy --to file://CACHE` into the directory the server is serving (xz, zstd with .ls
# listing, and uncompressed in turn), then reads them back through the server with
# `nix copy --from http://…` into a throw-away chroot store, with require-sigs and the server's
# public key. Appends one line per success to WORK/nix-copies and WORK/nix-readbacks, one line
# per failure to WORK/nix-failures, the output paths to WORK/built-paths; output in
# WORK/nix-loop.log.
#
# Usage: nix-loop.sh WORK CACHE URL PUBKEY
# Expects NIX_CONF_DIR / XDG_CACHE_HOME set up by soak.sh (single-user Nix as root).
set -uo pipefail

work=$1 cache=$2 url=$3 pubkey=$4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log=$work/nix-loop.log
i=0

fail() {
    echo "$(date +%T) round $i: $*" >>"$work/nix-failures"
    echo "!! round $i: $*" >>"$log"
}

while [[ ! -e $work/stop ]]; do
    i=$((i + 1))
    nonce="$$-$i"
    size=$(((RANDOM % 192 + 64) * 1024))
    echo "== round $i ($(date +%T)): nonce $nonce, $size random bytes" >>"$log"
    if ! top=$(nix-build "$here/copy.nix" --no-out-link --argstr nonce "$nonce" \
        --argstr size "$size" 2>>"$log"); then
        fail "nix-build failed"
        sleep 1
        continue
    fi
    # Outputs and their derivations, for soak.sh to delete at the end.
    for p in $(nix-store --query --requisites "$top" 2>>"$log"); do
        echo "$p"
        nix-store --query --deriver "$p" 2>>"$log"
    done >>"$work/built-paths"
    case $((i % 3)) in
    1) query="" ;;
    2) query="?compression=zstd&write-nar-listing=1" ;;
    0) query="?compression=none" ;;
    esac
    if nix copy --to "file://$cache$query" "$top" >>"$log" 2>&1; then
        echo "$top $query" >>"$work/nix-copies"
    else
        fail "nix copy --to file://$cache$query $top failed"
        sleep 1
        continue
    fi
    store=$work/readback-store
    rm -rf "$store"
    if nix copy --from "$url" --to "$store" --option require-sigs true \
        --option trusted-public-keys "$pubkey" "$top" >>"$log" 2>&1 &&
        [[ -x $store$top/bin/show ]]; then
        echo "$top" >>"$work/nix-readbacks"
    else
        fail "nix copy --from $url $top (require-sigs) failed"
    fi
    rm -rf "$store"
    sleep "${SOAK_NIX_PAUSE:-3}"
done
echo "== stopped after $i rounds" >>"$log"
