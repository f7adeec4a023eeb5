"""Callbacks beside readers: what each one takes, and a draining stop that waits for them.

Each test is a mistake a user made with the documented API: a gap
callback next to a stream reader, an event callback next to one, a slow
async callback at a draining stop, a callback that stops the multiplexer.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from genesys_mux import Gap, InvalidStateError, StreamEvent
from tests.net.conftest import eventually
from tests.net.test_multiplexer import Collector, harness, org_settings


async def test_a_gap_callback_takes_nothing_from_a_stream_reader() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        told: list[Gap] = []
        h.mux.on_gap(told.append)
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 20)
        await h.control("faults", {"fault": "drop_socket"})
        await eventually(lambda: told and seen.gaps() and len(seen.events()) >= 40)
        # The reader has every event it was handed, numbered without a hole,
        # and the gap in its place as well as in the callback.
        sequences = [e.sequence for e in seen.events()]
        assert sequences == list(range(1, len(sequences) + 1))
        assert h.mux.stats()["streams"]["all"].delivered == len(sequences)
        assert told == seen.gaps()[: len(told)]
        seen.stop()


async def test_event_callbacks_and_readers_are_not_mixed() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        h.mux.stream("all")
        with pytest.raises(InvalidStateError, match="events\\(\\)/stream\\(\\)"):
            h.mux.on_event(lambda event: None)
        h.mux.on_gap(lambda gap: None)  # a gap callback goes with either
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        h.mux.on_event(lambda event: None)
        with pytest.raises(InvalidStateError, match="on_event"):
            h.mux.stream("all")
        with pytest.raises(InvalidStateError, match="on_event"):
            h.mux.events()


async def test_a_gap_callback_alone_leaves_the_events_buffered() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        h.mux.on_gap(lambda gap: None)
        await eventually(lambda: h.mux.stats()["streams"]["all"].buffered >= 10)
        assert h.mux.stats()["streams"]["all"].delivered == 0


async def test_gap_and_event_callbacks_each_get_theirs() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        gaps: list[Gap] = []
        events: list[StreamEvent] = []

        async def on_gap(gap: Gap) -> None:
            gaps.append(gap)

        h.mux.on_gap(on_gap)
        h.mux.on_event(events.append)
        await eventually(lambda: len(events) >= 5)
        await h.control("faults", {"fault": "drop_socket"})
        await eventually(lambda: len(gaps) == 1)
        await eventually(lambda: len(events) >= 20)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert gaps[0].stream_id == "all"


async def test_a_draining_stop_lets_the_async_callback_finish_its_event() -> None:
    async with harness(org_settings(rate=15.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        started: list[int] = []
        finished: list[int] = []

        async def handle(event: StreamEvent) -> None:
            started.append(event.sequence)
            await asyncio.sleep(0.2)  # the callback's own work, not synchronisation
            finished.append(event.sequence)

        h.mux.on_event(handle)
        await eventually(lambda: len(finished) >= 3)
        await h.mux.stop(drain=True, timeout_s=30)
        assert started == finished
        assert h.dlq.letters == []
        assert h.mux.stats()["streams"]["all"].delivered == len(finished)


async def test_a_callback_may_stop_the_multiplexer_it_is_called_by() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        stopped = asyncio.Event()

        async def handle(event: StreamEvent) -> None:
            if event.sequence == 3:
                await h.mux.stop(drain=True, timeout_s=30)
                stopped.set()

        h.mux.on_event(handle)
        begun = time.monotonic()
        await asyncio.wait_for(stopped.wait(), 20)
        assert time.monotonic() - begun < 15, "the stop waited for the callback that awaited it"


async def test_a_stop_a_callback_starts_as_a_task_delivers_the_rest() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        events: list[StreamEvent] = []
        stoppers: list[asyncio.Task[None]] = []

        def handle(event: StreamEvent) -> None:
            events.append(event)
            if len(events) == 3:
                stoppers.append(asyncio.create_task(h.mux.stop(drain=True, timeout_s=30)))

        h.mux.on_event(handle)
        await eventually(lambda: stoppers)
        async with asyncio.timeout(15):
            await stoppers[0]
        assert h.dlq.letters == []
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        assert h.mux.stats()["streams"]["all"].delivered == len(events)


async def test_a_gap_the_gap_callbacks_are_still_given_holds_the_watermark() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        told: list[Gap] = []
        release = asyncio.Event()

        async def slow(gap: Gap) -> None:
            await release.wait()
            told.append(gap)

        h.mux.on_gap(slow)
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 3)
        await h.control("faults", {"fault": "drop_socket"})
        await eventually(lambda: seen.gaps())
        (gap,) = seen.gaps()
        # The reader went past the gap: only the gap callback holds it.
        after = len(seen.events())
        await eventually(lambda: len(seen.events()) >= after + 3)
        assert h.mux.watermark("all") <= gap.start
        release.set()
        await eventually(lambda: told == [gap])
        await eventually(lambda: h.mux.watermark("all") > gap.end)
        seen.stop()


async def test_a_callback_may_stop_the_multiplexer_while_a_stop_is_under_way() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        called: list[int] = []

        async def handle(event: StreamEvent) -> None:
            await asyncio.sleep(0.1)  # the callback's own work, not synchronisation
            if not h.mux.running and not called:
                called.append(event.sequence)
                await h.mux.stop(drain=True, timeout_s=30)

        h.mux.on_event(handle)
        await eventually(lambda: h.mux.stats()["streams"]["all"].delivered >= 3)
        begun = time.monotonic()
        await h.mux.stop(drain=True, timeout_s=30)
        assert called
        assert time.monotonic() - begun < 15, "the stop waited for the callback that awaited it"


async def test_an_event_its_callback_fails_on_is_dead_lettered_not_forgotten() -> None:
    """A callback that raises did not handle its event: it goes to the DLQ, named.

    The feed goes on (the next event is called as usual), and the events the
    callbacks handled are not dead-lettered.
    """
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        handled: list[StreamEvent] = []
        failed: list[StreamEvent] = []

        async def flaky(event: StreamEvent) -> None:
            if event.sequence % 3 == 0:
                failed.append(event)
                raise ValueError("the consumer's own bug")
            handled.append(event)

        h.mux.on_event(flaky)
        await eventually(lambda: len(failed) >= 3 and len(handled) >= 6)
        # Handed over, and the stream's own dead letters.
        counters = h.mux.stats()["streams"]["all"]
        assert counters.delivered == len(handled) + len(failed)
        assert counters.dead_lettered == len(failed)
    # (The stop dead-letters what was still buffered, as "stopped".)
    letters = [d for d in h.dlq.letters if d.reason.startswith("callback_failed:")]
    assert {(d.stream_id, d.sequence) for d in letters} == {
        (e.stream_id, e.sequence) for e in failed
    }
    assert {d.reason for d in letters} == {f"callback_failed:{flaky.__qualname__}: ValueError"}
    assert not {d.sequence for d in h.dlq.letters} & {e.sequence for e in handled}


async def test_a_failure_counts_against_the_stream_it_came_from_not_its_replacement() -> None:
    """The stream is removed and added again while its callback holds an event, which then fails."""
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        holding = asyncio.Event()
        release = asyncio.Event()
        held: list[StreamEvent] = []

        async def slow_then_fails(event: StreamEvent) -> None:
            if not held:
                held.append(event)
                holding.set()
                await release.wait()
                raise ValueError("the consumer's own bug")
            await asyncio.Event().wait()  # nothing more is taken

        h.mux.on_event(slow_then_fails)
        await asyncio.wait_for(holding.wait(), 20)
        await h.mux.remove_stream("all")
        await h.mux.add_stream({"id": "all", "filter": {}})
        replacement = h.mux._streams["all"].stream
        await eventually(lambda: replacement.events_buffered >= 1)
        release.set()
        failed = "callback_failed:"
        await eventually(lambda: any(d.reason.startswith(failed) for d in h.dlq.letters))
        # Its letter is written; the new stream's counts and records are untouched.
        assert replacement.counters.dead_lettered == 0
        assert replacement.counters.delivered >= 0
        (letter,) = [d for d in h.dlq.letters if d.reason.startswith(failed)]
        assert (letter.sequence, letter.idempotency_key) == (
            held[0].sequence,
            held[0].idempotency_key,
        )
