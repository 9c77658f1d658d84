# -*- test-case-name: tests.test_config -*-
"""
The schema engine behind L{qwen_twist.config}: declare settings on frozen
dataclasses, then validate a parsed YAML mapping into them.

Why a separate module: the engine (field declarations, value checks, type
conversion, the recursive L{build}) is generic and knows nothing of
qwengate's sections, while L{qwen_twist.config} is the list of sections an
operator reads to learn what can be set. Keeping them apart keeps that list
short and lets the engine be reasoned about (and reused) on its own.

Rules:
  - nothing is coerced: a string where a number belongs is an error, not a
    guess; C{bool} is not an integer; non-finite numbers are refused.
  - unknown keys are errors (a typo must not silently fall back to a
    default, least of all for a security setting).
  - every error names the dotted key path the operator has to fix
    (C{upstream.timeouts.connect}, C{access.allow[2]}).

Pure: no Twisted imports and no I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import typing
from dataclasses import field
from typing import Any, Callable, Optional
from urllib.parse import urlsplit


class ConfigError(Exception):
    """
    An invalid configuration value.

    @ivar path: the dotted key path (C{"upstream.timeouts.connect"}), or
        C{""} for the document as a whole.
    @ivar problem: what is wrong, in words.
    @ivar filename: the file, once known.
    """

    def __init__(self, path: str, problem: str, filename: str = "") -> None:
        self.path = path
        self.problem = problem
        self.filename = filename
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.filename, self.path) if p]
        return ": ".join(parts + [self.problem])


Check = Callable[[Any], Optional[str]]


def setting(default: Any, check: Optional[Check] = None, doc: str = "",
            restart: bool = False) -> Any:
    """
    Declare a config field: its default, an optional check returning an
    error text (or None when fine), a one-line description, and whether a
    change needs a restart (C{restart=True}: a reload keeps the running
    value and says so; everything else must reach a component on reload).
    """
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple or a section for mutable defaults")
    return field(default=default, metadata={"check": check, "doc": doc, "restart": restart})


def section(cls: type, restart: bool = False) -> Any:
    """
    Declare a nested section whose defaults are the section's own; with
    C{restart=True} every key in it needs a restart.
    """
    return field(default_factory=cls, metadata={"check": None, "doc": "", "restart": restart})


# Checks -------------------------------------------------------------------


def positive(value: Any) -> Optional[str]:
    return None if value > 0 else "must be > 0, got %r" % (value,)


def non_negative(value: Any) -> Optional[str]:
    return None if value >= 0 else "must be >= 0, got %r" % (value,)


def between(low: float, high: float) -> Check:
    def check(value: Any) -> Optional[str]:
        if low <= value <= high:
            return None
        return "must be between %s and %s, got %r" % (low, high, value)

    return check


def one_of(*choices: str) -> Check:
    def check(value: Any) -> Optional[str]:
        if value in choices:
            return None
        return "must be one of %s, got %r" % (", ".join(map(repr, choices)), value)

    return check


def ip_address(value: Any) -> Optional[str]:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IPv4 or IPv6 address, got %r" % (value,)
    return None


def http_url(value: Any) -> Optional[str]:
    try:
        parts = urlsplit(value)
    except ValueError:
        # e.g. an unclosed IPv6 bracket: "http://[::1"
        return "must be an http:// or https:// URL with a host, got %r" % (value,)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, got %r" % (value,)
    if parts.query or parts.fragment or parts.username or parts.password:
        return "must not contain credentials, a query or a fragment"
    try:
        parts.port
    except ValueError:
        return "has an invalid port: %r" % (value,)
    return None


def non_empty(value: Any) -> Optional[str]:
    return None if value.strip() else "must not be empty"


def cidr(value: Any) -> Optional[str]:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "must be an IPv4 or IPv6 address or CIDR network, got %r" % (value,)
    return None


def http_origin(value: Any) -> Optional[str]:
    if value == "*":
        return "must name origins; '*' would let any web page use the API"
    wrong = "must be an origin such as https://chat.example.com, got %r" % (value,)
    try:
        parts = urlsplit(value)
        parts.port
    except ValueError:
        return wrong
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path
            or parts.query or parts.fragment or parts.username or parts.password):
        return wrong
    return None


# The engine ---------------------------------------------------------------

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}


def _unwrap_optional(hint: Any) -> tuple:
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _convert_scalar(hint: type, value: Any, path: str) -> Any:
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, "must be a number, got %s" % (_describe(value),))
        try:
            number = float(value)
        except OverflowError:
            # an integer literal too large for a float (400 digits)
            raise ConfigError(path, "must be a finite number")
        if not math.isfinite(number):
            raise ConfigError(path, "must be a finite number")
        return number
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, "must be an integer, got %s" % (_describe(value),))
        return value
    if hint in (bool, str):
        if not isinstance(value, hint):
            raise ConfigError(
                path, "must be %s, got %s" % (_TYPE_NAMES[hint], _describe(value))
            )
        return value
    raise TypeError("unsupported config type %r at %s" % (hint, path))


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
    if isinstance(value, (dict, list)):
        return kind
    return "%s %r" % (kind, value)


def _join(prefix: str, key: str) -> str:
    return "%s.%s" % (prefix, key) if prefix else key


def build(cls: type, data: Any, path: str = "") -> Any:
    """
    Validate C{data} (a parsed YAML mapping) into the dataclass C{cls}.

    @raise ConfigError: naming the dotted key path of the first problem.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, "must be a mapping of keys, got %s" % (_describe(data),))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if not isinstance(key, str) or key not in fields:
            raise ConfigError(
                _join(path, str(key)),
                "unknown key (expected one of: %s)" % (", ".join(sorted(fields)),),
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key_path = _join(path, name)
        hint, optional = _unwrap_optional(hints[name])
        if dataclasses.is_dataclass(hint):
            # An absent section is built too, so its own _validate runs: a
            # file without a tls section still needs certificate files.
            values[name] = build(hint, data.get(name), key_path)
            continue
        if name not in data:
            continue
        raw = data[name]
        if raw is None and optional:
            values[name] = None
            continue
        check = f.metadata.get("check")
        if typing.get_origin(hint) is tuple:
            # A list setting: every item has the item type and passes the
            # check; errors name the item (allow[2]).
            (item_hint, _) = typing.get_args(hint)
            if not isinstance(raw, list):
                raise ConfigError(key_path, "must be a list, got %s" % (_describe(raw),))
            items = []
            for i, item in enumerate(raw):
                item_path = "%s[%d]" % (key_path, i)
                item = _convert_scalar(item_hint, item, item_path)
                problem = check(item) if check else None
                if problem:
                    raise ConfigError(item_path, problem)
                items.append(item)
            values[name] = tuple(items)
            continue
        value = _convert_scalar(hint, raw, key_path)
        problem = check(value) if check else None
        if problem:
            raise ConfigError(key_path, problem)
        values[name] = value
    result = cls(**values)
    validate = getattr(result, "_validate", None)
    if validate is not None:
        validate(path)
    return result


def merge_settings(base: dict, overrides: dict) -> dict:
    """
    Deep-merge two raw (parsed YAML) settings mappings, C{overrides}
    winning; for layering a test's or a benchmark's changes over a base.
    """
    result = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_settings(result[key], value)
        else:
            result[key] = value
    return result


def describe_keys(cls: type, path: str = "") -> list:
    """
    Every key of the dataclass C{cls} (nested sections flattened) as
    C{(dotted path, default, description)}, for the docs test that keeps the
    reference config and README complete.
    """
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key_path = _join(path, f.name)
        hint, _ = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(hint):
            rows.extend(describe_keys(hint, key_path))
        else:
            rows.append((key_path, f.default, f.metadata.get("doc", "")))
    return rows


def leaves(cls: type, path: str = "", restart: bool = False) -> list:
    """
    Every leaf setting of C{cls} as C{(dotted path, restart-only)}: the
    list the reload machinery diffs, and the one the generated reload test
    walks so that no setting can be added without a reload path.
    """
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key_path = _join(path, f.name)
        hint, _ = _unwrap_optional(hints[f.name])
        needs_restart = restart or bool(f.metadata.get("restart"))
        if dataclasses.is_dataclass(hint):
            rows.extend(leaves(hint, key_path, needs_restart))
        else:
            rows.append((key_path, needs_restart))
    return rows


def lookup(config: Any, dotted: str) -> Any:
    """
    The value at C{dotted} (C{"upstream.timeouts.connect"}) in a built
    config.
    """
    value = config
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def replace(config: Any, dotted: str, value: Any) -> Any:
    """
    A copy of the frozen C{config} with the setting at C{dotted} replaced
    (sections are copied along the path, the rest is shared).
    """
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: replace(getattr(config, head), rest, value)})
