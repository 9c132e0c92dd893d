#!/usr/bin/env bash
# Makes sure the tools `make test` drives are installed: the real Nix client (Debian's nix-bin),
# Chromium (landing-page screenshot) and nginx (the caching tier in front of two replicas).
# As root it installs what is missing with apt-get; otherwise it fails naming the package.
set -euo pipefail

missing=()
command -v nix >/dev/null 2>&1 && command -v nix-store >/dev/null 2>&1 || missing+=(nix-bin)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-deps: missing ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' (the tests drive the real Nix client, Chromium and nginx, and never skip)" >&2
    exit 1
fi
echo "ensure-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
