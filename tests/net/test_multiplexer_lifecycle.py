"""The Multiplexer's life: one start, one stop however many ask, nothing after it.

Each test is a mistake a user made with the documented API: calls after a
stop, two stops at once, a second start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from genesys_mux import Gap, InvalidStateError, Multiplexer
from genesys_mux.emulator import Emulator
from genesys_mux.sinks.dlq import MemoryDeadLetterQueue
from tests.net.conftest import eventually, stand_in
from tests.net.test_auth import hanging_login
from tests.net.test_multiplexer import FAST_POOL, Collector, org_settings
from tests.sinks.conftest import free_port


def a_mux(emulator: Emulator, **options: Any) -> Multiplexer:
    return Multiplexer(
        client_id="demo-client",
        client_secret="demo-secret",
        base_url=emulator.base_url,
        pool_settings=FAST_POOL,
        dlq=options.pop("dlq", None) or MemoryDeadLetterQueue(),
        **options,
    )


# -- stop --------------------------------------------------------------------------


async def test_two_stops_at_once_are_one_stop_and_a_later_one_hurries_it() -> None:
    async with Emulator(org_settings()) as emulator:
        mux = a_mux(emulator)
        await mux.start()
        await mux.add_stream({"id": "all", "filter": {}})
        await eventually(lambda: mux.stats()["streams"]["all"].buffered >= 10)
        begun = time.monotonic()
        # Nobody reads: a draining stop alone would wait its 30 s; the later
        # stop without drain says not to wait for consumers any more.
        await asyncio.gather(mux.stop(drain=True, timeout_s=30), mux.stop(drain=False))
        assert time.monotonic() - begun < 15
        assert not mux.running
        letters = mux.dead_letters
        assert [d.sequence for d in letters] == list(range(1, len(letters) + 1))
        assert {d.reason for d in letters} == {"stopped"}
        await mux.stop()  # and one after it is harmless


async def test_a_stop_in_progress_never_hides_the_users_own_error() -> None:
    """A signal handler's stop task, then the ``async with`` block left with an error."""
    stoppers: list[asyncio.Task[None]] = []

    async def run(emulator: Emulator) -> None:
        async with a_mux(emulator) as mux:
            await mux.add_stream({"id": "all", "filter": {}})
            await eventually(lambda: mux.stats()["streams"]["all"].buffered >= 5)
            stoppers.append(asyncio.create_task(mux.stop(drain=True, timeout_s=30)))
            await eventually(lambda: not mux.running)
            raise ValueError("the user's own")

    async with Emulator(org_settings()) as emulator:
        begun = time.monotonic()
        with pytest.raises(ValueError, match="the user's own"):
            await run(emulator)
        await stoppers[0]
        assert time.monotonic() - begun < 15


# -- calls out of turn --------------------------------------------------------------


async def test_every_call_that_needs_a_running_multiplexer_says_so_after_stop() -> None:
    async with Emulator(org_settings()) as emulator:
        mux = a_mux(emulator)
        await mux.start()
        await mux.add_stream({"id": "all", "filter": {}})
        await mux.stop(drain=False)
        gap = Gap("all", 1.0, 2.0, frozenset({"v2.users.u.conversations"}), "", "reconnect")
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "add_stream": lambda: mux.add_stream({"id": "more", "filter": {}}),
            "remove_stream": lambda: mux.remove_stream("all"),
            "activate": lambda: mux.activate("all"),
            "handover": lambda: mux.handover("all"),
            "backfill": lambda: mux.backfill(gap),
            "refresh_queues": lambda: mux.refresh_queues(),
            "count_queues": lambda: mux.count_queues(),
            "checkpoint": lambda: mux.checkpoint(),
        }
        for name, call in calls.items():
            with pytest.raises(InvalidStateError, match=r"not running.*stopped"):
                async with asyncio.timeout(5):
                    await call()
            assert [s.id for s in mux.streams()] == ["all"], name
        with pytest.raises(InvalidStateError, match="stopped"):
            mux.on_event(lambda event: None)
        with pytest.raises(InvalidStateError, match="stopped"):
            mux.on_gap(lambda gap: None)
        # Reading what is left, and looking, still work.
        assert [item async for item in mux.stream("all")] == []
        assert "all" in mux.stats()["streams"]
        queues = len(emulator.centre.queues)
        assert (mux.topic_counts(), mux.queue_count) == ({"all": queues}, queues)


async def test_add_stream_while_stopping_says_so() -> None:
    async with Emulator(org_settings()) as emulator:
        mux = a_mux(emulator)
        await mux.start()
        await mux.add_stream({"id": "all", "filter": {}})
        # A reader that settles itself holds the stop until it settles.
        seen = Collector(mux.stream("all", settle=False))
        await eventually(lambda: len(seen.events()) >= 3)
        stopper = asyncio.create_task(mux.stop(drain=True, timeout_s=30))
        await eventually(lambda: not mux.running)
        with pytest.raises(InvalidStateError, match=r"not running.*stopping"):
            async with asyncio.timeout(5):
                await mux.add_stream({"id": "more", "filter": {}})
        assert not stopper.done()
        await eventually(lambda: not mux.stats()["streams"]["all"].buffered)
        mux.settle("all", seen.events()[-1].sequence)
        async with asyncio.timeout(10):
            await stopper


async def test_a_multiplexer_starts_once() -> None:
    async with Emulator(org_settings()) as emulator:
        mux = a_mux(emulator)
        await mux.start()
        tasks = set(asyncio.all_tasks())
        with pytest.raises(InvalidStateError, match="already running"):
            await mux.start()
        assert set(asyncio.all_tasks()) == tasks, "the refused start left tasks behind"
        await mux.stop(drain=False)
        with pytest.raises(InvalidStateError, match=r"not running.*stopped"):
            await mux.start()
        assert mux.pool is not None
        assert not mux.running


async def test_a_start_cancelled_during_its_first_login_leaves_no_token_request() -> None:
    """The request is shielded from its callers; the stop that follows must end it.

    Left running, it retried against the closed session and logged a
    spurious warning for each attempt.
    """
    app, calls = hanging_login(answered=0)
    async with stand_in(app, free_port()) as base:
        mux = Multiplexer(client_id="id", client_secret="secret", base_url=base)
        starting = asyncio.create_task(mux.start())
        await eventually(lambda: len(calls) == 1)
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        left = [
            t
            for t in asyncio.all_tasks()
            if t.get_name() == "genesys-mux-token-refresh" and not t.done()
        ]
        assert left == []
