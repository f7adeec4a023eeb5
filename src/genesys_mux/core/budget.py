"""A per-token request budget, so we stay under the rate limit instead of bouncing off it.

Genesys Cloud allows 300 requests per minute per client-credentials token.
A classic token bucket with a burst allowance can spend ``burst + rate * 60``
within one minute, which is more than the platform allows. This budget is a
token bucket whose spent tokens come back exactly one window later (a
sliding-window log), so *no* window of ``window_s`` seconds ever holds more
than ``limit`` requests, whatever window the server counts in.

Sans-I/O: the caller passes ``now`` and sleeps for the returned delay.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["RequestBudget"]


class RequestBudget:
    """At most ``limit`` requests in any ``window_s`` seconds."""

    def __init__(self, limit: int = 300, window_s: float = 60.0) -> None:
        # Written so that NaN fails too; an infinite window would never reopen.
        if limit < 1 or not 0 < window_s < math.inf:
            raise ValueError("a request budget needs limit >= 1 and a finite window_s > 0")
        self.limit = limit
        # What it was configured with: the server's own limit may lower it,
        # never raise it (the configuration may leave room for others).
        self._ceiling = limit
        # A little slack, so clock skew between us and the server can never
        # put one request too many in the server's window.
        self.window_s = window_s * 1.01
        self._spent: deque[float] = deque()
        # Until when nothing may be sent at all (the server said to wait).
        self._paused_until = -math.inf

    def delay(self, now: float) -> float:
        """Seconds to wait before a request may be sent at ``now`` (0 if it may go now)."""
        self._expire(now)
        paused = self._paused_until - now
        if len(self._spent) < self.limit:
            return max(0.0, paused)
        return max(self._spent[0] + self.window_s - now, paused)

    def pause_until(self, until: float) -> None:
        """Send nothing before ``until``: the server answered 429 with a ``Retry-After``.

        Its limit is per token, so every caller waits, not just the one told.
        """
        self._paused_until = max(self._paused_until, until)

    def allow(self, limit: int) -> bool:
        """Take the server's own limit (``inin-ratelimit-allowed``); True if it changed.

        The platform's default is 300 a minute, but an org may have another:
        budgeting for more than it allows would only collect 429s. Never
        above the limit the budget was made with.
        """
        limit = min(limit, self._ceiling)
        if limit < 1 or limit == self.limit:
            return False
        self.limit = limit
        return True

    def spend(self, now: float) -> None:
        """Record a request sent at ``now``. Call only after :meth:`delay` returned 0."""
        self._expire(now)
        self._spent.append(now)

    def used(self, now: float) -> int:
        """Requests counted in the window ending at ``now``."""
        self._expire(now)
        return len(self._spent)

    def reset(self) -> None:
        """Forget every spent request (a new token starts with a full budget)."""
        self._spent.clear()

    def _expire(self, now: float) -> None:
        spent = self._spent
        while spent and spent[0] + self.window_s <= now:
            spent.popleft()
