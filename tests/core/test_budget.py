"""Tests for genesys_mux.core.budget: no window ever holds more than ``limit`` requests."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesys_mux.core.budget import RequestBudget


def wait_and_spend(budget: RequestBudget, now: float) -> float:
    """Behave like the REST client: sleep for ``delay`` until it is 0, then spend."""
    for _ in range(100):
        delay = budget.delay(now)
        assert delay >= 0.0
        assert math.isfinite(delay)
        if delay == 0.0:
            budget.spend(now)
            return now
        now += delay
    pytest.fail(f"the budget never opened at {now}")


def max_in_any_window(times: list[float], window_s: float) -> int:
    """The most requests in any closed window ``[t, t + window_s]``.

    The busiest window starts at a request, so it is enough to try those.
    """
    ordered = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(ordered):
        j = max(j, i)
        while j + 1 < len(ordered) and ordered[j + 1] <= start + window_s:
            j += 1
        best = max(best, j - i + 1)
    return best


# --------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------


def test_defaults_are_the_platform_limit() -> None:
    budget = RequestBudget()
    assert budget.limit == 300
    # A little slack over 60 s, never less.
    assert 60.0 <= budget.window_s <= 61.0


@pytest.mark.parametrize(
    ("limit", "window_s"),
    [
        (0, 60.0),
        (-1, 60.0),
        (300, 0.0),
        (300, -1.0),
        (300, -math.inf),
        (300, math.nan),
        (300, math.inf),
    ],
)
def test_invalid_construction_raises(limit: int, window_s: float) -> None:
    with pytest.raises(ValueError, match="limit"):
        RequestBudget(limit, window_s)


@pytest.mark.parametrize(("limit", "window_s"), [(1, 1e-9), (1, 1.0), (10_000, 3600.0)])
def test_valid_extremes(limit: int, window_s: float) -> None:
    budget = RequestBudget(limit, window_s)
    assert budget.delay(0.0) == 0.0


# --------------------------------------------------------------------------
# delay, spend, used, reset
# --------------------------------------------------------------------------


def test_delay_is_zero_under_the_limit() -> None:
    budget = RequestBudget(5, 10.0)
    for i in range(5):
        assert budget.delay(float(i)) == 0.0
        assert budget.used(float(i)) == i
        budget.spend(float(i))
    assert budget.used(4.0) == 5


def test_the_full_budget_waits_for_the_oldest_request_to_age_out() -> None:
    budget = RequestBudget(3, 10.0)
    for t in (0.0, 1.0, 2.0):
        budget.spend(t)
    delay = budget.delay(2.0)
    # At least the nominal window since the oldest request, and the slack is small.
    assert 2.0 + delay >= 10.0
    assert 2.0 + delay <= 10.5
    # Part of the way there, the wait is what remains.
    assert budget.delay(5.0) == pytest.approx(delay - 3.0)
    assert budget.delay(2.0 + delay) == 0.0
    assert budget.used(2.0 + delay) == 2


def test_the_platform_minute_never_holds_301_requests() -> None:
    budget = RequestBudget()
    now = 0.0
    times: list[float] = []
    for _ in range(900):
        now = wait_and_spend(budget, now)
        times.append(now)
    assert max_in_any_window(times, 60.0) == 300
    assert times[299] == 0.0
    assert times[300] > 60.0


def test_requests_age_out() -> None:
    budget = RequestBudget(2, 10.0)
    budget.spend(0.0)
    budget.spend(5.0)
    assert budget.used(5.0) == 2
    assert budget.used(11.0) == 1
    assert budget.used(16.0) == 0
    assert budget.delay(16.0) == 0.0


def test_reset_restores_the_budget() -> None:
    budget = RequestBudget(4, 60.0)
    for _ in range(4):
        budget.spend(1.0)
    assert budget.delay(1.0) > 0.0
    budget.reset()
    assert budget.used(1.0) == 0
    for _ in range(4):
        assert budget.delay(1.0) == 0.0
        budget.spend(1.0)
    assert budget.delay(1.0) > 0.0


def test_reset_of_an_empty_budget_is_harmless() -> None:
    budget = RequestBudget(1, 1.0)
    budget.reset()
    assert budget.delay(0.0) == 0.0


# --------------------------------------------------------------------------
# The sliding-window property
# --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=8),
    window_s=st.floats(min_value=0.01, max_value=120.0),
    start=st.floats(min_value=0.0, max_value=1e6),
    gaps=st.lists(st.floats(min_value=0.0, max_value=30.0), max_size=80),
)
def test_no_window_ever_holds_more_than_limit(
    limit: int, window_s: float, start: float, gaps: list[float]
) -> None:
    budget = RequestBudget(limit, window_s)
    arrival = start
    now = start
    sent: list[float] = []
    for gap in gaps:
        arrival += gap
        now = max(now, arrival)
        # Under the limit, a request goes at once.
        recent = [t for t in sent if not t + budget.window_s <= now]
        if len(recent) < limit:
            assert budget.delay(now) == 0.0
        now = wait_and_spend(budget, now)
        sent.append(now)
        assert budget.used(now) <= limit
    assert max_in_any_window(sent, window_s) <= min(limit, len(sent))
    # The same, counted directly: ``limit`` requests apart is more than a window.
    for first, later in zip(sent, sent[limit:], strict=False):
        assert later - first > window_s


def test_a_pause_holds_every_request_even_with_budget_left() -> None:
    budget = RequestBudget(limit=10, window_s=60.0)
    budget.spend(0.0)
    budget.pause_until(5.0)
    assert budget.delay(1.0) == 4.0
    budget.pause_until(3.0)  # an earlier end does not shorten it
    assert budget.delay(2.0) == 3.0
    assert budget.delay(5.0) == 0.0


def test_the_server_s_own_limit_is_taken() -> None:
    budget = RequestBudget(limit=300, window_s=60.0)
    assert budget.allow(5)
    assert not budget.allow(5)
    assert not budget.allow(0)
    for t in range(5):
        budget.spend(float(t))
    assert budget.delay(5.0) > 0
