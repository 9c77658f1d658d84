# -*- test-case-name: tests.gate.test_bans -*-
"""
Temporary bans for addresses that keep failing authentication.

Why: API keys are long and random, so an address that fails N times in a
row is guessing or misconfigured; either way it should stop costing us TLS
handshakes. After C{threshold} consecutive failures the address is banned
for C{duration} seconds, and the connection filter
(L{qwen_twist.gate.peerfilter}) refuses it at accept time, before any TLS work.

A streak is "consecutive" until a success resets it, but it is also
forgotten once the address has been quiet for C{duration}: otherwise one
typo a day would eventually ban a legitimate client, and the table would
hold every address that ever failed once. Failures while banned (requests on
a connection opened before the ban) neither extend the ban nor start a new
streak.

Pure: time is a float passed in by the caller, nothing here does I/O.
"""

from __future__ import annotations

from typing import Dict, List, Tuple


class BanList:
    """
    Consecutive-failure counts and active bans, by address.

    @ivar threshold: failures that trigger a ban; C{0} never bans.
    @ivar duration: ban length in seconds.
    """

    def __init__(self, threshold: int, duration: float) -> None:
        self.threshold = threshold
        self.duration = float(duration)
        # ip -> (failures in the current streak, time of the last one)
        self._streaks: Dict[str, Tuple[int, float]] = {}
        # ip -> time the ban ends
        self._bans: Dict[str, float] = {}

    def __len__(self) -> int:
        """
        Addresses held: current streaks plus bans (expired ones until
        pruned).
        """
        return len(self._streaks) + len(self._bans)

    def failure(self, ip: str, now: float) -> bool:
        """
        Count an authentication failure from C{ip}.

        @return: C{True} if this failure started a ban.
        """
        if self.threshold <= 0 or self.banned_for(ip, now) > 0.0:
            return False
        count, last = self._streaks.get(ip, (0, now))
        if now - last >= self.duration:
            count = 0
        count += 1
        if count >= self.threshold:
            self._streaks.pop(ip, None)
            self._bans[ip] = now + self.duration
            return True
        self._streaks[ip] = (count, now)
        return False

    def success(self, ip: str, now: float) -> None:
        """
        An authentication from C{ip} succeeded: its streak starts again.
        """
        self._streaks.pop(ip, None)

    def banned_for(self, ip: str, now: float) -> float:
        """
        Seconds of ban left for C{ip}, C{0.0} when it is not banned.
        """
        until = self._bans.get(ip)
        if until is None:
            return 0.0
        left = until - now
        if left <= 0.0:
            del self._bans[ip]
            return 0.0
        return left

    def banned(self, now: float) -> List[Tuple[str, float]]:
        """
        The active bans as C{(ip, seconds left)}, for operators and metrics.
        """
        return [(ip, until - now) for ip, until in self._bans.items() if until > now]

    def prune(self, now: float) -> int:
        """
        Forget expired bans and streaks quiet for C{duration}. Linear in
        the entries held: call it from a timer.

        @return: how many entries were dropped.
        """
        before = len(self)
        # New tables rather than deletions: a dict keeps the memory of
        # deleted entries.
        self._bans = {ip: until for ip, until in self._bans.items() if until > now}
        self._streaks = {
            ip: streak for ip, streak in self._streaks.items() if now - streak[1] < self.duration
        }
        return before - len(self)
