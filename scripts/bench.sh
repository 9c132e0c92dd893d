#!/usr/bin/env bash
# bench.sh - load-test nix-binary-cache against nginx on the same synthetic cache.
#
# Usage: scripts/bench.sh [OPTIONS]          (or `make bench`)
#
#   --narinfos N      narinfo files in the synthetic cache [default: 100000]
#   --duration SECS   length of each wrk run [default: 10]
#   --rounds R        A/B rounds per scenario (ours, then nginx, R times) [default: 2]
#   --threads N       pass --threads N to our server [default: not passed = its default]
#   --cache-root DIR  where generated caches are kept and reused [default: /var/tmp/nbc-bench]
#   --binary PATH     use this nix-binary-cache binary instead of building one
#   --no-build        use $CARGO_TARGET_DIR/release/nix-binary-cache as it is
#   -h, --help        show this text
#
# What it does:
#   1. Builds the server (CARGO_TARGET_DIR defaults to /tmp/target-bench) and generates, once,
#      a cache in the `nix copy --to file://` layout with scripts/bench/gen_cache.py:
#      DIR=/var/tmp/nbc-bench/cache-N with N narinfos, 200 NARs of 1 MiB and one of 1 GiB,
#      and request lists in DIR.keys/. DIR/.bench-complete marks a finished cache; a directory
#      without it is deleted and generated again.
#   2. Measures index build time and RSS after startup of our server for 100k narinfos (and for
#      N if different): wall time from launch to the first answer to /nix-cache-info, the
#      `indexed ... in X.XXXs` log line, VmRSS.
#   3. Starts nginx (generated config in a temp dir: worker_processes auto, sendfile, tcp_nopush,
#      access_log off, no open_file_cache) and our server (--rescan-interval 0, so that "idle" is
#      idle) on the same directory, and drives each with wrk -t2 and scripts/bench/random_path.lua
#      (a random path from a key list per request), alternating ours/nginx for every round:
#        narinfo hits c=64, narinfo misses c=64, 1 MiB NARs c=16, the 1 GiB NAR c=4,
#        narinfo hits c=1000;
#      then reads our server's peak RSS (VmHWM), and finally runs narinfo hits c=64 against a
#      fresh instance of ours started with --rescan-interval 1 (p99 while rescans run).
#   4. Prints a Markdown report (best round per server, chosen by req/s, or by MiB/s for NARs;
#      latencies are from that same round) and saves it to scripts/bench/last-result.md; raw
#      wrk output goes to scripts/bench/last-raw.log.
#
# Needs: nginx, wrk, curl, python3 (installed with apt-get when missing and run as root), cargo
# unless --binary/--no-build. Runs everything on 127.0.0.1; every process it starts is stopped on
# exit. Numbers are only meaningful on an otherwise idle machine.
set -euo pipefail

# --- options ----------------------------------------------------------------------------
NARINFOS=100000
DURATION=10
ROUNDS=2
THREADS=""
CACHE_ROOT=/var/tmp/nbc-bench
BINARY=""
BUILD=1
INDEX_BASE_SIZE=100000
GEN_VERSION=1 # bump when gen_cache.py changes what it writes: cached caches are regenerated

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$SCRIPTS_DIR")"
BENCH_DIR="$SCRIPTS_DIR/bench"
RESULT_MD="$BENCH_DIR/last-result.md"
RAW_LOG="$BENCH_DIR/last-raw.log"
COMMAND_LINE="scripts/bench.sh$(printf ' %q' "$@")"

die() { echo "bench: error: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

positive_int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer, got '$2'"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --narinfos) NARINFOS="${2:-}"; positive_int "$1" "$NARINFOS"; shift 2 ;;
        --duration) DURATION="${2:-}"; positive_int "$1" "$DURATION"; shift 2 ;;
        --rounds) ROUNDS="${2:-}"; positive_int "$1" "$ROUNDS"; shift 2 ;;
        --threads) THREADS="${2:-}"; positive_int "$1" "$THREADS"; shift 2 ;;
        --cache-root) CACHE_ROOT="${2:-}"; [ -n "$CACHE_ROOT" ] || die "--cache-root needs a directory"; shift 2 ;;
        --binary) BINARY="${2:-}"; [ -n "$BINARY" ] || die "--binary needs a path"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
done
[ "$NARINFOS" -gt 201 ] || die "--narinfos must be more than 201"

START_SECONDS=$SECONDS
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- tools --------------------------------------------------------------------------------
# need COMMAND PACKAGE: installs PACKAGE with apt-get if COMMAND is missing (root only).
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    [ -x "/usr/sbin/$1" ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "$1 missing: apt-get install -y $2"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2; } \
            || die "could not install package '$2' (for $1)"
    else
        die "$1 not found: install the Debian package '$2' (apt-get install $2, as root)"
    fi
}
need nginx nginx
need wrk wrk
need curl curl
need python3 python3
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# Up to 1000 client connections, as many server-side sockets, and tiny_http's threads.
# Without CAP_SYS_RESOURCE (containers) the hard limit caps it; c=1000 needs about 2100.
ulimit -n 65536 2>/dev/null || {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    [ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 4096 ] \
        || die "open-file limit $(ulimit -n) is too low for c=1000 and cannot be raised (ulimit -Hn)"
    say "note: open-file limit is $(ulimit -n) (hard limit), not 65536; enough for c=1000"
}

# --- temp dir and cleanup -----------------------------------------------------------------
TMP="$(mktemp -d /tmp/nbc-bench.XXXXXX)"
PIDS=() # every long-running process we started

stop_pid() { # stop_pid PID: TERM, wait up to 15 s, then KILL (and nginx's orphaned workers)
    local pid="$1" children i
    kill -0 "$pid" 2>/dev/null || return 0
    children="$(ps -o pid= --ppid "$pid" 2>/dev/null || true)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "warning: pid $pid ignored SIGTERM for 15 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for i in $children; do kill -KILL "$i" 2>/dev/null || true; done
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

forget_pid() { # forget_pid PID: drop from PIDS after stop_pid
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_ready PORT PID TIMEOUT: until GET /nix-cache-info answers 200, bounded in time.
wait_ready() {
    local port="$1" pid="$2" deadline=$((SECONDS + $3))
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$pid" 2>/dev/null || return 1
        if curl -fs -o /dev/null --max-time 10 "http://127.0.0.1:$port/nix-cache-info"; then
            return 0
        fi
        sleep 0.01
    done
    return 1
}

proc_kb() { # proc_kb PID FIELD: e.g. VmRSS, VmHWM in kB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# --- build --------------------------------------------------------------------------------
if [ -z "$BINARY" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/target-bench}"
    BINARY="$CARGO_TARGET_DIR/release/nix-binary-cache"
    if [ "$BUILD" -eq 1 ]; then
        command -v cargo >/dev/null || die "cargo not found (or pass --binary PATH)"
        say "building (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
        (cd "$REPO" && cargo build --release -q) || die "cargo build --release failed"
    fi
fi
[ -x "$BINARY" ] || die "no server binary at $BINARY"

# --- synthetic caches ---------------------------------------------------------------------
# ensure_cache N: prints the cache dir for N narinfos, generating it unless complete.
ensure_cache() {
    local n="$1" dir="$CACHE_ROOT/cache-$1" want
    want="gen_cache v$GEN_VERSION narinfos=$n"
    if [ -f "$dir/.bench-complete" ] && [ "$(cat "$dir/.bench-complete")" = "$want" ]; then
        say "reusing $dir"
    else
        say "generating $dir ($n narinfos, 200 x 1 MiB + 1 GiB of NARs)"
        rm -rf "$dir" "$dir.keys"
        mkdir -p "$CACHE_ROOT"
        python3 "$BENCH_DIR/gen_cache.py" --narinfos "$n" --out "$dir" --keys "$dir.keys" >&2 \
            || die "gen_cache.py failed"
        sync -f "$dir/nix-cache-info" 2>/dev/null || true
        echo "$want" > "$dir/.bench-complete"
    fi
    echo "$dir"
}

CACHE="$(ensure_cache "$NARINFOS")"
KEYS="$CACHE.keys"
INDEX_SIZES=("$INDEX_BASE_SIZE")
[ "$NARINFOS" -ne "$INDEX_BASE_SIZE" ] && INDEX_SIZES+=("$NARINFOS")
declare -A INDEX_CACHE
for n in "${INDEX_SIZES[@]}"; do INDEX_CACHE[$n]="$(ensure_cache "$n")"; done

# --- servers ------------------------------------------------------------------------------
OURS_THREAD_ARGS=()
[ -n "$THREADS" ] && OURS_THREAD_ARGS=(--threads "$THREADS")

# start_ours NAME DIR PORT RESCAN LOGLEVEL: starts our server, sets OURS_PID; logs to $TMP/NAME.log
start_ours() {
    "$BINARY" "$2" -p "$3" --bind 127.0.0.1 "${OURS_THREAD_ARGS[@]}" \
        --log-level "$5" --rescan-interval "$4" 2> "$TMP/$1.log" > /dev/null &
    OURS_PID=$!
    PIDS+=("$OURS_PID")
}

start_nginx() { # start_nginx DIR PORT: sets NGINX_PID (the master; daemon off)
    local user_line=""
    [ "$(id -u)" -eq 0 ] && user_line="user root;"
    mkdir -p "$TMP/nginx"
    cat > "$TMP/nginx/nginx.conf" <<EOF
# generated by scripts/bench.sh
daemon off;
$user_line
worker_processes auto;
worker_rlimit_nofile 65536;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events {
    worker_connections 8192;
}
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    types {
        text/x-nix-narinfo narinfo;
        application/x-nix-nar nar;
        application/x-xz xz;
    }
    default_type application/octet-stream;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server {
        listen 127.0.0.1:$2;
        root $1;
    }
}
EOF
    "$NGINX" -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" 2> "$TMP/nginx/test.log" \
        || die "nginx rejected its config: $(cat "$TMP/nginx/test.log")"
    "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" 2> "$TMP/nginx/stderr.log" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
}

nginx_kb() { # sum of FIELD over the nginx master and its workers
    local total=0 p
    for p in "$NGINX_PID" $(ps -o pid= --ppid "$NGINX_PID" 2>/dev/null || true); do
        total=$((total + $(proc_kb "$p" "$1")))
    done
    echo "$total"
}

# --- wrk ----------------------------------------------------------------------------------
: > "$TMP/raw.log"
declare -A R     # R[scenario|server|round|key] = value from the BENCH line
declare -A BEST  # BEST[scenario|server] = round chosen

# run_wrk SCENARIO SERVER ROUND PORT CONNS KEYFILE
run_wrk() {
    local scen="$1" srv="$2" round="$3" port="$4" conns="$5" keys="$6" out line kv
    out="$TMP/wrk-$scen-$srv-$round.txt"
    say "wrk: $scen, $srv, round $round (c=$conns, ${DURATION}s)"
    timeout --kill-after=10 $((DURATION + 120)) \
        wrk -t2 -c"$conns" -d"${DURATION}s" --timeout 30s --latency \
        -s "$BENCH_DIR/random_path.lua" "http://127.0.0.1:$port" -- "$keys" > "$out" 2>&1 \
        || say "warning: wrk exited with status $? for $scen/$srv/$round"
    { echo "===== $scen | $srv | round $round | c=$conns | $(date -u +%FT%TZ)"; cat "$out"; } >> "$TMP/raw.log"
    line="$(grep '^BENCH ' "$out" | tail -1 || true)"
    [ -n "$line" ] || { say "warning: no BENCH line from wrk for $scen/$srv/$round"; line="BENCH requests=0"; }
    for kv in ${line#BENCH }; do R["$scen|$srv|$round|${kv%%=*}"]="${kv#*=}"; done
}

# pick_best SCENARIO SERVER KEY: remembers the round with the highest KEY.
pick_best() {
    local best=1 r
    for ((r = 2; r <= ROUNDS; r++)); do
        if awk -v a="${R[$1|$2|$r|$3]:-0}" -v b="${R[$1|$2|$best|$3]:-0}" 'BEGIN { exit !(a > b) }'; then
            best=$r
        fi
    done
    BEST["$1|$2"]=$best
}

val() { echo "${R[$1|$2|${BEST[$1|$2]}|$3]:-0}"; } # val SCENARIO SERVER KEY (best round)

sum_rounds() { # sum_rounds SCENARIO SERVER KEY
    local r s=0
    for ((r = 1; r <= ROUNDS; r++)); do s=$((s + ${R[$1|$2|$r|$3]:-0})); done
    echo "$s"
}

# --- 1. index build time and RSS after startup --------------------------------------------
declare -A IDX
for n in "${INDEX_SIZES[@]}"; do
    port="$(free_port)"
    say "index: starting ours on ${INDEX_CACHE[$n]}"
    t0=$(date +%s%N)
    start_ours "index-$n" "${INDEX_CACHE[$n]}" "$port" 0 info
    wait_ready "$port" "$OURS_PID" 900 || die "our server did not come up on ${INDEX_CACHE[$n]}: $(tail -5 "$TMP/index-$n.log")"
    t1=$(date +%s%N)
    IDX[$n|wall]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    IDX[$n|rss]=$(proc_kb "$OURS_PID" VmRSS)
    IDX[$n|hwm]=$(proc_kb "$OURS_PID" VmHWM)
    logline="$(grep -m1 'indexed [0-9]* narinfo files' "$TMP/index-$n.log" || true)"
    IDX[$n|log]="$(sed -n 's/.*indexed \([0-9]*\) narinfo files .* (\([0-9]*\) skipped) in \([0-9.]*\)s.*/\1 \2 \3/p' <<< "$logline")"
    [ -n "${IDX[$n|log]}" ] || IDX[$n|log]="? ? ?"
    stop_pid "$OURS_PID"; forget_pid "$OURS_PID"
done

# --- 2. A/B runs --------------------------------------------------------------------------
PORT_OURS="$(free_port)"
start_ours main "$CACHE" "$PORT_OURS" 0 warn
OURS_MAIN_PID=$OURS_PID
wait_ready "$PORT_OURS" "$OURS_PID" 900 || die "our server did not come up: $(tail -5 "$TMP/main.log")"
PORT_NGINX="$(free_port)"
while [ "$PORT_NGINX" = "$PORT_OURS" ]; do PORT_NGINX="$(free_port)"; done
start_nginx "$CACHE" "$PORT_NGINX"
wait_ready "$PORT_NGINX" "$NGINX_PID" 60 || die "nginx did not come up: $(cat "$TMP/nginx/stderr.log" "$TMP/nginx/error.log" 2>/dev/null | tail -5)"
say "ours on :$PORT_OURS (pid $OURS_MAIN_PID), nginx on :$PORT_NGINX (pid $NGINX_PID)"

# Sanity: both serve the same bytes.
first_hit="$(head -1 "$KEYS/hits.txt")"
cmp -s <(curl -fs "http://127.0.0.1:$PORT_OURS$first_hit") <(curl -fs "http://127.0.0.1:$PORT_NGINX$first_hit") \
    || die "ours and nginx answer $first_hit differently"

# name | connections | key list | metric that picks the best round
SCENARIOS=(
    "hits64|64|hits.txt|rps"
    "miss64|64|misses.txt|rps"
    "nar1m|16|nars-small.txt|mib_s"
    "nar1g|4|nar-big.txt|mib_s"
    "hits1000|1000|hits.txt|rps"
)
for spec in "${SCENARIOS[@]}"; do
    IFS='|' read -r scen conns keys _ <<< "$spec"
    for ((round = 1; round <= ROUNDS; round++)); do
        run_wrk "$scen" ours "$round" "$PORT_OURS" "$conns" "$KEYS/$keys"
        run_wrk "$scen" nginx "$round" "$PORT_NGINX" "$conns" "$KEYS/$keys"
    done
done
OURS_HWM=$(proc_kb "$OURS_MAIN_PID" VmHWM)
OURS_RSS_END=$(proc_kb "$OURS_MAIN_PID" VmRSS)
NGINX_HWM=$(nginx_kb VmHWM)
NGINX_WORKERS=$(ps -o pid= --ppid "$NGINX_PID" | wc -l)
kill -0 "$OURS_MAIN_PID" 2>/dev/null || say "warning: our server died during the runs: $(tail -5 "$TMP/main.log")"
stop_pid "$NGINX_PID"; forget_pid "$NGINX_PID"
stop_pid "$OURS_MAIN_PID"; forget_pid "$OURS_MAIN_PID"
OURS_WARN_LINES=$(grep -c . "$TMP/main.log" || true)

# --- 3. p99 while rescans run ----------------------------------------------------------------
PORT_RESCAN="$(free_port)"
start_ours rescan "$CACHE" "$PORT_RESCAN" 1 warn
wait_ready "$PORT_RESCAN" "$OURS_PID" 900 || die "our server (--rescan-interval 1) did not come up"
for ((round = 1; round <= ROUNDS; round++)); do
    run_wrk rescan64 ours "$round" "$PORT_RESCAN" 64 "$KEYS/hits.txt"
done
RESCAN_HWM=$(proc_kb "$OURS_PID" VmHWM)
stop_pid "$OURS_PID"; forget_pid "$OURS_PID"

for spec in "${SCENARIOS[@]}"; do
    IFS='|' read -r scen _ _ metric <<< "$spec"
    pick_best "$scen" ours "$metric"
    pick_best "$scen" nginx "$metric"
done
pick_best rescan64 ours rps

# --- 4. report ----------------------------------------------------------------------------
ms() { awk -v u="$1" 'BEGIN { printf "%.3f ms", u / 1000 }'; }
num() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
mib() { awk -v x="$1" 'BEGIN { printf "%.1f MiB/s", x }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

row() { # row SCENARIO LABEL KEY FORMAT [lower]
    local a b note=""
    a="$(val "$1" ours "$3")"; b="$(val "$1" nginx "$3")"
    [ "${5:-}" = lower ] && note=" (lower is better)"
    echo "| $2$note | $($4 "$a") | $($4 "$b") | $(ratio "$a" "$b") |"
}

errors_cell() { # errors_cell SCENARIO SERVER: totals over all rounds
    local s="$1|$2" k out=""
    local reqs non2xx sock
    reqs=$(sum_rounds "$1" "$2" requests)
    non2xx=$(sum_rounds "$1" "$2" err_status)
    sock=""
    for k in connect read write timeout; do
        local n; n=$(sum_rounds "$1" "$2" "err_$k")
        [ "$n" -gt 0 ] && sock+="$k $n, "
    done
    out="$reqs req, non-2xx/3xx $non2xx"
    [ -n "$sock" ] && out+=", socket errors: ${sock%, }" || out+=", no socket errors"
    echo "$out"
}

CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || GIT_REV+=" (src/ modified)"
TOTAL=$((SECONDS - START_SECONDS))
THREADS_NOTE="${THREADS:-default}"

{
    echo "# nix-binary-cache vs nginx"
    echo
    echo "- Command: \`$COMMAND_LINE\`"
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); total run time ${TOTAL}s"
    echo "- Machine: $(nproc) CPUs, $CPU_MODEL; kernel $(uname -r); $(awk '/MemTotal/ { printf "%.1f GiB", $2/1048576 }' /proc/meminfo) RAM; open-file limit $(ulimit -n); load average at start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- Server: $BINARY (commit $GIT_REV), threads: $THREADS_NOTE, --rescan-interval 0 except where noted"
    echo "- nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), worker_processes auto ($NGINX_WORKERS workers), sendfile on, tcp_nopush on, access_log off, open_file_cache off"
    echo "- Cache: $CACHE ($NARINFOS narinfos, 200 NARs of 1 MiB, one of 1 GiB; page cache warm)"
    echo "- Load: wrk 2 threads, ${DURATION}s per run, random path per request (scripts/bench/random_path.lua); $ROUNDS rounds, ours then nginx each round."
    echo "  Each cell is the **best round** (highest req/s; MiB/s for NARs), latencies from that same round."
    echo "  wrk runs on the same $(nproc) cores as the server, so it takes CPU away from both."
    echo
    echo "| scenario | ours | nginx | ratio (ours/nginx) |"
    echo "|---|---:|---:|---:|"
    row hits64 "narinfo hits, c=64: req/s" rps num
    row hits64 "narinfo hits, c=64: p50" p50_us ms lower
    row hits64 "narinfo hits, c=64: p99" p99_us ms lower
    row miss64 "narinfo misses (404), c=64: req/s" rps num
    row miss64 "narinfo misses (404), c=64: p50" p50_us ms lower
    row miss64 "narinfo misses (404), c=64: p99" p99_us ms lower
    row nar1m "1 MiB NARs, c=16: throughput" mib_s mib
    row nar1m "1 MiB NARs, c=16: req/s" rps num
    row nar1m "1 MiB NARs, c=16: p50" p50_us ms lower
    row nar1m "1 MiB NARs, c=16: p99" p99_us ms lower
    row nar1g "1 GiB NAR, c=4: throughput" mib_s mib
    row hits1000 "narinfo hits, c=1000: req/s" rps num
    row hits1000 "narinfo hits, c=1000: p50" p50_us ms lower
    row hits1000 "narinfo hits, c=1000: p99" p99_us ms lower
    echo "| peak RSS after all runs (VmHWM; nginx: master + workers) (lower is better) | $(mb "$OURS_HWM") | $(mb "$NGINX_HWM") | $(ratio "$OURS_HWM" "$NGINX_HWM") |"
    echo
    echo "Our RSS at the end of the runs: $(mb "$OURS_RSS_END"). Lines our server logged at --log-level warn: $OURS_WARN_LINES."
    echo
    echo "### p99 of narinfo hits while rescans run (ours only)"
    echo
    echo "| c=64 narinfo hits | ours, idle (--rescan-interval 0) | ours, --rescan-interval 1 | ratio (rescan/idle) |"
    echo "|---|---:|---:|---:|"
    for key in rps p50_us p99_us; do
        a="$(val hits64 ours "$key")"; b="$(val rescan64 ours "$key")"
        case $key in
            rps) echo "| req/s | $(num "$a") | $(num "$b") | $(ratio "$b" "$a") |" ;;
            *) echo "| ${key%_us} (lower is better) | $(ms "$a") | $(ms "$b") | $(ratio "$b" "$a") |" ;;
        esac
    done
    echo
    echo "Peak RSS of the rescanning instance: $(mb "$RESCAN_HWM")."
    echo
    echo "### Index build at startup (ours)"
    echo
    echo "| narinfos | launch to first answer (wall) | \`indexed\` log line | skipped | VmRSS after startup | VmHWM after startup |"
    echo "|---:|---:|---:|---:|---:|---:|"
    for n in "${INDEX_SIZES[@]}"; do
        read -r cnt skipped secs <<< "${IDX[$n|log]}"
        echo "| $n | ${IDX[$n|wall]} s | $cnt in ${secs} s | $skipped | $(mb "${IDX[$n|rss]}") | $(mb "${IDX[$n|hwm]}") |"
    done
    echo
    echo "### Requests and errors (all rounds)"
    echo
    echo "Misses are expected to be non-2xx (404) for both servers."
    echo
    echo "| scenario | ours | nginx |"
    echo "|---|---|---|"
    for spec in "${SCENARIOS[@]}"; do
        IFS='|' read -r scen conns _ _ <<< "$spec"
        echo "| $scen (c=$conns) | $(errors_cell "$scen" ours) | $(errors_cell "$scen" nginx) |"
    done
    echo "| rescan64 (c=64) | $(errors_cell rescan64 ours) | - |"
    echo
    echo "### Every round"
    echo
    echo "| scenario | server | round | req/s | MiB/s | p50 | p99 | max |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for scen in hits64 miss64 nar1m nar1g hits1000 rescan64; do
        for srv in ours nginx; do
            for ((round = 1; round <= ROUNDS; round++)); do
                [ -n "${R[$scen|$srv|$round|requests]:-}" ] || continue
                mark=""; [ "${BEST[$scen|$srv]:-}" = "$round" ] && mark=" *"
                echo "| $scen | $srv | $round$mark | $(num "${R[$scen|$srv|$round|rps]:-0}") | $(awk -v x="${R[$scen|$srv|$round|mib_s]:-0}" 'BEGIN{printf "%.1f", x}') | $(ms "${R[$scen|$srv|$round|p50_us]:-0}") | $(ms "${R[$scen|$srv|$round|p99_us]:-0}") | $(ms "${R[$scen|$srv|$round|max_us]:-0}") |"
            done
        done
    done
    echo
    echo "\\* = round used above. Raw wrk output: scripts/bench/last-raw.log."
} > "$TMP/result.md"

cp "$TMP/result.md" "$RESULT_MD"
cp "$TMP/raw.log" "$RAW_LOG"
cat "$RESULT_MD"
say "done in ${TOTAL}s; report saved to $RESULT_MD"
