# -*- test-case-name: tests.store.test_memory -*-
"""
The one place that knows which L{qwen_twist.store.interface.ILimitStore}
implementations exist (kept out of the interface module, which both
implementations import).
"""

from __future__ import annotations

from typing import Any


def build_store(config: Any, clock: Any) -> Any:
    """
    The L{qwen_twist.store.interface.ILimitStore} named by C{limits.store}:
    C{memory}, or a C{redis://}/C{rediss://} URL.
    """
    if config.limits.store == "memory":
        from qwen_twist.store.memory import MemoryStore

        return MemoryStore(config, clock)
    from qwen_twist.store.redisstore import RedisStore

    return RedisStore(config, clock)
