"""Tests for genesys_mux.core.backoff: jittered delays, status verdicts, Retry-After."""

from __future__ import annotations

import logging
import math
import random
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from genesys_mux.core.backoff import (
    MAX_RETRY_AFTER_S,
    Backoff,
    Retries,
    Verdict,
    classify_status,
    one_line,
    parse_retry_after,
)

# --------------------------------------------------------------------------
# Backoff.delay
# --------------------------------------------------------------------------


def ceiling(backoff: Backoff, attempt: int) -> float:
    """The documented upper bound ``min(cap, base * 2**attempt)``, exactly."""
    try:
        # Past 2**2200 even the smallest positive float is out of range.
        scaled = math.ldexp(backoff.base_s, min(attempt, 2200))
    except OverflowError:
        scaled = math.inf
    return min(backoff.cap_s, scaled)


def test_defaults() -> None:
    backoff = Backoff()
    assert (backoff.base_s, backoff.cap_s) == (1.0, 60.0)
    assert 0.0 <= backoff.delay(0) <= 1.0


@pytest.mark.parametrize(
    ("attempt", "upper"),
    [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0), (5, 32.0), (6, 60.0), (7, 60.0)],
)
def test_the_ceiling_doubles_until_the_cap(attempt: int, upper: float) -> None:
    # An rng that always answers its upper bound shows the ceiling itself.
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    assert Backoff(base_s=1.0, cap_s=60.0, rng=Top()).delay(attempt) == upper


@given(
    base=st.floats(min_value=0.0, max_value=1e6),
    cap=st.floats(min_value=0.0, max_value=1e6),
    attempt=st.integers(min_value=0, max_value=10**30),
    seed=st.integers(),
)
def test_delay_is_within_zero_and_the_ceiling(
    base: float, cap: float, attempt: int, seed: int
) -> None:
    backoff = Backoff(base_s=base, cap_s=cap, rng=random.Random(seed))
    delay = backoff.delay(attempt)
    assert math.isfinite(delay)
    assert 0.0 <= delay <= ceiling(backoff, attempt)


@pytest.mark.parametrize(
    "attempt",
    [63, 64, 1000, 1024, 1100, 10**6, sys.maxsize, pytest.param(10**400, id="10**400")],
)
def test_huge_attempt_numbers_do_not_overflow(attempt: int) -> None:
    backoff = Backoff(base_s=0.5, cap_s=30.0, rng=random.Random(7))
    for _ in range(50):
        delay = backoff.delay(attempt)
        assert 0.0 <= delay <= 30.0


def test_a_huge_base_is_still_capped() -> None:
    backoff = Backoff(base_s=1e300, cap_s=5.0, rng=random.Random(1))
    assert 0.0 <= backoff.delay(10**9) <= 5.0


def test_a_seeded_rng_is_repeatable() -> None:
    first = Backoff(rng=random.Random(42))
    second = Backoff(rng=random.Random(42))
    delays = [first.delay(n) for n in range(20)]
    assert delays == [second.delay(n) for n in range(20)]
    reference = random.Random(42)
    assert delays == [reference.uniform(0.0, min(60.0, 2.0**n)) for n in range(20)]


def test_different_seeds_differ() -> None:
    assert Backoff(rng=random.Random(1)).delay(5) != Backoff(rng=random.Random(2)).delay(5)


def test_jitter_is_full_not_equal() -> None:
    # Full jitter spreads over the whole [0, ceiling], not just its top half.
    backoff = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(3))
    delays = [backoff.delay(10) for _ in range(2000)]
    assert min(delays) < 3.0
    assert max(delays) > 57.0
    assert 25.0 < sum(delays) / len(delays) < 35.0


def test_zero_cap_means_no_wait() -> None:
    assert Backoff(cap_s=0.0, rng=random.Random(0)).delay(5) == 0.0


# --------------------------------------------------------------------------
# classify_status
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.OK),
        (201, Verdict.OK),
        (202, Verdict.OK),
        (204, Verdict.OK),
        (304, Verdict.OK),
        (401, Verdict.REAUTH),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
        (400, Verdict.FAIL),
        (403, Verdict.FAIL),
        (404, Verdict.FAIL),
        (405, Verdict.FAIL),
        (409, Verdict.FAIL),
        (413, Verdict.FAIL),
        (422, Verdict.FAIL),
    ],
)
def test_classify_status(status: int, verdict: Verdict) -> None:
    assert classify_status(status) is verdict


@given(st.integers(min_value=100, max_value=599))
def test_every_status_has_exactly_the_documented_verdict(status: int) -> None:
    verdict = classify_status(status)
    if status < 400:
        assert verdict is Verdict.OK
    elif status == 401:
        assert verdict is Verdict.REAUTH
    elif status == 429 or status >= 500:
        assert verdict is Verdict.RETRY
    else:
        assert verdict is Verdict.FAIL


# --------------------------------------------------------------------------
# parse_retry_after
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("0", 0.0),
        ("1", 1.0),
        ("30", 30.0),
        ("120", 120.0),
        ("1.5", 1.5),
        ("0.25", 0.25),
        (" 7 ", 7.0),
        ("\t12\r\n", 12.0),
        ("180", 180.0),
        ("180.0", 180.0),
        ("181", MAX_RETRY_AFTER_S),
        ("3600", MAX_RETRY_AFTER_S),
        ("1e9", MAX_RETRY_AFTER_S),
        ("99999999999999999999999999", MAX_RETRY_AFTER_S),
        ("inf", MAX_RETRY_AFTER_S),
    ],
)
def test_parse_retry_after_numbers(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


def test_max_retry_after_is_180() -> None:
    assert MAX_RETRY_AFTER_S == 180.0


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "-1",
        "-0.5",
        "-inf",
        "nan",
        "NaN",
        "-nan",
        "soon",
        "5s",
        "1,5",
        "0x10",
        "1 2",
        "Wed, 21 Oct 2015 07:28:00 GMT",
        "Fri, 31 Dec 1999 23:59:59 GMT",
        "2015-10-21T07:28:00Z",
    ],
)
def test_parse_retry_after_rejects(header: str | None) -> None:
    assert parse_retry_after(header) is None


def test_parse_retry_after_custom_cap() -> None:
    assert parse_retry_after("50", cap_s=10.0) == 10.0
    assert parse_retry_after("5", cap_s=10.0) == 5.0


@given(st.floats(min_value=0.0, allow_infinity=False, allow_nan=False))
def test_parse_retry_after_round_trips_non_negative_floats(seconds: float) -> None:
    assert parse_retry_after(repr(seconds)) == min(seconds, MAX_RETRY_AFTER_S)


@given(st.integers(min_value=0, max_value=10**30))
def test_parse_retry_after_integers(seconds: int) -> None:
    assert parse_retry_after(str(seconds)) == min(float(seconds), MAX_RETRY_AFTER_S)


@given(st.text())
def test_parse_retry_after_never_raises_and_never_exceeds_the_cap(header: str) -> None:
    seconds = parse_retry_after(header)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER_S


class _Ceiling(random.Random):
    """Always the top of the jitter range, so delays are the backoff's ceilings."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_retries_count_attempts_and_give_up_at_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.retries")
    retries = Retries(
        "thing",
        Backoff(1.0, 8.0, rng=_Ceiling()),
        max_attempts=4,
        logger=logging.getLogger("test.retries"),
    )
    # The first retry waits up to base, then doubling: indexed from 0, everywhere.
    assert [retries.failed("boom"), retries.failed("boom"), retries.failed("boom")] == [
        1.0,
        2.0,
        4.0,
    ]
    assert retries.failed("boom") is None  # the 4th attempt was the last
    assert retries.attempts == 4
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert lines == [
        (logging.WARNING, "thing failed (boom); retry 1 in 1.0 s"),
        (logging.INFO, "thing failed (boom); retry 2 in 2.0 s"),
        (logging.INFO, "thing failed (boom); retry 3 in 4.0 s"),
    ]


def test_retries_take_the_servers_hint_and_start_over_after_a_success() -> None:
    retries = Retries("thing", Backoff(1.0, 8.0, rng=_Ceiling()))
    assert retries.failed("slow down", retry_after_s=30.0) == 30.0
    assert retries.failed("again") == 2.0
    retries.succeeded()
    assert retries.attempts == 0
    assert retries.failed("new trouble") == 1.0
    assert retries.failed(ValueError("not this"), retryable=False) is None


def test_retries_write_the_error_on_one_line() -> None:
    assert one_line(ValueError("two\nlines   here")) == "two lines here"
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line("x" * 500, limit=10) == "x" * 9 + "…"
    with pytest.raises(ValueError, match="max_attempts"):
        Retries("thing", Backoff(), max_attempts=0)


def test_a_wait_under_a_second_is_logged_to_the_hundredth(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ "retry 1 in 0.0 s" read as no wait at all, beside an audit line saying 0.01 s."""
    caplog.set_level(logging.INFO, logger="test.retries")
    retries = Retries(
        "thing", Backoff(0.012, 8.0, rng=_Ceiling()), logger=logging.getLogger("test.retries")
    )
    retries.failed("boom")
    assert [r.getMessage() for r in caplog.records] == ["thing failed (boom); retry 1 in 0.01 s"]
