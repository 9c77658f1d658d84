"""
Tests for C{twisted/plugins/qwengate_plugin.py}: twistd finds the plugin
from the checkout and from a clean install, and the plugin stays a lazy
one-liner.

Everything that involves twistd's plugin discovery runs in a subprocess:
C{twisted.plugins.__path__} is computed once per process from C{sys.path},
so only a fresh interpreter shows what twistd would see.
"""

from __future__ import annotations

import ast
import atexit
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, List, Optional

from twisted.trial.unittest import SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(REPO, "twisted", "plugins", "qwengate_plugin.py")
CHECKOUT_CACHE = os.path.join(REPO, "twisted", "plugins", "dropin.cache")
#: Whether this is a source checkout; the autopkgtest (debian/tests/unit)
#: runs the suite from a copy without the package, against the installed one.
IN_CHECKOUT = os.path.isfile(PLUGIN) and os.path.isdir(os.path.join(REPO, "qwen_twist"))
NOT_CHECKOUT = "not a source checkout (the suite runs against the installed package)"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
if not os.path.exists(TWISTD) and os.path.exists("/usr/bin/twistd3"):
    # Debian's python3-twisted names it twistd3 (the package build's tests).
    TWISTD = "/usr/bin/twistd3"


def environment(pythonpath: str) -> Dict[str, str]:
    """
    This environment with C{PYTHONPATH} replaced (not extended: whatever
    the test runner was given must not leak into the child).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("PYTHONHOME", None)
    # Set by a Debian package build: setuptools would then lay the wheel
    # out as a system install (usr/lib/python3.X/dist-packages/...).
    env.pop("DEB_PYTHON_INSTALL_LAYOUT", None)
    return env


def run(args: List[str], env: Dict[str, str], cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=timeout,
    )


def python_json(code: str, env: Dict[str, str], cwd: str) -> dict:
    """
    Run C{code} in a fresh interpreter; it prints one JSON object.
    """
    result = run([sys.executable, "-c", code], env, cwd)
    if result.returncode != 0:
        raise AssertionError("child failed:\n" + result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def remove_created_cache(testcase: SynchronousTestCase) -> None:
    """
    Twisted writes C{dropin.cache} next to the plugins it scans; remove the
    checkout's after the test unless it was already there.
    """
    if not os.path.exists(CHECKOUT_CACHE):
        def remove() -> None:
            if os.path.exists(CHECKOUT_CACHE):
                os.remove(CHECKOUT_CACHE)

        testcase.addCleanup(remove)


FIND_PLUGIN = """
import json, sys
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "qwengate"]
lazy = "qwen_twist" not in sys.modules
import twisted.plugins.qwengate_plugin as plugin
print(json.dumps({
    "count": len(makers),
    "modules": sorted({m.module for m in makers}),
    "descriptions": sorted({m.description for m in makers}),
    "lazy": lazy,
    "plugin_file": plugin.__file__,
    "options": makers[0].options.__module__ if makers else None,
}))
"""


class CheckoutPluginTests(SynchronousTestCase):
    """
    From a source checkout (repository root on C{sys.path}, as
    C{qwengate-dev} runs twistd).
    """

    def setUp(self) -> None:
        if not IN_CHECKOUT:
            raise self.skipTest(NOT_CHECKOUT)

    def test_found_by_getplugins(self):
        """
        C{getPlugins(IServiceMaker)} yields the C{qwengate} maker, read from
        the checkout, pointing at C{qwen_twist.tap}, without importing it
        until its options are asked for.
        """
        remove_created_cache(self)
        found = python_json(FIND_PLUGIN, environment(REPO), REPO)
        self.assertGreaterEqual(found["count"], 1)
        self.assertEqual(found["modules"], ["qwen_twist.tap"])
        self.assertTrue(found["descriptions"][0])
        self.assertTrue(found["lazy"])
        self.assertEqual(os.path.realpath(found["plugin_file"]), os.path.realpath(PLUGIN))
        self.assertEqual(found["options"], "qwen_twist.tap")

    def test_import_is_cheap(self):
        """
        Importing the plugin module imports neither C{qwen_twist} nor the
        reactor (C{twistd --help} must not install one).
        """
        code = (
            "import json, sys\n"
            "import twisted.plugins.qwengate_plugin as p\n"
            "print(json.dumps({'file': p.__file__, 'loaded': sorted(m for m in sys.modules"
            " if m == 'qwen_twist' or m.startswith('qwen_twist.')"
            " or m == 'twisted.internet.reactor')}))\n"
        )
        result = python_json(code, environment(REPO), REPO)
        self.assertEqual(os.path.realpath(result["file"]), os.path.realpath(PLUGIN))
        self.assertEqual(result["loaded"], [])

    def test_plugin_is_one_service_maker(self):
        """
        The plugin file imports only C{ServiceMaker} and defines one
        C{ServiceMaker("qwengate", "qwen_twist.tap", ...)} (the module as a
        string, so nothing is imported eagerly).
        """
        with open(PLUGIN) as f:
            tree = ast.parse(f.read())
        imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        self.assertEqual(
            [(n.module, [a.name for a in n.names]) for n in imports if isinstance(n, ast.ImportFrom)],
            [("twisted.application.service", ["ServiceMaker"])],
        )
        self.assertFalse([n for n in imports if isinstance(n, ast.Import)])
        calls = [
            n.value for n in tree.body
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
        ]
        self.assertEqual(len(calls), 1)
        args = [a.value for a in calls[0].args if isinstance(a, ast.Constant)]
        self.assertEqual(args[0], "qwengate")
        self.assertEqual(args[1], "qwen_twist.tap")
        self.assertEqual(args[3], "qwengate")

    def test_no_package_init(self):
        """
        Neither C{twisted/} nor C{twisted/plugins/} of the checkout has an
        C{__init__.py} (Twisted skips a plugins directory that has one, and
        one in C{twisted/} would shadow Twisted itself).
        """
        for directory in ("twisted", os.path.join("twisted", "plugins")):
            self.assertTrue(os.path.isdir(os.path.join(REPO, directory)))
            self.assertFalse(os.path.exists(os.path.join(REPO, directory, "__init__.py")), directory)

    def test_plugin_name_differs_from_package(self):
        """
        The plugin module is not named like the package (the plugin howto's
        rule: it would shadow the package when the plugin is imported).
        """
        self.assertNotEqual(os.path.splitext(os.path.basename(PLUGIN))[0], "qwen_twist")


def _build_backend_importable() -> bool:
    """
    Whether this interpreter can run setuptools' wheel build without pip's
    isolated build environment: setuptools >= 70.1 has C{bdist_wheel}
    itself, older ones need the C{wheel} package.
    """
    from importlib import metadata

    if importlib.util.find_spec("setuptools") is None:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    version = tuple(int(p) for p in metadata.version("setuptools").split(".")[:2] if p.isdigit())
    return version >= (70, 1)


class InstalledPluginTests(SynchronousTestCase):
    """
    From a clean install: the package built into a wheel, installed with
    C{pip --target} into an empty directory, used from a directory that is
    not the checkout.

    The source is a copy of the checkout (without venvs, build output or VCS
    data): building in place would write C{build/} and C{*.egg-info} into
    the checkout, racing with concurrent test runs. A C{dropin.cache} is
    planted in the copy's C{twisted/plugins} to prove the wheel leaves it
    out. C{--no-build-isolation} is used when this interpreter has what
    setuptools needs to build a wheel; otherwise pip's isolated build
    environment fetches setuptools and wheel from the configured index, as
    C{qwengate-dev} does.
    """

    prepared = False
    tmp: str = ""
    site: str = ""
    wheel: str = ""
    config_path: str = ""
    skip_reason: Optional[str] = None
    failure: Optional[str] = None

    @classmethod
    def prepare(cls) -> None:
        """
        Build and install once for the class (trial has no C{setUpClass});
        the directory is removed when the test process exits.
        """
        cls.prepared = True
        import importlib.util

        if not IN_CHECKOUT:
            cls.skip_reason = NOT_CHECKOUT
            return

        if os.environ.get("DEB_PYTHON_INSTALL_LAYOUT"):
            # A Debian package build (pybuild sets it): the .deb's own
            # install is checked by tests/packaging/check-deb.sh instead.
            cls.skip_reason = "inside a Debian package build: the wheel install is not what ships"
            return
        if importlib.util.find_spec("pip") is None:
            # A Debian package build has no pip (the .deb's own install is
            # checked by tests/packaging/check-deb.sh).
            cls.skip_reason = "pip is not installed: cannot build and install a wheel"
            return
        cls.tmp = tempfile.mkdtemp(prefix="qwengate-install-")
        atexit.register(shutil.rmtree, cls.tmp, True)
        source = os.path.join(cls.tmp, "src")
        shutil.copytree(
            REPO,
            source,
            ignore=shutil.ignore_patterns(
                ".git", ".venv*", "build", "dist", "_trial_temp*", "state", ".hypothesis",
                ".pybuild", "debian",
                "*.egg-info", "__pycache__", "dropin.cache",
            ),
        )
        with open(os.path.join(source, "twisted", "plugins", "dropin.cache"), "wb") as f:
            f.write(b"stale cache that must not be packaged")
        wheelhouse = os.path.join(cls.tmp, "wheelhouse")
        env = environment("")
        build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheelhouse]
        if _build_backend_importable():
            build.append("--no-build-isolation")
        result = run(build + [source], env, cls.tmp)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            if "Could not find a version that satisfies the requirement" in output:
                cls.skip_reason = (
                    "cannot build a wheel: this interpreter lacks the 'wheel' package "
                    "and pip's index is unreachable for an isolated build"
                )
                return
            raise AssertionError("pip wheel failed:\n" + output)
        wheels = glob.glob(os.path.join(wheelhouse, "qwengate-*.whl"))
        if len(wheels) != 1:
            raise AssertionError("expected one wheel, got %r" % (wheels,))
        cls.wheel = wheels[0]
        cls.site = os.path.join(cls.tmp, "site")
        result = run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
             "--target", cls.site, cls.wheel],
            env,
            cls.tmp,
        )
        if result.returncode != 0:
            raise AssertionError("pip install failed:\n" + result.stdout + result.stderr)
        config_dir = os.path.join(cls.tmp, "etc")
        os.mkdir(config_dir)
        cls.config_path = os.path.join(config_dir, "qwengate.yaml")
        with open(cls.config_path, "w") as f:
            # The keys file is in the temporary directory (and absent: no
            # key works), so the host's /etc/qwengate/keys.yaml is not read.
            f.write(
                "state_dir: %s\nlisten:\n  address: 127.0.0.1\ntls:\n  self_signed: true\n"
                "auth:\n  keys_file: %s\n"
                % (os.path.join(cls.tmp, "state"), os.path.join(config_dir, "keys.yaml"))
            )

    def setUp(self) -> None:
        cls = type(self)
        if not cls.prepared:
            try:
                cls.prepare()
            except Exception as e:
                cls.failure = "preparing the install failed: %s" % (e,)
        if cls.failure:
            self.fail(cls.failure)
        if cls.skip_reason:
            raise self.skipTest(self.skip_reason)
        # Outside the checkout (trial's own temporary directory is in it).
        self.cwd = tempfile.mkdtemp(dir=cls.tmp)
        self.env = environment(self.site)

    def twistd(self, *args: str) -> subprocess.CompletedProcess:
        return run([TWISTD] + list(args), self.env, self.cwd)

    def test_wheel_contents(self):
        """
        The wheel has the package and the plugin file, and no
        C{dropin.cache}, no C{__init__.py} in C{twisted/} or
        C{twisted/plugins/}, and no tests.
        """
        with zipfile.ZipFile(self.wheel) as wheel:
            names = wheel.namelist()
        self.assertIn("twisted/plugins/qwengate_plugin.py", names)
        self.assertIn("qwen_twist/tap.py", names)
        self.assertIn("qwen_twist/config.py", names)
        self.assertEqual([n for n in names if n.endswith("dropin.cache")], [])
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertEqual([n for n in names if n.startswith("tests/")], [])

    def test_install_layout(self):
        """
        The installed tree has the plugin and no C{__init__.py} in
        C{twisted/} or C{twisted/plugins/}.
        """
        self.assertTrue(os.path.isfile(os.path.join(self.site, "twisted", "plugins", "qwengate_plugin.py")))
        self.assertFalse(os.path.exists(os.path.join(self.site, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(self.site, "twisted", "plugins", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(self.site, "tests")))

    def test_installed_copy_is_used(self):
        """
        With the install first on C{PYTHONPATH}, C{qwen_twist}, the plugin
        module and the module twistd imports for it come from the install,
        not from the checkout.
        """
        found = python_json(FIND_PLUGIN + "import qwen_twist, qwen_twist.tap\n"
                            "print(json.dumps({'package': qwen_twist.__file__,"
                            " 'tap': qwen_twist.tap.__file__}))\n", self.env, self.cwd)
        site = os.path.realpath(self.site) + os.sep
        self.assertTrue(os.path.realpath(found["package"]).startswith(site), found)
        self.assertTrue(os.path.realpath(found["tap"]).startswith(site), found)
        plugin = python_json(FIND_PLUGIN, self.env, self.cwd)
        self.assertTrue(os.path.realpath(plugin["plugin_file"]).startswith(site), plugin)
        self.assertGreaterEqual(plugin["count"], 1)
        self.assertTrue(plugin["lazy"])

    def test_twistd_check_config(self):
        """
        C{twistd qwengate --config FILE --check-config} from a directory
        that is not the checkout prints the OK line and exits 0.
        """
        result = self.twistd("qwengate", "--config", self.config_path, "--check-config")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout.strip().splitlines()[-1], "%s: configuration OK" % (self.config_path,)
        )
        self.assertNotIn("Traceback", result.stderr)

    def test_twistd_invalid_config(self):
        """
        An invalid file makes the installed twistd exit 1 with the one-line
        message on stderr and no traceback.
        """
        bad = os.path.join(self.cwd, "bad.yaml")
        with open(bad, "w") as f:
            f.write("tls: {self_signed: true}\nlisten:\n  port: 0\n")
        result = self.twistd("qwengate", "--config", bad, "--check-config")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.strip().splitlines()[-1],
            "%s: listen.port: must be between 1 and 65535, got 0" % (bad,),
        )
        self.assertNotIn("Traceback", result.stderr)
        self.assertNotIn("configuration OK", result.stdout)

    def test_twistd_help_lists_plugin(self):
        """
        C{twistd --help} lists the C{qwengate} command.
        """
        result = self.twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("qwengate", result.stdout)
        self.assertIn("OpenAI-compatible TLS gateway", result.stdout)
