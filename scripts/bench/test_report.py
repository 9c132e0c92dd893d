"""Unit tests of the benchmark report (scripts/bench/report.py).

testdata/run/ is the run directory of a short real bench.sh run (--rounds 1 --duration 1
--many-conns 500), extended to three rounds with made-up numbers (ties, socket errors, a server
that stops answering, log messages) so that every branch of the report is used.
testdata/expected-report.md is report.py's output for it. It was compared line by line with what
the bash and awk report code of scripts/bench.sh (before this module) printed for the same
numbers: identical but for the lines that code read at report time (the date, the load at the
end, the binary's modification time) and the raw-log pointer, which moved out of git.
"""

import os
import tempfile
import unittest

from bench import report

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "testdata")


class WholeReport(unittest.TestCase):
    def test_report_of_the_recorded_run(self):
        with open(os.path.join(TESTDATA, "expected-report.md"), encoding="utf-8") as f:
            expected = f.read()
        got = report.build_report(report.Run(os.path.join(TESTDATA, "run")))
        self.assertEqual(got.splitlines(), expected.splitlines())


def measurements(**extra):
    """The smallest run report.Run accepts: one round of hits64 for ours and nginx."""
    values = {
        "run.rounds": "1", "machine.clk_tck": "100", "floor.present": "0",
        "scenario.hits64": "64|hits.txt|rps|ours nginx",
    }
    values.update(extra)
    return values


class Numbers(unittest.TestCase):
    def test_cpu_per_request_and_shares_from_the_counters(self):
        # 2 s of server CPU for 100,000 requests in 2 s of wall time; wrk used 1.5 s, the
        # machine 4 s in all: 0.5 s were someone else's.
        run = report.derive({"wrk": "requests=100000 rps=50000.0", "server_ticks": "200",
                             "wrk_ms": "1500", "machine_ticks": "400", "wall_ns": "2000000000",
                             "load": "1.50"}, hz=100)
        self.assertEqual(run["cpu_us"], "20.00")
        self.assertEqual((run["cpu_pct"], run["wrk_pct"], run["other_pct"]), ("100", "75", "25"))
        self.assertEqual((run["rps"], run["load"]), ("50000.0", "1.50"))

    def test_others_never_below_zero_and_no_requests_no_cpu(self):
        run = report.derive({"wrk": "requests=0", "server_ticks": "300", "wrk_ms": "2000",
                             "machine_ticks": "100", "wall_ns": "1000000000"}, hz=100)
        self.assertEqual((run["cpu_us"], run["other_pct"]), ("0.00", "0"))

    def test_best_round_is_the_highest_and_the_first_on_a_tie(self):
        def wrk(rps):
            return {"wrk": f"requests=1 rps={rps}", "server_ticks": "1", "wrk_ms": "1",
                    "machine_ticks": "1", "wall_ns": "1"}

        values = measurements(**{"run.rounds": "3"})
        for rnd, rps in ((1, "10.0"), (2, "30.0"), (3, "30.0")):
            for key, value in wrk(rps).items():
                values[f"wrk.hits64.ours.{rnd}.{key}"] = value
        values.update({f"wrk.hits64.nginx.2.{k}": v for k, v in wrk("5.0").items()})  # round 1 missing
        run = report.Run("/nonexistent", values)
        self.assertEqual(run.best["hits64", "ours"], 2)
        self.assertEqual(run.best["hits64", "nginx"], 2)
        self.assertEqual(run.val("hits64", "ours", "rps"), "30.0")
        self.assertEqual(run.sum_rounds("hits64", "ours", "requests"), 3)

    def test_formats(self):
        self.assertEqual(report.cpu("9999.94"), "9999.9 µs")
        self.assertEqual(report.cpu("10000"), "10.0 ms")
        self.assertEqual(report.ratio("1", "0"), "n/a")
        self.assertEqual(report.ratio("63193", "43345"), "1.46")
        self.assertEqual(report.num("63192.9"), "63193")
        self.assertEqual(report.ms("414"), "0.414 ms")
        self.assertEqual(report.mib("93900"), "91.7 MiB")

    def test_listen_counter_changes(self):
        before = "ListenOverflows=5 ListenDrops=5 SyncookiesSent=0 "
        self.assertEqual(report.counter_changes(before, before), "none")
        self.assertEqual(report.counter_changes(before, "ListenOverflows=9 ListenDrops=5 SyncookiesSent=2 "),
                         "ListenOverflows +4, SyncookiesSent +2")

    def test_log_messages_are_folded_and_counted(self):
        lines = ["2026-11-30T06:00:00.123Z WARN accept failed: os error 24"] * 3 + [
            "thread 'main' panicked at src/x.rs:12:5:", "stack backtrace:", "   0: std::x", "note: run with",
            "a | b with `ticks`", "fifth", "sixth", "", "x" * 200]
        # The leading strip takes a backtrace frame's number too, so "   0: std::x" counts as
        # "std::x" (as it did in bash); "stack backtrace:" and "note: " lines are left out.
        self.assertEqual(report.log_messages(lines),
                         "3x `WARN accept failed: os error N`; 1x `thread 'main' panicked at src/x.rs:N:N:`; "
                         "1x `std::x`; 1x `a / b with 'ticks'`")
        self.assertEqual(report.log_messages(["x" * 200]), "1x `" + "x" * 160 + "`")
        self.assertEqual(report.log_messages([]), "")


class IndexRow(unittest.TestCase):
    def test_memory_target_and_log_lines(self):
        with tempfile.TemporaryDirectory() as run_dir:
            with open(os.path.join(run_dir, "second.log"), "w") as f:
                f.write("INFO listed 300 narinfo files in /c in 0.012s: every path is known\n"
                        "INFO indexed 300 narinfo files in /c (2 skipped) in 0.250s\n")
            mib = 1024 * 1024
            values = measurements(**{
                "index.sizes": "300", "index.300.bytes": str(100 * mib),  # target 162 MiB
                "index.300.1.first_answer_ns": "1500000000", "index.300.2.first_answer_ns": "20000000",
                "index.300.2.all_read_ns": "300000000", "index.300.2.log": "second.log",
                "index.300.2.rss_kb": str(162 * 1024), "index.300.2.hwm_kb": str(162 * 1024 + 1),
                "index.300.2.cpu_ticks": "25",
            })
            row = report.index_row(report.Run(run_dir, values), "300")
        self.assertEqual(row, "| 300 | 100.0 MiB | 1.500 s | 0.020 s | 0.012 s | 0.300 s | 300 in 0.250 s | 2 "
                              "| 0.25 s | 162.0 MiB | 162.0 MiB | 162.0 MiB | pass (1.00) | fail (1.00) |")

    def test_missing_log_lines(self):
        values = measurements(**{"index.sizes": "300", "index.300.bytes": "0", "index.300.2.log": "gone.log"})
        row = report.index_row(report.Run("/nonexistent", values), "300")
        self.assertIn("| - s |", row)
        self.assertIn("| ? in ? s | ? |", row)


if __name__ == "__main__":
    unittest.main()
