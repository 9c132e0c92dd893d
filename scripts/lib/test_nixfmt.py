"""Unit tests of scripts/lib/nixfmt.py (in `make test`, through `make script-tests`).

Known values come from Nix itself: the sha256("") of the Rust nix32 module's test, output of
`nix-hash` and `nix-store --dump` quoted below, and the narinfos and NAR files of tests/fixtures
(written by the real `nix copy`, see scripts/make-fixture.sh).
"""

import hashlib
import lzma
import os
import unittest

from lib import nixfmt

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def read_manifest():
    """tests/fixtures/manifest.env as a dict (VALUE is everything after the first '=')."""
    values = {}
    with open(os.path.join(FIXTURES, "manifest.env")) as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key] = value
    return values


class Nix32(unittest.TestCase):
    def test_sha256_of_nothing_as_nix_prints_it(self):
        # the Rust nix32 test known_value_matches_nix: `nix hash to-base32 sha256-47DEQpj8...`
        self.assertEqual(nixfmt.sha256_nix32(b""),
                         "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73")

    def test_flat_file_hash_as_nix_hash_prints_it(self):
        # printf 'hello\n' > f; nix-hash --type sha256 --flat --base32 f
        self.assertEqual(nixfmt.sha256_nix32(b"hello\n"),
                         "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq")

    def test_round_trips_every_length_nix_uses(self):
        for size in (20, 32, 64):
            data = bytes((b * 37 + size) & 0xFF for b in range(size))
            text = nixfmt.encode(data)
            self.assertEqual(len(text), (size * 8 + 4) // 5)
            self.assertEqual(nixfmt.decode(text), data)

    def test_decode_matches_sha256_digest(self):
        digest = hashlib.sha256(b"hello\n").digest()
        self.assertEqual(nixfmt.decode("00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq"), digest)

    def test_store_hashes_of_the_fixture_decode_to_20_bytes_and_back(self):
        manifest = read_manifest()
        paths = manifest["CLOSURE"].split() + manifest["CLOSURE_DRVS"].split()
        self.assertEqual(len(paths), 6)
        for path in paths:
            h = os.path.basename(path)[:32]
            self.assertTrue(nixfmt.is_store_hash(h), path)
            raw = nixfmt.decode(h)
            self.assertEqual(len(raw), 20)
            self.assertEqual(nixfmt.encode(raw), h)

    def test_rejects_what_the_rust_nix32_rejects(self):
        self.assertTrue(nixfmt.is_store_hash("0123456789abcdfghijklmnpqrsvwxyz"))
        self.assertFalse(nixfmt.is_store_hash("0123456789abcdefghijklmnpqrsvwxy"))  # has an e
        self.assertFalse(nixfmt.is_store_hash("short"))
        with self.assertRaisesRegex(ValueError, "overflows 32 bytes"):
            nixfmt.decode("z" * 52)
        with self.assertRaisesRegex(ValueError, "not a nix32 digit"):
            nixfmt.decode("e" * 52)
        with self.assertRaisesRegex(ValueError, "no whole number"):
            nixfmt.decode("0")

    def test_digit_pattern_is_the_alphabet(self):
        import re

        accepted = "".join(chr(c) for c in range(128) if re.fullmatch(nixfmt.DIGIT_RE, chr(c)))
        self.assertEqual(accepted, nixfmt.ALPHABET)


class Nar(unittest.TestCase):
    # For each: `nix-hash --type sha256 --base32 FILE` (the NAR hash) and
    # `nix-store --dump FILE | wc -c`, with Nix 2.8.
    KNOWN = [
        (b"hello\n", False, "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw", 120),
        (b"#!/bin/sh\necho hi\n", True, "183p8jhjfcpk6kac6hxwp4gzp9brkvkibylz27jfbvgd5kqcq2jy", 168),
        (b"", False, "0ip26j2h11n1kgkz36rl4akv694yz65hr72q4kv4b3lxcbi65b3p", 112),
    ]

    def test_single_file_nar_is_what_nix_store_dump_writes(self):
        for contents, executable, nar_hash, nar_size in self.KNOWN:
            nar = nixfmt.nar_regular_file(contents, executable)
            self.assertEqual(len(nar), nar_size, contents)
            self.assertEqual(nixfmt.sha256_nix32(nar), nar_hash, contents)

    def test_strings_are_padded_to_eight_bytes(self):
        self.assertEqual(nixfmt.nar_string(b""), b"\0" * 8)
        self.assertEqual(nixfmt.nar_string(b"abc"), b"\3" + b"\0" * 7 + b"abc" + b"\0" * 5)


class FixtureCaches(unittest.TestCase):
    """Every narinfo in tests/fixtures: FileHash is the nix32 sha256 of the file at URL and its
    name; for xz, NarHash is that of the decompressed NAR."""

    def narinfos(self):
        found = []
        for cache in read_manifest()["CACHES"].split():
            root = os.path.join(FIXTURES, cache)
            for name in sorted(os.listdir(root)):
                if name.endswith(".narinfo"):
                    with open(os.path.join(root, name)) as f:
                        found.append((root, name, nixfmt.parse_narinfo(f.read())))
        return found

    def test_file_and_nar_hashes(self):
        found = self.narinfos()
        self.assertEqual(len(found), 9)
        xz = 0
        for root, name, info in found:
            self.assertEqual(len(info["StorePath"]), 1)
            self.assertTrue(info["StorePath"][0].startswith("/nix/store/" + name[:32] + "-"))
            url = info["URL"][0]
            path = os.path.join(root, url)
            file_hash = info["FileHash"][0]
            self.assertEqual(file_hash, "sha256:" + nixfmt.file_sha256_nix32(path, chunk=4096))
            self.assertTrue(url.startswith("nar/" + file_hash[len("sha256:"):] + ".nar"), url)
            self.assertEqual(int(info["FileSize"][0]), os.path.getsize(path))
            if info["Compression"] == ["xz"]:
                with open(path, "rb") as f:
                    nar = lzma.decompress(f.read())
                self.assertEqual(info["NarHash"][0], "sha256:" + nixfmt.sha256_nix32(nar))
                self.assertEqual(int(info["NarSize"][0]), len(nar))
                xz += 1
        self.assertEqual(xz, 6)

    def test_parse_keeps_repeated_keys_and_empty_references(self):
        info = nixfmt.parse_narinfo("StorePath: /nix/store/x-y\nReferences: \nSig: a:1\nSig: b:2\nnot a field\n")
        self.assertEqual(info, {"StorePath": ["/nix/store/x-y"], "References": [""], "Sig": ["a:1", "b:2"]})

    def test_format_then_parse_round_trips(self):
        fields = [("StorePath", "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x"), ("URL", "nar/a.nar"),
                  ("Compression", "none"), ("References", "")]
        text = nixfmt.format_narinfo(fields)
        self.assertTrue(text.endswith("References: \n"))
        self.assertEqual(nixfmt.parse_narinfo(text), {k: [v] for k, v in fields})


if __name__ == "__main__":
    unittest.main()
