"""
The shipped Prometheus rules: valid (C{promtool check rules}) and doing
what their names say (C{promtool test rules} on the unit-test files next
to them). promtool comes with Debian's C{prometheus} package, which
C{./qwengate-dev} installs for the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES_DIR = os.path.join(REPO, "etc", "prometheus")
RULES = os.path.join(RULES_DIR, "qwengate-alerts.yml")
TESTS = ("qwengate-alerts.test.yml", "qwengate-baseline.test.yml")


class PromtoolTests(SynchronousTestCase):
    """
    C{etc/prometheus/qwengate-alerts.yml} through promtool.
    """

    def setUp(self) -> None:
        self.promtool = shutil.which("promtool")
        if self.promtool is None:
            raise self.skipTest("promtool not installed (apt-get install prometheus)")

    def run_promtool(self, *args: str) -> str:
        result = subprocess.run([self.promtool] + list(args), cwd=RULES_DIR,
                                capture_output=True, text=True, timeout=300)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        return output

    def test_check_rules(self):
        """
        The rules file is valid.
        """
        self.assertIn("SUCCESS", self.run_promtool("check", "rules", RULES))

    def test_unit_tests(self):
        """
        Every alert fires (and stays quiet) as its unit tests expect:
        upstream down, breaker open, 5xx ratio, queue saturated, the 7-day
        time-to-first-token baseline, rate-limit and ban spikes,
        certificate expiry within 14 days, dropped audit lines.
        """
        output = self.run_promtool("test", "rules", *TESTS)
        self.assertNotIn("FAILED", output)

    def test_every_alert_tested(self):
        """
        No alert in the rules file lacks a unit test.
        """
        import yaml

        with open(RULES) as f:
            rules = yaml.safe_load(f)
        alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]
                  if "alert" in rule}
        tested = set()
        for name in TESTS:
            with open(os.path.join(RULES_DIR, name)) as f:
                for test in yaml.safe_load(f)["tests"]:
                    for case in test.get("alert_rule_test", ()):
                        if case["exp_alerts"]:
                            tested.add(case["alertname"])
        self.assertEqual(alerts - tested, set())
