"""Nix's formats for the Python scripts: nix32, sha256 names, single-file NARs, narinfo text.

The one Python copy of what the server's Rust modules nix32 and narinfo do, shared by
scripts/bench/gen_cache.py (synthetic caches) and scripts/soak/loadgen.py (uploads and
download checks). Standard library only; tested by scripts/lib/test_nixfmt.py against values
printed by Nix itself and the narinfos of tests/fixtures.
"""

import hashlib
import struct

# Nix leaves out e, o, t and u so that hashes never spell words.
ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
# One nix32 digit, for building regular expressions.
DIGIT_RE = "[0-9a-df-np-sv-z]"
STORE_HASH_LEN = 32  # the hash part of /nix/store/<hash>-name: 20 bytes
SHA256_LEN = 52  # a sha256 digest: 32 bytes

_DIGITS = {c: i for i, c in enumerate(ALPHABET)}


def encode(data: bytes) -> str:
    """Encodes bytes the way Nix prints hashes: the last digit comes first."""
    n = (len(data) * 8 + 4) // 5
    out = []
    for k in range(n - 1, -1, -1):
        i, j = divmod(k * 5, 8)
        lo = data[i] >> j
        hi = (data[i + 1] << (8 - j)) if i + 1 < len(data) else 0
        out.append(ALPHABET[(lo | hi) & 0x1F])
    return "".join(out)


def decode(text: str) -> bytes:
    """The bytes nix32 `text` stands for (20 for a store hash, 32 for a sha256).

    Raises ValueError for a character outside the alphabet, or for digits whose top bits do
    not fit in the byte count (the Rust nix32 module rejects them too)."""
    size = len(text) * 5 // 8
    if (size * 8 + 4) // 5 != len(text):
        raise ValueError(f"{len(text)} nix32 digits are no whole number of bytes")
    out = bytearray(size)
    for k, c in enumerate(reversed(text)):
        d = _DIGITS.get(c)
        if d is None:
            raise ValueError(f"{c!r} is not a nix32 digit")
        i, j = divmod(k * 5, 8)
        out[i] |= (d << j) & 0xFF
        carry = d >> (8 - j)
        if i + 1 < size:
            out[i + 1] |= carry
        elif carry:
            raise ValueError(f"nix32 {text!r} overflows {size} bytes")
    return bytes(out)


def is_nix32(text: str) -> bool:
    return all(c in _DIGITS for c in text)


def is_store_hash(text: str) -> bool:
    """True for exactly 32 nix32 digits (the hash part of a store path, a narinfo's name)."""
    return len(text) == STORE_HASH_LEN and is_nix32(text)


def sha256_nix32(data: bytes) -> str:
    """sha256 of `data` in nix32: the name of a NAR file whose bytes are `data`."""
    return encode(hashlib.sha256(data).digest())


def file_sha256_nix32(path, chunk=1 << 20) -> str:
    """sha256 of the file at `path` in nix32 (a narinfo's FileHash), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return encode(h.digest())


# --- NAR -------------------------------------------------------------------------------------


def nar_string(b: bytes) -> bytes:
    """One NAR string: its length as 8 bytes little-endian, the bytes, zeros to a multiple of 8."""
    return struct.pack("<Q", len(b)) + b + b"\0" * (-len(b) % 8)


def nar_regular_file(contents: bytes, executable: bool = False) -> bytes:
    """The NAR serialisation (`nix-store --dump`) of a store path that is one regular file."""
    parts = [b"nix-archive-1", b"(", b"type", b"regular"]
    if executable:
        parts += [b"executable", b""]
    parts += [b"contents", contents, b")"]
    return b"".join(nar_string(p) for p in parts)


# --- narinfo ---------------------------------------------------------------------------------


def parse_narinfo(text: str) -> dict:
    """`Key: value` lines as {key: [values in order]} (Sig may appear more than once)."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields.setdefault(key, []).append(value)
    return fields


def format_narinfo(fields) -> str:
    """narinfo text from (key, value) pairs, in the order given; `References` may be empty."""
    return "".join(f"{key}: {value}\n" for key, value in fields)
