"""Genesys ISO-8601 timestamps: formatting and parsing agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from genesys_mux.core.timestamps import format_iso, parse_iso


def test_format_is_utc_with_milliseconds_and_z() -> None:
    assert format_iso(0) == "1970-01-01T00:00:00.000Z"
    assert format_iso(1795876150.1234) == "2026-11-28T14:29:10.123Z"
    # Rounding to the millisecond carries into the seconds.
    assert format_iso(0.9996) == "1970-01-01T00:00:01.000Z"


@given(st.integers(min_value=0, max_value=4_102_444_800_000))
def test_round_trip_at_millisecond_precision(ms: int) -> None:
    assert round(parse_iso(format_iso(ms / 1000)) * 1000) == ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T14:11:17Z", 1795875077.0),
        ("2026-11-28T14:11:17.5Z", 1795875077.5),
        ("2026-11-28T14:11:17.500+00:00", 1795875077.5),
        ("2026-11-28T15:11:17.500+01:00", 1795875077.5),
        ("2026-11-28T14:11:17.500", 1795875077.5),
    ],
)
def test_parse_accepts_the_forms_genesys_and_users_write(text: str, expected: float) -> None:
    assert parse_iso(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00Z", "12:00"])
def test_parse_refuses_what_is_not_a_timestamp(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - ValueError is the documented contract
        parse_iso(text)
