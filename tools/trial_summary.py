# -*- test-case-name: tests.test_trial_summary -*-
"""
Turn trial's closing line into the one line CI reads.

C{./qwengate-dev test} runs the suite twice, once per Twisted world (the
Debian 12 set and the newest PyPI set), and each run ends with trial's own
summary, e.g. C{PASSED (skips=2, successes=150)} or C{FAILED (failures=1,
errors=2, successes=147)}.  That format is not one the CI of this project
understands, and two runs must be reported as one verdict, so this helper
reads each run's log, adds the runs up and prints, as the very last line,
exactly C{N passed, M failed} (with C{, K skipped} when something was
skipped).

Counting rules, chosen so that nothing bad can hide:
  - passed = successes + expectedFailures (a test marked C{todo} that fails
    as expected is working as intended);
  - failed = failures + errors + unexpectedSuccesses (a C{todo} that starts
    passing means the marker is stale; trial 22.4 itself still says PASSED);
  - a run whose log holds no summary line (the interpreter crashed, trial
    could not start, the log is missing) counts as one failure, and so does a
    run whose summary looks clean while trial exited non-zero.

The module is stdlib only and is run with any Python >= 3.8 as
C{python tools/trial_summary.py --run NAME LOG EXIT_CODE ...}; it is a plain
file, not an installed package, so the tests load it by path.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

#: The counters trial may print inside the parentheses of its summary.
KNOWN_COUNTERS = frozenset(
    (
        "skips",
        "expectedFailures",
        "failures",
        "errors",
        "unexpectedSuccesses",
        "successes",
    )
)

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SUMMARY_LINE = re.compile(r"^(PASSED|FAILED)(?: \(([^()]*)\))?$")
_COUNTER = re.compile(r"^([A-Za-z]+)=([0-9]+)$")
#: The plain line of a check that is not trial (tests/packaging/check-deb.sh).
_PLAIN_LINE = re.compile(r"^([0-9]+) passed, ([0-9]+) failed(?:, ([0-9]+) skipped)?$")


@dataclass(frozen=True)
class TrialCounts:
    """
    The counters of one trial summary line, all zero unless printed.

    @ivar status: C{"PASSED"} or C{"FAILED"}, as trial printed it.
    """

    status: str = "PASSED"
    successes: int = 0
    skips: int = 0
    expected_failures: int = 0
    failures: int = 0
    errors: int = 0
    unexpected_successes: int = 0

    @property
    def passed(self) -> int:
        """
        Tests that behaved as intended: successes and expected failures.
        """
        return self.successes + self.expected_failures

    @property
    def failed(self) -> int:
        """
        Tests that need attention: failures, errors, unexpected successes.
        """
        return self.failures + self.errors + self.unexpected_successes

    @property
    def skipped(self) -> int:
        """
        Tests that did not run.
        """
        return self.skips


@dataclass(frozen=True)
class Totals:
    """
    Passed, failed and skipped tests of one or more runs.
    """

    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.passed + other.passed,
            self.failed + other.failed,
            self.skipped + other.skipped,
        )

    def format(self) -> str:
        """
        Render as C{N passed, M failed}, adding C{, K skipped} only when
        something was skipped.
        """
        line = f"{self.passed} passed, {self.failed} failed"
        if self.skipped:
            line += f", {self.skipped} skipped"
        return line


#: What a run with no readable summary contributes: one failure.
CRASHED = Totals(passed=0, failed=1, skipped=0)


def parse_summary_line(line: str) -> Optional[TrialCounts]:
    """
    Parse one line if it is exactly a trial summary line.

    @param line: one line of trial output, with or without its newline and
        with or without terminal colour codes. The plain C{N passed, M
        failed[, K skipped]} line of a non-trial check (the packaging check
        run by C{qwengate-dev test} as root in CI) counts as a summary too.
    @return: the counters, or L{None} when the line is not a summary (any
        unknown counter name makes it not a summary).
    """
    text = _ANSI_ESCAPE.sub("", line).strip()
    plain = _PLAIN_LINE.match(text)
    if plain is not None:
        passed, failed, skipped = (int(g or 0) for g in plain.groups())
        return TrialCounts(
            status="FAILED" if failed else "PASSED",
            successes=passed, failures=failed, skips=skipped,
        )
    match = _SUMMARY_LINE.match(text)
    if match is None:
        return None
    status, inside = match.groups()
    values = dict.fromkeys(KNOWN_COUNTERS, 0)
    if inside is not None:
        for item in inside.split(", "):
            counter = _COUNTER.match(item)
            if counter is None or counter.group(1) not in KNOWN_COUNTERS:
                return None
            values[counter.group(1)] = int(counter.group(2))
    return TrialCounts(
        status=status,
        successes=values["successes"],
        skips=values["skips"],
        expected_failures=values["expectedFailures"],
        failures=values["failures"],
        errors=values["errors"],
        unexpected_successes=values["unexpectedSuccesses"],
    )


def parse_summary(lines: Iterable[str]) -> Optional[TrialCounts]:
    """
    Find the final summary in a trial log.

    @param lines: the log, line by line.
    @return: the counters of the last summary line, or L{None} when there is
        none (trial crashed or never started).
    """
    last = None
    for line in lines:
        counts = parse_summary_line(line)
        if counts is not None:
            last = counts
    return last


def run_totals(counts: Optional[TrialCounts], exit_code: int) -> Totals:
    """
    Decide what one run contributes to the grand total.

    @param counts: the parsed summary, or L{None} if there was none.
    @param exit_code: trial's exit status.
    @return: the run's totals; a missing summary counts as one failure, and
        so does a clean-looking summary from a trial that exited non-zero.
    """
    if counts is None:
        return CRASHED
    failed = counts.failed
    if exit_code != 0 and failed == 0:
        failed = 1
    return Totals(counts.passed, failed, counts.skipped)


def summarise_run(name: str, log_path: str, exit_code: int) -> tuple[Totals, str]:
    """
    Read one run's log and describe it.

    @param name: the run's label, e.g. C{newest}.
    @param log_path: where that run's trial output was saved.
    @param exit_code: trial's exit status for that run.
    @return: the run's totals and a one-line description, prefixed with
        C{[name]} so that it never looks like the final verdict line.
    """
    try:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            counts = parse_summary(log)
    except OSError as e:
        counts = None
        why = f"log unreadable ({e.strerror})"
    else:
        why = "no trial summary line in the log"
    totals = run_totals(counts, exit_code)
    line = f"[{name}] {totals.format()}"
    if counts is None:
        line += f" -- {why}, counted as 1 failed; see {log_path}"
    elif totals.failed and not counts.failed:
        line += f" -- trial exited {exit_code}, counted as 1 failed"
    return totals, line


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Print one line per run, then the grand total as the last line.

    @return: 0 when every run passed without failures, 1 otherwise.
    """
    parser = argparse.ArgumentParser(
        description="Add up trial runs and print 'N passed, M failed'."
    )
    parser.add_argument(
        "--run",
        nargs=3,
        action="append",
        metavar=("NAME", "LOG", "EXIT_CODE"),
        required=True,
        help="a trial run: its label, its log file and trial's exit status",
    )
    options = parser.parse_args(argv)
    grand = Totals()
    lines: List[str] = []
    for name, log_path, exit_code in options.run:
        try:
            code = int(exit_code)
        except ValueError:
            parser.error(f"EXIT_CODE must be an integer, not {exit_code!r}")
        totals, line = summarise_run(name, log_path, code)
        grand += totals
        lines.append(line)
    lines.append(grand.format())
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 1 if grand.failed else 0


if __name__ == "__main__":
    sys.exit(main())
