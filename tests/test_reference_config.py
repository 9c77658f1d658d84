"""
The shipped configuration files and the README stay complete: every key the
code declares (L{config.describe_keys}) is in the commented reference
C{etc/qwengate/qwengate.yaml} with its default, and in the README's
configuration section.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict

import yaml

from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(REPO, "etc", "qwengate", "qwengate.yaml")
DEMO = os.path.join(REPO, "etc", "qwengate", "demo.yaml")
README = os.path.join(REPO, "README.md")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def flatten(data: Any, prefix: str = "") -> Dict[str, Any]:
    """
    The scalar leaves of nested mappings, by dotted path.
    """
    leaves: Dict[str, Any] = {}
    for key, value in data.items():
        path = "%s.%s" % (prefix, key) if prefix else str(key)
        if isinstance(value, dict):
            leaves.update(flatten(value, path))
        else:
            leaves[path] = value
    return leaves


def section(markdown: str, title: str) -> str:
    """
    The text of the level-2 section C{title}, up to the next level-2
    heading.
    """
    lines = markdown.splitlines()
    try:
        start = lines.index("## " + title)
    except ValueError:
        return ""
    body = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        body.append(line)
    return "\n".join(body)


class ReferenceConfigTests(SynchronousTestCase):
    """
    C{etc/qwengate/qwengate.yaml}, the commented reference.
    """

    def setUp(self) -> None:
        self.text = read(REFERENCE)
        self.leaves = flatten(yaml.safe_load(self.text))

    def test_valid(self):
        """
        The reference file validates (its TLS files need not exist here).
        """
        conf = config.parse(self.text, REFERENCE)
        self.assertFalse(conf.tls.self_signed)

    def test_parses_to_defaults(self):
        """
        Read by the daemon, the reference is the default configuration apart
        from its example TLS files: copying it changes nothing by accident
        (a quoting slip such as C{mode: off} would fail here or above).
        """
        conf = config.parse(self.text, REFERENCE)
        tls = dataclasses.replace(
            config.TLSConfig(), certificate=conf.tls.certificate, private_key=conf.tls.private_key
        )
        self.assertEqual(conf, config.Config(tls=tls))

    def test_every_key_present(self):
        """
        Every declared key appears at its nesting, and nothing else does.
        """
        self.assertEqual(sorted(self.leaves), sorted(path for path, _, _ in config.describe_keys()))

    def test_defaults(self):
        """
        Each key has exactly the code's default, with the same YAML type
        (C{3.0}, not C{3}; C{"1.2"}, not C{1.2}; C{"off"}, not C{off}; a
        list where the code has a tuple). Keys without a default are
        C{null}, except the production TLS files, which show an example
        absolute path (the file must validate without C{self_signed}).
        """
        for path, default, _ in config.describe_keys():
            value = self.leaves[path]
            if default is None:
                if value is not None:
                    self.assertIsInstance(value, str, path)
                    self.assertTrue(value.startswith("/"), path)
                continue
            if isinstance(default, tuple):
                self.assertIsInstance(value, list, path)
                self.assertEqual(tuple(value), default, path)
                continue
            self.assertEqual(value, default, path)
            self.assertIs(type(value), type(default), path)


class ReadmeTests(SynchronousTestCase):
    """
    The README's configuration section documents every key.
    """

    def test_every_key_documented(self):
        """
        Every dotted key appears in backticks in the README's
        C{## Configuration} section.
        """
        if not os.path.exists(README):
            raise self.skipTest("README.md is not written yet")
        text = section(read(README), "Configuration")
        self.assertTrue(text, "README.md has no '## Configuration' section")
        missing = [
            path for path, _, _ in config.describe_keys() if "`%s`" % (path,) not in text
        ]
        self.assertEqual(missing, [])


    def test_every_error_code_documented(self):
        """
        Every error code a client can receive (the code constants of
        L{qwen_twist.errors}) appears in backticks in the README, so a new
        refusal cannot ship without its line in the errors table.
        """
        from qwen_twist import errors

        with open(README, encoding="utf-8") as f:
            text = f.read()
        codes = {value for name, value in vars(errors).items()
                 if name.isupper() and isinstance(value, str) and value.islower()
                 and " " not in value}
        self.assertTrue(codes)
        self.assertEqual(sorted(c for c in codes if "`%s`" % (c,) not in text), [])


class DemoConfigTests(SynchronousTestCase):
    """
    C{etc/qwengate/demo.yaml}, used by C{./qwengate-dev demo}.
    """

    def test_valid(self):
        """
        The demo file validates: loopback only, a self-signed development
        certificate, the local Ollama.
        """
        conf = config.parse(read(DEMO), DEMO)
        self.assertEqual(conf.listen.address, "127.0.0.1")
        self.assertIs(conf.tls.self_signed, True)
        self.assertEqual(conf.upstream.url, "http://127.0.0.1:11434")

    def test_keys_in_state(self):
        """
        The demo requires authentication with the keys file in C{./state},
        where C{./qwengate-dev demo} mints its key (the packaged
        C{/etc/qwengate/keys.yaml} is not writable from a checkout).
        """
        conf = config.parse(read(DEMO), DEMO)
        self.assertIs(conf.auth.required, True)
        self.assertEqual(conf.auth.keys_file, "./state/keys.yaml")
        self.assertEqual(os.path.dirname(conf.auth.keys_file), conf.state_dir)
