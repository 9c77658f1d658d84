# -*- test-case-name: tests.test_reconfigure -*-
"""
The one configuration path: every component that holds settings is
registered here once, and a reload hands the whole new configuration to
each of them, in registration order.

Why one path: when settings are copied out of the configuration into
several holders by hand, every reload path must remember to re-copy each of
them, and the ones it forgets keep their old values while the log says
"reloaded". Here a component keeps the L{Config} it was given and reads
from it at call time; the generated reload test (C{tests.test_reconfigure})
walks every setting of the schema and fails for one that no registered
component C{uses} and that is not declared C{restart=True}.

Restart-only settings (C{listen.*}, C{state_dir}) are declared in the
schema; a reload that changes one keeps the running value and says so.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.logger import Logger
from zope.interface.verify import verifyObject

from qwen_twist import schema
from qwen_twist.config import Config
from qwen_twist.interfaces import IReconfigurable

#: (dotted key, restart-only) for every leaf of the schema, computed once.
LEAVES: Tuple[Tuple[str, bool], ...] = tuple(schema.leaves(Config))


class Change:
    """
    One setting that differs between the running and the new file.

    @ivar key: the dotted path.
    @ivar old: the running value.
    @ivar new: the value in the file.
    @ivar applied: False for a restart-only setting (the old value stays).
    """

    def __init__(self, key: str, old: Any, new: Any, applied: bool) -> None:
        self.key = key
        self.old = old
        self.new = new
        self.applied = applied

    def describe(self) -> str:
        if self.applied:
            return "%s: %r -> %r" % (self.key, self.old, self.new)
        return "%s: needs a restart; keeping %r" % (self.key, self.old)


def diff(old: Config, new: Config) -> List[Change]:
    """
    Every changed setting, restart-only ones marked not applied.
    """
    changes = []
    for key, restart in LEAVES:
        before, after = schema.lookup(old, key), schema.lookup(new, key)
        if before != after:
            changes.append(Change(key, before, after, not restart))
    return changes


def effective(old: Config, new: Config, changes: List[Change]) -> Config:
    """
    C{new} with every restart-only change put back to its running value:
    the configuration that is really in force after the reload.
    """
    for change in changes:
        if not change.applied:
            new = schema.replace(new, change.key, change.old)
    return new


class Reconfigurer:
    """
    The registry of L{IReconfigurable} components and the configuration in
    force.

    @ivar config: the L{Config} in force (restart-only values as started).
    @ivar components: registered components, in the order they are handed
        a new configuration (the order of registration: the gate before the
        site before the listener, as a request meets them).
    """

    log = Logger()

    def __init__(self, config: Config) -> None:
        self.config = config
        self.components: List[Any] = []

    def register(self, component: Any) -> Any:
        """
        Add C{component}, hand it the configuration in force (so that a
        component registered later cannot start with other settings), and
        verify it against L{IReconfigurable}; returns it.
        """
        component.reconfigure(self.config)
        verifyObject(IReconfigurable, component)
        self.components.append(component)
        return component

    def apply(self, new: Config) -> List[Change]:
        """
        Hand C{new} (restart-only settings kept) to every component and log
        each changed key and whether it applied.

        A component that raises is logged and the others still get the new
        configuration: half a reload is better than none, and each
        component's own settings are consistent either way.
        """
        changes = diff(self.config, new)
        in_force = effective(self.config, new, changes)
        self.config = in_force
        for component in self.components:
            try:
                component.reconfigure(in_force)
            except Exception:
                self.log.failure("reconfiguring {component} failed", component=component)
        for change in changes:
            if change.applied:
                self.log.info("reload: {change}", change=change.describe())
            else:
                self.log.warn("reload: {change}", change=change.describe())
        return changes

    def users(self, key: str) -> List[Any]:
        """
        The registered components whose C{uses} covers the dotted C{key}.
        """
        return [c for c in self.components if any(
            key == prefix or key.startswith(prefix + ".") for prefix in c.uses)]
