# Sourced by the scripts that drive the real Nix client (make-fixture, soak, replicas-test).
#
# use_private_nix DIR [EXTRA_NIX_CONF_LINE...]
#   Writes DIR/conf/nix.conf for a daemonless Nix 2.8 that builds `/bin/sh` derivations
#   without nixpkgs and asks no substituter, with narinfo caching off so every answer comes
#   from the server under test; then points NIX_CONF_DIR and XDG_CACHE_HOME into DIR.
use_private_nix() {
    local dir=$1
    shift
    mkdir -p "$dir/conf" "$dir/xdg-cache"
    {
        printf '%s\n' \
            'experimental-features = nix-command' \
            'sandbox = false' \
            'build-users-group =' \
            'substituters =' \
            'narinfo-cache-positive-ttl = 0' \
            'narinfo-cache-negative-ttl = 0'
        [ $# -gt 0 ] && printf '%s\n' "$@"
    } > "$dir/conf/nix.conf"
    export NIX_CONF_DIR="$dir/conf" XDG_CACHE_HOME="$dir/xdg-cache"
    unset NIX_REMOTE NIX_PATH || true
}
