"""Scale: thousands of topics packed into the fewest channels, within the request budget."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from genesys_mux.errors import CapacityError
from tests.net.conftest import fast_settings


def presence_topics(n: int) -> list[str]:
    return [f"v2.users.{uuid.UUID(int=i + 1)}.presence" for i in range(n)]


@pytest.mark.parametrize(("count", "channels"), [(2_500, 3), (19_000, 19)])
async def test_topics_are_packed_into_the_fewest_channels(
    make_stack: Any, count: int, channels: int
) -> None:
    async with make_stack(fast_settings(rate=0.0, heartbeat_interval_s=1.0)) as stack:
        topics = presence_topics(count)
        assert await stack.pool.set_topics(topics) == []
        assert stack.pool.live
        listing = await stack.control("channels")
        assert len(listing) == channels
        assert sum(c["topic_count"] for c in listing) == count
        assert all(c["connected"] for c in listing)
        requests = (await stack.control("requests"))["requests"]
        assert not [r for r in requests if r["status"] == 429]
        assert len([r for r in requests if r["path"].startswith("/api/v2")]) <= 300


async def test_one_topic_too_many_is_a_clear_error(make_stack: Any) -> None:
    async with make_stack(fast_settings(rate=0.0, heartbeat_interval_s=1.0)) as stack:
        topics = presence_topics(19_001)
        with pytest.raises(CapacityError) as caught:
            await stack.pool.set_topics(topics)
        message = str(caught.value)
        assert "19,001" in message
        assert "19,000" in message
        assert len(caught.value.unplaced) == 1
        # Nothing was created.
        assert await stack.control("channels") == []
