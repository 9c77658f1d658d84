# -*- test-case-name: tests.store.test_memory -*-
"""
What the gate asks of the place its counters live, whichever it is.

Why one declared interface: the hooks, the connection filter and the fair
queue must behave the same with one gateway (counters in this process) and
with several sharing a Redis, so they only ever talk to an L{ILimitStore};
which one they have is decided once, in
L{qwen_twist.store.factory.build_store}, from C{limits.store}.

Every operation that may need the network returns a Deferred. What must
never wait (the accept-time ban check) reads a local view (L{ILimitStore.bans})
that the store keeps up to date by itself.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from zope.interface import Attribute, Interface

from qwen_twist.store.resp import StoreUnavailable

__all__ = ["ILimitStore", "ISlotLock", "StoreUnavailable", "Take"]


class Take(NamedTuple):
    """
    One bucket to take from in L{ILimitStore.take_all}.

    @ivar family: the rule (C{"ip"}, C{"key"}, C{"budget"}); with C{rate}
        and C{burst} it names the bucket table, so a changed limit starts
        fresh buckets and an unchanged one keeps them across a reload.
    @ivar undo: the index of the last later take whose refusal gives this
        one's tokens back (C{-1}: never).
    """

    family: str
    rate: float
    burst: float
    key: str
    cost: float = 1.0
    undo: int = -1


class ILimitStore(Interface):
    """
    Token buckets, authentication-failure bans and GPU slot leases.
    """

    state = Attribute(
        "C{'memory'} (in-process, always available), or for a shared store "
        "C{'connecting'}, C{'up'} or C{'down'}; metrics read it."
    )
    shared = Attribute("Whether the counters are shared with other gateways.")
    bans = Attribute(
        "The local view of active bans: C{banned_for(ip, now) -> seconds} and "
        "C{banned(now)}; answers at once, never waits on the network."
    )

    def take_all(takes: Any) -> Any:
        """
        Take from several buckets in one step (one round trip to a shared
        store), in order, stopping at the first refusal; a refusal by take
        C{i} gives back the tokens of every earlier take C{j} whose
        C{undo >= i}.

        @param takes: a sequence of L{Take}.
        @return: a Deferred firing with the decisions up to and including
            the refusal, as L{take} would give them.
        """

    def take(family: str, rate: float, burst: float, key: str, cost: float = 1.0) -> Any:
        """
        Take C{cost} tokens from the bucket of C{key} in C{family} (one
        family per rule, e.g. C{"ip"}, C{"key"}, C{"budget"}).

        @return: a Deferred firing with a
            L{qwen_twist.gate.ratelimit.Decision} whose C{receipt} is what
            L{adjust} needs; it fails with L{StoreUnavailable} only under
            the fail-closed policy.
        """

    def adjust(receipt: Any, amount: float) -> None:
        """
        Change the bucket a L{take} used by C{amount} tokens: negative
        gives them back, positive charges more (debt). Best effort: if the
        store that took them is unreachable now, nothing happens (never
        twice, never on another store).
        """

    def auth_failure(ip: str) -> Any:
        """
        Count a failed authentication from C{ip}.

        @return: a Deferred firing with C{True} when this failure started a
            ban.
        """

    def auth_success(ip: str) -> None:
        """
        Forget C{ip}'s failure streak.
        """

    def connection_opened(ip: str) -> Any:
        """
        A connection from C{ip} was accepted by this gateway.

        @return: a Deferred firing with C{(total, ticket)}: C{total} is the
            connections from C{ip} open on all gateways sharing the store
            (L{None} when only this gateway's own count is known), C{ticket}
            what L{connection_closed} needs.
        """

    def connection_closed(ticket: Any) -> None:
        """
        The connection counted with C{ticket} ended (C{None}: it was not
        counted in the store).
        """

    def slot_lock(name: str) -> Any:
        """
        The semaphore over GPU slots shared with other gateways for the
        upstream(s) called C{name}, or L{None} when the slots are this
        process's alone (see L{qwen_twist.gate.queue.SlotQueue.shared}).
        """

    def status() -> dict:
        """
        A JSON-ready summary for C{/ready}: C{{"kind", "state", ...}}.
        """

    def start() -> None:
        """
        Begin (connect, refresh the ban view).
        """

    def stop() -> Any:
        """
        Stop; may return a Deferred.
        """

    def prune() -> None:
        """
        Drop idle local state (called from a timer).
        """

    def reconfigure(config: Any) -> None:
        """
        Take a new configuration (SIGHUP); C{limits.store} itself needs a
        restart.
        """


class ISlotLock(Interface):
    """
    A counting semaphore shared between gateways, with leases that expire
    unless renewed, so a gateway that dies gives its slots back.
    """

    fail_open = Attribute(
        "Whether a slot may be granted on local count alone while the lock "
        "cannot be asked (C{limits.redis.on_failure: open})."
    )
    poll_interval = Attribute("Seconds between asks while every slot is taken.")

    def acquire(limit: int) -> Any:
        """
        @return: a Deferred firing with a lease (pass it to L{release}) or
            L{None} when all C{limit} slots are taken; it fails with
            L{StoreUnavailable} when the store cannot be asked.
        """

    def release(lease: Any) -> None:
        """
        Give a lease back (best effort; an unreachable store lets it
        expire).
        """
