"""Retry timing and classification, shared by the REST client and the channels.

Full-jitter exponential backoff: attempt ``n`` waits a uniformly random time
in ``[0, min(cap, base * 2**n)]``. Jitter matters more than the curve here: a
contact centre restarting many genesys-mux instances at once must not have
them all retry in lock-step against the same rate limit.

``Retry-After`` always wins over our own backoff when the server sends one,
capped at 180 s as the vendor SDKs do, so a bogus header cannot park us for
hours.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum

__all__ = ["MAX_RETRY_AFTER_S", "Backoff", "Verdict", "classify_status", "parse_retry_after"]

#: The longest we ever honour a ``Retry-After``; the vendor SDKs cap it the same way.
MAX_RETRY_AFTER_S = 180.0


@dataclass(slots=True)
class Backoff:
    """Full-jitter exponential backoff.

    ``rng`` is injectable so tests and simulations are repeatable.
    """

    base_s: float = 1.0
    cap_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 62))
        return self.rng.uniform(0.0, ceiling)


class Verdict(Enum):
    """What to do with an HTTP answer."""

    OK = "ok"
    #: Transient: wait (Retry-After or backoff) and try again.
    RETRY = "retry"
    #: The token was refused: refresh it once and try again.
    REAUTH = "reauth"
    #: Retrying will not help; surface the error.
    FAIL = "fail"


def classify_status(status: int) -> Verdict:
    """Classify an HTTP status the way the vendor SDKs do, plus 401 → re-auth.

    The SDKs retry 429, 502, 503 and 504; we retry every 5xx, because a 500
    from a gateway during a deploy is as transient as a 503.
    """
    if status < 400:
        return Verdict.OK
    if status == 401:
        return Verdict.REAUTH
    if status == 429 or status >= 500:
        return Verdict.RETRY
    return Verdict.FAIL


def parse_retry_after(value: str | None, cap_s: float = MAX_RETRY_AFTER_S) -> float | None:
    """Seconds from a ``Retry-After`` header (Genesys sends seconds), capped.

    Returns None when the header is absent or not a number of seconds; HTTP
    dates are not used by Genesys and are treated as absent.
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:  # NaN or negative
        return None
    return min(seconds, cap_s)
