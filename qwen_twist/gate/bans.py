# -*- test-case-name: tests.gate.test_bans -*-
"""
Temporary bans for addresses that keep failing authentication.

Why: API keys are long and random, so an address that fails N times in a
short while is guessing or misconfigured; either way it should stop costing
us TLS handshakes. After C{threshold} failures within C{window} seconds the
address is banned for C{duration} seconds, and the connection filter
(L{qwen_twist.gate.peerfilter}) refuses it at accept time, before any TLS work.

Why a window and not a streak of consecutive failures: a success would
reset a streak, so a guesser holding one valid key could alternate bad,
bad, good forever and never be banned. A success therefore changes
nothing; only failures older than C{window} stop counting, so one typo a
day never adds up to a ban, and the table forgets quiet addresses. Failures
while banned (requests on a connection opened before the ban) neither
extend the ban nor count towards the next one.

Pure: time is a float passed in by the caller, nothing here does I/O.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Dict, List, Optional, Tuple


class BanList:
    """
    Recent failure times and active bans, by address.

    @ivar threshold: failures within C{window} that trigger a ban; C{0}
        never bans.
    @ivar duration: ban length in seconds.
    @ivar window: seconds a failure counts for (default: C{duration}).
    """

    def __init__(self, threshold: int, duration: float, window: Optional[float] = None) -> None:
        self.threshold = threshold
        self.duration = float(duration)
        self.window = float(duration if window is None else window)
        # ip -> times of its failures within the window, oldest first (at
        # most threshold of them)
        self._streaks: Dict[str, Deque[float]] = {}
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
        times = self._streaks.get(ip)
        if times is None:
            times = self._streaks[ip] = deque(maxlen=self.threshold)
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        times.append(now)
        if len(times) >= self.threshold:
            self._streaks.pop(ip, None)
            self._bans[ip] = now + self.duration
            return True
        return False

    def success(self, ip: str, now: float) -> None:
        """
        An authentication from C{ip} succeeded. It does not forgive earlier
        failures (see the module docstring): kept so callers need not know.
        """

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
            ip: times for ip, times in self._streaks.items()
            if times and now - times[-1] < self.window
        }
        return before - len(self)
