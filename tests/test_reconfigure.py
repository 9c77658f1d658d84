"""
Tests for L{qwen_twist.reconfigure}: the one configuration path.

The central test is generated from the schema: for every setting, change it
in the file, reload, and check that every component that uses it now holds
the new value, or that it is declared restart-only and the reload log says
so. A setting added later without a reload path fails here.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from typing import Any, Dict, List

import yaml
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist import config as configmod, schema
from qwen_twist.gate import tls
from qwen_twist.gate.keyfile import add_key
from qwen_twist.reconfigure import LEAVES, Reconfigurer, diff
from qwen_twist.tap import GatewayService

#: Candidate new values for settings whose type alone does not give a
#: valid one; the first candidate that validates and differs is used.
STRING_CANDIDATES = ("127.0.0.2", "1.3", "reasoning", "RS256", "require", "ECDHE+AESGCM",
                     "http://127.0.0.1:11435", "/tmp/qwengate-reload-test.pem", "name")
LIST_CANDIDATES = (["10.0.0.0/8"], ["https://chat.example.com"], ["usage"],
                   ["http://127.0.0.1:11436"], ["temperature"])


def base_settings(directory: str, keys: str) -> Dict[str, Any]:
    certificate, key, _ = tls.ensure_self_signed(directory)
    secret = os.path.join(directory, "jwt.secret")
    with open(secret, "w") as f:
        f.write("s" * 64)
    return {"files": {"certificate": certificate, "secret": secret},
            "state_dir": directory,
            "tls": {"self_signed": True, "certificate": certificate, "private_key": key},
            "auth": {"keys_file": keys}, "listen": {"address": "127.0.0.1"}}


def with_setting(settings: dict, dotted: str, value: Any) -> dict:
    head, _, rest = dotted.partition(".")
    result = dict(settings)
    if not rest:
        result[head] = value
    else:
        result[head] = with_setting(dict(settings.get(head) or {}), rest, value)
    return result


def _leaf_type(dotted: str) -> Any:
    cls: Any = configmod.Config
    names = dotted.split(".")
    for name in names[:-1]:
        cls = typing.get_type_hints(cls)[name]
    hint = typing.get_type_hints(cls)[names[-1]]
    if typing.get_origin(hint) is typing.Union:
        hint = [a for a in typing.get_args(hint) if a is not type(None)][0]
    return hint


def candidates(dotted: str, current: Any) -> List[Any]:
    """
    New values to try for C{dotted}, by its declared type.
    """
    hint = _leaf_type(dotted)
    if hint is bool:
        return [not current]
    if hint is int:
        return [current + 1, current - 1, 1]
    if hint is float:
        return [current + 1.5, 1.0]
    if hint is str:
        return list(STRING_CANDIDATES)
    if typing.get_origin(hint) is tuple:
        return [list(c) for c in LIST_CANDIDATES]
    raise AssertionError("no candidate values for %s (%r)" % (dotted, hint))


#: Settings that are only valid together with another one.
COMPANIONS = {
    "auth.jwt.enabled": ("auth.jwt.secret_file", "secret"),
    "auth.mtls.mode": ("auth.mtls.client_ca", "certificate"),
}


def changed_settings(base: dict, dotted: str, current: Any) -> tuple:
    """
    The base settings with C{dotted} set to a valid value other than
    C{current}, and that value as the built config holds it.
    """
    for value in candidates(dotted, current):
        settings = with_setting(base, dotted, value)
        if dotted in COMPANIONS:
            companion, source = COMPANIONS[dotted]
            settings = with_setting(settings, companion, base["files"][source])
        try:
            built = configmod.build(
                configmod.Config, {k: v for k, v in settings.items() if k != "files"})
        except configmod.ConfigError:
            continue
        new = schema.lookup(built, dotted)
        if new != current:
            return settings, new
    raise AssertionError(
        "%s: no candidate value validates; add one to tests.test_reconfigure" % (dotted,))


class ReloadContractTests(SynchronousTestCase):
    """
    Every setting reaches its users on reload, or is declared restart-only.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.keys = os.path.join(self.directory, "keys.yaml")
        add_key(self.keys, "alice", now=time.time())
        self.path = os.path.join(self.directory, "qwengate.yaml")
        self.base = base_settings(self.directory, self.keys)
        self.write(self.base)
        config = configmod.load(self.path)
        options = tls.certificate_options(config.tls, config.state_dir)
        self.reactor = MemoryReactorClock()
        self.service = GatewayService(config, options, self.reactor, config_path=self.path)
        self.events: List[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def write(self, settings: dict) -> None:
        settings = {k: v for k, v in settings.items() if k != "files"}
        with open(self.path, "w") as f:
            yaml.safe_dump(settings, f)

    def reload_log(self) -> List[str]:
        return [e["change"] for e in self.events
                if str(e.get("log_namespace")).startswith("qwen_twist.reconfigure")
                and "change" in e]

    def test_every_setting(self) -> None:
        """
        For each setting in the schema: a changed value reaches every
        registered component that uses it (read back from the
        configuration that component holds), or the setting is declared
        restart-only, the running value stays and the log says so.
        """
        problems = []
        for key, restart in LEAVES:
            self.write(self.base)
            self.service.reload()
            before = schema.lookup(self.service.settings.config, key)
            settings, new = changed_settings(self.base, key, before)
            self.write(settings)
            del self.events[:]
            self.assertTrue(self.service.reload(), key)
            if restart:
                expected = "%s: needs a restart; keeping %r" % (key, before)
                if expected not in self.reload_log():
                    problems.append("%s: restart-only, but the log says %r"
                                    % (key, self.reload_log()))
                if schema.lookup(self.service.settings.config, key) != before:
                    problems.append("%s: restart-only, but the new value is in force" % (key,))
                continue
            users = self.service.settings.users(key)
            if not users:
                problems.append("%s: no registered component uses it (add it to a "
                                "component's `uses`, or declare it restart=True)" % (key,))
            for user in users:
                seen = schema.lookup(user.config, key)
                if seen != new:
                    problems.append("%s: %r still sees %r, not %r" % (key, user, seen, new))
            if not any(line.startswith(key + ":") for line in self.reload_log()):
                problems.append("%s: the reload log does not list it" % (key,))
        self.maxDiff = None
        self.assertEqual(problems, [])

    def test_derived_state(self) -> None:
        """
        Settings that components turn into other objects (buckets, headers,
        compiled rules, translation options) are rebuilt, not just stored:
        the values the issue found stale are read back from the objects that
        act on them.
        """
        probes = {
            "streaming.keepalive_interval": (
                3.0, lambda s: s.gateway.config.streaming.keepalive_interval),
            "upstream.timeouts.first_token": (
                7.0, lambda s: s.gateway.config.upstream.timeouts.first_token),
            "upstream.timeouts.idle": (
                8.0, lambda s: s.gateway.config.upstream.timeouts.idle),
            "limits.max_body_bytes": (1234, lambda s: s.site.max_body_bytes),
            "limits.max_prompt_chars": (999, lambda s: s.gate.prompt.max_chars),
            "response.cors_origins": (
                ["https://chat.example.com"],
                lambda s: s.site.cors.allowed(b"https://chat.example.com") is not None),
            "response.hsts_max_age": (
                0, lambda s: any(name == b"Strict-Transport-Security"
                                 for name, _ in s.site.response_headers)),
            "connections.max_per_ip": (
                7, lambda s: s.peer_filter.config.connections.max_per_ip),
            "connections.max_total": (9, lambda s: s.peer_filter.config.connections.max_total),
            "bans.failures": (11, lambda s: s.gate.bans.threshold),
            "bans.duration": (12.0, lambda s: s.gate.bans.duration),
            "translation.reasoning_field": (
                "reasoning", lambda s: s.gateway.chat_options.reasoning_field),
            "admission.max_depth": (17, lambda s: s.gate.queue.max_depth),
        }
        expected = {
            "response.cors_origins": True,
            "response.hsts_max_age": False,
        }
        settings = self.base
        for key, (value, _) in probes.items():
            settings = with_setting(settings, key, value)
        self.write(settings)
        self.assertTrue(self.service.reload())
        for key, (value, probe) in probes.items():
            self.assertEqual(probe(self.service), expected.get(key, value), key)

    def test_slots_switch_on_and_off(self) -> None:
        """
        C{admission.slots} may go from a number to 0 and back on reload: the
        queue leaves and rejoins the gateway's hooks (the same list object
        the pipeline runs).
        """
        hooks = self.service.gateway.hooks
        self.assertIsNotNone(self.service.gate.queue)
        self.write(with_setting(self.base, "admission.slots", 0))
        self.assertTrue(self.service.reload())
        self.assertIsNone(self.service.gate.queue)
        self.assertIs(self.service.gateway.hooks, hooks)
        self.assertNotIn(self.service.gate._admission, hooks)
        self.write(with_setting(self.base, "admission.slots", 2))
        self.assertTrue(self.service.reload())
        self.assertEqual(self.service.gate.queue.slots, 2)
        self.assertEqual(len(hooks), 7)

    def test_invalid_file_still_reloads_keys(self) -> None:
        """
        A broken configuration file keeps the running configuration, but a
        key revoked in the keys file stops working all the same: revocation
        never waits on an unrelated file.
        """
        from qwen_twist.gate.keyfile import revoke_key

        identity = self.service.gate.identity
        keys = identity.keys
        self.assertEqual(len(keys.records), 1)
        with open(self.path, "w") as f:
            f.write("limits: {max_body_bytes: -1}\n")
        revoke_key(self.keys, "alice")
        self.assertFalse(self.service.reload())
        self.assertEqual(len(self.service.gate.identity.keys.records), 0)
        self.assertEqual(self.service.settings.config.limits.max_body_bytes,
                         configmod.LimitsConfig().max_body_bytes)


class DiffTests(SynchronousTestCase):
    """
    L{diff} and L{Reconfigurer.apply} on plain configurations.
    """

    def test_restart_only_kept(self) -> None:
        """
        A changed restart-only setting is reported not applied and keeps its
        running value in the configuration handed to components.
        """
        old = configmod.Config(tls=configmod.TLSConfig(self_signed=True))
        new = dataclasses.replace(
            old, listen=configmod.ListenConfig(port=1234),
            limits=configmod.LimitsConfig(max_prompt_chars=5))
        changes = {c.key: c for c in diff(old, new)}
        self.assertEqual(set(changes), {"listen.port", "limits.max_prompt_chars"})
        self.assertFalse(changes["listen.port"].applied)
        self.assertEqual(changes["listen.port"].describe(),
                         "listen.port: needs a restart; keeping 18789")
        seen = []

        class Component:
            uses = ("limits",)
            config = None

            def reconfigure(self, config: Any) -> None:
                self.config = config
                seen.append(config)

        from zope.interface import classImplements

        from qwen_twist.interfaces import IReconfigurable

        classImplements(Component, IReconfigurable)
        settings = Reconfigurer(old)
        settings.register(Component())
        settings.apply(new)
        self.assertEqual(seen[-1].listen.port, 18789)
        self.assertEqual(seen[-1].limits.max_prompt_chars, 5)

    def test_register_checks_the_interface(self) -> None:
        """
        A component that does not declare L{IReconfigurable} is refused at
        registration, not on the first reload.
        """
        from zope.interface.exceptions import Invalid

        class Sloppy:
            uses = ()
            config = None

            def reconfigure(self, config: Any) -> None:
                self.config = config

        settings = Reconfigurer(configmod.Config(tls=configmod.TLSConfig(self_signed=True)))
        self.assertRaises(Invalid, settings.register, Sloppy())
