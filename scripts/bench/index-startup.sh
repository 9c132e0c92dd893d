#!/usr/bin/env bash
# index-startup.sh BINARY CACHE_DIR [PORT]: how fast a server starts on a big cache.
#
# Starts BINARY on CACHE_DIR (a scripts/bench/gen_cache.py cache; its key lists are read from
# CACHE_DIR.keys) with access logs off and no periodic rescans, and prints:
#   - launch to the first answer to a hit (asked every 5 ms), and what a miss answers then;
#   - launch to "every path known" (the `listed N narinfo files` log line: READY=1) with the
#     process's CPU seconds and VmRSS at that moment;
#   - launch to "every file read" (the `indexed N narinfo files` log line) with CPU seconds;
#   - VmRSS and VmHWM (peak) two seconds later, and the 1-minute load average at the start.
# A binary without the `listed` line (before the index learnt to list first) reports the
# `indexed` line for both. The server is stopped at the end.
set -euo pipefail
bin="$1" dir="$2" port="${3:-18300}"
hit="$(sed -n 1000p "$dir.keys/hits.txt")" miss="$(head -1 "$dir.keys/misses.txt")"
log="$(mktemp)"
load="$(cut -d' ' -f1 /proc/loadavg)"
t0=$(date +%s%N)
"$bin" "$dir" -p "$port" --bind 127.0.0.1 --access-log off --rescan-interval 0 2> "$log" > /dev/null &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
secs() { awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$pid/stat"; }
mib() { awk -v f="$1:" '$1 == f { printf "%d", $2 / 1024 }' "/proc/$pid/status"; }
until curl -fs -o /dev/null "http://127.0.0.1:$port$hit"; do sleep 0.005; done
first=$(secs)
miss_status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$miss")
until grep -q -E "listed [0-9]+ narinfo|indexed [0-9]+ narinfo" "$log"; do sleep 0.01; done
known=$(secs) known_cpu=$(cpu) known_rss=$(mib VmRSS)
until grep -q "indexed [0-9]* narinfo" "$log"; do sleep 0.05; done
read_all=$(secs) read_cpu=$(cpu)
sleep 2
echo "load $load; first answer ${first}s (a miss then: $miss_status); every path known ${known}s (CPU ${known_cpu}s, VmRSS ${known_rss} MiB); every file read ${read_all}s (CPU ${read_cpu}s); VmRSS $(mib VmRSS) MiB, VmHWM $(mib VmHWM) MiB"
grep -E "listed [0-9]+ narinfo|indexed [0-9]+ narinfo" "$log" | sed 's/^.*\] //'
