#!/usr/bin/env python3
"""Mixed HTTP load for scripts/soak.sh (standard library only).

    loadgen.py --port P --pid PID --cache DIR --token-file F --duration S --out R.json

drives the server for S seconds with keep-alive connections:

  readers (--readers threads, --rate requests/s in total)
    narinfo hits (200, StorePath and Sig checked, half of them followed to their NAR like Nix
    does), narinfo misses (404), whole NAR downloads (200, sha256 of the bytes in nix32 must be
    the file name's hash: for compressed NARs that is the FileHash of the compressed file),
    Range requests (206 with the right Content-Range and the bytes on disk; 416 past the end),
    NAR misses (404), HEAD, If-None-Match (304), nix-cache-info, .ls listings, build logs, `/`
    and /metrics;
  uploaders (--uploaders threads, --upload-rate path uploads/s in total)
    PUT nar/<nix32 sha256>.nar (a real NAR of one regular file) then PUT <hash>.narinfo pointing
    at it, with `Authorization: Bearer`, both 200; then read back (narinfo 200 with our URL, NAR
    200 with the right hash). Each uploader owns a fixed set of store-path slots, so the index
    does not grow without bound: most uploads push a slot's current contents again, a quarter
    give it new contents (its old NAR is then unreferenced; `verify` lists it as a stray, which
    scripts/soak/report.py expects). Now and then a PUT without a token (401).
  sampler
    VmRSS, VmHWM, threads and open descriptors of the server every --sample-interval seconds.

The catalogue of what exists is the cache directory itself, rescanned every 2 s; files appear
only by rename (the server's uploads and Nix's file:// store both write a temporary first), so
every name seen is complete and, for NARs, immutable.

R.json holds the counts, the error samples and the memory samples; scripts/soak/report.py
joins it with what scripts/soak.sh collected and gives the verdict. Nix's formats (nix32,
NARs, narinfo) come from scripts/lib/nixfmt.py.
"""

import argparse
import http.client
import json
import os
import random
import re
import sys
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/
from lib import nixfmt  # noqa: E402
from lib.nixfmt import DIGIT_RE, parse_narinfo  # noqa: E402

NARINFO_NAME = re.compile(rf"^({DIGIT_RE}{{32}})\.narinfo$")
NAR_NAME = re.compile(rf"^({DIGIT_RE}{{52}})\.nar(\.[a-z0-9]+)?$")
LS_NAME = re.compile(rf"^{DIGIT_RE}{{32}}\.ls$")
LOG_NAME = re.compile(rf"^{DIGIT_RE}{{32}}-[A-Za-z0-9+\-._?=]+$")
KEY_NAME = "test-cache-1"


def random_hash(n: int) -> str:
    return "".join(random.choice(nixfmt.ALPHABET) for _ in range(n))


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = Counter()  # kind -> requests answered as expected
        self.errors = Counter()  # kind -> unexpected outcomes
        self.error_samples = []
        self.reconnects = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.nars_verified = 0
        self.ranges_verified = 0

    def ok(self, kind, down=0, up=0):
        with self.lock:
            self.requests[kind] += 1
            self.bytes_down += down
            self.bytes_up += up

    def error(self, kind, what):
        with self.lock:
            self.errors[kind] += 1
            if len(self.error_samples) < 40:
                self.error_samples.append(f"{time.strftime('%H:%M:%S')} {kind}: {what}")

    def add(self, attr, n=1):
        with self.lock:
            setattr(self, attr, getattr(self, attr) + n)


class Catalogue:
    """What the cache directory holds, rescanned every 2 s."""

    def __init__(self, root):
        self.root = root
        self.lock = threading.Lock()
        self.narinfos, self.nars, self.listings, self.logs = [], [], [], []
        self.scanned = 0.0
        self.refresh(force=True)

    def refresh(self, force=False):
        now = time.monotonic()
        if not force and now - self.scanned < 2:
            return
        narinfos = [n[:32] for n in os.listdir(self.root) if NARINFO_NAME.match(n)]
        nars = [n for n in os.listdir(os.path.join(self.root, "nar")) if NAR_NAME.match(n)]
        listings = [n for n in os.listdir(self.root) if LS_NAME.match(n)]
        logdir = os.path.join(self.root, "log")
        logs = [n for n in os.listdir(logdir) if LOG_NAME.match(n)] if os.path.isdir(logdir) else []
        with self.lock:
            self.narinfos, self.nars, self.listings, self.logs = narinfos, nars, listings, logs
            self.scanned = now

    def pick(self, attr):
        self.refresh()
        with self.lock:
            items = getattr(self, attr)
            return random.choice(items) if items else None


class Client:
    """One keep-alive connection; a request that fails on a reused connection before any
    response is retried once on a new one (counted as a reconnect)."""

    def __init__(self, port, stats):
        self.port, self.stats = port, stats
        self.conn, self.used = None, 0

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.conn, self.used = None, 0

    def request(self, method, path, headers=None, body=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self.used = 0
            reused = self.used > 0
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                self.used += 1
                if resp.will_close:
                    self.close()
                return resp.status, resp, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 0 and reused:
                    self.stats.add("reconnects")
                    continue
                raise
            except Exception:
                self.close()
                raise


def expect(stats, kind, status, want, detail=""):
    if status != want:
        stats.error(kind, f"status {status}, expected {want} {detail}".rstrip())
        return False
    return True


class Reader:
    WEIGHTS = [
        ("narinfo_hit", 40), ("narinfo_miss", 20), ("nar_get", 12), ("nar_range", 12),
        ("nar_miss", 3), ("nar_head", 3), ("nar_304", 3), ("cache_info", 2), ("listing", 2),
        ("log", 1), ("landing", 1), ("metrics", 1),
    ]

    def __init__(self, args, stats, cat):
        self.args, self.stats, self.cat = args, stats, cat
        self.client = Client(args.port, stats)
        self.kinds = [k for k, w in self.WEIGHTS for _ in range(w)]

    def run(self, deadline, interval):
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            kind = random.choice(self.kinds)
            try:
                getattr(self, kind)()
            except Exception as e:  # noqa: BLE001 - every failure is reported
                self.stats.error(kind, f"{type(e).__name__}: {e}")
                self.client.close()
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1:
                    next_at = time.monotonic()
        self.client.close()

    # --- narinfo ---
    def narinfo_hit(self):
        h = self.cat.pick("narinfos")
        if h is None:
            return
        status, resp, data = self.client.request("GET", f"/{h}.narinfo")
        if not expect(self.stats, "narinfo_hit", status, 200, h):
            return
        info = parse_narinfo(data.decode())
        problems = []
        store_path = info.get("StorePath", [""])[0]
        if not store_path.startswith(f"/nix/store/{h}-"):
            problems.append(f"StorePath {store_path!r}")
        if not any(s.startswith(KEY_NAME + ":") for s in info.get("Sig", [])):
            problems.append("no Sig from the server's key")
        if resp.getheader("Content-Type") != "text/x-nix-narinfo":
            problems.append(f"Content-Type {resp.getheader('Content-Type')}")
        if problems:
            self.stats.error("narinfo_hit", f"{h}: " + "; ".join(problems))
            return
        self.stats.ok("narinfo_hit", down=len(data))
        if random.random() < 0.5:
            self.fetch_nar(info["URL"][0], "nar_via_narinfo",
                           file_hash=info.get("FileHash", [None])[0],
                           file_size=info.get("FileSize", [None])[0])

    def narinfo_miss(self):
        h = random_hash(32)
        status, _, _ = self.client.request("GET", f"/{h}.narinfo")
        if expect(self.stats, "narinfo_miss", status, 404, h):
            self.stats.ok("narinfo_miss")

    # --- NARs ---
    def fetch_nar(self, url, kind, file_hash=None, file_size=None):
        name = url.rsplit("/", 1)[-1]
        m = NAR_NAME.match(name)
        if not m:
            self.stats.error(kind, f"URL {url!r} is not nar/<nix32>.nar…")
            return
        status, resp, data = self.client.request("GET", "/" + url)
        if not expect(self.stats, kind, status, 200, url):
            return
        problems = []
        actual = nixfmt.sha256_nix32(data)
        if actual != m.group(1):
            problems.append(f"body hashes to {actual}")
        if file_hash is not None and file_hash != f"sha256:{m.group(1)}":
            problems.append(f"FileHash {file_hash} differs from the name")
        if file_size is not None and int(file_size) != len(data):
            problems.append(f"{len(data)} bytes, FileSize {file_size}")
        if resp.getheader("Content-Type") != "application/x-nix-nar":
            problems.append(f"Content-Type {resp.getheader('Content-Type')}")
        if resp.getheader("Content-Encoding"):
            problems.append(f"Content-Encoding {resp.getheader('Content-Encoding')}")
        if problems:
            self.stats.error(kind, f"{url}: " + "; ".join(problems))
            return
        self.stats.ok(kind, down=len(data))
        self.stats.add("nars_verified")

    def nar_get(self):
        name = self.cat.pick("nars")
        if name:
            self.fetch_nar(f"nar/{name}", "nar_get")

    def nar_range(self):
        name = self.cat.pick("nars")
        if not name:
            return
        path = os.path.join(self.args.cache, "nar", name)
        size = os.stat(path).st_size
        if size == 0:
            return
        form = random.random()
        if form < 0.1:
            # Past the end: 416.
            status, _, _ = self.client.request("GET", f"/nar/{name}", {"Range": f"bytes={size}-"})
            if expect(self.stats, "nar_range_416", status, 416, name):
                self.stats.ok("nar_range_416")
            return
        if form < 0.6:
            first = random.randrange(size)
            last = random.randrange(first, min(size, first + 512 * 1024))
            spec = f"{first}-{last}"
        elif form < 0.8:
            first, last = random.randrange(size), size - 1
            spec = f"{first}-"
        else:
            n = random.randint(1, size)
            first, last = size - n, size - 1
            spec = f"-{n}"
        status, resp, data = self.client.request("GET", f"/nar/{name}", {"Range": f"bytes={spec}"})
        if not expect(self.stats, "nar_range", status, 206, f"{name} bytes={spec}"):
            return
        want_cr = f"bytes {first}-{last}/{size}"
        got_cr = resp.getheader("Content-Range")
        with open(path, "rb") as f:
            f.seek(first)
            want = f.read(last - first + 1)
        problems = []
        if got_cr != want_cr:
            problems.append(f"Content-Range {got_cr!r}, expected {want_cr!r}")
        if data != want:
            problems.append(f"{len(data)} bytes that differ from the file's {len(want)}")
        if problems:
            self.stats.error("nar_range", f"{name} bytes={spec}: " + "; ".join(problems))
            return
        self.stats.ok("nar_range", down=len(data))
        self.stats.add("ranges_verified")

    def nar_miss(self):
        name = f"{random_hash(52)}.nar.xz"
        status, _, _ = self.client.request("GET", f"/nar/{name}")
        if expect(self.stats, "nar_miss", status, 404, name):
            self.stats.ok("nar_miss")

    def nar_head(self):
        name = self.cat.pick("nars")
        if not name:
            return
        size = os.stat(os.path.join(self.args.cache, "nar", name)).st_size
        status, resp, data = self.client.request("HEAD", f"/nar/{name}")
        if not expect(self.stats, "nar_head", status, 200, name):
            return
        if resp.getheader("Content-Length") != str(size) or data:
            self.stats.error("nar_head", f"{name}: Content-Length {resp.getheader('Content-Length')}, "
                                         f"file {size}, body {len(data)} bytes")
            return
        self.stats.ok("nar_head")

    def nar_304(self):
        name = self.cat.pick("nars")
        if not name:
            return
        status, resp, _ = self.client.request("HEAD", f"/nar/{name}")
        if not expect(self.stats, "nar_304", status, 200, f"HEAD {name}"):
            return
        etag = resp.getheader("ETag")
        if not etag:
            self.stats.error("nar_304", f"{name}: no ETag")
            return
        status, _, data = self.client.request("GET", f"/nar/{name}", {"If-None-Match": etag})
        if expect(self.stats, "nar_304", status, 304, name) and not data:
            self.stats.ok("nar_304")

    # --- the rest ---
    def simple(self, kind, path, want_text=None):
        status, _, data = self.client.request("GET", path)
        if not expect(self.stats, kind, status, 200, path):
            return
        if want_text and want_text not in data:
            self.stats.error(kind, f"{path}: body lacks {want_text!r}")
            return
        self.stats.ok(kind, down=len(data))

    def cache_info(self):
        self.simple("cache_info", "/nix-cache-info", b"StoreDir: /nix/store")

    def listing(self):
        name = self.cat.pick("listings")
        if name:
            self.simple("listing", f"/{name}", b'"version"')

    def log(self):
        name = self.cat.pick("logs")
        if name:
            self.simple("log", f"/log/{name}")

    def landing(self):
        self.simple("landing", "/", b"trusted-public-keys = " + KEY_NAME.encode())

    def metrics(self):
        self.simple("metrics", "/metrics", b"nbc_requests_total")


class Uploader:
    def __init__(self, args, stats, n, orphans):
        self.args, self.stats, self.orphans = args, stats, orphans
        self.client = Client(args.port, stats)
        self.token = open(args.token_file).read().split()[0]
        self.slots = [{"hash": random_hash(32), "name": f"soak-upload-{n}-{i}", "nar": None}
                      for i in range(args.slots)]

    def new_contents(self, slot):
        r = random.random()
        size = (random.randint(1, 64 * 1024) if r < 0.80 else
                random.randint(64 * 1024, 512 * 1024) if r < 0.95 else
                random.randint(512 * 1024, 2 * 1024 * 1024))
        # Half random bytes, half text: a little like real store paths.
        contents = os.urandom(size // 2) + (b"soak line\n" * (size // 20))
        nar = nixfmt.nar_regular_file(contents, executable=random.random() < 0.2)
        slot["nar"] = nar
        slot["file_hash"] = nixfmt.sha256_nix32(nar)
        # Store paths are immutable (the server answers 409 to other contents under a stored
        # path): new contents are a new store path, and the old one stays whole.
        slot["hash"] = random_hash(32)

    def run(self, deadline, interval):
        next_at = time.monotonic() + random.random() * interval
        while time.monotonic() < deadline:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    break
            next_at += interval
            try:
                if random.random() < 0.03:
                    self.unauthorised()
                else:
                    self.upload(random.choice(self.slots))
            except Exception as e:  # noqa: BLE001
                self.stats.error("upload", f"{type(e).__name__}: {e}")
                self.client.close()
        self.client.close()

    def upload(self, slot):
        if slot["nar"] is None or random.random() < 0.25:
            self.new_contents(slot)
        nar, file_hash = slot["nar"], slot["file_hash"]
        url = f"nar/{file_hash}.nar"
        auth = {"Authorization": f"Bearer {self.token}"}
        status, _, body = self.client.request(
            "PUT", "/" + url, {**auth, "Content-Type": "application/x-nix-nar"}, nar)
        if not expect(self.stats, "upload_nar", status, 200, f"{url}: {body[:200]!r}"):
            return
        self.stats.ok("upload_nar", up=len(nar))
        store_path = f"/nix/store/{slot['hash']}-{slot['name']}"
        narinfo = nixfmt.format_narinfo([
            ("StorePath", store_path), ("URL", url), ("Compression", "none"),
            ("FileHash", f"sha256:{file_hash}"), ("FileSize", len(nar)),
            ("NarHash", f"sha256:{file_hash}"), ("NarSize", len(nar)), ("References", ""),
        ])
        status, _, body = self.client.request(
            "PUT", f"/{slot['hash']}.narinfo", {**auth, "Content-Type": "text/x-nix-narinfo"},
            narinfo.encode())
        if not expect(self.stats, "upload_narinfo", status, 200, f"{slot['hash']}: {body[:200]!r}"):
            return
        self.stats.ok("upload_narinfo", up=len(narinfo))
        # Read back at once: an upload is visible without waiting for a rescan.
        status, _, data = self.client.request("GET", f"/{slot['hash']}.narinfo")
        if not expect(self.stats, "upload_readback", status, 200, slot["hash"]):
            return
        info = parse_narinfo(data.decode())
        if info.get("URL") != [url] or not any(s.startswith(KEY_NAME + ":") for s in info.get("Sig", [])):
            self.stats.error("upload_readback", f"{slot['hash']}: served {data[:300]!r}")
            return
        self.stats.ok("upload_readback", down=len(data))
        status, _, data = self.client.request("GET", "/" + url)
        if not expect(self.stats, "upload_readback", status, 200, url):
            return
        if data != nar:
            self.stats.error("upload_readback", f"{url}: {len(data)} bytes differ from the upload")
            return
        self.stats.ok("upload_readback", down=len(data))
        self.stats.add("nars_verified")

    def unauthorised(self):
        nar = nixfmt.nar_regular_file(b"no token\n", False)
        url = f"/nar/{nixfmt.sha256_nix32(nar)}.nar"
        status, _, _ = self.client.request("PUT", url, {"Content-Type": "application/x-nix-nar"}, nar)
        self.client.close()  # the server closes after a refusal anyway
        if expect(self.stats, "upload_401", status, 401, url):
            self.stats.ok("upload_401")


def index_entries(port):
    """nbc_index_entries from /metrics (None if it cannot be read)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        m = re.search(r"^nbc_index_entries (\d+)", text, re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def proc_sample(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                fields[key] = int(value.split()[0])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return fields["VmRSS"], fields["VmHWM"], fields["Threads"], fds


def run(args):
    stats = Stats()
    cat = Catalogue(args.cache)
    orphans = []
    start = time.monotonic()
    deadline = start + args.duration
    threads = []
    read_interval = args.readers / args.rate if args.rate > 0 else 0
    for _ in range(args.readers):
        r = Reader(args, stats, cat)
        threads.append(threading.Thread(target=r.run, args=(deadline, read_interval), daemon=True))
    up_interval = args.uploaders / args.upload_rate if args.upload_rate > 0 else 1.0
    for n in range(args.uploaders):
        u = Uploader(args, stats, n, orphans)
        threads.append(threading.Thread(target=u.run, args=(deadline, up_interval), daemon=True))
    for t in threads:
        t.start()

    samples = []
    alive = True
    next_sample = start
    while True:
        now = time.monotonic()
        if now >= next_sample:
            t = round(now - start)
            try:
                rss, hwm, nthreads, fds = proc_sample(args.pid)
            except (FileNotFoundError, ProcessLookupError):
                alive = False
                stats.error("server", f"process {args.pid} is gone at t={t}s")
                break
            entries = index_entries(args.port)
            samples.append({"t": t, "rss_kib": rss, "hwm_kib": hwm, "threads": nthreads,
                            "fds": fds, "entries": entries})
            with stats.lock:
                total = sum(stats.requests.values())
                errors = sum(stats.errors.values())
                mb = stats.bytes_down / 1e6
            print(f"soak: t={t:4d}s  requests={total:8d}  errors={errors}  down={mb:8.1f} MB  "
                  f"RSS={rss / 1024:6.1f} MiB  threads={nthreads}  fds={fds}  narinfos={entries}",
                  flush=True)
            next_sample += args.sample_interval
        if now >= deadline + 0.5:
            break
        time.sleep(min(0.5, max(0.05, next_sample - time.monotonic())))
    for t in threads:
        t.join(timeout=90)
    stuck = sum(t.is_alive() for t in threads)
    if stuck:
        stats.error("loadgen", f"{stuck} load threads still busy 90 s after the deadline")
    elapsed = time.monotonic() - start
    results = {
        "duration": args.duration, "elapsed": elapsed, "readers": args.readers, "rate": args.rate,
        "uploaders": args.uploaders, "upload_rate": args.upload_rate, "alive": alive,
        "requests": dict(stats.requests), "errors": dict(stats.errors),
        "error_samples": stats.error_samples, "reconnects": stats.reconnects,
        "bytes_down": stats.bytes_down, "bytes_up": stats.bytes_up,
        "nars_verified": stats.nars_verified, "ranges_verified": stats.ranges_verified,
        "samples": samples, "sample_interval": args.sample_interval,
        "warmup": args.warmup, "orphans": sorted(set(orphans)),
    }
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--duration", type=int, default=600)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--rate", type=float, default=400, help="reader requests/s in total; 0 = as fast as possible")
    ap.add_argument("--uploaders", type=int, default=2)
    ap.add_argument("--upload-rate", type=float, default=4, help="path uploads/s in total")
    ap.add_argument("--slots", type=int, default=100, help="store paths per uploader")
    ap.add_argument("--sample-interval", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--out", required=True)
    sys.exit(run(ap.parse_args()))


if __name__ == "__main__":
    main()
