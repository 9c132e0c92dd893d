#!/usr/bin/env bash
# Landing-page check with a real browser (issue 4): the page at `/` must render, not just be sent.
#
#   1. starts BINARY on tests/fixtures/cache-signed with --sign-key tests/fixtures/keys/test-key.sec
#      on a free loopback port;
#   2. `chromium --headless --screenshot` at 1024x768 into target/landing.png (kept for a human to
#      look at), decoded here with python3's standard library only (zlib + struct): the PNG must be
#      1024x768, not one flat colour, and show a fair share of non-background and dark (text)
#      pixels;
#   3. `chromium --headless --dump-dom`: the rendered DOM must hold the path count, the public key
#      of tests/fixtures/keys/test-key.pub and the `substituters =` / `trusted-public-keys =` lines
#      for this very host and port.
#
# Usage: scripts/check-landing.sh [BINARY]
#   BINARY: the built nix-binary-cache (default: target/release/nix-binary-cache, else
#   target/debug/nix-binary-cache).
#   LANDING_PNG: where the screenshot goes (default: target/landing.png).
#
# Needs Debian's chromium; installed with apt-get when missing and running as root, otherwise the
# script stops and names the package. Takes a few seconds; every process it starts is stopped on
# exit.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=$repo/tests/fixtures/cache-signed
key_sec=$repo/tests/fixtures/keys/test-key.sec
key_pub=$repo/tests/fixtures/keys/test-key.pub
png=${LANDING_PNG:-$repo/target/landing.png}

die() {
    echo "check-landing: error: $*" >&2
    exit 1
}

# --- the binary -----------------------------------------------------------------------------
# shellcheck source=scripts/lib/server.sh
. "$repo/scripts/lib/server.sh"
binary=$(server_binary "$repo" "${1:-}") || die "no server binary to test"
for f in "$key_sec" "$key_pub" "$cache/nix-cache-info"; do
    [[ -f $f ]] || die "missing fixture $f"
done
command -v python3 >/dev/null || die "python3 not found (it decodes the screenshot)"

# --- chromium -------------------------------------------------------------------------------
if ! command -v chromium >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "check-landing: chromium missing, installing Debian package chromium" >&2
        export DEBIAN_FRONTEND=noninteractive
        { apt-get install -y -qq chromium >/dev/null ||
            { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }; } ||
            die "could not install chromium with apt-get (run 'apt-get install -y chromium')"
        command -v chromium >/dev/null || die "apt-get installed chromium but there is no 'chromium' command"
    else
        die "chromium not found: run 'sudo apt-get install -y chromium' (the landing page is checked in a real browser)"
    fi
fi

# --- cleanup --------------------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-landing.XXXXXX")
server_pid=
browser_pid=
cleanup() {
    # Each browser runs in its own process group (setsid), so its helpers go with it.
    if [[ -n $browser_pid ]]; then kill -KILL -- "-$browser_pid" 2>/dev/null || true; fi
    if [[ -n $server_pid ]]; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the server -----------------------------------------------------------------------------
"$binary" "$cache" -p 0 --bind 127.0.0.1 --sign-key "$key_sec" --rescan-interval 0 \
    </dev/null >/dev/null 2>"$tmp/server.log" &
server_pid=$!
port=$(server_port "$tmp/server.log" "$server_pid") \
    || die "the server exited at start or did not say where it listens within 10 s (log above)"
url="http://127.0.0.1:$port/"
echo "server: $binary on $url"

# --- the browser ----------------------------------------------------------------------------
# chromium MODE_ARGS... : runs headless chromium in its own process group, 20 s at most.
chromium_run() {
    local out=$1
    shift
    setsid timeout -k 2 20 chromium --headless --no-sandbox --disable-gpu \
        --user-data-dir="$tmp/profile" --no-first-run --disable-dev-shm-usage \
        --disable-extensions --disable-background-networking --disable-sync \
        --disable-component-update \
        --hide-scrollbars --mute-audio \
        "$@" "$url" >"$out" 2>>"$tmp/chromium.log" </dev/null &
    browser_pid=$!
    local rc=0
    wait "$browser_pid" || rc=$?
    kill -KILL -- "-$browser_pid" 2>/dev/null || true
    browser_pid=
    if [[ $rc -ne 0 ]]; then
        tail -n 20 "$tmp/chromium.log" >&2
        die "chromium failed (status $rc)"
    fi
}

mkdir -p "$(dirname "$png")"
rm -f "$png"
chromium_run "$tmp/screenshot.out" --screenshot="$png" --window-size=1024,768
[[ -s $png ]] || { tail -n 20 "$tmp/chromium.log" >&2; die "chromium wrote no screenshot to $png"; }
chromium_run "$tmp/dom.html" --dump-dom
[[ -s $tmp/dom.html ]] || die "chromium --dump-dom printed nothing"

# --- the screenshot -------------------------------------------------------------------------
python3 - "$png" <<'EOF'
import struct, sys, zlib
from collections import Counter

path = sys.argv[1]
data = open(path, "rb").read()
if data[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit(f"{path}: not a PNG")
pos, idat, ihdr = 8, [], None
while pos < len(data):
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    kind = data[pos + 4:pos + 8]
    chunk = data[pos + 8:pos + 8 + length]
    if zlib.crc32(kind + chunk) != struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]:
        sys.exit(f"{path}: bad CRC in {kind!r} chunk")
    if kind == b"IHDR":
        ihdr = struct.unpack(">IIBBBBB", chunk)
    elif kind == b"IDAT":
        idat.append(chunk)
    elif kind == b"IEND":
        break
    pos += 12 + length
if ihdr is None or not idat:
    sys.exit(f"{path}: no IHDR or no IDAT")
width, height, depth, colour, _, _, interlace = ihdr
channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
if depth != 8 or channels is None or interlace != 0:
    sys.exit(f"{path}: unsupported PNG (depth {depth}, colour type {colour}, interlace {interlace})")
if (width, height) != (1024, 768):
    sys.exit(f"{path}: {width}x{height}, expected 1024x768")

raw = zlib.decompress(b"".join(idat))
stride = width * channels
if len(raw) != height * (stride + 1):
    sys.exit(f"{path}: image data is {len(raw)} bytes, expected {height * (stride + 1)}")

# Undo the per-row filters (PNG spec, section 9).
rows, prev = [], bytes(stride)
for y in range(height):
    ftype = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    if ftype == 0:
        pass
    elif ftype == 1:
        for i in range(channels, stride):
            line[i] = (line[i] + line[i - channels]) & 0xFF
    elif ftype == 2:
        line = bytearray((a + b) & 0xFF for a, b in zip(line, prev))
    elif ftype == 3:
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
    elif ftype == 4:
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    else:
        sys.exit(f"{path}: row {y} has unknown filter {ftype}")
    rows.append(bytes(line))
    prev = line

# Pixels as (r, g, b); alpha ignored (the page is opaque).
pixels = Counter()
for line in rows:
    if channels >= 3:
        pixels.update(zip(line[0::channels], line[1::channels], line[2::channels]))
    else:
        pixels.update((v, v, v) for v in line[0::channels])
total = width * height
background, bg_count = pixels.most_common(1)[0]
non_bg = total - bg_count
dark = sum(n for (r, g, b), n in pixels.items() if 0.299 * r + 0.587 * g + 0.114 * b < 128)
print(f"screenshot: {width}x{height}, {len(pixels)} colours, background rgb{background}, "
      f"{100 * non_bg / total:.1f}% non-background, {100 * dark / total:.2f}% dark (text) pixels")
failures = []
if len(pixels) < 2:
    failures.append("the screenshot is one flat colour")
if sum(background) < 600:
    failures.append(f"the background rgb{background} is not light: the page did not render")
if non_bg < 0.03 * total:
    failures.append(f"only {non_bg} pixels differ from the background: no page content")
if non_bg > 0.6 * total:
    failures.append(f"{non_bg} pixels differ from the background: not the light landing page")
if dark < 0.005 * total:
    failures.append(f"only {dark} dark pixels: no text rendered")
if failures:
    sys.exit("\n".join(f"{path}: {f}" for f in failures))
EOF

# --- the DOM --------------------------------------------------------------------------------
paths=$(find "$cache" -maxdepth 1 -name '*.narinfo' | wc -l)
pubkey=$(tr -d '\n' <"$key_pub")
missing=()
expect() { grep -qF -- "$1" "$tmp/dom.html" || missing+=("$1"); }
expect "<title>Nix binary cache</title>"
expect "<td id=\"paths\">$paths</td>"
expect "<li><code>$pubkey</code></li>"
expect "substituters = http://127.0.0.1:$port https://cache.nixos.org"
expect "trusted-public-keys = $pubkey cache.nixos.org-1:"
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "--- rendered DOM:" >&2
    cat "$tmp/dom.html" >&2
    printf 'check-landing: missing from the rendered DOM: %s\n' "${missing[@]}" >&2
    exit 1
fi
echo "dom: $(wc -c <"$tmp/dom.html") bytes; $paths paths, key $pubkey, substituters and trusted-public-keys lines present"
echo "check-landing: ok (screenshot kept in $png)"
