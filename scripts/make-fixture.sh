#!/usr/bin/env bash
# make-fixture.sh - regenerate the binary-cache test fixtures in tests/fixtures/.
#
# What it does:
#   1. Builds the three /bin/sh-only derivations in scripts/fixture.nix
#      (fixture-top -> fixture-mid -> fixture-base; no nixpkgs) into the real
#      /nix/store with the real Nix (single-user, no daemon, run as root).
#   2. Writes that closure with the real `nix copy` into three file:// caches:
#        tests/fixtures/cache-xz      default settings (xz-compressed NARs)
#        tests/fixtures/cache-zstd    compression=zstd, write-nar-listing=1 (.ls)
#        tests/fixtures/cache-signed  signed with tests/fixtures/keys/test-key.sec
#      and copies the build logs into each (DIR/log/<drv basename>).
#   3. Writes tests/fixtures/manifest.env: store paths and interesting files,
#      so tests need not hard-code hashes.
#   4. Checks the caches with the real client (path-info, copy into a fresh
#      chroot store, signature verification).
#
# Rerun:  scripts/make-fixture.sh   (or `make fixture`)
#   Needs Debian's nix-bin (`apt-get install -y nix-bin`) and root. Each cache
#   directory is deleted and recreated; the signing key in tests/fixtures/keys/
#   is generated only once and then kept, so signatures stay verifiable with
#   the committed public key. Store paths are deterministic (same Nix, same
#   system), so reruns normally give the same manifest.
set -euo pipefail

die() { echo "make-fixture: $*" >&2; exit 1; }

# --- preconditions ----------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (single-user Nix writes /nix/store directly)"
fi
for tool in nix nix-build nix-store; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "'$tool' not found; install it with: apt-get install -y nix-bin"
done
nix --version >/dev/null 2>&1 \
    || die "'nix --version' failed; (re)install with: apt-get install -y nix-bin"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIX="$ROOT/tests/fixtures"
NIXFILE="$ROOT/scripts/fixture.nix"

# --- private Nix configuration ---------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/make-fixture.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/conf" "$WORK/xdg-cache"
cat > "$WORK/conf/nix.conf" <<'EOF'
experimental-features = nix-command
sandbox = false
build-users-group =
substituters =
narinfo-cache-positive-ttl = 0
narinfo-cache-negative-ttl = 0
EOF
export NIX_CONF_DIR="$WORK/conf"
export XDG_CACHE_HOME="$WORK/xdg-cache"
unset NIX_REMOTE NIX_PATH || true

echo "== nix: $(nix --version)"

# --- build ------------------------------------------------------------------
echo "== building $NIXFILE"
TOP="$(nix-build "$NIXFILE" --no-out-link)"
[ -n "$TOP" ] && [ -d "$TOP" ] || die "nix-build gave no output path"

# Closure in dependency order (dependencies first).
mapfile -t CLOSURE < <(nix-store --query --requisites "$TOP")
[ "${#CLOSURE[@]}" -ge 3 ] || die "closure of $TOP has fewer than 3 paths"

DRVS=()
for p in "${CLOSURE[@]}"; do
    d="$(nix-store --query --deriver "$p")"
    [ -e "$d" ] || die "no deriver for $p"
    DRVS+=("$d")
done
TOP_DRV="${DRVS[${#DRVS[@]}-1]}"

# A build log must exist for every path. If the paths were built earlier and
# the logs are gone, rebuild (--check reruns every builder; they are
# deterministic, so the outputs compare equal).
need_rebuild=0
for d in "${DRVS[@]}"; do
    nix-store --read-log "$d" >/dev/null 2>&1 || need_rebuild=1
done
if [ "$need_rebuild" -eq 1 ]; then
    echo "== build logs missing; rebuilding with --check"
    nix-store --realise --check "${DRVS[@]}" >/dev/null
    for d in "${DRVS[@]}"; do
        nix-store --read-log "$d" >/dev/null 2>&1 || die "no build log for $d"
    done
fi

path_by_name() { # fixture-top / fixture-mid / fixture-base
    local p
    for p in "${CLOSURE[@]}"; do
        case "$p" in */*-"$1") echo "$p"; return 0 ;; esac
    done
    die "no path named $1 in closure"
}
MID="$(path_by_name fixture-mid)"
BASE="$(path_by_name fixture-base)"

# --- signing key (generated once, then kept) --------------------------------
mkdir -p "$FIX/keys"
SEC="$FIX/keys/test-key.sec"
PUB="$FIX/keys/test-key.pub"
if [ ! -s "$SEC" ]; then
    echo "== generating signing key $SEC"
    nix key generate-secret --key-name test-cache-1 > "$SEC"
    rm -f "$PUB"
fi
if [ ! -s "$PUB" ]; then
    nix key convert-secret-to-public < "$SEC" > "$PUB"
fi
PUBKEY="$(cat "$PUB")"

# --- caches -----------------------------------------------------------------
make_cache() { # dir-name query-string
    local dir="$FIX/$1" query="$2"
    echo "== writing $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    nix copy --to "file://$dir$query" "$TOP"
    # Logs: copy-log takes output paths and looks up their derivers.
    nix store copy-log --to "file://$dir$query" "${CLOSURE[@]}"
    local d
    for d in "${DRVS[@]}"; do
        [ -s "$dir/log/$(basename "$d")" ] || die "log for $d missing in $dir"
    done
}
make_cache cache-xz ""
make_cache cache-zstd "?compression=zstd&write-nar-listing=1"
make_cache cache-signed "?secret-key=$SEC"

# --- manifest ---------------------------------------------------------------
{
    echo "# Generated by scripts/make-fixture.sh - do not edit."
    echo "# Format: KEY=VALUE, one per line; VALUE is everything after the first"
    echo "# '=' taken literally (no quoting; it may contain spaces). Lists are"
    echo "# space-separated. TOP_<thing> paths are relative to \$TOP, BASE_<thing>"
    echo "# paths relative to \$BASE (except *_TARGET, which are symlink targets)."
    echo "NIX_VERSION=$(nix --version)"
    echo "STORE_DIR=/nix/store"
    echo "TOP=$TOP"
    echo "MID=$MID"
    echo "BASE=$BASE"
    echo "CLOSURE=${CLOSURE[*]}"
    echo "TOP_DRV=$TOP_DRV"
    echo "CLOSURE_DRVS=${DRVS[*]}"
    echo "TOP_EXE_FILE=bin/hello"
    echo "TOP_SYMLINK=hello-link"
    echo "TOP_SYMLINK_TARGET=$(readlink "$TOP/hello-link")"
    echo "TOP_ABS_SYMLINK=bin/mid-tool-link"
    echo "TOP_ABS_SYMLINK_TARGET=$(readlink "$TOP/bin/mid-tool-link")"
    echo "TOP_SPACED_FILE=share/data/hello world.txt"
    echo "TOP_BIG_FILE=share/data/big.txt"
    echo "TOP_BIG_FILE_SIZE=$(stat -c %s "$TOP/share/data/big.txt")"
    echo "BASE_EMPTY_FILE=share/empty-file"
    echo "BASE_EMPTY_DIR=empty-dir"
    echo "PUBLIC_KEY=$PUBKEY"
    echo "SECRET_KEY_FILE=keys/test-key.sec"
    echo "CACHES=cache-xz cache-zstd cache-signed"
} > "$FIX/manifest.env"

# --- verification with the real client -------------------------------------
echo "== verifying"
for c in cache-xz cache-zstd cache-signed; do
    url="file://$FIX/$c"
    n="$(nix path-info --store "$url" -r "$TOP" | wc -l)"
    [ "$n" -eq "${#CLOSURE[@]}" ] || die "$c: path-info -r listed $n paths"
    nix store verify --store "$url" --no-trust -r "$TOP"
    nix log --store "$url" "$TOP" | grep -q "fixture-top done" \
        || die "$c: nix log did not return the build log"
    nix copy --no-check-sigs --from "$url" --to "$WORK/store-$c" "$TOP"
    [ -x "$WORK/store-$c$TOP/bin/hello" ] || die "$c: copy into fresh store failed"
done
ls "$FIX/cache-zstd/$(basename "$TOP" | cut -d- -f1).ls" >/dev/null
grep -q '^Sig: test-cache-1:' "$FIX/cache-signed/$(basename "$TOP" | cut -d- -f1).narinfo" \
    || die "cache-signed: narinfo has no Sig line"
# Signed cache: must pass with require-sigs and the committed key...
nix copy --from "file://$FIX/cache-signed" --to "$WORK/store-sig-ok" \
    --option require-sigs true --option trusted-public-keys "$PUBKEY" "$TOP"
nix store verify --store "file://$FIX/cache-signed" -r "$TOP" \
    --option trusted-public-keys "$PUBKEY"
# ...and must fail with require-sigs for the unsigned cache.
if nix copy --from "file://$FIX/cache-xz" --to "$WORK/store-unsigned" \
    --option require-sigs true --option trusted-public-keys "$PUBKEY" "$TOP" 2>/dev/null; then
    die "unsigned cache-xz passed require-sigs"
fi

# Nix creates an empty realisations/ in each file:// cache; git cannot keep
# empty directories, so drop them to make the work tree match a checkout.
for c in cache-xz cache-zstd cache-signed; do
    rmdir "$FIX/$c/realisations" 2>/dev/null || true
done

echo "== done: $(du -sh "$FIX" | cut -f1) in $FIX"
