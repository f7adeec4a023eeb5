"""An add_stream cancelled half-way (a deadline around it) leaves nothing behind: its retry works.

The stream's checkpoint must still be there for the retry, whose restart
gap then covers the downtime; a stream left registered would refuse the
retry, and a checkpoint consumed would lose that gap for good.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from genesys_mux import Gap, StreamEvent
from genesys_mux.emulator import Emulator
from tests.net.test_multiplexer import Collector, org_settings
from tests.state.test_restart import STREAM, a_mux, post_fault, run_once
from tests.waiting import eventually


@pytest.mark.parametrize("hangs", ["subscribing", "listing queues"])
async def test_a_cancelled_add_stream_is_undone_and_its_retry_reports_the_restart(
    hangs: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    async with Emulator(org_settings(rate=20.0)) as emulator:
        before = [i for i in await run_once(emulator, path, 10) if isinstance(i, StreamEvent)]
        mux = a_mux(emulator, path)
        await mux.start()
        try:
            assert mux.pool is not None
            assert mux.rest is not None
            entered = asyncio.Event()

            async def never_answers(*args: Any, **kwargs: Any) -> Any:
                entered.set()
                await asyncio.Event().wait()

            with monkeypatch.context() as patched:
                if hangs == "subscribing":
                    # Once the stream is restored and registered.
                    patched.setattr(mux.pool, "set_topics", never_answers)
                else:
                    # Once the stream is restored, before it is registered.
                    patched.setattr(mux.rest, "list_queues", never_answers)
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await mux.add_stream(STREAM)
                assert entered.is_set()
            assert mux.streams() == []
            retried_at = time.time()
            await mux.add_stream(STREAM)
            added_at = time.time()
            seen = Collector(mux.stream("all"))
            await eventually(lambda: len(seen.events()) >= 3)
        finally:
            await mux.stop(drain=False)
    first = seen.items[0]
    assert isinstance(first, Gap)
    assert first.reason == "restart"
    assert [g.reason for g in seen.gaps()] == ["restart"]
    assert first.start <= max(e.received_at for e in before) + 0.5
    # It ends when the retry had the topics subscribed again.
    assert retried_at <= first.end <= added_at
    # Numbering continues from the checkpoint, as if the first try never was.
    assert seen.events()[0].sequence == before[-1].sequence + 1


async def test_a_retry_while_the_first_try_s_channel_still_connects_waits_for_it(
    tmp_path: Path,
) -> None:
    """The first try planned the topics and was cut short while its channel was being made.

    The retry has nothing new to plan, but the restart gap must last until
    that channel is subscribed (here after a 429's Retry-After of 3 s), not
    end as the retry returns: the window in between would be in no gap.
    """
    path = tmp_path / "state.db"
    async with Emulator(org_settings(rate=20.0)) as emulator:
        await run_once(emulator, path, 5)
        mux = a_mux(emulator, path)
        await mux.start()
        try:
            channels = "/api/v2/notifications/channels"
            await post_fault(emulator, "http_429", count=1, retry_after_s=3, path=channels)
            tried = time.time()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await mux.add_stream(STREAM)
            await mux.add_stream(STREAM)
            returned = time.time()
            seen = Collector(mux.stream("all"))
            await eventually(lambda: len(seen.events()) >= 1)
        finally:
            await mux.stop(drain=False)
    (gap,) = seen.gaps()
    assert gap.reason == "restart"
    # The channel could not be made before the Retry-After: the gap lasts past it.
    assert tried + 3.0 <= gap.end <= returned
