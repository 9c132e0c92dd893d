# Sourced by the scripts that start and stop the server (check-landing, check-systemd-units,
# soak, replicas-test, bench).

# server_binary REPO [GIVEN]
#   Prints GIVEN, or else the release or debug build under REPO/target; fails (return 1, with a
#   message on stderr) when there is none or it is not an executable file.
server_binary() {
    local repo=$1 binary=${2:-} candidate
    if [[ -z $binary ]]; then
        for candidate in "$repo/target/release/nix-binary-cache" "$repo/target/debug/nix-binary-cache"; do
            if [[ -x $candidate ]]; then
                binary=$candidate
                break
            fi
        done
        if [[ -z $binary ]]; then
            echo "no binary given and none built: run cargo build, or pass its path" >&2
            return 1
        fi
    fi
    if [[ ! -f $binary || ! -x $binary ]]; then
        echo "$binary is not an executable file" >&2
        return 1
    fi
    printf '%s\n' "$binary"
}

# server_port LOG PID
#   Waits up to 10 s for the server PID to log "serving … on http://ADDR:PORT" in LOG and prints
#   PORT; on failure (the server exited, or never said) prints LOG on stderr and returns 1.
server_port() {
    local log=$1 pid=$2 port _
    for _ in $(seq 200); do
        port=$(sed -n 's|.*serving .* on http://[^ ]*:\([0-9][0-9]*\).*|\1|p' "$log" | head -n 1)
        if [[ -n $port ]]; then
            printf '%s\n' "$port"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    cat "$log" >&2
    return 1
}

# stop_pid PID [SECS]
#   SIGTERM, up to SECS (default 10) for it to exit, then SIGKILL; its children are killed too
#   (nginx's workers). An empty or finished PID is fine.
stop_pid() {
    local pid=$1 secs=${2:-10} children i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    children=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "warning: pid $pid ignored SIGTERM for $secs s, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for i in $children; do kill -KILL "$i" 2>/dev/null || true; done
}
