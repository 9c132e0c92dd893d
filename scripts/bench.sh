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
#   5. scripts/bench/report.py turns the numbers into a Markdown report (best round per server,
#      chosen by req/s, or by MiB/s for NARs; latencies and CPU from that same round), which is
#      printed and saved to docs/benchmarks.md.
#
# This script only runs and measures: every number it collects goes to a run directory,
# target/bench/<UTC time>/ (target/bench/latest points at the last one; not in git):
# measurements.txt (KEY=VALUE lines), raw.log (every wrk output), the servers' logs and
# report.md. `scripts/bench/report.py DIR` writes the report again from such a directory.
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
RESULT_MD="$REPO/docs/benchmarks.md"
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

# --- run directory: what this run measured, for scripts/bench/report.py -------------------
RUN_NAME="$(date -u +%Y%m%dT%H%M%SZ)"
RUN="$REPO/target/bench/$RUN_NAME"
mkdir -p "$RUN" || die "cannot create the run directory $RUN"
ln -sfn "$RUN_NAME" "$REPO/target/bench/latest"
MEASURED="$RUN/measurements.txt"
: > "$MEASURED"
: > "$RUN/raw.log"

# record KEY VALUE...: appends KEY=VALUE to measurements.txt (the value is the rest of the line).
record() {
    local value="${*:2}"
    printf '%s=%s\n' "$1" "${value//$'\n'/ }" >> "$MEASURED"
}

record run.command "$COMMAND_LINE"
record run.git_rev "$GIT_REV"
record run.load_start "$LOAD_START"
record run.duration "$DURATION"
record run.rounds "$ROUNDS"
record run.threads "$THREADS"
record run.many_conns "$MANY_CONNS"
record run.many_timeout "$MANY_TIMEOUT"
record run.raw_log "target/bench/$RUN_NAME/raw.log"
record machine.cpus "$(nproc)"
record machine.cpu_model "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
record machine.kernel "$(uname -r)"
record machine.mem_kb "$(awk '$1 == "MemTotal:" { print $2 }' /proc/meminfo)"
record machine.nofile "$(ulimit -n)"
record machine.nofile_hard "$(ulimit -Hn)"
record machine.somaxconn "$(cat /proc/sys/net/core/somaxconn 2>/dev/null || echo '?')"
record machine.tcp_max_syn_backlog "$(cat /proc/sys/net/ipv4/tcp_max_syn_backlog 2>/dev/null || echo '?')"
record machine.tcp_syncookies "$(cat /proc/sys/net/ipv4/tcp_syncookies 2>/dev/null || echo '?')"
record machine.clk_tck "$CLK_TCK"
record nginx.version "$("$NGINX" -v 2>&1)"

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
record ours.binary "$BINARY"
record ours.built_by_this_run "$([ -z "$BINARY_GIVEN" ] && echo yes || echo no)"
[ -n "$FLOOR_BINARY" ] || FLOOR_BINARY="$(dirname "$BINARY")/examples/tiny_http_floor"
if [ -x "$FLOOR_BINARY" ]; then
    HAVE_FLOOR=1
else
    HAVE_FLOOR=0
    say "warning: no floor binary at $FLOOR_BINARY (cargo build --release --examples, or --floor-binary PATH): floor rows skipped"
fi
record floor.binary "$FLOOR_BINARY"
record floor.present "$HAVE_FLOOR"

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
record cache.dir "$CACHE"
record cache.narinfos "$NARINFOS"
declare -A INDEX_CACHE
for n in "${INDEX_SIZES[@]}"; do INDEX_CACHE[$n]="$(ensure_cache "$n")"; done

# --- servers ------------------------------------------------------------------------------
OURS_THREAD_ARGS=()
[ -n "$THREADS" ] && OURS_THREAD_ARGS=(--threads "$THREADS")

# start_ours NAME DIR PORT RESCAN LOGLEVEL: starts our server, sets OURS_PID; logs to $RUN/NAME.log
start_ours() {
    "$BINARY" "$2" -p "$3" --bind 127.0.0.1 "${OURS_THREAD_ARGS[@]}" \
        --log-level "$5" --rescan-interval "$4" 2> "$RUN/$1.log" > /dev/null &
    OURS_PID=$!
    PIDS+=("$OURS_PID")
}

# start_floor NAME PORT: starts examples/tiny_http_floor, sets FLOOR_PID; logs to $RUN/NAME.log
start_floor() {
    "$FLOOR_BINARY" "$2" ${THREADS:+"$THREADS"} 2> "$RUN/$1.log" > /dev/null &
    FLOOR_PID=$!
    PIDS+=("$FLOOR_PID")
}

# wait_listening PORT PID TIMEOUT: until a TCP connection to PORT succeeds (the floor answers
# everything, so wait_ready would do too; this also works for it).
wait_listening() { wait_ready "$@"; }

# start_nginx DIR PORT [WORKER_CONNECTIONS]: sets NGINX_PID (the master; daemon off). Its error
# log stays in $TMP (one line per miss: hundreds of MB in a full run).
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
# run_wrk SCENARIO SERVER ROUND PORT CONNS KEYFILE [TIMEOUT_SECS [SAMPLE]]
# Records, as wrk.SCENARIO.SERVER.ROUND.*: wrk's BENCH line (random_path.lua), the 1-min load
# average before the run, and the counters read before and after it: the server's user+sys
# clock ticks, the whole machine's busy ticks, wrk's CPU milliseconds and the wall time; with
# SAMPLE=1 also threads/fds/rss_kb of the server halfway through. report.py derives CPU per
# request and the CPU shares from them.
run_wrk() {
    local scen="$1" srv="$2" round="$3" port="$4" conns="$5" keys="$6" tmo="${7:-30}" sample="${8:-0}"
    local out line k pids c0 c1 m0 m1 w0 w1 t0 t1 wpid st=0 th fd rss
    k="wrk.$scen.$srv.$round"
    out="$TMP/wrk-$scen-$srv-$round.txt"
    say "wrk: $scen, $srv, round $round (c=$conns, ${DURATION}s)"
    record "$k.conns" "$conns"
    record "$k.load" "$(cut -d' ' -f1 /proc/loadavg)"
    pids="$(srv_pids "$srv" | tr '\n' ' ')"
    children_ms; w0=$CHILD_MS; m0=$(machine_busy); c0=$(cpu_ticks $pids); t0=$(date +%s%N)
    timeout --kill-after=10 $((DURATION + 120)) \
        wrk -t2 -c"$conns" -d"${DURATION}s" --timeout "${tmo}s" --latency \
        -s "$BENCH_DIR/random_path.lua" "http://127.0.0.1:$port" -- "$keys" > "$out" 2>&1 &
    wpid=$!
    if [ "$sample" = 1 ]; then
        sleep "$(awk -v d="$DURATION" 'BEGIN { print d / 2 }')"
        read -r th fd rss <<< "$(sample_procs "$srv")"
        record "$k.threads" "$th"
        record "$k.fds" "$fd"
        record "$k.rss_kb" "$rss"
    fi
    wait "$wpid" || st=$?
    c1=$(cpu_ticks $pids); m1=$(machine_busy); t1=$(date +%s%N); children_ms; w1=$CHILD_MS
    [ "$st" -eq 0 ] || say "warning: wrk exited with status $st for $scen/$srv/$round"
    { echo "===== $scen | $srv | round $round | c=$conns | $(date -u +%FT%TZ)"; cat "$out"; } >> "$RUN/raw.log"
    line="$(grep '^BENCH ' "$out" | tail -1 || true)"
    [ -n "$line" ] || { say "warning: no BENCH line from wrk for $scen/$srv/$round"; line="BENCH requests=0"; }
    record "$k.wrk" "${line#BENCH }"
    record "$k.server_ticks" "$((c1 - c0))"
    record "$k.machine_ticks" "$((m1 - m0))"
    record "$k.wrk_ms" "$((w1 - w0))"
    record "$k.wall_ns" "$((t1 - t0))"
}

# --- 1. index build time and RSS after startup --------------------------------------------
# Two starts per cache: the first also warms the page cache (dentries, inodes, file data); the
# report uses the second and shows the first's wall time. report.py reads the `listed` and
# `indexed` lines from the logs.
record index.sizes "${INDEX_SIZES[*]}"
for n in "${INDEX_SIZES[@]}"; do
    read -r files bytes <<< "$(narinfo_bytes "${INDEX_CACHE[$n]}")"
    record "index.$n.files" "$files"
    record "index.$n.bytes" "$bytes"
    for run in 1 2; do
        port="$(free_port)"
        say "index: starting ours on ${INDEX_CACHE[$n]} (start $run of 2)"
        t0=$(date +%s%N)
        start_ours "index-$n-$run" "${INDEX_CACHE[$n]}" "$port" 0 info
        wait_ready "$port" "$OURS_PID" 900 || die "our server did not come up on ${INDEX_CACHE[$n]}: $(tail -5 "$RUN/index-$n-$run.log")"
        t1=$(date +%s%N)
        # Every path known (READY=1; the `listed` line), then every file read (`indexed`).
        wait_index_read "$port" "$OURS_PID" 900 || die "our server did not finish reading ${INDEX_CACHE[$n]}: $(tail -5 "$RUN/index-$n-$run.log")"
        t2=$(date +%s%N)
        sleep 1
        record "index.$n.$run.log" "index-$n-$run.log"
        record "index.$n.$run.first_answer_ns" "$((t1 - t0))"
        record "index.$n.$run.all_read_ns" "$((t2 - t0))"
        record "index.$n.$run.rss_kb" "$(proc_kb "$OURS_PID" VmRSS)"
        record "index.$n.$run.hwm_kb" "$(proc_kb "$OURS_PID" VmHWM)"
        record "index.$n.$run.cpu_ticks" "$(cpu_ticks "$OURS_PID")"
        stop_pid "$OURS_PID" 15; forget_pid "$OURS_PID"
    done
done

# --- 2. A/B runs --------------------------------------------------------------------------
PORT_OURS="$(free_port)"
start_ours main "$CACHE" "$PORT_OURS" 0 warn
OURS_MAIN_PID=$OURS_PID
wait_ready "$PORT_OURS" "$OURS_PID" 900 || die "our server did not come up: $(tail -5 "$RUN/main.log")"
wait_index_read "$PORT_OURS" "$OURS_PID" 900 || die "our server did not finish reading its index: $(tail -5 "$RUN/main.log")"
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
    wait_listening "$PORT_FLOOR" "$FLOOR_PID" 60 || die "the floor did not come up: $(tail -5 "$RUN/floor.log")"
    SRV_PID[floor]=$FLOOR_PID
    say "floor on :$PORT_FLOOR (pid $FLOOR_PID): $(tail -1 "$RUN/floor.log")"
fi
say "ours on :$PORT_OURS (pid $OURS_MAIN_PID), nginx on :$PORT_NGINX (pid $NGINX_PID)"
record ours.threads_idle "$(proc_kb "$OURS_MAIN_PID" Threads)"

# Sanity: both serve the same bytes.
first_hit="$(head -1 "$KEYS/hits.txt")"
cmp -s <(curl -fs "http://127.0.0.1:$PORT_OURS$first_hit") <(curl -fs "http://127.0.0.1:$PORT_NGINX$first_hit") \
    || die "ours and nginx answer $first_hit differently"
record ours.first_hit_bytes "$(curl -fs "http://127.0.0.1:$PORT_OURS$first_hit" | wc -c)"

# name | connections | key list | metric that picks the best round | servers
SCENARIOS=(
    "hits64|64|hits.txt|rps|ours nginx floor"
    "miss64|64|misses.txt|rps|ours nginx"
    "nar1m|16|nars-small.txt|mib_s|ours nginx"
    "nar1g|4|nar-big.txt|mib_s|ours nginx"
    "hits1000|1000|hits.txt|rps|ours nginx floor"
)
for spec in "${SCENARIOS[@]}"; do record "scenario.${spec%%|*}" "${spec#*|}"; done
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
record ours.hwm_kb "$(proc_kb "$OURS_MAIN_PID" VmHWM)"
record ours.rss_end_kb "$(proc_kb "$OURS_MAIN_PID" VmRSS)"
record ours.log main.log
record nginx.hwm_kb "$(nginx_kb VmHWM)"
record nginx.workers "$(ps -o pid= --ppid "$NGINX_PID" | wc -l)"
[ "$HAVE_FLOOR" = 1 ] && record floor.hwm_kb "$(proc_kb "$FLOOR_PID" VmHWM)"
kill -0 "$OURS_MAIN_PID" 2>/dev/null || say "warning: our server died during the runs: $(tail -5 "$RUN/main.log")"
stop_pid "$NGINX_PID" 15; forget_pid "$NGINX_PID"
stop_pid "$OURS_MAIN_PID" 15; forget_pid "$OURS_MAIN_PID"
[ "$HAVE_FLOOR" = 1 ] && { stop_pid "$FLOOR_PID" 15; forget_pid "$FLOOR_PID"; }

# --- 3. p99 while rescans run ----------------------------------------------------------------
PORT_RESCAN="$(free_port)"
start_ours rescan "$CACHE" "$PORT_RESCAN" 1 warn
wait_ready "$PORT_RESCAN" "$OURS_PID" 900 || die "our server (--rescan-interval 1) did not come up"
SRV_PID[ours]=$OURS_PID
for ((round = 1; round <= ROUNDS; round++)); do
    run_wrk rescan64 ours "$round" "$PORT_RESCAN" 64 "$KEYS/hits.txt"
done
record rescan.hwm_kb "$(proc_kb "$OURS_PID" VmHWM)"
record rescan.log rescan.log
stop_pid "$OURS_PID" 15; forget_pid "$OURS_PID"

# --- 3b. many connections ------------------------------------------------------------------
# One run per server on a fresh instance, one server at a time, so that each has the machine's
# sockets and descriptors to itself. A new connection is tried afterwards: tiny_http's accept
# thread stops for good on an accept error (EMFILE), which this would show.
MANY_SERVERS=()
if [ "$MANY_CONNS" -gt 0 ]; then
    MANY_SERVERS=(ours nginx)
    [ "$HAVE_FLOOR" = 1 ] && MANY_SERVERS+=(floor)
    for srv in "${MANY_SERVERS[@]}"; do
        port="$(free_port)"
        case "$srv" in
            ours)
                start_ours many-ours "$CACHE" "$port" 0 warn; pid=$OURS_PID; log=many-ours.log
                wait_ready "$port" "$pid" 900 || die "our server did not come up: $(tail -5 "$RUN/$log")" ;;
            nginx)
                # Room for every connection in one worker: accepts are not spread evenly.
                start_nginx "$CACHE" "$port" $((NOFILE - 64)); pid=$NGINX_PID; log=many-nginx-error.log
                wait_ready "$port" "$pid" 60 || die "nginx did not come up: $(tail -5 "$TMP/nginx/error.log")" ;;
            floor)
                start_floor many-floor "$port"; pid=$FLOOR_PID; log=many-floor.log
                wait_listening "$port" "$pid" 60 || die "the floor did not come up: $(tail -5 "$RUN/$log")" ;;
        esac
        SRV_PID[$srv]=$pid
        record "many.$srv.log" "$log"
        record "many.$srv.backlog" "$(ss -ltnH "sport = :$port" 2>/dev/null | awk '{ print $3; exit }' || true)"
        record "many.$srv.open_file_limit" "$(awk '$1 == "Max" && $2 == "open" { print $4; exit }' "/proc/$pid/limits")"
        record "many.$srv.listen_before" "$(listen_counters)"
        run_wrk many "$srv" 1 "$port" "$MANY_CONNS" "$KEYS/hits.txt" "$MANY_TIMEOUT" 1
        record "many.$srv.listen_after" "$(listen_counters)"
        if ! kill -0 "$pid" 2>/dev/null; then
            record "many.$srv.answers_after" exited
        elif curl -fs -o /dev/null --max-time 10 "http://127.0.0.1:$port$first_hit"; then
            record "many.$srv.answers_after" yes
        else
            record "many.$srv.answers_after" no
        fi
        if [ "$srv" = nginx ]; then cp "$TMP/nginx/error.log" "$RUN/$log" || true; fi
        stop_pid "$pid" 15; forget_pid "$pid"
        sleep 2 # let the closed connections settle
    done
fi
record many.servers "${MANY_SERVERS[*]}"

# --- 4. report ----------------------------------------------------------------------------
TOTAL=$((SECONDS - START_SECONDS))
record run.seconds "$TOTAL"
record run.end "$(date -u '+%Y-%m-%d %H:%M UTC')"
record run.load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
record ours.binary_modified "$(date -u -r "$BINARY" '+%Y-%m-%d %H:%M UTC')"
python3 "$BENCH_DIR/report.py" "$RUN" > "$RUN/report.md" \
    || die "scripts/bench/report.py failed; the measurements are in $RUN"
mkdir -p "$(dirname "$RESULT_MD")"
cp "$RUN/report.md" "$RESULT_MD"
cat "$RESULT_MD"
say "done in ${TOTAL}s; report saved to $RESULT_MD, measurements and logs in $RUN"
