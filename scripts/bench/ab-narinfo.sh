#!/usr/bin/env bash
# ab-narinfo.sh BINARY_A BINARY_B CACHE_DIR [ROUNDS] [SECONDS]: a short side-by-side of narinfo
# misses and hits (wrk -t2 -c64, scripts/bench/random_path.lua over CACHE_DIR.keys/misses.txt
# and hits.txt) for two builds of our server and nginx on the same gen_cache.py directory.
# Each server is started once (access logs off, no rescans) and measured after its index is
# read; per run it prints req/s, p99, CPU per request (user+sys of the server's processes /
# requests) and the load average. Much shorter than scripts/bench.sh (make bench): for A/B
# checks of one change on a shared machine.
set -u
A="$1" B="$2" DIR="$3" R="${4:-2}" D="${5:-8}"
KEYS="$DIR.keys" LUA="$(cd "$(dirname "$0")" && pwd)/random_path.lua" T="$(mktemp -d)"
"$A" "$DIR" -p 18201 --bind 127.0.0.1 --access-log off --rescan-interval 0 2> "$T/a.log" > /dev/null & PA=$!
"$B" "$DIR" -p 18202 --bind 127.0.0.1 --access-log off --rescan-interval 0 2> "$T/b.log" > /dev/null & PB=$!
mkdir -p "$T/nginx"
cat > "$T/nginx/nginx.conf" <<NG
daemon off;
$([ "$(id -u)" -eq 0 ] && echo "user root;")
worker_processes auto;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
    types { text/x-nix-narinfo narinfo; }
    default_type application/octet-stream;
    client_body_temp_path $T/nginx/cb; proxy_temp_path $T/nginx/p; fastcgi_temp_path $T/nginx/f;
    uwsgi_temp_path $T/nginx/u; scgi_temp_path $T/nginx/s;
    server { listen 127.0.0.1:18203; root $DIR; }
}
NG
nginx -p "$T/nginx" -c "$T/nginx/nginx.conf" 2> "$T/nginx/stderr.log" & PN=$!
trap 'kill $PA $PB 2>/dev/null; kill -QUIT $PN 2>/dev/null; wait; rm -rf "$T"' EXIT
until grep -q "indexed [0-9]* narinfo" "$T/a.log" && grep -q "indexed [0-9]* narinfo" "$T/b.log"; do sleep 1; done
sleep 1
ticks() { local t=0 p f; for p in "$@"; do f="$(cat "/proc/$p/stat" 2>/dev/null)" || continue; f="${f##*) }"; read -r -a f <<< "$f"; t=$((t + f[11] + f[12])); done; echo $t; }
pids() { case $1 in A) echo $PA;; B) echo $PB;; nginx) echo $PN $(ps -o pid= --ppid $PN);; esac; }
port() { case $1 in A) echo 18201;; B) echo 18202;; nginx) echo 18203;; esac; }
hz=$(getconf CLK_TCK)
for r in $(seq 1 "$R"); do
  for scen in misses hits; do
    for srv in A B nginx; do
      p="$(pids $srv)"; c0=$(ticks $p); load=$(cut -d' ' -f1 /proc/loadavg)
      out=$(wrk -t2 -c64 -d"${D}s" --latency -s "$LUA" "http://127.0.0.1:$(port $srv)" -- "$KEYS/$scen.txt" 2>&1)
      c1=$(ticks $p)
      n=$(awk '/requests in/{print $1}' <<< "$out"); rps=$(awk '/Requests\/sec/{print $2}' <<< "$out")
      p99=$(awk '$1=="99%"{print $2}' <<< "$out")
      echo "round $r $scen $srv: $rps req/s, p99 $p99, CPU/request $(awk -v c=$((c1 - c0)) -v n="$n" -v hz="$hz" 'BEGIN { printf "%.1f", c * 1e6 / hz / n }') us, $n requests, load $load"
    done
  done
done
