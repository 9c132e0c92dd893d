#!/usr/bin/env bash
# bench.sh - load-test nix-binary-cache against nginx on the same synthetic cache.
#
# Usage: scripts/bench.sh [OPTIONS]          (or `make bench`)
#
#   --narinfos N        narinfo files in the synthetic cache [default: 100000]
#   --duration SECS     length of each wrk run [default: 10]
#   --rounds R          A/B rounds per scenario (ours, nginx[, floor], R times) [default: 2]
#   --threads N         pass --threads N to our server (and to the floor) [default: their default]
#   --index-sizes LIST  narinfo counts for the index build measurement, comma-separated, e.g.
#                       100000,1000000 [default: 100000, plus --narinfos if different]
#   --many-conns N      connections for the many-connections check [default: 10000; 0 = skip]
#   --cache-root DIR    where generated caches are kept and reused [default: /var/tmp/nbc-bench]
#   --binary PATH       use this nix-binary-cache binary instead of building one
#   --floor-binary PATH the tiny_http_floor example [default: examples/tiny_http_floor next to
#                       the server binary; built with it unless --binary/--no-build]
#   --no-build          use $CARGO_TARGET_DIR/release/nix-binary-cache as it is
#   -h, --help          show this text
#
# What it does:
#   1. Builds the server and examples/tiny_http_floor (CARGO_TARGET_DIR defaults to
#      /tmp/target-bench) and generates, once, a cache in the `nix copy --to file://` layout with
#      scripts/bench/gen_cache.py: DIR=/var/tmp/nbc-bench/cache-N with N narinfos, 200 NARs of
#      1 MiB and one of 1 GiB, and request lists in DIR.keys/. DIR/.bench-complete marks a
#      finished cache; a directory without it is deleted and generated again.
#   2. Index build at startup, for every --index-sizes cache: our server is started twice (the
#      first start also warms the page cache); from the second: wall time from launch to the first
#      answer to /nix-cache-info, the `listed` line (every path known), the wall time until
#      /metrics says every file is read and the `indexed ... in X.XXXs` line, VmRSS and VmHWM
#      once read. These are
#      checked against the memory target RSS <= 1.3 x (sum of the narinfo file sizes) + 32 MiB.
#   3. Starts nginx (generated config in a temp dir: worker_processes auto, sendfile, tcp_nopush,
#      access_log off, no open_file_cache), our server (--rescan-interval 0, so that "idle" is
#      idle) and the floor (examples/tiny_http_floor: tiny_http and the same number of workers
#      answering one constant narinfo-sized response from memory) on the same directory, and
#      drives each with wrk -t2 and scripts/bench/random_path.lua (a random path from a key list
#      per request), alternating ours/nginx(/floor) for every round:
#        narinfo hits c=64 (+ floor), narinfo misses c=64, 1 MiB NARs c=16, the 1 GiB NAR c=4,
#        narinfo hits c=1000 (+ floor);
#      then reads our server's peak RSS (VmHWM), and runs narinfo hits c=64 against a fresh
#      instance of ours started with --rescan-interval 1 (p99 while rescans run).
#      Around every wrk run it reads user+sys CPU time from /proc/PID/stat of the server (nginx:
#      master + workers): CPU microseconds per request. It also reports how much CPU everything
#      else on the machine used meanwhile (/proc/stat busy time - server - wrk).
#   4. Many connections: fresh instances of ours, nginx and the floor, one at a time, each driven
#      with wrk -t2 -c N (--many-conns) for --duration seconds with a 5 s request timeout: errors,
#      req/s, threads/descriptors/RSS halfway through, the kernel's listen-queue counters, and
#      whether the server still answers a new connection afterwards.
#   5. Prints a Markdown report (best round per server, chosen by req/s, or by MiB/s for NARs;
#      latencies and CPU from that same round) and saves it to scripts/bench/last-result.md; raw
#      wrk output goes to scripts/bench/last-raw.log.
#
# Needs: nginx, wrk, curl, python3 (installed with apt-get when missing and run as root), cargo
# unless --binary/--no-build. Runs everything on 127.0.0.1; every process it starts is stopped on
# exit. Numbers are only meaningful on an otherwise idle machine: the report says how idle it was.
set -euo pipefail

# --- options ----------------------------------------------------------------------------
NARINFOS=100000
DURATION=10
ROUNDS=2
THREADS=""
CACHE_ROOT=/var/tmp/nbc-bench
BINARY=""
FLOOR_BINARY=""
BUILD=1
INDEX_BASE_SIZE=100000
INDEX_SIZES_ARG=""
MANY_CONNS=10000
MANY_TIMEOUT=5 # seconds: wrk's request timeout in the many-connections check
GEN_VERSION=1 # bump when gen_cache.py changes what it writes: cached caches are regenerated

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$SCRIPTS_DIR")"
BENCH_DIR="$SCRIPTS_DIR/bench"
RESULT_MD="$BENCH_DIR/last-result.md"
RAW_LOG="$BENCH_DIR/last-raw.log"
COMMAND_LINE="scripts/bench.sh"
for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./,=:+-]+$ ]]; then COMMAND_LINE+=" $a"; else COMMAND_LINE+=" $(printf '%q' "$a")"; fi
done

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
        --floor-binary) FLOOR_BINARY="${2:-}"; [ -n "$FLOOR_BINARY" ] || die "--floor-binary needs a path"; shift 2 ;;
        --index-sizes)
            INDEX_SIZES_ARG="${2:-}"
            [[ "$INDEX_SIZES_ARG" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] \
                || die "--index-sizes needs comma-separated positive integers, got '$INDEX_SIZES_ARG'"
            shift 2 ;;
        --many-conns) MANY_CONNS="${2:-}"; [[ "$MANY_CONNS" =~ ^[0-9]+$ ]] || die "--many-conns needs an integer, got '$MANY_CONNS'"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
done
[ "$NARINFOS" -gt 201 ] || die "--narinfos must be more than 201"
if [ -n "$INDEX_SIZES_ARG" ]; then
    IFS=',' read -r -a INDEX_SIZES <<< "$INDEX_SIZES_ARG"
    for n in "${INDEX_SIZES[@]}"; do [ "$n" -gt 201 ] || die "--index-sizes: every size must be more than 201"; done
else
    INDEX_SIZES=("$INDEX_BASE_SIZE")
    [ "$NARINFOS" -ne "$INDEX_BASE_SIZE" ] && INDEX_SIZES+=("$NARINFOS")
fi

START_SECONDS=$SECONDS
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
# The repository as it is now (others may change it while this runs).
if GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)"; then
    git -C "$REPO" diff --quiet HEAD -- src vendor Cargo.toml Cargo.lock examples 2>/dev/null \
        || GIT_REV+=" with uncommitted changes under src/, vendor/, examples/ or Cargo.*"
else
    GIT_REV="unknown (not a git checkout)"
fi

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

# Client sockets for wrk, server-side sockets (one descriptor per connection in our epoll
# engine), files being sent. The servers inherit this limit; ours raises its soft
# limit to the hard limit itself. Without CAP_SYS_RESOURCE (containers) the hard limit caps it.
NOFILE_WANT=65536
ulimit -n "$NOFILE_WANT" 2>/dev/null || {
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    say "note: open-file limit is $(ulimit -n) (the hard limit; cannot be raised to $NOFILE_WANT here)"
}
NOFILE="$(ulimit -n)"
[ "$NOFILE" = unlimited ] && NOFILE=1048576
[ "$NOFILE" -ge 4096 ] || die "open-file limit $NOFILE is too low for c=1000 and cannot be raised (ulimit -Hn)"
if [ "$MANY_CONNS" -gt 0 ] && [ "$NOFILE" -lt $((MANY_CONNS + 256)) ]; then
    die "open-file limit $NOFILE is too low for wrk -c$MANY_CONNS (needs $((MANY_CONNS + 256))) and cannot be raised to $NOFILE_WANT (hard limit $(ulimit -Hn)); raise the hard limit or pass --many-conns with a smaller number (0 = skip)"
fi
CLK_TCK="$(getconf CLK_TCK)"

# --- temp dir and cleanup -----------------------------------------------------------------
TMP="$(mktemp -d /tmp/nbc-bench.XXXXXX)"
PIDS=() # every long-running process we started

# shellcheck source=scripts/lib/server.sh
. "$REPO/scripts/lib/server.sh"

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid" 15; done
    PIDS=()
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'say "error: command failed at line $LINENO: $BASH_COMMAND"' ERR
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

# wait_index_read PORT PID TIMEOUT: until our server's /metrics says every narinfo file has been
# read (`nbc_index_read 1`; it answers requests before that, reading files in the background).
# A binary without that gauge (older than the background read) counts as read once it answers.
wait_index_read() {
    local port="$1" pid="$2" deadline=$((SECONDS + $3)) m
    while [ $SECONDS -lt $deadline ]; do
        kill -0 "$pid" 2>/dev/null || return 1
        m="$(curl -fs --max-time 10 "http://127.0.0.1:$port/metrics" || true)"
        if grep -q '^nbc_index_read 1' <<< "$m" || ! grep -q '^nbc_index_read' <<< "$m"; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

proc_kb() { # proc_kb PID FIELD: e.g. VmRSS, VmHWM in kB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# --- build --------------------------------------------------------------------------------
BINARY_GIVEN="$BINARY"
[ "$BUILD" -eq 0 ] && BINARY_GIVEN="${BINARY:-no-build}"
if [ -z "$BINARY" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/target-bench}"
    BINARY="$CARGO_TARGET_DIR/release/nix-binary-cache"
    if [ "$BUILD" -eq 1 ]; then
        command -v cargo >/dev/null || die "cargo not found (or pass --binary PATH)"
        say "building (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
        (cd "$REPO" && cargo build --release -q --bins --examples) || die "cargo build --release failed"
    fi
fi
[ -x "$BINARY" ] || die "no server binary at $BINARY"
[ -n "$FLOOR_BINARY" ] || FLOOR_BINARY="$(dirname "$BINARY")/examples/tiny_http_floor"
if [ -x "$FLOOR_BINARY" ]; then
    HAVE_FLOOR=1
else
    HAVE_FLOOR=0
    say "warning: no floor binary at $FLOOR_BINARY (cargo build --release --examples, or --floor-binary PATH): floor rows skipped"
fi

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

# narinfo_bytes DIR: "FILES BYTES" of DIR/*.narinfo (cached in DIR.keys/narinfo-bytes)
narinfo_bytes() {
    local dir="$1" memo="$1.keys/narinfo-bytes"
    if [ ! -s "$memo" ] || [ "$memo" -ot "$dir/.bench-complete" ]; then
        find "$dir" -maxdepth 1 -type f -name '*.narinfo' -printf '%s\n' \
            | awk '{ n++; s += $1 } END { printf "%d %d\n", n, s }' > "$memo.tmp"
        mv "$memo.tmp" "$memo"
    fi
    cat "$memo"
}

CACHE="$(ensure_cache "$NARINFOS")"
KEYS="$CACHE.keys"
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

# start_floor NAME PORT: starts examples/tiny_http_floor, sets FLOOR_PID; logs to $TMP/NAME.log
start_floor() {
    "$FLOOR_BINARY" "$2" ${THREADS:+"$THREADS"} 2> "$TMP/$1.log" > /dev/null &
    FLOOR_PID=$!
    PIDS+=("$FLOOR_PID")
}

# wait_listening PORT PID TIMEOUT: until a TCP connection to PORT succeeds (the floor answers
# everything, so wait_ready would do too; this also works for it).
wait_listening() { wait_ready "$@"; }

# start_nginx DIR PORT [WORKER_CONNECTIONS]: sets NGINX_PID (the master; daemon off)
start_nginx() {
    local user_line="" wconn="${3:-8192}"
    [ "$(id -u)" -eq 0 ] && user_line="user root;"
    rm -rf "$TMP/nginx"
    mkdir -p "$TMP/nginx"
    cat > "$TMP/nginx/nginx.conf" <<EOF
# generated by scripts/bench.sh
daemon off;
$user_line
worker_processes auto;
worker_rlimit_nofile $NOFILE;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events {
    worker_connections $wconn;
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

# --- CPU accounting -------------------------------------------------------------------------
declare -A SRV_PID # SRV_PID[ours|nginx|floor] = the process measured for that server

srv_pids() { # srv_pids SERVER: the server's processes (nginx: master + workers)
    local pid="${SRV_PID[$1]:-}"
    [ -n "$pid" ] || return 0
    echo "$pid"
    [ "$1" = nginx ] && { ps -o pid= --ppid "$pid" 2>/dev/null || true; }
    return 0
}

cpu_ticks() { # cpu_ticks PID...: user+sys clock ticks of these processes (all their threads)
    local p t=0 f
    for p in "$@"; do
        f="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
        f="${f##*) }" # fields from 3 (state) on; comm may hold spaces
        read -r -a f <<< "$f"
        t=$((t + f[11] + f[12])) # utime, stime (fields 14 and 15)
    done
    echo "$t"
}

machine_busy() { # clock ticks of busy CPU time over all CPUs (user nice system irq softirq)
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat
}

# children_ms: sets CHILD_MS to the CPU time of the processes this shell has waited for, in ms
# (bash `times`). Not in a $(...) subshell: that would report the subshell's own children.
children_ms() {
    times > "$TMP/times"
    CHILD_MS=$(awk 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60000 + a[2] * 1000 }
        printf "%d", t
    }' "$TMP/times")
}

# sample_procs SERVER: "threads fds rss_kb" summed over the server's processes
sample_procs() {
    local p th=0 fd=0 rss=0 n
    for p in $(srv_pids "$1"); do
        th=$((th + $(proc_kb "$p" Threads)))
        rss=$((rss + $(proc_kb "$p" VmRSS)))
        n=$(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        fd=$((fd + n))
    done
    echo "$th $fd $rss"
}

# listen_counters: TcpExt counters of listen-queue trouble, "name=value ..."
listen_counters() {
    awk '$1 == "TcpExt:" && !h { for (i = 2; i <= NF; i++) name[i] = $i; h = 1; next }
         $1 == "TcpExt:" && h {
             for (i = 2; i <= NF; i++)
                 if (name[i] ~ /^(ListenOverflows|ListenDrops|SyncookiesSent|TCPReqQFullDoCookies|TCPReqQFullDrop)$/)
                     printf "%s=%s ", name[i], $i
         }' /proc/net/netstat
}

# --- wrk ----------------------------------------------------------------------------------
: > "$TMP/raw.log"
declare -A R     # R[scenario|server|round|key] = value from the BENCH line
declare -A BEST  # BEST[scenario|server] = round chosen

# run_wrk SCENARIO SERVER ROUND PORT CONNS KEYFILE [TIMEOUT_SECS [SAMPLE]]
# Besides wrk's numbers, stores for the run: cpu_us (server CPU per request), cpu_pct (server
# CPU, 100 = one core), wrk_pct, other_pct (everything else on the machine), load (1-min load
# average before the run); with SAMPLE=1 also threads/fds/rss_kb of the server halfway through.
run_wrk() {
    local scen="$1" srv="$2" round="$3" port="$4" conns="$5" keys="$6" tmo="${7:-30}" sample="${8:-0}"
    local out line kv k pids c0 c1 m0 m1 w0 w1 t0 t1 wpid st=0
    k="$scen|$srv|$round"
    out="$TMP/wrk-$scen-$srv-$round.txt"
    say "wrk: $scen, $srv, round $round (c=$conns, ${DURATION}s)"
    R["$k|load"]="$(cut -d' ' -f1 /proc/loadavg)"
    pids="$(srv_pids "$srv" | tr '\n' ' ')"
    children_ms; w0=$CHILD_MS; m0=$(machine_busy); c0=$(cpu_ticks $pids); t0=$(date +%s%N)
    timeout --kill-after=10 $((DURATION + 120)) \
        wrk -t2 -c"$conns" -d"${DURATION}s" --timeout "${tmo}s" --latency \
        -s "$BENCH_DIR/random_path.lua" "http://127.0.0.1:$port" -- "$keys" > "$out" 2>&1 &
    wpid=$!
    if [ "$sample" = 1 ]; then
        sleep "$(awk -v d="$DURATION" 'BEGIN { print d / 2 }')"
        local th fd rss
        read -r th fd rss <<< "$(sample_procs "$srv")"
        R["$k|threads"]=$th; R["$k|fds"]=$fd; R["$k|rss_kb"]=$rss
    fi
    wait "$wpid" || st=$?
    c1=$(cpu_ticks $pids); m1=$(machine_busy); t1=$(date +%s%N); children_ms; w1=$CHILD_MS
    [ "$st" -eq 0 ] || say "warning: wrk exited with status $st for $scen/$srv/$round"
    { echo "===== $scen | $srv | round $round | c=$conns | $(date -u +%FT%TZ)"; cat "$out"; } >> "$TMP/raw.log"
    line="$(grep '^BENCH ' "$out" | tail -1 || true)"
    [ -n "$line" ] || { say "warning: no BENCH line from wrk for $scen/$srv/$round"; line="BENCH requests=0"; }
    for kv in ${line#BENCH }; do R["$k|${kv%%=*}"]="${kv#*=}"; done
    eval "$(awk -v K="$k" -v c="$((c1 - c0))" -v m="$((m1 - m0))" -v w="$((w1 - w0))" -v hz="$CLK_TCK" \
        -v ns="$((t1 - t0))" -v req="${R[$k|requests]:-0}" 'BEGIN {
            wall = ns / 1e9; srv = c / hz; wrk = w / 1000; other = m / hz - srv - wrk
            if (other < 0) other = 0
            printf "R[\"%s|cpu_us\"]=%.2f; ", K, (req > 0 ? srv * 1e6 / req : 0)
            printf "R[\"%s|cpu_pct\"]=%.0f; R[\"%s|wrk_pct\"]=%.0f; R[\"%s|other_pct\"]=%.0f\n", K, 100 * srv / wall, K, 100 * wrk / wall, K, 100 * other / wall
        }')"
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
# Two starts per cache: the first also warms the page cache (dentries, inodes, file data); the
# report uses the second and shows the first's wall time.
declare -A IDX
for n in "${INDEX_SIZES[@]}"; do
    read -r "IDX[$n|files]" "IDX[$n|bytes]" <<< "$(narinfo_bytes "${INDEX_CACHE[$n]}")"
    for run in 1 2; do
        port="$(free_port)"
        say "index: starting ours on ${INDEX_CACHE[$n]} (start $run of 2)"
        t0=$(date +%s%N)
        start_ours "index-$n-$run" "${INDEX_CACHE[$n]}" "$port" 0 info
        wait_ready "$port" "$OURS_PID" 900 || die "our server did not come up on ${INDEX_CACHE[$n]}: $(tail -5 "$TMP/index-$n-$run.log")"
        t1=$(date +%s%N)
        IDX[$n|wall$run]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
        # Every path known (READY=1; the `listed` line), then every file read (`indexed`).
        wait_index_read "$port" "$OURS_PID" 900 || die "our server did not finish reading ${INDEX_CACHE[$n]}: $(tail -5 "$TMP/index-$n-$run.log")"
        t2=$(date +%s%N)
        IDX[$n|read$run]=$(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
        IDX[$n|listed]="$(sed -n 's/.*listed [0-9]* narinfo files .* in \([0-9.]*\)s:.*/\1/p' "$TMP/index-$n-$run.log" | head -1)"
        [ -n "${IDX[$n|listed]}" ] || IDX[$n|listed]="-"
        sleep 1
        IDX[$n|rss]=$(proc_kb "$OURS_PID" VmRSS)
        IDX[$n|hwm]=$(proc_kb "$OURS_PID" VmHWM)
        IDX[$n|cpu]=$(awk -v t="$(cpu_ticks "$OURS_PID")" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
        logline="$(grep -m1 'indexed [0-9]* narinfo files' "$TMP/index-$n-$run.log" || true)"
        IDX[$n|log]="$(sed -n 's/.*indexed \([0-9]*\) narinfo files .* (\([0-9]*\) skipped) in \([0-9.]*\)s.*/\1 \2 \3/p' <<< "$logline")"
        [ -n "${IDX[$n|log]}" ] || IDX[$n|log]="? ? ?"
        stop_pid "$OURS_PID" 15; forget_pid "$OURS_PID"
    done
done

# --- 2. A/B runs --------------------------------------------------------------------------
PORT_OURS="$(free_port)"
start_ours main "$CACHE" "$PORT_OURS" 0 warn
OURS_MAIN_PID=$OURS_PID
wait_ready "$PORT_OURS" "$OURS_PID" 900 || die "our server did not come up: $(tail -5 "$TMP/main.log")"
wait_index_read "$PORT_OURS" "$OURS_PID" 900 || die "our server did not finish reading its index: $(tail -5 "$TMP/main.log")"
PORT_NGINX="$(free_port)"
while [ "$PORT_NGINX" = "$PORT_OURS" ]; do PORT_NGINX="$(free_port)"; done
start_nginx "$CACHE" "$PORT_NGINX"
wait_ready "$PORT_NGINX" "$NGINX_PID" 60 || die "nginx did not come up: $(cat "$TMP/nginx/stderr.log" "$TMP/nginx/error.log" 2>/dev/null | tail -5)"
SRV_PID[ours]=$OURS_MAIN_PID
SRV_PID[nginx]=$NGINX_PID
if [ "$HAVE_FLOOR" = 1 ]; then
    PORT_FLOOR="$(free_port)"
    while [ "$PORT_FLOOR" = "$PORT_OURS" ] || [ "$PORT_FLOOR" = "$PORT_NGINX" ]; do PORT_FLOOR="$(free_port)"; done
    start_floor floor "$PORT_FLOOR"
    wait_listening "$PORT_FLOOR" "$FLOOR_PID" 60 || die "the floor did not come up: $(tail -5 "$TMP/floor.log")"
    SRV_PID[floor]=$FLOOR_PID
    say "floor on :$PORT_FLOOR (pid $FLOOR_PID): $(tail -1 "$TMP/floor.log")"
fi
say "ours on :$PORT_OURS (pid $OURS_MAIN_PID), nginx on :$PORT_NGINX (pid $NGINX_PID)"
OURS_THREADS_IDLE=$(proc_kb "$OURS_MAIN_PID" Threads)

# Sanity: both serve the same bytes.
first_hit="$(head -1 "$KEYS/hits.txt")"
cmp -s <(curl -fs "http://127.0.0.1:$PORT_OURS$first_hit") <(curl -fs "http://127.0.0.1:$PORT_NGINX$first_hit") \
    || die "ours and nginx answer $first_hit differently"
FIRST_HIT_BYTES=$(curl -fs "http://127.0.0.1:$PORT_OURS$first_hit" | wc -c)

# name | connections | key list | metric that picks the best round | servers
SCENARIOS=(
    "hits64|64|hits.txt|rps|ours nginx floor"
    "miss64|64|misses.txt|rps|ours nginx"
    "nar1m|16|nars-small.txt|mib_s|ours nginx"
    "nar1g|4|nar-big.txt|mib_s|ours nginx"
    "hits1000|1000|hits.txt|rps|ours nginx floor"
)
port_of() { case "$1" in ours) echo "$PORT_OURS" ;; nginx) echo "$PORT_NGINX" ;; floor) echo "$PORT_FLOOR" ;; esac; }
for spec in "${SCENARIOS[@]}"; do
    IFS='|' read -r scen conns keys _ servers <<< "$spec"
    for ((round = 1; round <= ROUNDS; round++)); do
        for srv in $servers; do
            [ "$srv" = floor ] && [ "$HAVE_FLOOR" != 1 ] && continue
            run_wrk "$scen" "$srv" "$round" "$(port_of "$srv")" "$conns" "$KEYS/$keys"
        done
    done
done
OURS_HWM=$(proc_kb "$OURS_MAIN_PID" VmHWM)
OURS_RSS_END=$(proc_kb "$OURS_MAIN_PID" VmRSS)
NGINX_HWM=$(nginx_kb VmHWM)
NGINX_WORKERS=$(ps -o pid= --ppid "$NGINX_PID" | wc -l)
FLOOR_HWM=0
[ "$HAVE_FLOOR" = 1 ] && FLOOR_HWM=$(proc_kb "$FLOOR_PID" VmHWM)
kill -0 "$OURS_MAIN_PID" 2>/dev/null || say "warning: our server died during the runs: $(tail -5 "$TMP/main.log")"
stop_pid "$NGINX_PID" 15; forget_pid "$NGINX_PID"
stop_pid "$OURS_MAIN_PID" 15; forget_pid "$OURS_MAIN_PID"
[ "$HAVE_FLOOR" = 1 ] && { stop_pid "$FLOOR_PID" 15; forget_pid "$FLOOR_PID"; }
OURS_WARN_LINES=$(grep -c . "$TMP/main.log" || true)

# --- 3. p99 while rescans run ----------------------------------------------------------------
PORT_RESCAN="$(free_port)"
start_ours rescan "$CACHE" "$PORT_RESCAN" 1 warn
wait_ready "$PORT_RESCAN" "$OURS_PID" 900 || die "our server (--rescan-interval 1) did not come up"
SRV_PID[ours]=$OURS_PID
for ((round = 1; round <= ROUNDS; round++)); do
    run_wrk rescan64 ours "$round" "$PORT_RESCAN" 64 "$KEYS/hits.txt"
done
RESCAN_HWM=$(proc_kb "$OURS_PID" VmHWM)
RESCAN_LOG_LINES=$(grep -c . "$TMP/rescan.log" || true)
stop_pid "$OURS_PID" 15; forget_pid "$OURS_PID"

for spec in "${SCENARIOS[@]}"; do
    IFS='|' read -r scen _ _ metric servers <<< "$spec"
    for srv in $servers; do pick_best "$scen" "$srv" "$metric"; done
done
pick_best rescan64 ours rps

# --- 3b. many connections ------------------------------------------------------------------
# One run per server on a fresh instance, one server at a time, so that each has the machine's
# sockets and descriptors to itself. A new connection is tried afterwards: tiny_http's accept
# thread stops for good on an accept error (EMFILE), which this would show.
declare -A MANY # MANY[server|key]
MANY_SERVERS=()
if [ "$MANY_CONNS" -gt 0 ]; then
    MANY_SERVERS=(ours nginx)
    [ "$HAVE_FLOOR" = 1 ] && MANY_SERVERS+=(floor)
    for srv in "${MANY_SERVERS[@]}"; do
        port="$(free_port)"
        case "$srv" in
            ours)
                start_ours many "$CACHE" "$port" 0 warn; pid=$OURS_PID
                wait_ready "$port" "$pid" 900 || die "our server did not come up: $(tail -5 "$TMP/many.log")" ;;
            nginx)
                # Room for every connection in one worker: accepts are not spread evenly.
                start_nginx "$CACHE" "$port" $((NOFILE - 64)); pid=$NGINX_PID
                wait_ready "$port" "$pid" 60 || die "nginx did not come up: $(tail -5 "$TMP/nginx/error.log")" ;;
            floor)
                start_floor many-floor "$port"; pid=$FLOOR_PID
                wait_listening "$port" "$pid" 60 || die "the floor did not come up: $(tail -5 "$TMP/many-floor.log")" ;;
        esac
        SRV_PID[$srv]=$pid
        MANY[$srv|backlog]="$(ss -ltnH "sport = :$port" 2>/dev/null | awk '{ print $3; exit }')" || true
        MANY[$srv|lim]="$(awk '$1 == "Max" && $2 == "open" { print $4; exit }' "/proc/$pid/limits")"
        before="$(listen_counters)"
        run_wrk many "$srv" 1 "$port" "$MANY_CONNS" "$KEYS/hits.txt" "$MANY_TIMEOUT" 1
        after="$(listen_counters)"
        MANY[$srv|tcp]="$(awk -v a="$before" -v b="$after" 'BEGIN {
            n = split(a, x, " "); split(b, y, " "); out = ""
            for (i = 1; i <= n; i++) {
                split(x[i], p, "="); split(y[i], q, "=")
                if (q[2] - p[2] != 0) out = out p[1] " +" (q[2] - p[2]) ", "
            }
            sub(/, $/, "", out); print (out == "" ? "none" : out)
        }')"
        if kill -0 "$pid" 2>/dev/null \
            && curl -fs -o /dev/null --max-time 10 "http://127.0.0.1:$port$first_hit"; then
            MANY[$srv|after]="yes"
        else
            MANY[$srv|after]="**no**"
            kill -0 "$pid" 2>/dev/null || MANY[$srv|after]="**no (exited)**"
        fi
        case "$srv" in
            ours) log="$TMP/many.log" ;; floor) log="$TMP/many-floor.log" ;; nginx) log="$TMP/nginx/error.log" ;;
        esac
        MANY[$srv|loglines]=$(grep -c . "$log" 2>/dev/null || true)
        # the first 4 distinct messages (numbers folded; backtrace frames and notes left out)
        MANY[$srv|logmsg]="$(sed -E 's/^[0-9TZ:.\/ -]+//; s/[0-9]+/N/g' "$log" 2>/dev/null \
            | { grep -Ev '^(stack backtrace:|note: | +N: | +at |$)' || true; } \
            | awk '{ c[$0]++; if (c[$0] == 1) order[++n] = $0 }
                END { for (i = 1; i <= n && i <= 4; i++) {
                    m = order[i]; gsub(/\|/, "/", m); gsub(/`/, "'"'"'", m)
                    printf "%s%dx `%s`", (i > 1 ? "; " : ""), c[order[i]], substr(m, 1, 160) } }')" || true
        stop_pid "$pid" 15; forget_pid "$pid"
        sleep 2 # let the closed connections settle
    done
fi

# --- 4. report ----------------------------------------------------------------------------
ms() { awk -v u="$1" 'BEGIN { printf "%.3f ms", u / 1000 }'; }
num() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
mib() { awk -v x="$1" 'BEGIN { printf "%.1f MiB/s", x }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
cpu() { awk -v u="$1" 'BEGIN { if (u >= 10000) printf "%.1f ms", u / 1000; else printf "%.1f µs", u }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }

row() { # row SCENARIO LABEL KEY FORMAT [lower]
    local a b note=""
    a="$(val "$1" ours "$3")"; b="$(val "$1" nginx "$3")"
    [ "${5:-}" = lower ] && note=" (lower is better)"
    echo "| $2$note | $($4 "$a") | $($4 "$b") | $(ratio "$a" "$b") |"
}

errors_cell() { # errors_cell SCENARIO SERVER: totals over all rounds
    local k out="" reqs non2xx sock="" n
    reqs=$(sum_rounds "$1" "$2" requests)
    non2xx=$(sum_rounds "$1" "$2" err_status)
    for k in connect read write timeout; do
        n=$(sum_rounds "$1" "$2" "err_$k")
        [ "$n" -gt 0 ] && sock+="$k $n, "
    done
    out="$reqs req, non-2xx/3xx $non2xx"
    [ -n "$sock" ] && out+=", socket errors: ${sock%, }" || out+=", no socket errors"
    echo "$out"
}

many_cell() { # many_cell SERVER KEY FORMAT
    local v="${R[many|$1|1|$2]:-}"
    [ -n "$v" ] || { echo "-"; return; }
    "$3" "$v"
}

# Noise: the 1-min load before each run and the CPU everything else used during it.
NOISE="$(for k in "${!R[@]}"; do
    case "$k" in *"|other_pct") echo "${R[$k]} ${R[${k%other_pct}load]:-0}" ;; esac
done | awk '{ n++; o += $1; if ($1 > mo) mo = $1; l += $2; if ($2 > ml) ml = $2 }
    END { if (n) printf "others used %.0f%% of one core on average during the wrk runs (at most %.0f%%); 1-min load average before a run: mean %.2f, max %.2f", o / n, mo, l / n, ml }')"

CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
BINARY_NOTE="built by this run"
[ -n "$BINARY_GIVEN" ] && BINARY_NOTE="not built by this run (--binary or --no-build), file modified $(date -u -r "$BINARY" '+%Y-%m-%d %H:%M UTC'); which commit it was built from is not checked"
TOTAL=$((SECONDS - START_SECONDS))
THREADS_NOTE="${THREADS:-default}"

{
    echo "# nix-binary-cache vs nginx"
    echo
    echo "- Command: \`$COMMAND_LINE\`"
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); total run time ${TOTAL}s"
    echo "- Machine: $(nproc) CPUs, $CPU_MODEL; kernel $(uname -r); $(awk '/MemTotal/ { printf "%.1f GiB", $2/1048576 }' /proc/meminfo) RAM; open-file limit $(ulimit -n) (hard $(ulimit -Hn)); net.core.somaxconn $(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo '?'), tcp_max_syn_backlog $(cat /proc/sys/net/ipv4/tcp_max_syn_backlog 2>/dev/null || echo '?'), tcp_syncookies $(cat /proc/sys/net/ipv4/tcp_syncookies 2>/dev/null || echo '?')"
    echo "- Load average at start $LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg); $NOISE"
    echo "- Server: $BINARY ($BINARY_NOTE); repository at the start of the run: $GIT_REV; threads: $THREADS_NOTE ($OURS_THREADS_IDLE threads when idle), --rescan-interval 0 except where noted"
    echo "- nginx: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), worker_processes auto ($NGINX_WORKERS workers), sendfile on, tcp_nopush on, access_log off, open_file_cache off"
    [ "$HAVE_FLOOR" = 1 ] && echo "- Floor: $FLOOR_BINARY, threads: $THREADS_NOTE"
    echo "- Cache: $CACHE ($NARINFOS narinfos, 200 NARs of 1 MiB, one of 1 GiB; page cache warm)"
    echo "- Load: wrk 2 threads, ${DURATION}s per run, random path per request (scripts/bench/random_path.lua); rounds: $ROUNDS, ours then nginx (then the floor) in each."
    echo "  Each cell is the **best round** (highest req/s; MiB/s for NARs); latencies and CPU from that same round."
    echo "  wrk runs on the same $(nproc) cores as the server, so it takes CPU away from both."
    echo "- CPU/request: user+sys time of the server process (nginx: master + workers) from /proc/PID/stat, read before and after each run, divided by the requests wrk completed."
    echo "  It includes the kernel's TCP work done in the server's context, not wrk's; it depends much less on machine noise than req/s does."
    echo
    echo "| scenario | ours | nginx | ratio (ours/nginx) |"
    echo "|---|---:|---:|---:|"
    row hits64 "narinfo hits, c=64: req/s" rps num
    row hits64 "narinfo hits, c=64: p50" p50_us ms lower
    row hits64 "narinfo hits, c=64: p99" p99_us ms lower
    row hits64 "narinfo hits, c=64: CPU/request" cpu_us cpu lower
    row miss64 "narinfo misses (404), c=64: req/s" rps num
    row miss64 "narinfo misses (404), c=64: p50" p50_us ms lower
    row miss64 "narinfo misses (404), c=64: p99" p99_us ms lower
    row miss64 "narinfo misses (404), c=64: CPU/request" cpu_us cpu lower
    row nar1m "1 MiB NARs, c=16: throughput" mib_s mib
    row nar1m "1 MiB NARs, c=16: req/s" rps num
    row nar1m "1 MiB NARs, c=16: p50" p50_us ms lower
    row nar1m "1 MiB NARs, c=16: p99" p99_us ms lower
    row nar1m "1 MiB NARs, c=16: CPU/request (= per MiB)" cpu_us cpu lower
    row nar1g "1 GiB NAR, c=4: throughput" mib_s mib
    row nar1g "1 GiB NAR, c=4: CPU/request (= per GiB)" cpu_us cpu lower
    row hits1000 "narinfo hits, c=1000: req/s" rps num
    row hits1000 "narinfo hits, c=1000: p50" p50_us ms lower
    row hits1000 "narinfo hits, c=1000: p99" p99_us ms lower
    row hits1000 "narinfo hits, c=1000: CPU/request" cpu_us cpu lower
    echo "| peak RSS after all runs (VmHWM; nginx: master + workers) (lower is better) | $(mb "$OURS_HWM") | $(mb "$NGINX_HWM") | $(ratio "$OURS_HWM" "$NGINX_HWM") |"
    echo
    echo "Our RSS at the end of the runs: $(mb "$OURS_RSS_END"). Lines our server logged at --log-level warn: $OURS_WARN_LINES."
    if [ "$HAVE_FLOOR" = 1 ]; then
        echo
        echo "### The floor: tiny_http + worker pool alone"
        echo
        echo "examples/tiny_http_floor is tiny_http with the same number of worker threads answering every"
        echo "request with one constant response of about 1 KB from memory (our answer to the first hit has a"
        echo "$FIRST_HIT_BYTES-byte body): no routing, no index, no disk, no logging. It is the cost floor of"
        echo "tiny_http + worker pool, so ours/nginx cannot exceed floor/nginx in req/s, and our CPU/request"
        echo "cannot go below the floor's."
        echo
        echo "| narinfo hits | ours | nginx | floor | ours/nginx | floor/nginx | ours/floor |"
        echo "|---|---:|---:|---:|---:|---:|---:|"
        for scen in hits64 hits1000; do
            c=64; [ "$scen" = hits1000 ] && c=1000
            for spec in "req/s|rps|num" "p99 (lower is better)|p99_us|ms" "CPU/request (lower is better)|cpu_us|cpu"; do
                IFS='|' read -r label key fmt <<< "$spec"
                a="$(val "$scen" ours "$key")"; b="$(val "$scen" nginx "$key")"; f="$(val "$scen" floor "$key")"
                echo "| c=$c: $label | $($fmt "$a") | $($fmt "$b") | $($fmt "$f") | $(ratio "$a" "$b") | $(ratio "$f" "$b") | $(ratio "$a" "$f") |"
            done
        done
        echo
        echo "Peak RSS of the floor: $(mb "$FLOOR_HWM")."
    fi
    echo
    echo "### p99 of narinfo hits while rescans run (ours only)"
    echo
    echo "| c=64 narinfo hits | ours, idle (--rescan-interval 0) | ours, --rescan-interval 1 | ratio (rescan/idle) |"
    echo "|---|---:|---:|---:|"
    for key in rps p50_us p99_us cpu_us; do
        a="$(val hits64 ours "$key")"; b="$(val rescan64 ours "$key")"
        case $key in
            rps) echo "| req/s | $(num "$a") | $(num "$b") | $(ratio "$b" "$a") |" ;;
            cpu_us) echo "| CPU/request, rescans included (lower is better) | $(cpu "$a") | $(cpu "$b") | $(ratio "$b" "$a") |" ;;
            *) echo "| ${key%_us} (lower is better) | $(ms "$a") | $(ms "$b") | $(ratio "$b" "$a") |" ;;
        esac
    done
    echo
    echo "Peak RSS of the rescanning instance: $(mb "$RESCAN_HWM"); lines it logged at --log-level warn: $RESCAN_LOG_LINES."
    if [ "$MANY_CONNS" -gt 0 ]; then
        echo
        echo "### $MANY_CONNS connections (narinfo hits, fresh instances, one ${DURATION}s run each, wrk --timeout ${MANY_TIMEOUT}s)"
        echo
        hdr="| c=$MANY_CONNS |"; sep="|---|"
        for srv in "${MANY_SERVERS[@]}"; do hdr+=" $srv |"; sep+="---:|"; done
        echo "$hdr"; echo "$sep"
        manyrow() { # manyrow LABEL KEY FORMAT
            local line="| $1 |" srv
            for srv in "${MANY_SERVERS[@]}"; do line+=" $(many_cell "$srv" "$2" "$3") |"; done
            echo "$line"
        }
        manyrow "req/s" rps num
        manyrow "requests completed" requests num
        manyrow "p50" p50_us ms
        manyrow "p99" p99_us ms
        manyrow "max" max_us ms
        manyrow "CPU/request" cpu_us cpu
        line="| errors: connect / read / write / timeout / non-2xx |"
        for srv in "${MANY_SERVERS[@]}"; do
            line+=" ${R[many|$srv|1|err_connect]:-?} / ${R[many|$srv|1|err_read]:-?} / ${R[many|$srv|1|err_write]:-?} / ${R[many|$srv|1|err_timeout]:-?} / ${R[many|$srv|1|err_status]:-?} |"
        done
        echo "$line"
        line="| halfway: threads, open descriptors, RSS |"
        for srv in "${MANY_SERVERS[@]}"; do
            line+=" ${R[many|$srv|1|threads]:-?}, ${R[many|$srv|1|fds]:-?}, $(mb "${R[many|$srv|1|rss_kb]:-0}") |"
        done
        echo "$line"
        line="| open-file limit of the process (nginx: master) |"; for srv in "${MANY_SERVERS[@]}"; do line+=" ${MANY[$srv|lim]:-?} |"; done; echo "$line"
        line="| listen backlog (ss Send-Q) |"; for srv in "${MANY_SERVERS[@]}"; do line+=" ${MANY[$srv|backlog]:-?} |"; done; echo "$line"
        line="| kernel listen-queue counters during the run |"; for srv in "${MANY_SERVERS[@]}"; do line+=" ${MANY[$srv|tcp]:-?} |"; done; echo "$line"
        line="| answers a new connection afterwards |"; for srv in "${MANY_SERVERS[@]}"; do line+=" ${MANY[$srv|after]:-?} |"; done; echo "$line"
        line="| log lines (ours, floor: stderr; nginx: error.log) |"; for srv in "${MANY_SERVERS[@]}"; do line+=" ${MANY[$srv|loglines]:-0} |"; done; echo "$line"
        echo
        for srv in "${MANY_SERVERS[@]}"; do
            [ -n "${MANY[$srv|logmsg]:-}" ] && echo "- $srv logged: ${MANY[$srv|logmsg]}"
        done
        echo
        echo "Ours and the floor run on our epoll engine (crates/tiny_http): one descriptor and no thread per"
        echo "connection, so an open-file limit of L holds about L connections."
    fi
    echo
    echo "### Index build at startup (ours)"
    echo
    echo "Second of two starts (the first warms the page cache). Memory target: RSS ≤ 1.3 × narinfo bytes + 32 MiB."
    echo "The server answers before its first scan ends (from the disk); the \`listed\` line is every path known"
    echo "(READY=1), the \`indexed\` line every file read (in the background, nice 19); CPU and memory once read."
    echo
    echo "| narinfos | narinfo bytes | 1st start (page cache may be cold): launch to first answer | 2nd start: launch to first answer | \`listed\` (every path known) | launch to every file read | \`indexed\` log line | skipped | CPU (user+sys) once read | VmRSS | VmHWM | target | VmRSS ≤ target | VmHWM ≤ target |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    for n in "${INDEX_SIZES[@]}"; do
        read -r cnt skipped secs <<< "${IDX[$n|log]}"
        limit_kb=$(awk -v b="${IDX[$n|bytes]}" 'BEGIN { printf "%d", 1.3 * b / 1024 + 32 * 1024 }')
        pass_rss=fail; [ "${IDX[$n|rss]}" -le "$limit_kb" ] && pass_rss=pass
        pass_hwm=fail; [ "${IDX[$n|hwm]}" -le "$limit_kb" ] && pass_hwm=pass
        echo "| $n | $(awk -v b="${IDX[$n|bytes]}" 'BEGIN { printf "%.1f MiB", b / 1048576 }') | ${IDX[$n|wall1]} s | ${IDX[$n|wall2]} s | ${IDX[$n|listed]} s | ${IDX[$n|read2]} s | $cnt in ${secs} s | $skipped | ${IDX[$n|cpu]} s | $(mb "${IDX[$n|rss]}") | $(mb "${IDX[$n|hwm]}") | $(mb "$limit_kb") | $pass_rss ($(ratio "${IDX[$n|rss]}" "$limit_kb")) | $pass_hwm ($(ratio "${IDX[$n|hwm]}" "$limit_kb")) |"
    done
    echo
    echo "### Requests and errors (all rounds)"
    echo
    echo "Misses are expected to be non-2xx (404) for both servers."
    echo
    echo "| scenario | ours | nginx | floor |"
    echo "|---|---|---|---|"
    for spec in "${SCENARIOS[@]}"; do
        IFS='|' read -r scen conns _ _ servers <<< "$spec"
        fl="-"; [[ " $servers " == *" floor "* ]] && [ "$HAVE_FLOOR" = 1 ] && fl="$(errors_cell "$scen" floor)"
        echo "| $scen (c=$conns) | $(errors_cell "$scen" ours) | $(errors_cell "$scen" nginx) | $fl |"
    done
    echo "| rescan64 (c=64) | $(errors_cell rescan64 ours) | - | - |"
    echo
    echo "### Every run"
    echo
    echo "CPU columns: 100% = one core. \"others\" = busy CPU time of the whole machine (/proc/stat) minus the server's and wrk's: other processes, noise."
    echo
    echo "| scenario | server | round | req/s | MiB/s | p50 | p99 | max | CPU/request | server CPU | wrk CPU | others CPU | load1 before |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for scen in hits64 miss64 nar1m nar1g hits1000 rescan64 many; do
        for srv in ours nginx floor; do
            for ((round = 1; round <= ROUNDS; round++)); do
                k="$scen|$srv|$round"
                [ -n "${R[$k|requests]:-}" ] || continue
                mark=""; [ "${BEST[$scen|$srv]:-}" = "$round" ] && mark=" *"
                echo "| $scen | $srv | $round$mark | $(num "${R[$k|rps]:-0}") | $(awk -v x="${R[$k|mib_s]:-0}" 'BEGIN{printf "%.1f", x}') | $(ms "${R[$k|p50_us]:-0}") | $(ms "${R[$k|p99_us]:-0}") | $(ms "${R[$k|max_us]:-0}") | $(cpu "${R[$k|cpu_us]:-0}") | ${R[$k|cpu_pct]:-?}% | ${R[$k|wrk_pct]:-?}% | ${R[$k|other_pct]:-?}% | ${R[$k|load]:-?} |"
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
