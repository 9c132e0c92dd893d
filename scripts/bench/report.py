#!/usr/bin/env python3
"""The Markdown report of scripts/bench.sh, from the numbers one run collected.

    report.py RUN_DIR > report.md

RUN_DIR is what scripts/bench.sh leaves in target/bench/<UTC time>/:

  measurements.txt  KEY=VALUE lines (the value is the rest of the line), among them
                      run.*, machine.*, cache.*, ours.*, nginx.*, floor.*, rescan.*  facts
                      scenario.NAME = CONNS|KEYS|METRIC|SERVERS  in the order they ran
                      wrk.SCENARIO.SERVER.ROUND.*  one wrk run: `wrk` (the BENCH line of
                        random_path.lua), `load` before it, the counters around it
                        (server_ticks, machine_ticks, wrk_ms, wall_ns) and, for the
                        many-connections runs, threads/fds/rss_kb halfway through
                      index.N.RUN.*  the two starts on the N-narinfo cache
                      many.SERVER.*  listen backlog, open-file limit, kernel counters before
                        and after, whether it answers afterwards, its log file
  *.log             the servers' logs (index-N-RUN.log, main.log, rescan.log, many-*.log...)

Everything computed from raw numbers is computed here: CPU per request and CPU shares, the
best round of each server, ratios, totals, the memory target, the counters' differences.
Standard library only.
"""

import os
import re
import sys

# The runs of the report's tables besides the recorded scenarios, in order.
EXTRA_SCENARIOS = ["rescan64", "many"]
SERVERS = ["ours", "nginx", "floor"]
SOCKET_ERRORS = ["connect", "read", "write", "timeout"]


# --- formats (as the report has always printed them) ----------------------------------------

def num(x):
    return "%.0f" % float(x)


def ms(us):
    return "%.3f ms" % (float(us) / 1000)


def mib_s(x):
    return "%.1f MiB/s" % float(x)


def mib(kb):
    return "%.1f MiB" % (float(kb) / 1024)


def cpu(us):
    us = float(us)
    return "%.1f ms" % (us / 1000) if us >= 10000 else "%.1f µs" % us


def ratio(a, b):
    b = float(b)
    return "n/a" if b == 0 else "%.2f" % (float(a) / b)


# --- reading a run ---------------------------------------------------------------------------

def read_measurements(path):
    values = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            key, sep, value = line.rstrip("\n").partition("=")
            if sep:
                values[key] = value
    return values


def read_log(run_dir, name):
    """The lines of a log in the run directory; none if it is missing."""
    try:
        with open(os.path.join(run_dir, name), encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except (FileNotFoundError, IsADirectoryError):
        return []


def nonempty_lines(lines):
    return sum(1 for line in lines if line)


def derive(fields, hz):
    """A wrk run's numbers: the BENCH fields as they are, and from the counters CPU
    microseconds per request and the CPU shares (100 = one core) of the server, wrk and
    everything else on the machine."""
    run = dict(kv.partition("=")[::2] for kv in fields.get("wrk", "requests=0").split())
    for key in ("load", "threads", "fds", "rss_kb"):
        if key in fields:
            run[key] = fields[key]
    wall = int(fields.get("wall_ns", 0)) / 1e9
    server = int(fields.get("server_ticks", 0)) / hz
    wrk = int(fields.get("wrk_ms", 0)) / 1000
    other = max(int(fields.get("machine_ticks", 0)) / hz - server - wrk, 0)
    requests = float(run.get("requests") or 0)
    run["cpu_us"] = "%.2f" % (server * 1e6 / requests if requests > 0 else 0)

    def share(x):
        return "%.0f" % (100 * x / wall if wall > 0 else 0)

    run["cpu_pct"], run["wrk_pct"], run["other_pct"] = share(server), share(wrk), share(other)
    return run


class Run:
    """One bench.sh run: its facts, its wrk runs, the best round of each server."""

    def __init__(self, run_dir, values=None):
        self.dir = run_dir
        self.m = values if values is not None else read_measurements(os.path.join(run_dir, "measurements.txt"))
        self.rounds = int(self.m["run.rounds"])
        self.floor = self.m.get("floor.present") == "1"
        # scenario name -> (connections, metric that picks the best round, servers)
        self.scenarios = {}
        for key, value in self.m.items():
            if key.startswith("scenario."):
                conns, _keys, metric, servers = value.split("|")
                self.scenarios[key[len("scenario."):]] = (conns, metric, servers.split())
        hz = int(self.m["machine.clk_tck"])
        grouped = {}
        for key, value in self.m.items():
            if key.startswith("wrk."):
                _, scen, srv, rnd, field = key.split(".", 4)
                grouped.setdefault((scen, srv, int(rnd)), {})[field] = value
        self.runs = {k: derive(fields, hz) for k, fields in grouped.items()}
        self.best = {}
        for scen, (_, metric, servers) in self.scenarios.items():
            for srv in servers:
                self.best[scen, srv] = self.pick_best(scen, srv, metric)
        self.best["rescan64", "ours"] = self.pick_best("rescan64", "ours", "rps")

    def get(self, key, default="?"):
        return self.m.get(key, default)

    def value(self, scen, srv, rnd, key, default="0"):
        return self.runs.get((scen, srv, rnd), {}).get(key, default)

    def pick_best(self, scen, srv, metric):
        """The round with the highest metric; the earliest one on a tie."""
        best = 1
        for rnd in range(2, self.rounds + 1):
            if float(self.value(scen, srv, rnd, metric)) > float(self.value(scen, srv, best, metric)):
                best = rnd
        return best

    def val(self, scen, srv, key):
        """KEY of SERVER's best round in SCENARIO."""
        return self.value(scen, srv, self.best.get((scen, srv), 1), key)

    def sum_rounds(self, scen, srv, key):
        return sum(int(self.value(scen, srv, rnd, key)) for rnd in range(1, self.rounds + 1))


# --- sections ----------------------------------------------------------------------------------

def noise(run):
    """How busy the rest of the machine was: others' CPU share and the load before each run."""
    others = [float(r["other_pct"]) for r in run.runs.values()]
    loads = [float(r.get("load", 0)) for r in run.runs.values()]
    if not others:
        return ""
    return ("others used %.0f%% of one core on average during the wrk runs (at most %.0f%%); "
            "1-min load average before a run: mean %.2f, max %.2f"
            % (sum(others) / len(others), max(0, *others), sum(loads) / len(loads), max(0, *loads)))


def header(run):
    g = run.get
    threads = g("run.threads", "") or "default"
    if g("ours.built_by_this_run") == "yes":
        note = "built by this run"
    else:
        note = ("not built by this run (--binary or --no-build), file modified "
                f"{g('ours.binary_modified')}; which commit it was built from is not checked")
    nginx_version = g("nginx.version").removeprefix("nginx version: ")
    mem_gib = "%.1f GiB" % (int(g("machine.mem_kb", "0")) / 1048576)
    cpus = g("machine.cpus")
    out = [
        "# nix-binary-cache vs nginx",
        "",
        f"- Command: `{g('run.command')}`",
        f"- Date: {g('run.end')}; total run time {g('run.seconds')}s",
        f"- Machine: {cpus} CPUs, {g('machine.cpu_model')}; kernel {g('machine.kernel')}; {mem_gib} RAM; "
        f"open-file limit {g('machine.nofile')} (hard {g('machine.nofile_hard')}); "
        f"net.core.somaxconn {g('machine.somaxconn')}, tcp_max_syn_backlog {g('machine.tcp_max_syn_backlog')}, "
        f"tcp_syncookies {g('machine.tcp_syncookies')}",
        f"- Load average at start {g('run.load_start')}, at the end {g('run.load_end')}; {noise(run)}",
        f"- Server: {g('ours.binary')} ({note}); repository at the start of the run: {g('run.git_rev')}; "
        f"threads: {threads} ({g('ours.threads_idle')} threads when idle), --rescan-interval 0 except where noted",
        f"- nginx: {nginx_version}, worker_processes auto ({g('nginx.workers')} workers), sendfile on, "
        "tcp_nopush on, access_log off, open_file_cache off",
    ]
    if run.floor:
        out.append(f"- Floor: {g('floor.binary')}, threads: {threads}")
    out += [
        f"- Cache: {g('cache.dir')} ({g('cache.narinfos')} narinfos, 200 NARs of 1 MiB, one of 1 GiB; page cache warm)",
        f"- Load: wrk 2 threads, {g('run.duration')}s per run, random path per request "
        f"(scripts/bench/random_path.lua); rounds: {run.rounds}, ours then nginx (then the floor) in each.",
        "  Each cell is the **best round** (highest req/s; MiB/s for NARs); latencies and CPU from that same round.",
        f"  wrk runs on the same {cpus} cores as the server, so it takes CPU away from both.",
        "- CPU/request: user+sys time of the server process (nginx: master + workers) from /proc/PID/stat, "
        "read before and after each run, divided by the requests wrk completed.",
        "  It includes the kernel's TCP work done in the server's context, not wrk's; it depends much less "
        "on machine noise than req/s does.",
    ]
    return out


# scenario, label, key, format, lower is better
MAIN_ROWS = [
    ("hits64", "narinfo hits, c=64: req/s", "rps", num, False),
    ("hits64", "narinfo hits, c=64: p50", "p50_us", ms, True),
    ("hits64", "narinfo hits, c=64: p99", "p99_us", ms, True),
    ("hits64", "narinfo hits, c=64: CPU/request", "cpu_us", cpu, True),
    ("miss64", "narinfo misses (404), c=64: req/s", "rps", num, False),
    ("miss64", "narinfo misses (404), c=64: p50", "p50_us", ms, True),
    ("miss64", "narinfo misses (404), c=64: p99", "p99_us", ms, True),
    ("miss64", "narinfo misses (404), c=64: CPU/request", "cpu_us", cpu, True),
    ("nar1m", "1 MiB NARs, c=16: throughput", "mib_s", mib_s, False),
    ("nar1m", "1 MiB NARs, c=16: req/s", "rps", num, False),
    ("nar1m", "1 MiB NARs, c=16: p50", "p50_us", ms, True),
    ("nar1m", "1 MiB NARs, c=16: p99", "p99_us", ms, True),
    ("nar1m", "1 MiB NARs, c=16: CPU/request (= per MiB)", "cpu_us", cpu, True),
    ("nar1g", "1 GiB NAR, c=4: throughput", "mib_s", mib_s, False),
    ("nar1g", "1 GiB NAR, c=4: CPU/request (= per GiB)", "cpu_us", cpu, True),
    ("hits1000", "narinfo hits, c=1000: req/s", "rps", num, False),
    ("hits1000", "narinfo hits, c=1000: p50", "p50_us", ms, True),
    ("hits1000", "narinfo hits, c=1000: p99", "p99_us", ms, True),
    ("hits1000", "narinfo hits, c=1000: CPU/request", "cpu_us", cpu, True),
]


def main_table(run):
    out = ["| scenario | ours | nginx | ratio (ours/nginx) |", "|---|---:|---:|---:|"]
    for scen, label, key, fmt, lower in MAIN_ROWS:
        a, b = run.val(scen, "ours", key), run.val(scen, "nginx", key)
        note = " (lower is better)" if lower else ""
        out.append(f"| {label}{note} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
    ours_hwm, nginx_hwm = run.get("ours.hwm_kb", "0"), run.get("nginx.hwm_kb", "0")
    out += [
        f"| peak RSS after all runs (VmHWM; nginx: master + workers) (lower is better) | {mib(ours_hwm)} "
        f"| {mib(nginx_hwm)} | {ratio(ours_hwm, nginx_hwm)} |",
        "",
        f"Our RSS at the end of the runs: {mib(run.get('ours.rss_end_kb', '0'))}. Lines our server logged "
        f"at --log-level warn: {nonempty_lines(read_log(run.dir, run.get('ours.log', 'main.log')))}.",
    ]
    return out


def floor_section(run):
    out = [
        "",
        "### The floor: tiny_http + worker pool alone",
        "",
        "examples/tiny_http_floor is tiny_http with the same number of worker threads answering every",
        "request with one constant response of about 1 KB from memory (our answer to the first hit has a",
        f"{run.get('ours.first_hit_bytes')}-byte body): no routing, no index, no disk, no logging. It is the cost floor of",
        "tiny_http + worker pool, so ours/nginx cannot exceed floor/nginx in req/s, and our CPU/request",
        "cannot go below the floor's.",
        "",
        "| narinfo hits | ours | nginx | floor | ours/nginx | floor/nginx | ours/floor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for scen, conns in (("hits64", 64), ("hits1000", 1000)):
        for label, key, fmt in (("req/s", "rps", num), ("p99 (lower is better)", "p99_us", ms),
                                ("CPU/request (lower is better)", "cpu_us", cpu)):
            a, b, f = (run.val(scen, srv, key) for srv in SERVERS)
            out.append(f"| c={conns}: {label} | {fmt(a)} | {fmt(b)} | {fmt(f)} | {ratio(a, b)} | "
                       f"{ratio(f, b)} | {ratio(a, f)} |")
    out += ["", f"Peak RSS of the floor: {mib(run.get('floor.hwm_kb', '0'))}."]
    return out


def ceiling_section(run):
    """What the narinfo req/s ratios can reach on this machine: wrk shares the cores, so with a
    server that cost nothing the ratio would still be bounded by wrk's own CPU per request."""
    out = [
        "",
        "### What a req/s ratio demands when wrk shares the cores",
        "",
        "wrk runs on the same cores. When they are saturated (the busy column), a request costs the",
        "machine wrk's CPU (X) plus the server's (Y), so ours/nginx in req/s is about (X + Y_nginx) / (X + Y_ours).",
        "Even a server costing nothing could not pass (X + Y_nginx) / X; the last columns give the CPU per",
        "request ours would need for 1.5x and 2x nginx's req/s. X is wrk's user+sys time over the requests of each",
        "server's best round; the bounds use the smaller X of the two (the more generous bound).",
        "",
        "| scenario | busy (ours / nginx runs) | X (ours / nginx runs) | Y_nginx | Y_ours | ratio now | ceiling (Y_ours = 0) "
        "| Y_ours for 1.5x | Y_ours for 2x |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def busy(scen, srv):
        r = run.runs.get((scen, srv, run.best.get((scen, srv), 1)), {})
        return sum(int(r.get(k, "0")) for k in ("cpu_pct", "wrk_pct", "other_pct"))

    def need(x, yn, target):
        y = (x + yn) / target - x
        return cpu(y) if y > 0 else "impossible"

    for scen, label in (("hits64", "narinfo hits, c=64"), ("miss64", "narinfo misses, c=64"),
                        ("hits1000", "narinfo hits, c=1000")):
        if (scen, "nginx") not in run.best:
            continue
        xs = []
        for srv in ("ours", "nginx"):
            requests = float(run.val(scen, srv, "requests") or 0)
            wrk_us = int(run.m.get(f"wrk.{scen}.{srv}.{run.best[(scen, srv)]}.wrk_ms", "0")) * 1000
            xs.append(wrk_us / requests if requests > 0 else 0)
        if min(xs) <= 0:
            continue
        x = min(xs)
        yn, yo = float(run.val(scen, "nginx", "cpu_us")), float(run.val(scen, "ours", "cpu_us"))
        now = ratio(run.val(scen, "ours", "rps"), run.val(scen, "nginx", "rps"))
        out.append(f"| {label} | {busy(scen, 'ours')}% / {busy(scen, 'nginx')}% | {cpu(xs[0])} / {cpu(xs[1])} | {cpu(yn)} | "
                   f"{cpu(yo)} | {now} | {(x + yn) / x:.2f} | {need(x, yn, 1.5)} | {need(x, yn, 2.0)} |")
    return out


def rescan_section(run):
    out = [
        "",
        "### p99 of narinfo hits while rescans run (ours only)",
        "",
        "| c=64 narinfo hits | ours, idle (--rescan-interval 0) | ours, --rescan-interval 1 | ratio (rescan/idle) |",
        "|---|---:|---:|---:|",
    ]
    for label, key, fmt in (("req/s", "rps", num), ("p50 (lower is better)", "p50_us", ms),
                            ("p99 (lower is better)", "p99_us", ms),
                            ("CPU/request, rescans included (lower is better)", "cpu_us", cpu)):
        a, b = run.val("hits64", "ours", key), run.val("rescan64", "ours", key)
        out.append(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio(b, a)} |")
    lines = nonempty_lines(read_log(run.dir, run.get("rescan.log", "rescan.log")))
    out += ["", f"Peak RSS of the rescanning instance: {mib(run.get('rescan.hwm_kb', '0'))}; "
                f"lines it logged at --log-level warn: {lines}."]
    return out


def counter_changes(before, after):
    """`Name=value ...` twice (the kernel's listen-queue counters): what changed, or "none"."""
    b = dict(pair.partition("=")[::2] for pair in before.split())
    changes = []
    for pair in after.split():
        name, _, value = pair.partition("=")
        if name in b and int(value) - int(b[name]) != 0:
            changes.append(f"{name} +{int(value) - int(b[name])}")
    return ", ".join(changes) or "none"


def log_messages(lines, most=4):
    """The first `most` distinct messages of a log, numbers folded to N and timestamps, backtrace
    frames and notes left out, each with how often it came: "3x `message`; ..."."""
    counts, order = {}, []
    for line in lines:
        m = re.sub(r"[0-9]+", "N", re.sub(r"^[0-9TZ:./ -]+", "", line))
        if re.match(r"(stack backtrace:|note: | +N: | +at |$)", m):
            continue
        if m not in counts:
            counts[m] = 0
            order.append(m)
        counts[m] += 1
    return "; ".join("%dx `%s`" % (counts[m], m.replace("|", "/").replace("`", "'")[:160])
                     for m in order[:most])


def many_section(run):
    servers = run.get("many.servers", "").split()
    conns, duration = run.get("run.many_conns"), run.get("run.duration")

    def cell(srv, key, fmt):
        v = run.value("many", srv, 1, key, None)
        return "-" if v in (None, "") else fmt(v)

    def row(label, cells):
        return f"| {label} |" + "".join(f" {c} |" for c in cells)

    out = [
        "",
        f"### {conns} connections (narinfo hits, fresh instances, one {duration}s run each, "
        f"wrk --timeout {run.get('run.many_timeout')}s)",
        "",
        row(f"c={conns}", servers),
        "|---|" + "---:|" * len(servers),
    ]
    for label, key, fmt in (("req/s", "rps", num), ("requests completed", "requests", num),
                            ("p50", "p50_us", ms), ("p99", "p99_us", ms), ("max", "max_us", ms),
                            ("CPU/request", "cpu_us", cpu)):
        out.append(row(label, [cell(srv, key, fmt) for srv in servers]))

    def v(srv, key, default="?"):
        return run.value("many", srv, 1, key, default)

    answers = {"yes": "yes", "no": "**no**", "exited": "**no (exited)**"}
    out += [
        row("errors: connect / read / write / timeout / non-2xx",
            [" / ".join(v(srv, "err_" + k) for k in SOCKET_ERRORS + ["status"]) for srv in servers]),
        row("halfway: threads, open descriptors, RSS",
            [f"{v(srv, 'threads')}, {v(srv, 'fds')}, {mib(v(srv, 'rss_kb', '0'))}" for srv in servers]),
        row("open-file limit of the process (nginx: master)",
            [run.get(f"many.{srv}.open_file_limit", "") or "?" for srv in servers]),
        row("listen backlog (ss Send-Q)", [run.get(f"many.{srv}.backlog", "") or "?" for srv in servers]),
        row("kernel listen-queue counters during the run",
            [counter_changes(run.get(f"many.{srv}.listen_before", ""), run.get(f"many.{srv}.listen_after", ""))
             for srv in servers]),
        row("answers a new connection afterwards",
            [answers.get(run.get(f"many.{srv}.answers_after"), "?") for srv in servers]),
    ]
    logs = {srv: read_log(run.dir, run.get(f"many.{srv}.log", "")) for srv in servers}
    out += [row("log lines (ours, floor: stderr; nginx: error.log)", [nonempty_lines(logs[s]) for s in servers]), ""]
    for srv in servers:
        messages = log_messages(logs[srv])
        if messages:
            out.append(f"- {srv} logged: {messages}")
    out += [
        "",
        "Ours and the floor run on our epoll engine (crates/tiny_http): one descriptor and no thread per",
        "connection, so an open-file limit of L holds about L connections.",
    ]
    return out


def index_row(run, n):
    """One cache size: the second start's numbers, the first start's time to the first answer,
    and RSS against the memory target 1.3 x narinfo bytes + 32 MiB."""
    hz = int(run.get("machine.clk_tck"))

    def g(rnd, key, default="0"):
        return run.get(f"index.{n}.{rnd}.{key}", default)

    log = read_log(run.dir, g(2, "log", ""))
    listed = next((m.group(1) for m in (re.match(r".*listed [0-9]* narinfo files .* in ([0-9.]*)s:", line)
                                        for line in log) if m), "-")
    indexed = next((line for line in log if re.search(r"indexed [0-9]* narinfo files", line)), "")
    m = re.match(r".*indexed ([0-9]*) narinfo files .* \(([0-9]*) skipped\) in ([0-9.]*)s", indexed)
    count, skipped, secs = m.groups() if m else ("?", "?", "?")
    narinfo_bytes = int(run.get(f"index.{n}.bytes", "0"))
    limit_kb = int(1.3 * narinfo_bytes / 1024 + 32 * 1024)
    rss, hwm = int(g(2, "rss_kb")), int(g(2, "hwm_kb"))
    verdict = {True: "pass", False: "fail"}
    return (f"| {n} | {narinfo_bytes / 1048576:.1f} MiB | {int(g(1, 'first_answer_ns')) / 1e9:.3f} s "
            f"| {int(g(2, 'first_answer_ns')) / 1e9:.3f} s | {listed} s | {int(g(2, 'all_read_ns')) / 1e9:.3f} s "
            f"| {count} in {secs} s | {skipped} | {int(g(2, 'cpu_ticks')) / hz:.2f} s | {mib(rss)} | {mib(hwm)} "
            f"| {mib(limit_kb)} | {verdict[rss <= limit_kb]} ({ratio(rss, limit_kb)}) "
            f"| {verdict[hwm <= limit_kb]} ({ratio(hwm, limit_kb)}) |")


def index_section(run):
    out = [
        "",
        "### Index build at startup (ours)",
        "",
        "Second of two starts (the first warms the page cache). Memory target: RSS ≤ 1.3 × narinfo bytes + 32 MiB.",
        "The server answers before its first scan ends (from the disk); the `listed` line is every path known",
        "(READY=1), the `indexed` line every file read (in the background, nice 19); CPU and memory once read.",
        "",
        "| narinfos | narinfo bytes | 1st start (page cache may be cold): launch to first answer | 2nd start: "
        "launch to first answer | `listed` (every path known) | launch to every file read | `indexed` log line "
        "| skipped | CPU (user+sys) once read | VmRSS | VmHWM | target | VmRSS ≤ target | VmHWM ≤ target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    out += [index_row(run, n) for n in run.get("index.sizes", "").split()]
    return out


def errors_cell(run, scen, srv):
    """Requests and errors summed over all rounds."""
    sockets = [f"{k} {n}" for k in SOCKET_ERRORS if (n := run.sum_rounds(scen, srv, "err_" + k)) > 0]
    return (f"{run.sum_rounds(scen, srv, 'requests')} req, non-2xx/3xx {run.sum_rounds(scen, srv, 'err_status')}, "
            + (f"socket errors: {', '.join(sockets)}" if sockets else "no socket errors"))


def errors_section(run):
    out = [
        "",
        "### Requests and errors (all rounds)",
        "",
        "Misses are expected to be non-2xx (404) for both servers.",
        "",
        "| scenario | ours | nginx | floor |",
        "|---|---|---|---|",
    ]
    for scen, (conns, _, servers) in run.scenarios.items():
        floor = errors_cell(run, scen, "floor") if "floor" in servers and run.floor else "-"
        out.append(f"| {scen} (c={conns}) | {errors_cell(run, scen, 'ours')} | {errors_cell(run, scen, 'nginx')} | {floor} |")
    out.append(f"| rescan64 (c=64) | {errors_cell(run, 'rescan64', 'ours')} | - | - |")
    return out


def every_run_section(run):
    out = [
        "",
        "### Every run",
        "",
        "CPU columns: 100% = one core. \"others\" = busy CPU time of the whole machine (/proc/stat) minus the "
        "server's and wrk's: other processes, noise.",
        "",
        "| scenario | server | round | req/s | MiB/s | p50 | p99 | max | CPU/request | server CPU | wrk CPU | "
        "others CPU | load1 before |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scen in list(run.scenarios) + EXTRA_SCENARIOS:
        for srv in SERVERS:
            for rnd in range(1, run.rounds + 1):
                r = run.runs.get((scen, srv, rnd))
                if r is None:
                    continue
                mark = " *" if run.best.get((scen, srv)) == rnd else ""
                out.append(
                    f"| {scen} | {srv} | {rnd}{mark} | {num(r.get('rps', 0))} | {float(r.get('mib_s', 0)):.1f} "
                    f"| {ms(r.get('p50_us', 0))} | {ms(r.get('p99_us', 0))} | {ms(r.get('max_us', 0))} "
                    f"| {cpu(r['cpu_us'])} | {r['cpu_pct']}% | {r['wrk_pct']}% | {r['other_pct']}% "
                    f"| {r.get('load', '?')} |")
    out += ["", f"\\* = round used above. Raw wrk output: {run.get('run.raw_log')} (not in git)."]
    return out


def build_report(run):
    out = header(run) + [""] + main_table(run)
    if run.floor:
        out += floor_section(run)
    out += ceiling_section(run) + rescan_section(run)
    if int(run.get("run.many_conns", "0")) > 0:
        out += many_section(run)
    out += index_section(run) + errors_section(run) + every_run_section(run)
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__.strip())
    sys.stdout.write(build_report(Run(sys.argv[1])))


if __name__ == "__main__":
    main()
