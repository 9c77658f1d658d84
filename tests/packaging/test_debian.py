"""
Fast checks of C{debian/} that need neither root nor a build: the unit's
command line and hardening score, the plugin-cache trigger, versions that
must agree. The real build, install, run, upgrade and purge are
C{tests/packaging/check-deb.sh} (root, CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Dict, List

from twisted.trial.unittest import SynchronousTestCase

import qwen_twist
from qwen_twist import tap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBIAN = os.path.join(REPO, "debian")
UNIT = os.path.join(DEBIAN, "qwengate.service")


def unit_settings() -> Dict[str, List[str]]:
    """
    C{Key=value} lines of the unit, every value of a repeated key kept.
    """
    settings: Dict[str, List[str]] = {}
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", "[")) and "=" in line:
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


class DebianDirectoryTests(SynchronousTestCase):
    """
    What C{debian/} says, checked without building it.
    """

    def setUp(self) -> None:
        if not os.path.isdir(DEBIAN):
            raise self.skipTest("no debian/ here (the autopkgtest runs without it)")

    def test_execstart(self) -> None:
        """
        The unit runs the daemon in the foreground with no pid file and
        logs to the journal, as C{_qwengate}, with the shipped config;
        reload is SIGHUP; a crash restarts it.
        """
        unit = unit_settings()
        self.assertEqual(unit["ExecStart"], [
            "/usr/bin/twistd3 --nodaemon --pidfile= --logfile=- qwengate --config "
            + tap.DEFAULT_CONFIG])
        self.assertEqual(unit["User"], ["_qwengate"])
        self.assertEqual(unit["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(unit["Restart"], ["on-failure"])
        self.assertEqual(unit["CapabilityBoundingSet"], [""])
        self.assertEqual(unit["ProtectSystem"], ["strict"])
        self.assertEqual(unit["ReadWritePaths"], ["/var/lib/qwengate /var/log/qwengate"])

    def test_exposure(self) -> None:
        """
        C{systemd-analyze security --offline=true} rates the unit 2.0 or
        better ("OK").
        """
        if shutil.which("systemd-analyze") is None:
            raise self.skipTest("systemd-analyze is not installed (Debian package systemd)")
        result = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", UNIT],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
        )
        match = re.search(r"Overall exposure level for qwengate\.service: ([0-9.]+)",
                          result.stdout)
        self.assertIsNotNone(match, result.stdout)
        self.assertLessEqual(float(match.group(1)), 2.0, result.stdout)

    def test_plugin_cache_trigger(self) -> None:
        """
        Installing or removing the package has python3-twisted rebuild its
        plugin cache, and the build deletes any cache it made.
        """
        with open(os.path.join(DEBIAN, "qwengate.triggers")) as f:
            self.assertEqual(f.read().split(), ["activate-noawait", "twisted-plugins-cache"])
        with open(os.path.join(DEBIAN, "rules")) as f:
            self.assertIn("-name dropin.cache -delete", f.read())

    def test_audit_log_in_var_log(self) -> None:
        """
        The package points the audit log at C{/var/log/qwengate}, by
        rewriting the one C{audit.file} line of the reference configuration
        (the rewrite must match exactly one line).
        """
        with open(os.path.join(REPO, "etc", "qwengate", "qwengate.yaml")) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines.count("  file: null"), 1)
        with open(os.path.join(DEBIAN, "rules")) as f:
            self.assertIn("|  file: /var/log/qwengate/audit.log|", f.read())

    def test_version_agrees(self) -> None:
        """
        The package version (a native package: no Debian revision) is the
        code's C{__version__}.
        """
        with open(os.path.join(DEBIAN, "changelog")) as f:
            first = f.readline()
        self.assertEqual(re.match(r"qwengate \(([^)]+)\)", first).group(1),
                         qwen_twist.__version__)

    def test_config_is_a_conffile_by_location(self) -> None:
        """
        The reference config is installed under C{/etc} (so debhelper
        registers it as a conffile) at the path the daemon reads by default;
        no hand-written conffiles list competes with that.
        """
        with open(os.path.join(DEBIAN, "qwengate.install")) as f:
            lines = [line.split() for line in f if line.strip()]
        self.assertIn(["etc/qwengate/qwengate.yaml", "etc/qwengate/"], lines)
        self.assertEqual(tap.DEFAULT_CONFIG, "/etc/qwengate/qwengate.yaml")
        self.assertFalse(os.path.exists(os.path.join(DEBIAN, "qwengate.conffiles")))
