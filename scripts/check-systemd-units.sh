#!/usr/bin/env bash
# Checks the systemd units in dist/ without a running systemd (works in containers and CI where
# PID 1 is not systemd):
#
#   1. `systemd-analyze verify` on the service and socket, alone and with each drop-in example
#      from dist/nix-binary-cache.service.d/; any message (even a warning such as an unknown key)
#      fails the check;
#   2. `systemd-analyze security --offline=yes` on the service (alone and with all drop-ins):
#      fails unless the overall exposure level is at most $MAX_EXPOSURE (default 2.0);
#   3. every NIX_BINARY_CACHE_* variable named in dist/ is one the binary's --help documents;
#   4. the gc service and timer (nix-binary-cache-gc.*) pass `verify` too and the same exposure
#      limit, and their ExecStart= runs (with --help) against BINARY;
#   5. what the code needs from the unit: setpriority allowed again after `~@resources` (the
#      rescan thread lowers itself to nice 19), a StateDirectory= shared by server and gc (the
#      served-times file), and ExecReload= sending SIGHUP.
#
# Usage: scripts/check-systemd-units.sh [BINARY]
#   BINARY: the built nix-binary-cache (default: target/release/nix-binary-cache, else
#   target/debug/nix-binary-cache). `verify` insists that ExecStart= names an existing
#   executable, so the units are checked in a temporary copy whose ExecStart= points at BINARY.
#
# Needs systemd-analyze (Debian/Ubuntu package "systemd"); installed with apt-get when missing
# and running as root.
set -euo pipefail

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dist=$repo/dist
unit=nix-binary-cache

die() {
    echo "check-systemd-units: error: $*" >&2
    exit 1
}

# --- the binary -----------------------------------------------------------------------------
# shellcheck source=scripts/lib/server.sh
. "$repo/scripts/lib/server.sh"
binary=$(server_binary "$repo" "${1:-}") || die "no server binary to test"
binary=$(realpath "$binary")

# --- systemd-analyze ------------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "check-systemd-units: systemd-analyze missing, installing package systemd" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends systemd >&2 ||
            { apt-get update >&2 && apt-get install -y --no-install-recommends systemd >&2; } ||
            die "could not install package systemd (which provides systemd-analyze)"
    else
        die "systemd-analyze not found: install package systemd (apt-get install systemd)"
    fi
fi
echo "using $(systemd-analyze --version | head -n1), binary $binary"

verify_opts=()
help=$(systemd-analyze --help)
# Only judge our units, not the host's (network.target, sockets.target, ... may be absent or
# have their own warnings in a container).
[[ $help == *--recursive-errors=* ]] && verify_opts+=(--recursive-errors=no)
[[ $help == *--man=* ]] && verify_opts+=(--man=no)
[[ $help == *--offline=* ]] || die "this systemd-analyze has no 'security --offline' (needs systemd >= 250)"

for f in "$unit.service" "$unit.socket" "$unit.env" "$unit-gc.service" "$unit-gc.timer"; do
    [[ -f $dist/$f ]] || die "missing dist/$f"
done
dropins=()
if [[ -d $dist/$unit.service.d ]]; then
    for f in "$dist/$unit.service.d"/*.conf.example; do
        [[ -e $f ]] && dropins+=("$f")
    done
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

# Copies the units into a fresh directory with the given drop-in examples installed, and
# ExecStart= pointing at the binary. Prints the directory.
stage() {
    local dir
    dir=$(mktemp -d "$tmp/units.XXXX")
    cp "$dist/$unit.service" "$dist/$unit.socket" "$dist/$unit-gc.service" "$dist/$unit-gc.timer" "$dir/"
    sed -i -E "s|^ExecStart=[^ ]*/$unit\b|ExecStart=$binary|" "$dir/$unit.service" "$dir/$unit-gc.service"
    grep -q "^ExecStart=$binary" "$dir/$unit.service" ||
        die "no ExecStart=…/$unit line to point at the binary in dist/$unit.service"
    if (($# > 0)); then
        mkdir "$dir/$unit.service.d"
        local f
        for f in "$@"; do
            cp "$f" "$dir/$unit.service.d/$(basename "$f" .example)"
        done
    fi
    echo "$dir"
}

# verify LABEL DROPIN...: fails on a non-zero status or any output.
verify() {
    local label=$1
    shift
    local dir out status=0
    dir=$(stage "$@")
    out=$(cd "$dir" && systemd-analyze verify "${verify_opts[@]}" "./$unit.service" "./$unit.socket" \
        "./$unit-gc.service" "./$unit-gc.timer" 2>&1) ||
        status=$?
    # Name the files by their dist/ paths, not the temporary copies.
    out=${out//$dir\/$unit.service.d\//dist\/$unit.service.d\/}
    out=${out//$dir\//dist\/}
    if [[ $status -ne 0 || -n $out ]]; then
        echo "FAIL verify ($label), status $status:"
        echo "$out" | sed 's/^/    /'
        failed=1
    else
        echo "ok   verify ($label): no messages"
    fi
}

# security LABEL UNIT DROPIN...: fails unless the exposure level is at most MAX_EXPOSURE.
security() {
    local label=$1 name=$2
    shift 2
    local dir out level
    dir=$(stage "$@")
    out=$(cd "$dir" && SYSTEMD_PAGER='' systemd-analyze security --no-pager --offline=yes \
        "./$name" 2>&1) || true
    level=$(sed -n -E 's/.*Overall exposure level for [^:]*: ([0-9]+(\.[0-9]+)?).*/\1/p' <<<"$out")
    if [[ -z $level ]]; then
        echo "FAIL security ($label): no 'Overall exposure level' line in:"
        echo "$out" | sed 's/^/    /'
        failed=1
    elif awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }'; then
        echo "ok   security ($label): exposure $level <= $MAX_EXPOSURE"
    else
        echo "FAIL security ($label): exposure $level > $MAX_EXPOSURE; what is exposed:"
        grep -E '^✗' <<<"$out" | sed 's/^/    /'
        failed=1
    fi
}

verify "service + socket"
for d in "${dropins[@]}"; do
    verify "with $(basename "$d" .example)" "$d"
done
((${#dropins[@]} > 1)) && verify "with all drop-ins" "${dropins[@]}"

security "service" "$unit.service"
((${#dropins[@]} > 0)) && security "with all drop-ins" "$unit.service" "${dropins[@]}"
security "gc service" "$unit-gc.service"

# --- what the code relies on -----------------------------------------------------------------
# The last SystemCallFilter= line naming setpriority must allow it (no "~"), and come after the
# line denying @resources, which includes it.
filters=$(grep -n '^SystemCallFilter=' "$dist/$unit.service" || true)
deny_line=$({ grep -E '@resources' <<<"$filters" || true; } | tail -n1 | cut -d: -f1)
allow_line=$({ grep -E '^[0-9]+:SystemCallFilter=[^~]*\bsetpriority\b' <<<"$filters" || true; } |
    tail -n1 | cut -d: -f1)
if [[ -n $deny_line && (-z $allow_line || $allow_line -lt $deny_line) ]]; then
    echo "FAIL dist/$unit.service denies @resources without allowing setpriority afterwards:"
    echo "     the rescan thread could not lower its priority"
    failed=1
else
    echo "ok   setpriority: allowed for the rescan thread's nice 19"
fi
srv_state=$(grep '^StateDirectory=' "$dist/$unit.service" || true)
gc_state=$(grep '^StateDirectory=' "$dist/$unit-gc.service" || true)
if [[ -z $srv_state || $srv_state != "$gc_state" ]]; then
    echo "FAIL server and gc units must share one StateDirectory= (served-times):" \
        "server '${srv_state}', gc '${gc_state}'"
    failed=1
else
    echo "ok   state directory: server and gc share $srv_state"
fi
if grep -q '^ExecReload=.*kill -HUP \$MAINPID' "$dist/$unit.service"; then
    echo "ok   reload: ExecReload= sends SIGHUP"
else
    echo "FAIL dist/$unit.service: no ExecReload= sending SIGHUP (tokens and keys reload)"
    failed=1
fi
# The gc command line, with the unit's default variables, must be one the binary accepts.
gc_cmd=$(sed -n -E 's/^ExecStart=[^ ]+ (gc .*)/\1/p' "$dist/$unit-gc.service")
gc_days=$(sed -n -E 's/^Environment=GC_OLDER_THAN_DAYS=(.*)/\1/p' "$dist/$unit-gc.service")
gc_cmd=${gc_cmd//'${GC_OLDER_THAN_DAYS}'/$gc_days}
gc_cmd=${gc_cmd//'${NIX_BINARY_CACHE_PATH}'/$tmp}
touch "$tmp/nix-cache-info"
# shellcheck disable=SC2086 # word splitting is the point: it is a command line
if out=$("$binary" $gc_cmd --dry-run --state-file "$tmp/none" 2>&1); then
    echo "ok   gc command line: $gc_cmd"
else
    echo "FAIL dist/$unit-gc.service ExecStart= is refused by the binary: $out"
    failed=1
fi

# --- variables ------------------------------------------------------------------------------
# The environment file: only comments, blank lines and VAR=value.
if bad=$(grep -n -v -E '^[[:space:]]*(#.*)?$|^[A-Za-z_][A-Za-z0-9_]*=' "$dist/$unit.env"); then
    echo "FAIL dist/$unit.env: lines that are not VAR=value or comments:"
    echo "$bad" | sed 's/^/    /'
    failed=1
fi
known=$("$binary" --help | grep -o -E 'NIX_BINARY_CACHE_[A-Z_]+' | sort -u)
named=$(cat "$dist/$unit.service" "$dist/$unit.env" "${dropins[@]}" |
    grep -o -E 'NIX_BINARY_CACHE_[A-Z_]+' | sort -u)
unknown=$(comm -13 <(echo "$known") <(echo "$named"))
if [[ -n $unknown ]]; then
    echo "FAIL variables in dist/ that '$binary --help' does not document:" $unknown
    failed=1
else
    echo "ok   variables: all $(wc -w <<<"$named") NIX_BINARY_CACHE_* names in dist/ are in --help"
fi

if ((failed)); then
    echo "check-systemd-units: FAILED" >&2
    exit 1
fi
echo "check-systemd-units: all checks passed"
