"""Sinks of one stream that batch and retry differently: one runner per batching behind a tee."""

from __future__ import annotations

import asyncio

import pytest

from genesys_mux.core.streams import DeadLetter, Gap, StreamEvent
from genesys_mux.errors import ConfigError, SinkError
from genesys_mux.sinks.base import Batching
from genesys_mux.sinks.fanout import SinkFanOut, deliver_stream
from genesys_mux.sinks.runner import SinkRunner
from tests.net.conftest import eventually
from tests.sinks.conftest import a_gap, real_events, source
from tests.sinks.test_runner import FAST, GatedSink, ListSink, discard, held_open


async def test_sinks_that_batch_alike_share_one_runner() -> None:
    a, b = ListSink("a"), ListSink("b")
    delivery = deliver_stream(source([]), [(a, Batching(10)), (b, Batching(10))], discard)
    assert isinstance(delivery, SinkRunner)
    assert delivery.sinks == (a, b)


async def test_each_sink_gets_its_own_batch_size_and_everything_in_order() -> None:
    events = real_events(23)
    small, large = ListSink("small"), ListSink("large")
    delivery = deliver_stream(
        source([*events[:10], a_gap(), *events[10:]]),
        [(small, Batching(batch_size=2, linger_s=0.0)), (large, Batching(batch_size=10))],
        discard,
    )
    assert isinstance(delivery, SinkFanOut)
    await asyncio.wait_for(delivery.run(), 10)
    expected = [e.sequence for e in events]
    assert small.sequences() == expected
    assert large.sequences() == expected
    assert max(len(b) for b in small.batches) == 2
    assert max(len(b) for b in large.batches) > 2
    assert all(len(b) <= 10 for b in large.batches)
    assert delivery.sent == 24  # 23 events and the gap, taken by every sink
    assert delivery.per_sink["small"].sent == delivery.per_sink["large"].sent == 24


async def test_each_sink_gets_its_own_attempts() -> None:
    events = real_events(4)
    letters: list[DeadLetter] = []
    flaky = ListSink("flaky", errors=[SinkError("down", retryable=True)])
    patient = ListSink("patient", errors=[SinkError("down", retryable=True)] * 3)
    delivery = deliver_stream(
        source(events),
        [
            (flaky, Batching(batch_size=10, linger_s=0.0, max_attempts=1)),
            (patient, Batching(batch_size=10, linger_s=0.0, max_attempts=None)),
        ],
        letters.append,
        backoff=FAST,
    )
    await asyncio.wait_for(delivery.run(), 10)
    # One attempt: the first batch is dead-lettered for "flaky" alone...
    assert {d.reason.split(":")[1] for d in letters} == {"flaky"}
    assert delivery.per_sink["flaky"].dead_lettered == len(letters) >= 1
    # ... while "patient" keeps trying until its batches go through.
    assert patient.sequences() == [e.sequence for e in events]
    assert delivery.per_sink["patient"].retries == 3
    assert delivery.dead_lettered == len(letters)


async def test_a_stop_dead_letters_what_was_queued_for_a_stuck_group() -> None:
    """What the tee took from the stream is delivered or dead-lettered, per group."""
    events = real_events(12)
    release = asyncio.Event()
    letters: list[DeadLetter] = []
    stuck, quick = GatedSink("stuck"), ListSink("quick")
    delivery = deliver_stream(
        held_open(events, release),
        [(stuck, Batching(batch_size=3, linger_s=0.0)), (quick, Batching(batch_size=50))],
        letters.append,
        stop_grace_s=0.0,
    )
    assert isinstance(delivery, SinkFanOut)
    task = asyncio.create_task(delivery.run())
    await stuck.entered.wait()
    # The quick group is held back by no more than the stuck group's queue.
    await eventually(lambda: len(quick.sequences()) >= 3 + 3)
    delivery.stop()
    stuck.gate.set()
    await asyncio.wait_for(task, 10)
    for sink in (stuck, quick):
        lost = {d.sequence for d in letters if d.reason.startswith(f"sink_failed:{sink.name}")}
        taken = set(sink.sequences())
        assert not taken & lost
        # Nothing the tee read is missing for either sink.
        read = max(taken | lost)
        assert taken | lost == set(range(1, read + 1))
    assert any(d.reason == "sink_failed:stuck: stopped" for d in letters)


async def test_a_stop_tells_of_a_gap_queued_for_a_stuck_group() -> None:
    """A gap has no body to dead-letter: the fan-out's stop hands it to ``on_gap_lost``."""
    events = real_events(6)
    gap = a_gap()
    release = asyncio.Event()
    stuck, quick = GatedSink("stuck"), ListSink("quick")
    delivery = deliver_stream(
        held_open([events[0], gap, *events[1:]], release),
        [(stuck, Batching(batch_size=1, linger_s=0.0)), (quick, Batching(batch_size=50))],
        discard,
        stop_grace_s=0.0,
    )
    assert isinstance(delivery, SinkFanOut)
    lost: list[tuple[Gap, str]] = []
    delivery.on_gap_lost.append(lambda gap, why: lost.append((gap, why)))
    task = asyncio.create_task(delivery.run())
    await stuck.entered.wait()  # on the first event: the gap waits in its queue
    await eventually(lambda: any(item is gap for batch in quick.batches for item in batch))
    delivery.stop()
    stuck.gate.set()
    await asyncio.wait_for(task, 10)
    assert lost == [(gap, "sink_failed:stuck: stopped")]


async def test_a_group_that_gives_up_every_batch_does_not_make_the_others_hold_their_gaps() -> None:
    """Its gaps never settle there; those before an event both groups settled are done with."""
    events = real_events(200)
    items: list[StreamEvent | Gap] = []
    for event in events:
        items += [event, a_gap()]
    refused = [SinkError("HTTP 400", retryable=False)] * len(items)
    broken, healthy = ListSink("broken", errors=refused), ListSink("healthy")
    delivery = deliver_stream(
        source(items),
        [
            (broken, Batching(batch_size=4, linger_s=0.0, max_attempts=1)),
            (healthy, Batching(batch_size=10, linger_s=0.0)),
        ],
        discard,
    )
    assert isinstance(delivery, SinkFanOut)
    settled: list[int] = []
    delivery.on_settled.append(settled.append)
    await asyncio.wait_for(delivery.run(), 10)
    assert settled[-1] == events[-1].sequence
    # At most the last gap, after the last event, is still open.
    assert [len(gaps) <= 1 for gaps in delivery._group_gaps] == [True, True]
    assert len(delivery._open_gaps) <= 1


async def test_cancelling_dead_letters_the_item_in_the_tee() -> None:
    events = real_events(8)
    letters: list[DeadLetter] = []
    stuck, other = GatedSink("stuck"), ListSink("other")
    delivery = deliver_stream(
        source(events),
        [(stuck, Batching(batch_size=1, linger_s=0.0)), (other, Batching(batch_size=5))],
        letters.append,
    )
    task = asyncio.create_task(delivery.run())
    await stuck.entered.wait()
    await eventually(lambda: len(other.sequences()) >= 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Whatever the tee read reached every group or its dead letters.
    read = max(d.sequence for d in letters)
    for sink in (stuck, other):
        lost = [d.sequence for d in letters if d.reason.startswith(f"sink_failed:{sink.name}")]
        assert len(lost) == len(set(lost)), "dead-lettered twice for one sink"
        assert set(sink.sequences()) | set(lost) >= set(range(1, read + 1))


async def test_a_sink_that_cannot_start_stops_the_fan_out() -> None:
    class Unstartable(ListSink):
        async def start(self) -> None:
            raise SinkError("no such host", retryable=False)

    quick = ListSink("quick")
    delivery = deliver_stream(
        source(real_events(3)),
        [(Unstartable("broken"), Batching(batch_size=1)), (quick, Batching(batch_size=5))],
        discard,
    )
    with pytest.raises(SinkError, match="no such host"):
        await asyncio.wait_for(delivery.run(), 10)


def test_sink_names_must_be_unique_across_groups() -> None:
    with pytest.raises(ConfigError, match="unique"):
        deliver_stream(
            source([]), [(ListSink("x"), Batching(1)), (ListSink("x"), Batching(2))], discard
        )
