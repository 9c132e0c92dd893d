# Sourced by the check scripts that run the server binary.
#
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
