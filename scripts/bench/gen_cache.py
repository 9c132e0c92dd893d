#!/usr/bin/env python3
"""gen_cache.py - write a synthetic Nix binary cache for benchmarks.

Usage:
    gen_cache.py --narinfos N --out DIR --keys KEYDIR [--seed S]
                 [--small-nars 200] [--small-nar-bytes 1048576]
                 [--big-nar-bytes 1073741824] [--misses 100000]

DIR gets the layout `nix copy --to file://DIR` writes:

    DIR/nix-cache-info
    DIR/<32 nix32>.narinfo          N files, 500-900 bytes each
    DIR/nar/<52 nix32>.nar.xz       --small-nars files of random bytes, plus one big one

The first --small-nars narinfos point at the small NAR files, the next one at the big NAR;
the others point at NAR files that do not exist (nothing reads them in the benchmark).
All file contents are random: the NARs are real data on disk, not sparse.

KEYDIR gets request paths for wrk, one per line:

    hits.txt       /<hash>.narinfo for every generated narinfo (shuffled)
    misses.txt     /<hash>.narinfo with valid-looking hashes that are not in the cache
    nars-small.txt /nar/<name>.nar.xz of the small NARs
    nar-big.txt    /nar/<name>.nar.xz of the big NAR

DIR must not exist yet, or be empty; the caller (scripts/bench.sh) writes its completion
marker after this script succeeds.
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/
from lib.nixfmt import ALPHABET  # noqa: E402

NIX32 = ALPHABET.encode()
# byte -> nix32 digit of its low 5 bits: random bytes become random nix32 text in one call.
TO_NIX32 = bytes(NIX32[b & 31] for b in range(256))
B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
TO_B64 = bytes(B64[b & 63] for b in range(256))

# Package names and versions in the style of nixpkgs store paths.
PNAMES = """
glibc gcc-unwrapped binutils bash coreutils findutils gnugrep gnused gawk gnutar gzip xz bzip2
zstd zlib openssl curl libssh2 nghttp2 libidn2 libunistring ncurses readline sqlite python3
perl ruby nodejs go rustc cargo llvm clang cmake ninja meson pkg-config autoconf automake
libtool gettext texinfo help2man bison flex m4 git mercurial subversion openssh gnupg libgcrypt
libgpg-error libassuan libksba npth pcre2 pcre libffi expat libxml2 libxslt icu boost
protobuf grpc abseil-cpp gtest fmt spdlog nlohmann_json libuv libevent nginx postgresql
mariadb redis sqlite-interactive util-linux systemd dbus glib gtk3 gtk4 cairo pango harfbuzz
freetype fontconfig libpng libjpeg-turbo libtiff libwebp giflib ffmpeg x264 x265 libvpx
opus libvorbis flac alsa-lib pulseaudio pipewire wayland libX11 libxcb mesa vulkan-loader
hello jq ripgrep fd bat htop tmux vim neovim emacs nano less man-db groff tzdata
cacert iana-etc shadow pam acl attr libcap kmod e2fsprogs dosfstools lvm2 cryptsetup
python3.12-requests python3.12-urllib3 python3.12-idna python3.12-certifi python3.12-numpy
python3.12-setuptools python3.12-wheel python3.12-pip python3.12-six python3.12-attrs
perl5.38.2-URI perl5.38.2-JSON perl5.38.2-LWP ghc haskellPackages.aeson rust-analyzer
""".split()
OUTPUTS = ["", "", "", "", "-dev", "-lib", "-bin", "-man", "-doc", "-info", "-out"]


def version(rng):
    parts = [str(rng.randint(0, 12)), str(rng.randint(0, 40))]
    if rng.random() < 0.6:
        parts.append(str(rng.randint(0, 20)))
    v = ".".join(parts)
    if rng.random() < 0.1:
        v += "-unstable-2024-0%d-%02d" % (rng.randint(1, 9), rng.randint(1, 28))
    return v


def nix32_strings(count, length):
    """`count` random nix32 strings of `length` characters."""
    raw = os.urandom(count * length).translate(TO_NIX32)
    return [raw[i * length:(i + 1) * length] for i in range(count)]


def write_random_file(path, size, chunk=16 << 20):
    """Writes `size` random bytes (real data, not sparse)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = size
        while left > 0:
            n = min(chunk, left)
            buf = os.urandom(n)
            view = memoryview(buf)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            left -= n
    finally:
        os.close(fd)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--narinfos", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--keys", required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--small-nars", type=int, default=200)
    ap.add_argument("--small-nar-bytes", type=int, default=1 << 20)
    ap.add_argument("--big-nar-bytes", type=int, default=1 << 30)
    ap.add_argument("--misses", type=int, default=100000)
    a = ap.parse_args()

    n = a.narinfos
    if n < a.small_nars + 1:
        sys.exit("gen_cache: --narinfos must be more than --small-nars")
    rng = random.Random(a.seed)
    t0 = time.monotonic()

    os.makedirs(os.path.join(a.out, "nar"), exist_ok=True)
    os.makedirs(a.keys, exist_ok=True)
    with open(os.path.join(a.out, "nix-cache-info"), "w") as f:
        f.write("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")

    # Unique store hashes, then names: "<hash>-<pname>-<version><output>".
    hashes = []
    seen = set()
    while len(hashes) < n:
        for h in nix32_strings(n - len(hashes), 32):
            if h not in seen:
                seen.add(h)
                hashes.append(h)
    names = []
    for _ in range(n):
        names.append(("%s-%s%s" % (rng.choice(PNAMES), version(rng), rng.choice(OUTPUTS))).encode())
    base = [h + b"-" + nm for h, nm in zip(hashes, names)]

    drv_hashes = nix32_strings(n, 32)
    file_hashes = nix32_strings(n, 52)
    nar_hashes = nix32_strings(n, 52)
    sigs = os.urandom(n * 86).translate(TO_B64)

    small_paths = []
    big_path = None
    # Reference counts 0-8, weighted towards a few (like real closures).
    ref_weights = [10, 15, 18, 16, 13, 10, 8, 6, 4]
    ref_counts = rng.choices(range(9), weights=ref_weights, k=n)

    out = a.out.encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for i in range(n):
        fh = file_hashes[i]
        url = b"nar/" + fh + b".nar.xz"
        if i < a.small_nars:
            file_size = a.small_nar_bytes
            small_paths.append(url)
        elif i == a.small_nars:
            file_size = a.big_nar_bytes
            big_path = url
        else:
            file_size = rng.randint(2_000, 40_000_000) if rng.random() < 0.1 else rng.randint(300, 400_000)
        nar_size = file_size * rng.randint(2, 6) + rng.randint(0, 4096)
        refs = sorted(base[j] for j in rng.sample(range(n), ref_counts[i]))
        if rng.random() < 0.3:
            refs = sorted(refs + [base[i]])  # many paths refer to themselves
        # 64 signature bytes: 85 free base64 digits, one holding 4 bits, and "==".
        sig = sigs[i * 86:i * 86 + 85] + b"AQgw"[sigs[i * 86 + 85] & 3:][:1] + b"=="
        body = b"".join((
            b"StorePath: /nix/store/", base[i], b"\n",
            b"URL: ", url, b"\n",
            b"Compression: xz\n",
            b"FileHash: sha256:", fh, b"\n",
            b"FileSize: ", str(file_size).encode(), b"\n",
            b"NarHash: sha256:", nar_hashes[i], b"\n",
            b"NarSize: ", str(nar_size).encode(), b"\n",
            b"References: ", b" ".join(refs), b"\n",
            b"Deriver: ", drv_hashes[i], b"-", names[i], b".drv\n",
            b"Sig: cache.example.org-1:", sig, b"\n",
        ))
        fd = os.open(out + b"/" + hashes[i] + b".narinfo", flags, 0o644)
        os.write(fd, body)
        os.close(fd)
    t1 = time.monotonic()
    print("gen_cache: %d narinfos in %.1fs" % (n, t1 - t0), file=sys.stderr)

    for p in small_paths:
        write_random_file(os.path.join(a.out, p.decode()), a.small_nar_bytes)
    write_random_file(os.path.join(a.out, big_path.decode()), a.big_nar_bytes)
    t2 = time.monotonic()
    print("gen_cache: %d NARs of %d bytes and one of %d bytes in %.1fs"
          % (len(small_paths), a.small_nar_bytes, a.big_nar_bytes, t2 - t1), file=sys.stderr)

    # Key lists for wrk's Lua scripts.
    hit_paths = [b"/" + h + b".narinfo" for h in hashes]
    rng.shuffle(hit_paths)
    misses = []
    while len(misses) < a.misses:
        for h in nix32_strings(a.misses - len(misses), 32):
            if h not in seen:
                seen.add(h)
                misses.append(b"/" + h + b".narinfo")

    def write_list(name, items):
        with open(os.path.join(a.keys, name), "wb") as f:
            f.write(b"\n".join(items) + b"\n")

    write_list("hits.txt", hit_paths)
    write_list("misses.txt", misses)
    write_list("nars-small.txt", [b"/" + p for p in small_paths])
    write_list("nar-big.txt", [b"/" + big_path])
    print("gen_cache: done in %.1fs" % (time.monotonic() - t0), file=sys.stderr)


if __name__ == "__main__":
    main()
