#!/usr/bin/env bash
# Makes sure the tools `make test` drives are installed: the real Nix clients (Debian's nix-bin,
# Nix 2.8, and Nix 2.35.2 from ../shared/nix-2.35 into /opt/nix-2.35), Chromium (landing-page
# screenshot) and nginx (the caching tier in front of two replicas).
# As root it installs what is missing; otherwise it fails naming what to install.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
nix235_prefix=/opt/nix-2.35
nix235_installer="$repo/../shared/nix-2.35/install.sh"

missing=()
command -v nix >/dev/null 2>&1 && command -v nix-store >/dev/null 2>&1 || missing+=(nix-bin)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
nix235_missing=false
"$nix235_prefix/bin/nix" --version 2>/dev/null | grep -q '2\.35\.2' || nix235_missing=true

if [ ${#missing[@]} -eq 0 ] && ! $nix235_missing; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    if [ ${#missing[@]} -gt 0 ]; then
        echo "ensure-deps: missing ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' (the tests drive the real Nix client, Chromium and nginx, and never skip)" >&2
    fi
    if $nix235_missing; then
        echo "ensure-deps: missing Nix 2.35.2 in $nix235_prefix: run 'sudo $nix235_installer' (the tests drive Nix 2.8 and 2.35, and never skip)" >&2
    fi
    exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "ensure-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if $nix235_missing; then
    if [ ! -x "$nix235_installer" ]; then
        echo "ensure-deps: Nix 2.35.2 is needed and its installer $nix235_installer is missing: put the shared/ folder (with nix-2.35/) beside this checkout" >&2
        exit 1
    fi
    echo "ensure-deps: installing Nix 2.35.2 into $nix235_prefix" >&2
    "$nix235_installer" "$nix235_prefix" >/dev/null
fi
