"""
Tests for C{tools/trial_summary.py}, the helper that turns the closing lines
of the two trial runs into the single C{N passed, M failed} line CI reads.

C{tools/} is not an installed package, so the module is loaded from its file.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys

from twisted.trial.unittest import SynchronousTestCase


def _load_trial_summary():
    """
    Import C{tools/trial_summary.py} from the repository checkout.
    """
    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "tools",
        "trial_summary.py",
    )
    spec = importlib.util.spec_from_file_location("_qwengate_trial_summary", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while building classes.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


trial_summary = _load_trial_summary()

PASSING_LOG = """\
tests.test_example
  ExampleTests
    test_one ...                                                           [OK]
    test_two ...                                                      [SKIPPED]

-------------------------------------------------------------------------------
Ran 152 tests in 0.412s

PASSED (skips=2, successes=150)
"""

FAILING_LOG = """\
[FAIL]
Traceback (most recent call last):
  ...
twisted.trial.unittest.FailTest: 1 != 2

tests.test_example.ExampleTests.test_one
-------------------------------------------------------------------------------
Ran 153 tests in 1.000s

FAILED (failures=1, errors=2, skips=1, expectedFailures=1, unexpectedSuccesses=1, successes=147)
"""


class ParseSummaryLineTests(SynchronousTestCase):
    """
    Tests for L{trial_summary.parse_summary_line}.
    """

    def test_passed_with_counters(self):
        """
        A PASSED line yields its successes and skips.
        """
        counts = trial_summary.parse_summary_line("PASSED (skips=2, successes=150)\n")
        self.assertEqual(
            counts, trial_summary.TrialCounts("PASSED", successes=150, skips=2)
        )

    def test_every_counter(self):
        """
        All six counters trial can print are read, in any order.
        """
        counts = trial_summary.parse_summary_line(
            "FAILED (failures=1, errors=2, skips=1, expectedFailures=1, "
            "unexpectedSuccesses=1, successes=147)"
        )
        self.assertEqual(
            counts,
            trial_summary.TrialCounts(
                "FAILED",
                successes=147,
                skips=1,
                expected_failures=1,
                failures=1,
                errors=2,
                unexpected_successes=1,
            ),
        )

    def test_bare_passed(self):
        """
        A run with no tests prints a bare C{PASSED}, which counts as nothing.
        """
        counts = trial_summary.parse_summary_line("PASSED")
        self.assertEqual(counts, trial_summary.TrialCounts("PASSED"))
        self.assertEqual((counts.passed, counts.failed, counts.skipped), (0, 0, 0))

    def test_colour_codes_ignored(self):
        """
        Terminal colour codes around the status word do not hide the summary.
        """
        counts = trial_summary.parse_summary_line(
            "\x1b[32;1mPASSED\x1b[0m (successes=3)"
        )
        self.assertEqual(counts, trial_summary.TrialCounts("PASSED", successes=3))

    def test_plain_line(self):
        """
        The plain C{N passed, M failed[, K skipped]} line of the packaging
        check is read as a summary, so its failures fail CI.
        """
        self.assertEqual(
            trial_summary.parse_summary_line("41 passed, 2 failed\n"),
            trial_summary.TrialCounts("FAILED", successes=41, failures=2),
        )
        self.assertEqual(
            trial_summary.parse_summary_line("5 passed, 0 failed, 1 skipped"),
            trial_summary.TrialCounts("PASSED", successes=5, skips=1),
        )
        self.assertIsNone(trial_summary.parse_summary_line("5 passed"))

    def test_not_a_summary(self):
        """
        Lines that merely resemble a summary are not taken for one.
        """
        for line in [
            "PASSED tests: many",
            "PASSED (successes=many)",
            "PASSED (bogus=1)",
            "FAILED (failures=1,errors=2)",
            "  PASSED (successes=1) trailing",
            "test_one ... [OK]",
            "",
        ]:
            self.assertIsNone(trial_summary.parse_summary_line(line), line)

    def test_passed_and_failed_arithmetic(self):
        """
        Expected failures count as passed; failures, errors and unexpected
        successes count as failed.
        """
        counts = trial_summary.TrialCounts(
            "FAILED",
            successes=147,
            skips=1,
            expected_failures=1,
            failures=1,
            errors=2,
            unexpected_successes=1,
        )
        self.assertEqual((counts.passed, counts.failed, counts.skipped), (148, 4, 1))


class ParseSummaryTests(SynchronousTestCase):
    """
    Tests for L{trial_summary.parse_summary} on whole logs.
    """

    def test_finds_final_line(self):
        """
        The summary at the end of a real-looking log is found.
        """
        counts = trial_summary.parse_summary(io.StringIO(PASSING_LOG))
        self.assertEqual(counts.successes, 150)
        self.assertEqual(counts.skips, 2)

    def test_last_summary_wins(self):
        """
        When output contains an earlier summary-shaped line (say, printed by
        a test), the last one is the verdict.
        """
        counts = trial_summary.parse_summary(io.StringIO(PASSING_LOG + FAILING_LOG))
        self.assertEqual(counts.status, "FAILED")
        self.assertEqual(counts.successes, 147)

    def test_no_summary(self):
        """
        A log that stops without a summary (a crash) yields L{None}.
        """
        log = "Traceback (most recent call last):\nImportError: no twisted\n"
        self.assertIsNone(trial_summary.parse_summary(io.StringIO(log)))


class RunTotalsTests(SynchronousTestCase):
    """
    Tests for L{trial_summary.run_totals}.
    """

    def test_crash_counts_one_failure(self):
        """
        A run without a summary contributes exactly one failure.
        """
        self.assertEqual(
            trial_summary.run_totals(None, 1), trial_summary.Totals(0, 1, 0)
        )
        self.assertEqual(
            trial_summary.run_totals(None, 0), trial_summary.Totals(0, 1, 0)
        )

    def test_clean_summary_bad_exit(self):
        """
        A summary without failures from a trial that exited non-zero still
        counts as one failure.
        """
        counts = trial_summary.TrialCounts("PASSED", successes=5)
        self.assertEqual(
            trial_summary.run_totals(counts, 2), trial_summary.Totals(5, 1, 0)
        )

    def test_failures_not_doubled(self):
        """
        A failing summary with its non-zero exit counts its failures once.
        """
        counts = trial_summary.TrialCounts("FAILED", successes=5, errors=2)
        self.assertEqual(
            trial_summary.run_totals(counts, 1), trial_summary.Totals(5, 2, 0)
        )


class TotalsFormatTests(SynchronousTestCase):
    """
    Tests for L{trial_summary.Totals.format}.
    """

    def test_without_skips(self):
        """
        No skips: exactly C{N passed, M failed}.
        """
        self.assertEqual(trial_summary.Totals(7, 0, 0).format(), "7 passed, 0 failed")

    def test_with_skips(self):
        """
        Skips are appended as C{, K skipped}.
        """
        self.assertEqual(
            trial_summary.Totals(7, 1, 2).format(), "7 passed, 1 failed, 2 skipped"
        )

    def test_addition(self):
        """
        Totals of two runs add up field by field.
        """
        self.assertEqual(
            trial_summary.Totals(1, 2, 3) + trial_summary.Totals(10, 20, 30),
            trial_summary.Totals(11, 22, 33),
        )


class MainTests(SynchronousTestCase):
    """
    Tests for L{trial_summary.main}, the command line used by qwengate-dev.
    """

    def setUp(self):
        self.output = io.StringIO()
        self.patch(sys, "stdout", self.output)
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def write_log(self, name, text):
        """
        Save C{text} as a log file and return its path.
        """
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_two_runs_summed(self):
        """
        Both runs are reported on prefixed lines, and the last line is the
        bare sum of both; any failure makes the exit status 1.
        """
        good = self.write_log("newest.log", PASSING_LOG)
        bad = self.write_log("debian12.log", FAILING_LOG)
        status = trial_summary.main(
            ["--run", "newest", good, "0", "--run", "debian12", bad, "1"]
        )
        lines = self.output.getvalue().splitlines()
        self.assertEqual(
            lines,
            [
                "[newest] 150 passed, 0 failed, 2 skipped",
                "[debian12] 148 passed, 4 failed, 1 skipped",
                "298 passed, 4 failed, 3 skipped",
            ],
        )
        self.assertEqual(status, 1)

    def test_all_passed_exits_zero(self):
        """
        When every run passed, the exit status is 0.
        """
        log = self.write_log("newest.log", "Ran 3 tests in 0.1s\n\nPASSED (successes=3)\n")
        status = trial_summary.main(["--run", "newest", log, "0", "--run", "x", log, "0"])
        self.assertEqual(self.output.getvalue().splitlines()[-1], "6 passed, 0 failed")
        self.assertEqual(status, 0)

    def test_packaging_check_counted(self):
        """
        A packaging check log ending in its plain line is added to the
        trial runs; its failure makes the total fail.
        """
        trial = self.write_log("newest.log", PASSING_LOG)
        deb = self.write_log("deb.log", "ok - built\nnot ok - lintian\n40 passed, 1 failed\n")
        status = trial_summary.main(["--run", "newest", trial, "0", "--run", "deb", deb, "1"])
        lines = self.output.getvalue().splitlines()
        self.assertEqual(lines[-2:], ["[deb] 40 passed, 1 failed", "190 passed, 1 failed, 2 skipped"])
        self.assertEqual(status, 1)

    def test_missing_log_is_a_failure(self):
        """
        A run whose log does not exist counts as one failure and says why.
        """
        log = self.write_log("newest.log", PASSING_LOG)
        missing = os.path.join(self.directory, "nope.log")
        status = trial_summary.main(
            ["--run", "newest", log, "0", "--run", "debian12", missing, "1"]
        )
        lines = self.output.getvalue().splitlines()
        self.assertTrue(lines[1].startswith("[debian12] 0 passed, 1 failed -- "))
        self.assertIn("counted as 1 failed", lines[1])
        self.assertEqual(lines[-1], "150 passed, 1 failed, 2 skipped")
        self.assertEqual(status, 1)

    def test_crashed_run_is_a_failure(self):
        """
        A log that ends in a traceback, without a summary, counts as one
        failure even when everything else passed.
        """
        crashed = self.write_log("debian12.log", "Traceback ...\nImportError: x\n")
        status = trial_summary.main(["--run", "debian12", crashed, "1"])
        self.assertEqual(self.output.getvalue().splitlines()[-1], "0 passed, 1 failed")
        self.assertEqual(status, 1)
