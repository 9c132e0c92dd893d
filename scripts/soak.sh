#!/usr/bin/env bash
# Soak test (issue 6): a long mixed load against the server on a writable copy of a cache, to
# catch leaks, races and wrong answers that short tests miss. Not part of `make test`.
#
# For --duration seconds (default 600), all at once:
#   - scripts/soak/loadgen.py: narinfo hits and misses, NAR downloads (every hash checked against
#     the file name), Range requests (Content-Range and bytes checked against the file), HEAD,
#     If-None-Match, listings, logs, `/`, /metrics, and authenticated PUT uploads of real NARs and
#     narinfos (read back at once), over keep-alive connections; VmRSS of the server sampled
#     every 10 s;
#   - scripts/soak/nix-loop.sh: the real Nix client building fresh paths and writing them with
#     `nix copy --to file://CACHE` into the same directory, then reading them back through the
#     server with `nix copy --from http://…` and require-sigs;
#   - the server rescanning the directory every 5 s (--rescan-interval 5) and signing every
#     narinfo with tests/fixtures/keys/test-key.sec.
# Afterwards `nix-binary-cache verify` checks the directory and the server is stopped with
# SIGTERM. scripts/soak/report.py writes the report (requests by kind, errors, MB, uploads, nix
# copies, rescans, RSS series) and the verdict; it is printed and kept in target/soak/report.txt
# with the server and Nix logs and loadgen's results.json next to it.
#
# Fails if any status or check is unexpected (hits 200, misses 404, uploads 200, ranges 206),
# any nix copy fails, the server logs a WARN/ERROR, RSS in the last third of the run is more than
# 20% (SOAK_RSS_TOLERANCE=0.2) above the first third after warm-up, verify finds anything but the
# NARs the upload slots orphaned by design, or the server does not stop cleanly.
#
# Usage: scripts/soak.sh [--duration SECS] [BINARY]
#   BINARY: default target/release/nix-binary-cache (built with cargo build --release if absent)
#   SOAK_RATE (reader req/s, default 400), SOAK_UPLOAD_RATE (uploads/s, default 4),
#   SOAK_CACHE (fixture to start from, default tests/fixtures/cache-zstd).
# Needs root, Debian's nix-bin (single-user Nix writes /nix/store) and python3 (standard library
# only). The paths it builds are deleted from /nix/store at the end.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
duration=600
binary=
while [[ $# -gt 0 ]]; do
    case $1 in
    --duration) duration=${2:?--duration needs a number of seconds}; shift 2 ;;
    --duration=*) duration=${1#*=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "soak: unknown option $1" >&2; exit 2 ;;
    *) binary=$1; shift ;;
    esac
done
[[ $duration =~ ^[0-9]+$ && $duration -ge 30 ]] || { echo "soak: --duration must be >= 30 seconds" >&2; exit 2; }

die() {
    echo "soak: error: $*" >&2
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (the real Nix client builds into /nix/store single-user)"
"$repo/scripts/ensure-deps.sh"
command -v python3 >/dev/null || die "python3 not found"
if [[ -z $binary ]]; then
    binary=$repo/target/release/nix-binary-cache
    if [[ ! -x $binary ]]; then
        (cd "$repo" && cargo build --release) || die "cargo build --release failed"
    fi
fi
[[ -f $binary && -x $binary ]] || die "$binary is not an executable file"
binary=$(realpath "$binary")

fixture=${SOAK_CACHE:-$repo/tests/fixtures/cache-zstd}
key_sec=$repo/tests/fixtures/keys/test-key.sec
pubkey=$(tr -d '\n' <"$repo/tests/fixtures/keys/test-key.pub")
out=$repo/target/soak
mkdir -p "$out"
rm -f "$out"/report.txt "$out"/server.log "$out"/nix-loop.log "$out"/results.json "$out"/verify.out

work=$(mktemp -d "${TMPDIR:-/tmp}/soak.XXXXXX")
cache=$work/cache
server_pid=
loop_pid=
cleanup() {
    set +e
    if [[ -n $loop_pid ]]; then kill -TERM -- "-$loop_pid" 2>/dev/null; wait "$loop_pid" 2>/dev/null; fi
    if [[ -n $server_pid ]]; then kill -KILL "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
    for f in server.log nix-loop.log results.json verify.out; do
        [[ -f $work/$f ]] && cp "$work/$f" "$out/$f"
    done
    if [[ -s $work/built-paths ]]; then
        # Our outputs, then their derivations (no roots point at them); never a store-wide
        # garbage collection.
        grep -v '\.drv$' "$work/built-paths" | sort -u | xargs -r nix-store --delete >/dev/null 2>&1
        grep '\.drv$' "$work/built-paths" | sort -u | xargs -r nix-store --delete >/dev/null 2>&1
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- private Nix configuration (as scripts/make-fixture.sh) -----------------------------------
# shellcheck source=scripts/lib/nix-client.sh
. "$(dirname "$0")/lib/nix-client.sh"
use_private_nix "$work"
nix_version=$(nix --version | awk '{print $NF}')

# --- the cache and the server ---------------------------------------------------------------
cp -r "$fixture" "$cache"
head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$work/tokens"
rescan=5
"$binary" "$cache" -p 0 --bind 127.0.0.1 --sign-key "$key_sec" \
    --upload-token-file "$work/tokens" --rescan-interval "$rescan" \
    --log-level debug --access-log off </dev/null >/dev/null 2>"$work/server.log" &
server_pid=$!
# shellcheck source=scripts/lib/server.sh
. "$repo/scripts/lib/server.sh"
port=$(server_port "$work/server.log" "$server_pid") \
    || die "the server exited at start or did not start within 10 s (log above)"
url=http://127.0.0.1:$port
echo "soak: $binary serving a copy of $(basename "$fixture") on $url for $duration s (work dir $work)"

# --- load -----------------------------------------------------------------------------------
setsid "$repo/scripts/soak/nix-loop.sh" "$work" "$cache" "$url" "$pubkey" </dev/null &
loop_pid=$!
if ((duration >= 300)); then interval=10 warmup=60; else interval=2 warmup=10; fi
load_rc=0
python3 "$repo/scripts/soak/loadgen.py" --port "$port" --pid "$server_pid" --cache "$cache" \
    --token-file "$work/tokens" --duration "$duration" --rate "${SOAK_RATE:-400}" \
    --upload-rate "${SOAK_UPLOAD_RATE:-4}" --sample-interval "$interval" --warmup "$warmup" \
    --out "$work/results.json" || load_rc=$?
[[ $load_rc -eq 0 && -s $work/results.json ]] || die "the load generator failed (status $load_rc)"

# Let the current nix round finish (it reads back through the server, so stop it first).
touch "$work/stop"
for _ in $(seq 600); do kill -0 "$loop_pid" 2>/dev/null || break; sleep 0.1; done
kill -TERM -- "-$loop_pid" 2>/dev/null || true
wait "$loop_pid" 2>/dev/null || true
loop_pid=

# --- afterwards: verify, stop ---------------------------------------------------------------
"$binary" verify "$cache" >"$work/verify.out" 2>&1 || true
stop_start=$(date +%s%N)
kill -TERM "$server_pid"
exit_status=0
wait "$server_pid" || exit_status=$?
server_pid=
stop_ms=$((($(date +%s%N) - stop_start) / 1000000))
stop_seconds=$(printf '%d.%03d' $((stop_ms / 1000)) $((stop_ms % 1000)))

report_rc=0
python3 "$repo/scripts/soak/report.py" --results "$work/results.json" --work "$work" \
    --server-log "$work/server.log" --binary "$binary" --nix-version "$nix_version" \
    --rescan-interval "$rescan" --rss-tolerance "${SOAK_RSS_TOLERANCE:-0.2}" \
    --exit-status "$exit_status" --stop-seconds "$stop_seconds" \
    --report-file "$out/report.txt" || report_rc=$?
echo "soak: report in $out/report.txt, logs in $out/"
exit "$report_rc"
