"""Retry timing and classification, and the one retry loop everything uses.

Full-jitter exponential backoff: attempt ``n`` waits a uniformly random time
in ``[0, min(cap, base * 2**n)]``. Jitter matters more than the curve here: a
contact centre restarting many genesys-mux instances at once must not have
them all retry in lock-step against the same rate limit.

``Retry-After`` always wins over our own backoff when the server sends one,
capped at 180 s as the vendor SDKs do, so a bogus header cannot park us for
hours.

:class:`Retries` is the bookkeeping of one retry loop, written once for the
token requests, REST calls, channel set-up, subscription changes and sink
batches: it counts the failed attempts, says how long to wait before the
next one (the server's hint, else the backoff, always indexed from 0 for the
first retry) or that it is time to give up, logs one line per retry with the
error on one line (WARNING for the first failure of a run, INFO for its
repeats), and starts over after a success. It never sleeps: the
caller does, so the same policy serves code that waits on a timer, on a stop
signal or on a plain ``asyncio.sleep``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "MAX_RETRY_AFTER_S",
    "Backoff",
    "Retries",
    "Verdict",
    "classify_status",
    "one_line",
    "parse_retry_after",
]

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


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An error as one line of at most ``limit`` characters (its type when it has no text)."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Retries:
    """The bookkeeping of one retry loop: failed attempts, the next delay, when to give up.

    ``what`` names the operation in the log line (``"token request"``,
    ``"GET /api/v2/..."``); ``max_attempts`` counts every attempt, the first
    included (None: never give up); ``logger`` is the caller's, so the line
    names the module that retries.
    """

    __slots__ = ("attempts", "backoff", "logger", "max_attempts", "what")

    def __init__(
        self,
        what: str,
        backoff: Backoff,
        *,
        max_attempts: int | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 or None")
        self.what = what
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.logger = logger or logging.getLogger("genesys_mux")
        #: Failed attempts since the last success.
        self.attempts = 0

    def failed(
        self,
        error: BaseException | str,
        *,
        retry_after_s: float | None = None,
        retryable: bool = True,
        log: bool = True,
    ) -> float | None:
        """Count a failed attempt; the seconds to wait before the next, or None to give up.

        A non-retryable error, or the last allowed attempt, gives up (and
        logs nothing: the caller reports the failure as it sees fit).
        Without ``log`` a retry is not logged either (the caller summarises).
        """
        self.attempts += 1
        if not retryable or (self.max_attempts is not None and self.attempts >= self.max_attempts):
            return None
        delay = (
            retry_after_s if retry_after_s is not None else self.backoff.delay(self.attempts - 1)
        )
        if not log:
            return delay
        # The first failure of a run is news (WARNING); its repeats are not.
        self.logger.log(
            logging.WARNING if self.attempts == 1 else logging.INFO,
            "%s failed (%s); retry %d in %s s",
            self.what,
            one_line(error),
            self.attempts,
            # Tenths, but a wait under a second to the hundredth: not "0.0 s".
            f"{delay:.2f}" if delay < 1 else f"{delay:.1f}",
        )
        return delay

    def succeeded(self) -> None:
        """The operation worked: the next failure starts a new run of attempts."""
        self.attempts = 0
