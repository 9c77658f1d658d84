"""
Guards on the test suite itself.
"""

from __future__ import annotations

import inspect
import os
import pkgutil
import importlib

from twisted.trial.unittest import SynchronousTestCase

import tests


class SuiteTests(SynchronousTestCase):
    """
    The suite cannot silently skip its own tests.
    """

    def test_no_bare_coroutine_tests(self) -> None:
        """
        No test method is a bare C{async def}: trial 22.4 would call it, get
        a coroutine object, never run it, and report success. Such tests
        must be wrapped with L{tests.support.async_test}.
        """
        offenders = []
        root = os.path.dirname(tests.__file__)
        for info in pkgutil.walk_packages([root], "tests."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ != module.__name__:
                    continue
                for name, member in vars(cls).items():
                    if name.startswith("test") and inspect.iscoroutinefunction(member):
                        offenders.append("%s.%s.%s" % (module.__name__, cls.__name__, name))
        self.assertEqual(offenders, [])
