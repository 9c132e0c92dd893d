#!/usr/bin/env bash
# replicas-test.sh - two stateless replicas on one shared cache directory behind the nginx
# caching tier of dist/nginx/nix-binary-cache.conf, driven by the real Nix client.
#
# Usage: scripts/replicas-test.sh [--quick]
#
#   --quick     steps 1, 2 and 4 only, fewer pulls (well under a minute; part of `make test`)
#   -h, --help  show this text
#
# Environment: NBC_BIN (server binary; default target/release/nix-binary-cache, built with
# cargo when missing), KEEP_TMP=1 (keep the temp dir with all logs), FAILOVER_PULLS=N (pulls in
# step 4; default 16, --quick 4).
#
# Setup: copies tests/fixtures/cache-signed to a temp dir, starts replica A (with
#   --upload-token-file) and replica B on that one directory (both --sign-key with the test key
#   and --watch poll --rescan-interval 0, as on the shared storage they stand for, where inotify
#   sees nothing of other hosts' writes: whatever they serve they found on the request path), and nginx
#   (`-p TMP -g 'daemon off;'`) with a copy of dist/nginx/nix-binary-cache.conf in which only the
#   replica addresses, listen port, cache and log paths are substituted. Then pushes a batch of
#   fresh store paths with `nix copy --to http://NGINX` (PUT must reach replica A only, uncached).
# 1. Pulls the fixture closure through nginx into a fresh store (signatures checked).
# 2. Pulls it again into another fresh store; from nginx's access log ($upstream_cache_status)
#    prints the hit ratio of that second pull and requires the NARs to be HITs.
# 3. (full mode) Builds a new path (builder = "/bin/sh", in /nix/store, so needs root; deleted
#    again on exit), asks replica B and nginx for it first (404), pushes it directly to replica A
#    with a netrc token, then requires replica B to serve narinfo and NAR on its very next
#    request (stateless: B's miss path reads the shared disk), measures how long nginx's cached
#    404 hides it (max-age=5), and pulls it through nginx into a fresh store.
# 4. Pulls the pushed batch one path at a time through nginx (each one a cache MISS, so a
#    replica must answer) and kills replica B with SIGKILL while a pull is running; every pull
#    must still succeed (Nix with download-attempts = 1: no client retries hide anything), no
#    client may see a 5xx, and the log must show nginx failing over from B to A.
# Prints PASS/FAIL per check and a summary; exits 1 on any failure. Every process it started is
# stopped on exit (trap), and the temp dir removed unless KEEP_TMP=1.
#
# Needs: nix (Debian's nix-bin, via scripts/ensure-deps.sh), nginx, curl; as root they are
# installed with apt-get when missing. Full mode must run as root (it builds into /nix/store as
# scripts/make-fixture.sh does); --quick works as any user once the tools are installed.
set -euo pipefail
export LC_ALL=C # decimal points in $EPOCHREALTIME and awk

say() { echo "replicas-test: $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) say "unknown option '$1' (try --help)"; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIX="$ROOT/tests/fixtures"
REFERENCE_CONF="$ROOT/dist/nginx/nix-binary-cache.conf"
KEY_SEC="$FIX/keys/test-key.sec"
KEY_PUB="$(cat "$FIX/keys/test-key.pub")"
manifest() { sed -n "s/^$1=//p" "$FIX/manifest.env"; }
TOP="$(manifest TOP)"
read -r -a CLOSURE <<< "$(manifest CLOSURE)"
if [ "$QUICK" -eq 1 ]; then PULLS="${FAILOVER_PULLS:-4}"; else PULLS="${FAILOVER_PULLS:-16}"; fi
[[ "$PULLS" =~ ^[0-9]+$ ]] && [ "$PULLS" -ge 2 ] || { say "FAILOVER_PULLS must be at least 2"; exit 2; }
KILL_AT=$(( (PULLS + 1) / 2 )) # B is killed while this pull (1-based) is running
T_START=$EPOCHREALTIME

# --- results ------------------------------------------------------------------------------
RESULTS=()
FAILED=0
TIMINGS=()
pass() { RESULTS+=("PASS  $*"); say "PASS: $*"; }
fail() { RESULTS+=("FAIL  $*"); FAILED=$((FAILED + 1)); say "FAIL: $*"; }
die() { fail "$*"; exit 1; }
elapsed() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN { printf "%.1f", b - a }'; }
step_done() { TIMINGS+=("$1: $(elapsed "$2") s"); }

# --- tools --------------------------------------------------------------------------------
# need COMMAND PACKAGE...: installs the first PACKAGE that exists with apt-get (root only).
need() {
    local cmd="$1" pkg
    shift
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "$cmd not found: install the Debian package '$1' (apt-get install -y $1, as root)"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    for pkg in "$@"; do
        say "$cmd missing: apt-get install -y $pkg"
        apt-get install -y -qq "$pkg" >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq "$pkg" >/dev/null; } \
            || continue
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] && return 0
    done
    say "could not install ${*} (for $cmd)"
    exit 1
}
"$ROOT/scripts/ensure-deps.sh" # the real Nix client (nix-bin)
need nginx nginx-light nginx
need curl curl
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
if [ "$QUICK" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    say "full mode builds a path into /nix/store and must run as root (as scripts/make-fixture.sh); try --quick"
    exit 1
fi

BIN="${NBC_BIN:-$ROOT/target/release/nix-binary-cache}"
if [ ! -x "$BIN" ]; then
    [ -z "${NBC_BIN:-}" ] || { say "NBC_BIN=$NBC_BIN is not an executable"; exit 1; }
    say "$BIN missing: cargo build --release"
    (cd "$ROOT" && "${CARGO:-cargo}" build --release --quiet)
fi

# --- temp dir, processes, cleanup ---------------------------------------------------------
TMP="$(mktemp -d "${TMPDIR:-/tmp}/nbc-replicas.XXXXXX")"
chmod 755 "$TMP"
CACHE="$TMP/shared-cache" # the "shared storage" both replicas serve
PID_A="" PID_B="" PID_NGINX=""
BUILT=() # paths this script added to /nix/store

# stop_pid, server_port
# shellcheck source=scripts/lib/server.sh
. "$ROOT/scripts/lib/server.sh"

show_logs() {
    local f
    for f in nginx/error.log nginx/access.log replica-a.log replica-b.log; do
        [ -s "$TMP/$f" ] || continue
        echo "---- last lines of $f"
        tail -n 15 "$TMP/$f"
    done >&2
}

summary() {
    local line
    echo
    echo "==== replicas-test $([ "$QUICK" -eq 1 ] && echo "--quick " )summary"
    for line in "${RESULTS[@]}"; do echo "$line"; done
    [ ${#TIMINGS[@]} -eq 0 ] || echo "timings: $(IFS=';'; echo "${TIMINGS[*]}" | sed 's/;/; /g')"
    echo "total: $(elapsed "$T_START") s"
    if [ "$1" -ne 0 ] && [ "$FAILED" -eq 0 ]; then
        echo "RESULT: FAIL (stopped early with status $1 after ${#RESULTS[@]} checks)"
    elif [ "$FAILED" -eq 0 ] && [ ${#RESULTS[@]} -gt 0 ]; then
        echo "RESULT: PASS (${#RESULTS[@]} checks)"
    else
        echo "RESULT: FAIL ($FAILED of ${#RESULTS[@]} checks failed)"
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ "$rc" -eq 0 ] && [ "$FAILED" -eq 0 ] || show_logs
    summary "$rc"
    stop_pid "$PID_NGINX"
    stop_pid "$PID_A"
    stop_pid "$PID_B"
    if [ ${#BUILT[@]} -gt 0 ]; then
        nix-store --delete "${BUILT[@]}" >/dev/null 2>&1 || say "note: could not delete ${BUILT[*]} from /nix/store"
    fi
    # Store paths are read-only, even to their owner.
    if [ "${KEEP_TMP:-0}" = 1 ]; then say "kept $TMP"; else chmod -R u+w "$TMP" 2>/dev/null; rm -rf "$TMP"; fi
    [ "$FAILED" -eq 0 ] || rc=1
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# --- Nix client configuration -------------------------------------------------------------
mkdir -p "$TMP/home"
# shellcheck source=scripts/lib/nix-client.sh
. "$ROOT/scripts/lib/nix-client.sh"
use_private_nix "$TMP/nix" "trusted-public-keys = $KEY_PUB" "require-sigs = true" \
    "download-attempts = 1" "connect-timeout = 5"
export HOME="$TMP/home"
TOKEN="replicas-test-token-$$"
echo "$TOKEN" > "$TMP/upload-tokens"
printf 'machine 127.0.0.1 login nix password %s\n' "$TOKEN" > "$TMP/netrc"

# nixc NAME COMMAND ARGS...: a Nix command with its own narinfo cache dir NAME (nothing
# remembered between runs).
nixc() {
    local name="$1"
    shift
    XDG_CACHE_HOME="$TMP/xdg/$name" "$@"
}

# --- replicas -----------------------------------------------------------------------------
cp -R "$FIX/cache-signed" "$CACHE"

REPLICA_PID="" REPLICA_PORT=""
start_replica() { # start_replica NAME EXTRA...: sets REPLICA_PID and REPLICA_PORT
    local log="$TMP/replica-$1.log"
    shift
    "$BIN" "$CACHE" -p 0 --bind 127.0.0.1 --watch poll --rescan-interval 0 --sign-key "$KEY_SEC" "$@" \
        < /dev/null > /dev/null 2> "$log" &
    REPLICA_PID=$!
    REPLICA_PORT=$(server_port "$log" "$REPLICA_PID")
}
start_replica a --upload-token-file "$TMP/upload-tokens" || die "replica A did not start (log above)"
PID_A=$REPLICA_PID PORT_A=$REPLICA_PORT
start_replica b || die "replica B did not start (log above)"
PID_B=$REPLICA_PID PORT_B=$REPLICA_PORT
A="127.0.0.1:$PORT_A"
B="127.0.0.1:$PORT_B"

# --- nginx with the shipped config --------------------------------------------------------
mkdir -p "$TMP/nginx"
port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start_nginx() { # start_nginx PORT: templated config, nginx in the foreground of a background job
    local port="$1" conf="$TMP/nginx/nix-binary-cache.conf" user_line=""
    sed -e "s|10\.0\.0\.11:8080|$A|g" \
        -e "s|10\.0\.0\.12:8080|$B|g" \
        -e "s|^\(\s*\)listen 80;|\1listen 127.0.0.1:$port;|" \
        -e "s|/var/cache/nginx/nix-binary-cache|$TMP/nginx/cache|g" \
        -e "s|/var/log/nginx/nix-binary-cache.access.log|$TMP/nginx/access.log|g" \
        "$REFERENCE_CONF" > "$conf"
    # The substitutions must all have applied, or the test would not test the shipped file.
    if grep -nE '10\.0\.0\.1[12]|/var/|listen 80;' "$conf" >&2 \
        || [ "$(grep -c "server $A" "$conf")" -ne 2 ] || [ "$(grep -c "server $B" "$conf")" -ne 1 ]; then
        die "dist/nginx/nix-binary-cache.conf changed shape: the sed template no longer matches it"
    fi
    [ "$(id -u)" -eq 0 ] && user_line="user root;"
    cat > "$TMP/nginx/nginx.conf" <<EOF
# generated by scripts/replicas-test.sh around dist/nginx/nix-binary-cache.conf
$user_line
worker_processes 2;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events {
    worker_connections 256;
}
http {
    default_type application/octet-stream;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    include $conf;
}
EOF
    "$NGINX" -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
        2> "$TMP/nginx/test.log" || die "nginx rejected the config: $(cat "$TMP/nginx/test.log")"
    "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
        2>> "$TMP/nginx/error.log" &
    PID_NGINX=$!
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$PID_NGINX" 2>/dev/null || return 1
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}
PORT_NGINX=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
    p=$((20000 + RANDOM % 40000))
    port_free "$p" || continue
    if start_nginx "$p"; then PORT_NGINX="$p"; break; fi
    stop_pid "$PID_NGINX"
    PID_NGINX=""
done
[ -n "$PORT_NGINX" ] || die "nginx did not come up: $(tail -n 5 "$TMP/nginx/error.log" 2>/dev/null)"
N="127.0.0.1:$PORT_NGINX"
LOG="$TMP/nginx/access.log"
say "replica A http://$A (pid $PID_A, uploads), replica B http://$B (pid $PID_B), nginx http://$N (pid $PID_NGINX)"
say "server: $BIN; $("$NGINX" -v 2>&1); $(nix --version)"

# --- access-log helpers -------------------------------------------------------------------
log_mark() { wc -l < "$LOG"; }
# log_since MARK: the lines written after log_mark returned MARK. nginx writes a line after the
# response, so a client can finish before its last line is there: wait (up to 2 s) until at least
# one new line exists and the count stays the same for 0.1 s.
log_since() {
    local n last i
    last=$(log_mark)
    for ((i = 0; i < 40; i++)); do
        sleep 0.05
        n=$(log_mark)
        [ "$n" -gt "$1" ] && [ "$n" -eq "$last" ] && break
        last=$n
    done
    tail -n "+$(($1 + 1))" "$LOG"
}
# Reduces log lines to "METHOD PATH STATUS CACHE UPSTREAMS|UPSTREAM_STATUSES", one per line.
log_fields() {
    sed -nE 's/^[^"]*"([A-Z]+) ([^ ]+) [^"]*" ([0-9]+) [0-9]+ cache=([^ ]+) upstream=(.*) upstream_status=(.*) time=.*$/\1 \2 \3 \4 \5|\6/p'
}
# describe: "1x nix-cache-info HIT, 6x narinfo HIT, 1x nar MISS from replica B" for log_fields lines.
describe() {
    sed -E 's#^[A-Z]+ /([^ ]*) [0-9]+ ([^ ]+) ([^|]*)\|.*#\1 \2 from \3#; s#^nar/[^ ]+#nar#; s#^[a-z0-9]{32}\.narinfo#narinfo#; s# from -$##' \
        | sed "s#$A#replica A#g; s#$B#replica B#g" \
        | awk '{ if (!($0 in n)) order[k++] = $0; n[$0]++ } END { for (i = 0; i < k; i++) printf "%s%dx %s", (i ? ", " : ""), n[order[i]], order[i] }'
}
count() { grep -cE "$1" || true; } # count matching stdin lines (0 when none)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.0f%%", 100 * a / b }'; }

in_store() { # in_store STORE PATH...: every PATH exists inside the chroot store STORE
    local store="$1" p
    shift
    for p in "$@"; do [ -e "$store$p" ] || return 1; done
}
http_code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

# --- setup: a batch of fresh paths pushed through nginx (PUT -> replica A, never cached) -----
t=$EPOCHREALTIME
mkdir -p "$TMP/gen"
BATCH_FILES=()
for ((i = 1; i <= PULLS; i++)); do
    f="$TMP/gen/replica-payload-$i"
    printf 'payload %d of replicas-test run %s %s\n' "$i" "$$" "$EPOCHREALTIME" > "$f"
    BATCH_FILES+=("$f")
done
mapfile -t BATCH < <(nixc gen nix-store --store "$TMP/gen-store" --add "${BATCH_FILES[@]}")
[ "${#BATCH[@]}" -eq "$PULLS" ] || die "could not add $PULLS paths to the generator store"
mark=$(log_mark)
if nixc push-batch nix copy --option netrc-file "$TMP/netrc" --from "$TMP/gen-store" \
    --to "http://$N" "${BATCH[@]}" 2> "$TMP/push-batch.err"; then
    puts="$(log_since "$mark" | log_fields | grep '^PUT ' || true)"
    n_put=$(count . <<< "$puts")
    n_put_ok=$(count "^PUT [^ ]+ 200 - $A\|200\$" <<< "$puts")
    if [ "$n_put" -ge $((2 * PULLS)) ] && [ "$n_put_ok" -eq "$n_put" ]; then
        pass "push of $PULLS paths through nginx: $n_put PUTs, all 200, uncached (cache=-), all on replica A"
    else
        fail "push through nginx: $n_put_ok of $n_put PUTs were 200/uncached/replica A (want >= $((2 * PULLS))): $(head -n 3 <<< "$puts")"
    fi
else
    fail "nix copy --to http://$N (through nginx, PUT) failed: $(tail -n 3 "$TMP/push-batch.err")"
fi
# The push asked nginx for each path first (404s, with its netrc credentials): those misses must
# not have been cached, or the paths would stay hidden (and step 4 would fail) for 5 s.
first="${BATCH[0]:11:32}"
mark=$(log_mark)
code=$(http_code "http://$N/$first.narinfo")
cache_status="$(log_since "$mark" | log_fields | awk '{ print $4 }')"
if [ "$code" = 200 ] && [ "$cache_status" = MISS ]; then
    pass "a path pushed through nginx is served by nginx at once (200, $cache_status): the pusher's 404s were not cached"
else
    fail "right after the push nginx answered $code ($cache_status) for $first.narinfo: the pusher's 404 was cached"
fi
step_done "setup push" "$t"

# The landing page is passed through uncached; /metrics stays with the replicas.
mark=$(log_mark)
landing=$(http_code "http://$N/")
landing_cache="$(log_since "$mark" | log_fields | awk '{ print $4 }')"
metrics=$(http_code "http://$N/metrics")
if [ "$landing" = 200 ] && [ "$landing_cache" = "-" ] && [ "$metrics" = 404 ] \
    && [ "$(http_code "http://$A/metrics")" = 200 ]; then
    pass "routes: / passed through uncached, /metrics 404 at nginx (200 on the replica itself)"
else
    fail "routes: / gave $landing (cache=$landing_cache), /metrics through nginx gave $metrics"
fi

# --- 1. pull the closure through nginx ----------------------------------------------------
t=$EPOCHREALTIME
mark=$(log_mark)
if nixc pull1 nix copy --from "http://$N" --to "$TMP/store1" "$TOP" 2> "$TMP/pull1.err" \
    && in_store "$TMP/store1" "${CLOSURE[@]}"; then
    lines="$(log_since "$mark" | log_fields)"
    pass "step 1: closure of ${#CLOSURE[@]} paths pulled through nginx, signatures checked ($(count . <<< "$lines") requests: $(count ' MISS ' <<< "$lines") MISS, $(count ' HIT ' <<< "$lines") HIT)"
else
    fail "step 1: nix copy --from http://$N failed: $(tail -n 3 "$TMP/pull1.err")"
fi
step_done "step 1" "$t"

# --- 2. pull again: the NARs must come from nginx's cache ----------------------------------
t=$EPOCHREALTIME
mark=$(log_mark)
if nixc pull2 nix copy --from "http://$N" --to "$TMP/store2" "$TOP" 2> "$TMP/pull2.err" \
    && in_store "$TMP/store2" "${CLOSURE[@]}"; then
    lines="$(log_since "$mark" | log_fields)"
    total=$(count . <<< "$lines")
    hits=$(count ' HIT ' <<< "$lines")
    nars=$(count '^[A-Z]+ /nar/' <<< "$lines")
    nar_hits=$(count '^[A-Z]+ /nar/[^ ]+ 200 HIT ' <<< "$lines")
    narinfo_hits=$(count '^[A-Z]+ /[a-z0-9]+\.narinfo [0-9]+ HIT ' <<< "$lines")
    narinfos=$(count '^[A-Z]+ /[a-z0-9]+\.narinfo ' <<< "$lines")
    HIT_SUMMARY="second pull: $hits of $total requests HIT ($(ratio "$hits" "$total")); NARs $nar_hits/$nars HIT, narinfos $narinfo_hits/$narinfos HIT"
    say "$HIT_SUMMARY"
    if [ "$nar_hits" -gt 0 ] && [ "$nar_hits" -eq "$nars" ]; then
        pass "step 2: $HIT_SUMMARY"
    else
        fail "step 2: NARs were not served from nginx's cache: $HIT_SUMMARY"
        log_since "$mark" >&2
    fi
else
    fail "step 2: second nix copy --from http://$N failed: $(tail -n 3 "$TMP/pull2.err")"
fi
# The caching headers pass through unchanged.
nar_url="$(sed -n 's/^URL: //p' "$CACHE/${TOP:11:32}.narinfo")"
cc="$(curl -sI "http://$N/$nar_url" | tr -d '\r' | sed -n 's/^[Cc]ache-[Cc]ontrol: //p')"
if [ "$cc" = "public, max-age=31536000, immutable" ] \
    && ! curl -sI "http://$N/$nar_url" | grep -qi '^content-encoding'; then
    pass "step 2: NAR through nginx keeps Cache-Control '$cc' and has no Content-Encoding"
else
    fail "step 2: NAR through nginx has Cache-Control '$cc' (or a Content-Encoding)"
fi
# Range (Nix resumes broken downloads with it): answered by nginx from the whole file, both when
# the file is not cached yet (nginx fetches all of it, without Range) and when it is.
log_rel="log/$(basename "$(manifest TOP_DRV)")"
tail -c +11 "$CACHE/$log_rel" | head -c 20 > "$TMP/range.want"
range_ok=1
for round in miss hit; do
    mark=$(log_mark)
    code=$(curl -s -r 10-29 -o "$TMP/range.got" -w '%{http_code}' "http://$N/$log_rel")
    status="$(log_since "$mark" | log_fields | awk '{ print $4 }')"
    if [ "$code" != 206 ] || ! cmp -s "$TMP/range.want" "$TMP/range.got"; then
        range_ok=0
        say "Range ($round): status $code, cache=$status, body: $(od -c "$TMP/range.got" | head -n 2)"
    fi
    [ "$round" = miss ] && [ "$status" != MISS ] && range_ok=0
    [ "$round" = hit ] && [ "$status" != HIT ] && range_ok=0
done
size=$(stat -c %s "$CACHE/$log_rel")
if [ "$range_ok" -eq 1 ] && grep -qE "GET /$log_rel 200 $size " "$TMP/replica-a.log" "$TMP/replica-b.log"; then
    pass "step 2: Range through nginx: 206 with the right bytes on a MISS (the replica sent all $size bytes, 200) and on the HIT"
else
    fail "step 2: Range through nginx (MISS, then HIT) did not give the right 206, or the replica was asked for a range"
fi
step_done "step 2" "$t"

# --- 3. build, push to replica A directly, served by B and through nginx --------------------
if [ "$QUICK" -eq 0 ]; then
    t=$EPOCHREALTIME
    nonce="$$-${EPOCHREALTIME/./}"
    cat > "$TMP/new.nix" <<'EOF'
{ nonce }:
derivation {
  name = "replicas-test-new";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo built by replicas-test ${nonce} > $out" ];
}
EOF
    if NEW="$(nixc build nix-build "$TMP/new.nix" --argstr nonce "$nonce" --no-out-link 2> "$TMP/build.err")" \
        && [ -f "$NEW" ]; then
        BUILT+=("$NEW" "$(nix-store --query --deriver "$NEW")")
        pass "step 3: built $NEW with builder = /bin/sh"
        hash="${NEW:11:32}"
        # Both B and nginx are asked first, so a remembered miss would show.
        before_b=$(http_code "http://$B/$hash.narinfo")
        before_n=$(http_code "http://$N/$hash.narinfo")
        if nixc push-a nix copy --option netrc-file "$TMP/netrc" --to "http://$A" "$NEW" 2> "$TMP/push-a.err"; then
            pushed=$EPOCHREALTIME
            after_b=$(http_code "http://$B/$hash.narinfo")
            after_a=$(http_code "http://$A/$hash.narinfo")
            new_nar="$(curl -s "http://$B/$hash.narinfo" | sed -n 's/^URL: //p')"
            nar_b=$(http_code "http://$B/$new_nar")
            nar_a=$(http_code "http://$A/$new_nar")
            if [ "$before_b" = 404 ] && [ "$after_b" = 200 ] && [ "$after_a" = 200 ] \
                && [ -n "$new_nar" ] && [ "$nar_b" = 200 ] && [ "$nar_a" = 200 ]; then
                pass "step 3: pushed to replica A; replica B answered 404 before and 200 on its very next request (narinfo and NAR), A 200"
            else
                fail "step 3: stateless replicas: B before=$before_b after=$after_b, A after=$after_a, NAR ($new_nar) B=$nar_b A=$nar_a"
            fi
            # nginx cached its 404 for max-age=5: how long until it shows the new path?
            code=""
            while :; do
                code=$(http_code "http://$N/$hash.narinfo")
                [ "$code" = 200 ] && break
                awk -v a="$pushed" -v b="$EPOCHREALTIME" 'BEGIN { exit !(b - a > 10) }' && break
                sleep 0.2
            done
            hidden=$(elapsed "$pushed")
            # max-age=5 and nginx keeps expiry times in whole seconds: at most 6 s after the 404.
            if [ "$before_n" = 404 ] && [ "$code" = 200 ] && awk -v h="$hidden" 'BEGIN { exit !(h <= 7) }'; then
                pass "step 3: nginx served the new narinfo $hidden s after the push (it had cached the 404 asked just before: max-age=5)"
            else
                fail "step 3: nginx: before=$before_n, then $code after $hidden s (want 200 once the 404's max-age=5 ran out)"
            fi
            mark=$(log_mark)
            if nixc pull3 nix copy --from "http://$N" --to "$TMP/store3" "$NEW" 2> "$TMP/pull3.err" \
                && grep -q "built by replicas-test $nonce" "$TMP/store3$NEW"; then
                served="$(log_since "$mark" | log_fields | describe)"
                pass "step 3: new path pulled through nginx into a fresh store, content checked ($served)"
            else
                fail "step 3: pull of the new path through nginx failed: $(tail -n 3 "$TMP/pull3.err")"
            fi
        else
            fail "step 3: nix copy --to http://$A (netrc token) failed: $(tail -n 3 "$TMP/push-a.err")"
        fi
    else
        fail "step 3: nix-build of $TMP/new.nix failed: $(tail -n 3 "$TMP/build.err")"
    fi
    step_done "step 3" "$t"
fi

# --- 4. a loop of pulls, replica B killed with SIGKILL in the middle -------------------------
t=$EPOCHREALTIME
mark=$(log_mark)
ok=0
kill_mark=""
durations=()
for ((i = 1; i <= PULLS; i++)); do
    path="${BATCH[$((i - 1))]}"
    t_pull=$EPOCHREALTIME
    nixc "loop$i" nix copy --from "http://$N" --to "$TMP/loop-store-$i" "$path" 2> "$TMP/loop$i.err" &
    pull_pid=$!
    if [ "$i" -eq "$KILL_AT" ]; then
        kill_mark=$(log_mark)
        kill -KILL "$PID_B"
        wait "$PID_B" 2>/dev/null || true
        say "killed replica B (pid $PID_B) with SIGKILL during pull $i of $PULLS"
        PID_B=""
    fi
    if wait "$pull_pid" && in_store "$TMP/loop-store-$i" "$path"; then
        ok=$((ok + 1))
    else
        say "pull $i of $path failed: $(tail -n 3 "$TMP/loop$i.err")"
    fi
    durations+=("$(elapsed "$t_pull")")
done
slowest=$(printf '%s\n' "${durations[@]}" | sort -n | tail -n 1)
lines="$(log_since "$mark" | log_fields)"
after_kill="$(log_since "$kill_mark" | log_fields)"
misses=$(count ' (MISS|EXPIRED) ' <<< "$lines")
failovers=$(count " $B, $A\|" <<< "$after_kill")
by_a=$(count " $A\|200\$" <<< "$after_kill")
errors=$(count '^[A-Z]+ [^ ]+ 5[0-9][0-9] ' <<< "$lines")
FAILOVER_SUMMARY="$ok/$PULLS pulls succeeded (B killed during pull $KILL_AT; slowest pull $slowest s); $misses requests in the loop went upstream (MISS/EXPIRED); after the kill: $failovers requests failed over B -> A, $by_a answered by A directly; $errors 5xx to clients"
say "$FAILOVER_SUMMARY"
if [ "$ok" -eq "$PULLS" ] && [ "$errors" -eq 0 ] && [ "$misses" -ge "$PULLS" ] && [ "$failovers" -ge 1 ]; then
    pass "step 4: $FAILOVER_SUMMARY"
else
    fail "step 4: $FAILOVER_SUMMARY"
    [ "$failovers" -ge 1 ] || say "(no request was sent to the dead replica: the kill was not exercised)"
    log_since "$mark" >&2
fi
step_done "step 4" "$t"

# --- whole run: no request through nginx stalled -----------------------------------------------
slow="$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^time=/ && substr($i, 6) + 0 >= 5) print }' "$LOG")"
max_time="$(sed -nE 's/.* time=([0-9.]+) .*/\1/p' "$LOG" | sort -n | tail -n 1)"
if [ -z "$slow" ]; then
    pass "no request through nginx took 5 s or more ($(log_mark) requests, slowest ${max_time} s)"
else
    fail "requests through nginx stalled for 5 s or more: $(head -n 3 <<< "$slow")"
fi

