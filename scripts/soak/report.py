#!/usr/bin/env python3
"""The soak's report and verdict (scripts/soak.sh; standard library only).

    report.py --results R.json --work DIR --server-log LOG [--binary B] [--nix-version V]
              [--rescan-interval S] [--rss-tolerance F] [--exit-status N] [--stop-seconds S]
              [--report-file FILE]

Joins what scripts/soak/loadgen.py measured (R.json) with what scripts/soak.sh collected in
DIR (nix-copies, nix-readbacks, nix-failures from scripts/soak/nix-loop.sh; verify.out from
`nix-binary-cache verify`), the server log and the shutdown, prints the report (and writes it
to FILE) and exits 1 if any check failed:

  - an unexpected status or failed check in the load, or the server process gone;
  - a failed `nix copy`, or none done;
  - fewer rescans than the run's length allows, or a WARN/ERROR line in the server log;
  - RSS in the last third after warm-up more than --rss-tolerance above the first third, or
    open descriptors growing by more than 64;
  - `verify` finding anything but the NARs the upload slots left unreferenced by design;
  - an exit status other than 0 after SIGTERM.
"""

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field

# Request kinds in report order, with what they expect.
LABELS = {
    "narinfo_hit": "narinfo hits (200)", "narinfo_miss": "narinfo misses (404)",
    "nar_get": "NAR downloads (200)", "nar_via_narinfo": "NARs via narinfo URL (200)",
    "nar_range": "NAR Range requests (206)", "nar_range_416": "Range past the end (416)",
    "nar_miss": "NAR misses (404)", "nar_head": "NAR HEAD (200)",
    "nar_304": "If-None-Match (304)", "cache_info": "nix-cache-info (200)",
    "listing": ".ls listings (200)", "log": "build logs (200)", "landing": "landing page (200)",
    "metrics": "/metrics (200)", "upload_nar": "NAR uploads (PUT 200)",
    "upload_narinfo": "narinfo uploads (PUT 200)",
    "upload_readback": "read-backs after upload (200)", "upload_401": "PUT without token (401)",
}
STRAY = "no narinfo points to this NAR"  # how `verify` reports an unreferenced NAR
VERIFY_SUMMARY = re.compile(r"^\d+ narinfos checked")
FD_GROWTH_LIMIT = 64


@dataclass
class Inputs:
    """Everything the verdict depends on, read from files by `read_inputs`."""

    results: dict  # loadgen.py's R.json
    server_log: list
    verify: list  # lines of `nix-binary-cache verify`
    nix_copies: list = field(default_factory=list)
    nix_readbacks: list = field(default_factory=list)
    nix_failures: list = field(default_factory=list)
    binary: str = "?"
    nix_version: str = "?"
    rescan_interval: int = 5
    rss_tolerance: float = 0.20
    exit_status: str = "?"
    stop_seconds: str = "?"
    when: str = ""


def requests_section(r, failures):
    out = ["requests answered as expected, by kind:"]
    reqs = r["requests"]
    for kind in LABELS:
        if kind in reqs:
            out.append(f"  {LABELS[kind]:<34} {reqs[kind]:>10,}")
    for kind in sorted(set(reqs) - set(LABELS)):
        out.append(f"  {kind:<34} {reqs[kind]:>10,}")
    total = sum(reqs.values())
    out.append(f"  {'total':<34} {total:>10,}   ({total / max(r['elapsed'], 1):,.0f} req/s)")
    errors = sum(r["errors"].values())
    out.append(f"unexpected statuses / failed checks: {errors}"
               + (f"  {dict(r['errors'])}" if errors else ""))
    out += [f"    {line}" for line in r["error_samples"]]
    if errors:
        failures.append(f"{errors} unexpected statuses or failed checks")
    out.append(f"keep-alive reconnects (stale connection, retried once): {r['reconnects']}")
    out.append(f"downloaded: {r['bytes_down'] / 1e6:,.1f} MB; uploaded: {r['bytes_up'] / 1e6:,.1f} MB; "
               f"NAR hashes verified: {r['nars_verified']:,}; Range bodies compared with disk: "
               f"{r['ranges_verified']:,}")
    out.append(f"uploads: {reqs.get('upload_nar', 0):,} NARs + {reqs.get('upload_narinfo', 0):,} narinfos "
               f"stored ({len(r['orphans'])} NARs left unreferenced by slot rewrites, as designed)")
    return out


def nix_section(inp, failures):
    copies, readbacks, nix_failures = len(inp.nix_copies), len(inp.nix_readbacks), inp.nix_failures
    out = [f"nix copy --to file:// (Nix {inp.nix_version}): {copies} done (xz / zstd+listing / none in turn); "
           f"nix copy --from http:// with require-sigs: {readbacks} done; failures: {len(nix_failures)}"]
    out += [f"    {line}" for line in nix_failures[:10]]
    if nix_failures:
        failures.append(f"{len(nix_failures)} nix copy failures (see nix-loop.log)")
    if copies == 0:
        failures.append("the nix copy loop completed no copy")
    return out


def server_log_section(inp, failures):
    log = inp.server_log
    rescans = sum("rescan:" in line for line in log)
    last_rescan = next((line for line in reversed(log) if "rescan:" in line), "")
    out = [f"rescans: {rescans}" + (f" (last: {last_rescan.split('rescan: ', 1)[-1]})" if last_rescan else "")]
    want_rescans = int(inp.results["elapsed"] // inp.rescan_interval) - 2
    if rescans < want_rescans:
        failures.append(f"only {rescans} rescans, expected at least {want_rescans}")
    bad = [line for line in log if re.search(r"\b(WARN|ERROR)\b", line)]
    out.append(f"server log: {len(log)} lines, {len(bad)} WARN/ERROR")
    out += [f"    {line}" for line in bad[:10]]
    if bad:
        failures.append(f"{len(bad)} WARN/ERROR lines in the server log")
    return out


def memory_section(r, tolerance, failures):
    """The samples four to a line, then RSS and descriptors after warm-up: first third against
    last third of the run."""
    samples = r["samples"]
    out = [f"server every {r['sample_interval']} s (t: VmRSS MiB / threads / open fds / index entries):"]
    row = []
    for s in samples:
        row.append(f"{s['t']:>4}s {s['rss_kib'] / 1024:5.1f}/{s['threads']}/{s['fds']}/{s['entries']!s:<4}")
        if len(row) == 4:
            out.append("  " + "  ".join(row))
            row = []
    if row:
        out.append("  " + "  ".join(row))
    if samples:
        out.append(f"  VmHWM at the end: {samples[-1]['hwm_kib'] / 1024:.1f} MiB")
    after = [s for s in samples if s["t"] > r["warmup"]]
    if len(after) >= 3:
        span = (r["elapsed"] - r["warmup"]) / 3
        first = [s["rss_kib"] for s in after if s["t"] <= r["warmup"] + span] or [after[0]["rss_kib"]]
        last = [s["rss_kib"] for s in after if s["t"] > r["warmup"] + 2 * span] or [after[-1]["rss_kib"]]
        growth = max(last) / max(first) - 1
        verdict = "flat" if growth <= tolerance else "GROWING"
        out.append(f"  RSS after {r['warmup']} s warm-up: first third max {max(first) / 1024:.1f} MiB, "
                   f"last third max {max(last) / 1024:.1f} MiB ({growth:+.1%}; limit "
                   f"+{tolerance:.0%}): {verdict}")
        if growth > tolerance:
            failures.append(f"RSS grew {growth:+.1%} between the first and last third")
        fds_first = max(s["fds"] for s in after if s["t"] <= r["warmup"] + span)
        fds_last = min(s["fds"] for s in after if s["t"] > r["warmup"] + 2 * span) if last else 0
        if fds_last > fds_first + FD_GROWTH_LIMIT:
            failures.append(f"open descriptors grew from at most {fds_first} to at least {fds_last}")
    else:
        failures.append("too few memory samples after warm-up to judge RSS")
    if not r["alive"]:
        failures.append("the server process died")
    return out


def verify_section(r, vlines, failures):
    """Stray NARs are expected exactly where an upload slot was rewritten (loadgen's orphans)."""
    orphans = set(r["orphans"])
    strays = [line for line in vlines if STRAY in line]
    expected_strays = [line for line in strays
                       if any(line.split(":", 1)[0].endswith("/" + o) for o in orphans)]
    other = [line for line in vlines if STRAY not in line and not VERIFY_SUMMARY.match(line)]
    summary = next((line for line in vlines if VERIFY_SUMMARY.match(line)), "(no summary)")
    out = [f"nix-binary-cache verify (after the run): {summary}",
           f"  stray NARs: {len(strays)} (all from upload slot rewrites: "
           f"{'yes' if len(expected_strays) == len(strays) else 'NO'}); other problems: {len(other)}"]
    out += [f"    {line}" for line in other[:10]]
    if other or len(expected_strays) != len(strays):
        failures.append("verify found problems other than the expected stray NARs")
    return out


def build_report(inp):
    """(report text, failures): the report as soak.sh prints it; no failures means PASS."""
    r = inp.results
    failures = []
    out = ["=" * 78,
           f"nix-binary-cache soak report ({inp.when})",
           f"binary: {inp.binary}",
           f"duration: {r['duration']} s (ran {r['elapsed']:.1f} s); {r['readers']} reader threads at "
           f"{r['rate']} req/s in total, {r['uploaders']} uploaders at {r['upload_rate']} uploads/s, "
           f"rescan every {inp.rescan_interval} s",
           ""]
    out += requests_section(r, failures)
    out.append("")
    out += nix_section(inp, failures)
    out += server_log_section(inp, failures)
    out.append("")
    out += memory_section(r, inp.rss_tolerance, failures)
    out.append("")
    out += verify_section(r, inp.verify, failures)
    out.append(f"shutdown: SIGTERM -> exit status {inp.exit_status} after {inp.stop_seconds} s")
    if inp.exit_status != "0":
        failures.append(f"server exit status {inp.exit_status} after SIGTERM")
    out.append("")
    if failures:
        out.append("RESULT: FAIL")
        out += [f"  - {f}" for f in failures]
    else:
        out.append("RESULT: PASS (no unexpected status, every NAR hash and Range body right, RSS flat, "
                   "verify clean, clean stop)")
    out.append("=" * 78)
    return "\n".join(out) + "\n", failures


def read_lines(path):
    try:
        with open(path) as f:
            return [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        return []


def read_inputs(args):
    with open(args.results) as f:
        results = json.load(f)
    w = args.work
    return Inputs(
        results=results,
        server_log=read_lines(args.server_log),
        verify=read_lines(os.path.join(w, "verify.out")),
        nix_copies=read_lines(os.path.join(w, "nix-copies")),
        nix_readbacks=read_lines(os.path.join(w, "nix-readbacks")),
        nix_failures=read_lines(os.path.join(w, "nix-failures")),
        binary=args.binary, nix_version=args.nix_version, rescan_interval=args.rescan_interval,
        rss_tolerance=args.rss_tolerance, exit_status=args.exit_status,
        stop_seconds=args.stop_seconds, when=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--server-log", required=True)
    ap.add_argument("--binary", default="?")
    ap.add_argument("--nix-version", default="?")
    ap.add_argument("--rescan-interval", type=int, default=5)
    ap.add_argument("--rss-tolerance", type=float, default=0.20)
    ap.add_argument("--exit-status", default="?")
    ap.add_argument("--stop-seconds", default="?")
    ap.add_argument("--report-file")
    args = ap.parse_args()
    text, failures = build_report(read_inputs(args))
    sys.stdout.write(text)
    if args.report_file:
        with open(args.report_file, "w") as f:
            f.write(text)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
