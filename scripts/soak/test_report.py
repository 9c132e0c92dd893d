"""Unit tests of the soak's verdict (scripts/soak/report.py) on made-up runs."""

import json
import os
import tempfile
import unittest

from soak import report


def samples(rss, fds=None, start=0, step=2):
    """Memory samples every `step` s from `start`: VmRSS from `rss` (KiB), descriptors 13."""
    fds = fds or [13] * len(rss)
    return [{"t": start + i * step, "rss_kib": r, "hwm_kib": max(rss), "threads": 10, "fds": f,
             "entries": 3} for i, (r, f) in enumerate(zip(rss, fds))]


def clean_run(**changes):
    """A 60 s run (warm-up 10 s) that passes every check."""
    results = {
        "duration": 60, "elapsed": 60.4, "readers": 4, "rate": 400, "uploaders": 2, "upload_rate": 4,
        "alive": True, "requests": {"narinfo_hit": 900, "nar_get": 200, "upload_nar": 30},
        "errors": {}, "error_samples": [], "reconnects": 0, "bytes_down": 5_000_000,
        "bytes_up": 100_000, "nars_verified": 200, "ranges_verified": 40,
        "samples": samples([5000] * 31), "sample_interval": 2, "warmup": 10,
        "orphans": ["0aaa.nar"],
    }
    inputs = dict(
        results=results,
        server_log=[f"INFO rescan: {i} unchanged" for i in range(12)],
        verify=["/c/nar/0aaa.nar: no narinfo points to this NAR", "5 narinfos checked, 0 problems"],
        nix_copies=["/nix/store/a-top"], nix_readbacks=["/nix/store/a-top"], nix_failures=[],
        binary="/bin/nbc", nix_version="2.8.0", rescan_interval=5, rss_tolerance=0.2,
        exit_status="0", stop_seconds="0.4", when="now",
    )
    for key, value in changes.items():
        if key in results:
            results[key] = value
        else:
            inputs[key] = value
    return report.Inputs(**inputs)


class Verdict(unittest.TestCase):
    def verdict(self, **changes):
        text, failures = report.build_report(clean_run(**changes))
        self.assertEqual("RESULT: PASS" in text, not failures)
        return text, failures

    def test_clean_run_passes(self):
        text, failures = self.verdict()
        self.assertEqual(failures, [])
        self.assertIn("RSS after 10 s warm-up: first third max 4.9 MiB, last third max 4.9 MiB "
                      "(+0.0%; limit +20%): flat", text)
        self.assertIn("stray NARs: 1 (all from upload slot rewrites: yes); other problems: 0", text)
        self.assertIn(f"  {'total':<34} {1130:>10,}   (19 req/s)", text)

    def test_rss_growing_past_the_tolerance_fails(self):
        rss = [5000] * 15 + [6100] * 16  # +22% in the last third
        text, failures = self.verdict(samples=samples(rss))
        self.assertIn("GROWING", text)
        self.assertEqual(failures, ["RSS grew +22.0% between the first and last third"])
        _, failures = self.verdict(samples=samples(rss), rss_tolerance=0.25)
        self.assertEqual(failures, [])

    def test_warm_up_growth_is_not_counted(self):
        rss = [1000] * 5 + [5000] * 26  # low until t=10 s, the warm-up
        self.assertEqual(self.verdict(samples=samples(rss))[1], [])

    def test_descriptor_leak_fails(self):
        fds = [13] * 20 + [13 + 65] * 11
        _, failures = self.verdict(samples=samples([5000] * 31, fds))
        self.assertEqual(failures, ["open descriptors grew from at most 13 to at least 78"])
        fds = [13] * 20 + [13 + 64] * 11
        self.assertEqual(self.verdict(samples=samples([5000] * 31, fds))[1], [])

    def test_too_few_samples_and_a_dead_server_fail(self):
        _, failures = self.verdict(samples=samples([5000] * 3), alive=False)
        self.assertEqual(failures, ["too few memory samples after warm-up to judge RSS",
                                    "the server process died"])

    def test_unexpected_statuses_fail_and_are_shown(self):
        text, failures = self.verdict(errors={"nar_get": 2}, error_samples=["12:00:01 nar_get: status 500"])
        self.assertIn("unexpected statuses / failed checks: 2  {'nar_get': 2}\n    12:00:01 nar_get: status 500", text)
        self.assertEqual(failures, ["2 unexpected statuses or failed checks"])

    def test_stray_nar_that_no_slot_orphaned_fails(self):
        verify = ["/c/nar/0aaa.nar: no narinfo points to this NAR",
                  "/c/nar/0bbb.nar: no narinfo points to this NAR", "5 narinfos checked, 0 problems"]
        text, failures = self.verdict(verify=verify)
        self.assertIn("stray NARs: 2 (all from upload slot rewrites: NO); other problems: 0", text)
        self.assertEqual(failures, ["verify found problems other than the expected stray NARs"])

    def test_other_verify_problem_fails(self):
        verify = ["/c/x.narinfo: FileSize 3 but the file has 4 bytes", "5 narinfos checked, 1 problem"]
        self.assertEqual(self.verdict(verify=verify)[1],
                         ["verify found problems other than the expected stray NARs"])

    def test_nix_loop_failures_and_no_copy_fail(self):
        _, failures = self.verdict(nix_copies=[], nix_failures=["12:00 round 1: nix-build failed"])
        self.assertEqual(failures, ["1 nix copy failures (see nix-loop.log)",
                                    "the nix copy loop completed no copy"])

    def test_missing_rescans_and_warnings_in_the_log_fail(self):
        log = ["INFO rescan: 1 unchanged"] * 9 + ["WARN disk slow", "an ERRORless line"]
        text, failures = self.verdict(server_log=log)
        self.assertIn("rescans: 9 (last: 1 unchanged)", text)
        self.assertEqual(failures, ["only 9 rescans, expected at least 10",
                                    "1 WARN/ERROR lines in the server log"])

    def test_unclean_stop_fails(self):
        self.assertEqual(self.verdict(exit_status="143")[1], ["server exit status 143 after SIGTERM"])


class Files(unittest.TestCase):
    def test_reads_what_soak_sh_leaves(self):
        run = clean_run()
        with tempfile.TemporaryDirectory() as work:
            def write(name, lines):
                with open(os.path.join(work, name), "w") as f:
                    f.write("".join(line + "\n" for line in lines))

            with open(os.path.join(work, "results.json"), "w") as f:
                json.dump(run.results, f)
            write("server.log", run.server_log)
            write("verify.out", run.verify)
            write("nix-copies", run.nix_copies)
            write("nix-readbacks", run.nix_readbacks)  # no nix-failures file: none failed

            class Args:
                results = os.path.join(work, "results.json")
                server_log = os.path.join(work, "server.log")
                binary, nix_version, rescan_interval, rss_tolerance = "/bin/nbc", "2.8.0", 5, 0.2
                exit_status, stop_seconds = "0", "0.4"

            Args.work = work
            got = report.read_inputs(Args)
        got.when = run.when
        self.assertEqual(report.build_report(got), report.build_report(run))


if __name__ == "__main__":
    unittest.main()
