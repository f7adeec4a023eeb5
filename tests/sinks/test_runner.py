"""The sink runner: batching, retries, the DLQ, stopping, and isolation between streams.

Most tests drive it with small in-memory sinks (real implementations of the
Sink protocol that record what they get); the isolation test runs two
streams of a Multiplexer against the emulator with real webhook receivers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import pytest

from genesys_mux.core.backoff import Backoff
from genesys_mux.core.streams import DeadLetter, Gap, StreamEvent
from genesys_mux.errors import ConfigError, FencedError, SinkError, SinkStartError
from genesys_mux.sinks import runner as runner_module
from genesys_mux.sinks.base import Item
from genesys_mux.sinks.runner import SinkRunner
from genesys_mux.sinks.webhook import WebhookSink
from tests.net.conftest import eventually
from tests.net.test_multiplexer import harness, org_settings
from tests.sinks.conftest import SECRET, Receiver, a_gap, real_events, source

FAST = Backoff(0.01, 0.05)


def discard(_letter: DeadLetter) -> None:
    """For runners whose test expects no dead letters, or does not look at them."""


class ListSink:
    """Keeps every batch it is given; fails according to ``errors`` first."""

    def __init__(self, name: str = "list", errors: Sequence[BaseException] = ()) -> None:
        self.name = name
        self.errors = list(errors)
        self.batches: list[list[Item]] = []
        self.attempts = 0
        self.started = 0
        self.closed = 0

    async def start(self) -> None:
        self.started += 1

    async def send(self, batch: Sequence[Item]) -> None:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        self.batches.append(list(batch))

    async def close(self) -> None:
        self.closed += 1

    def sequences(self) -> list[int]:
        return [i.sequence for b in self.batches for i in b if isinstance(i, StreamEvent)]


class GatedSink(ListSink):
    """Blocks in ``send`` until ``gate`` is set; ``entered`` says a send is in progress."""

    def __init__(self, name: str = "gated") -> None:
        super().__init__(name)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def send(self, batch: Sequence[Item]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().send(batch)


def told(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the log said of the failing sink ``hook`` (the stream of :func:`real_events`)."""
    return [r.getMessage() for r in caplog.records if "sink hook of stream" in r.getMessage()]


async def held_open(
    items: Sequence[StreamEvent | Gap], release: asyncio.Event, more: Sequence[StreamEvent] = ()
) -> AsyncIterator[StreamEvent | Gap]:
    """``items`` at once, then nothing until ``release``, then ``more`` and the end."""
    for item in items:
        yield item
    await release.wait()
    for item in more:
        yield item


async def test_batches_are_cut_at_batch_size() -> None:
    sink = ListSink()
    runner = SinkRunner(source(real_events(25)), [sink], discard, batch_size=10)
    await asyncio.wait_for(runner.run(), 10)
    assert [len(b) for b in sink.batches] == [10, 10, 5]
    assert sink.sequences() == list(range(1, 26))
    assert (runner.sent, runner.batches) == (25, 3)
    assert (sink.started, sink.closed) == (1, 1)


async def test_a_quiet_stream_sends_what_arrived_within_linger() -> None:
    release = asyncio.Event()
    events = real_events(5)
    sink = ListSink()
    runner = SinkRunner(held_open(events[:3], release, events[3:]), [sink], discard, linger_s=0.01)
    task = asyncio.create_task(runner.run())
    await eventually(lambda: len(sink.batches) == 1)
    assert [len(b) for b in sink.batches] == [3]
    release.set()
    await asyncio.wait_for(task, 10)
    assert [len(b) for b in sink.batches] == [3, 2]


async def test_retryable_failures_are_retried_with_the_same_batch() -> None:
    errors = [SinkError("down", retryable=True), SinkError("down", retryable=True)]
    sink = ListSink(errors=errors)
    failures: list[tuple[str, str]] = []
    runner = SinkRunner(source(real_events(4)), [sink], discard, backoff=FAST)
    runner.on_failure.append(lambda name, text: failures.append((name, text)))
    await asyncio.wait_for(runner.run(), 10)
    assert sink.sequences() == [1, 2, 3, 4]
    assert sink.attempts == 3
    assert runner.retries == 2
    assert runner.dead_lettered == 0
    # The failure was reported while it lasted, and cleared once the sink took the batch.
    assert runner.last_error is None
    assert runner.per_sink["list"].last_error is None
    assert [name for name, _ in failures] == ["list", "list"]
    assert failures[0][1].startswith("down (attempt 1, retrying in ")


class LateSink(ListSink):
    """A sink whose ``start`` raises each of ``start_errors`` in turn before it starts."""

    def __init__(self, name: str = "late", start_errors: Sequence[BaseException] = ()) -> None:
        super().__init__(name)
        self.start_errors = list(start_errors)
        self.start_attempts = 0

    async def start(self) -> None:
        self.start_attempts += 1
        if self.start_errors:
            raise self.start_errors.pop(0)
        await super().start()


async def counted(items: Sequence[StreamEvent | Gap], taken: list[int]) -> AsyncIterator[Item]:
    """``items``, counting in ``taken`` how many were read."""
    for item in items:
        taken.append(1)
        yield item


async def test_a_sink_that_cannot_start_yet_is_retried_counted_then_delivers() -> None:
    down = SinkError("sink late: connection refused", retryable=True)
    sink = LateSink(start_errors=[down, down, down])
    taken: list[int] = []
    failures: list[tuple[str, str]] = []
    failing: list[float | None] = []
    runner = SinkRunner(counted(real_events(6), taken), [sink], discard, backoff=FAST)
    # What /readyz and the metrics see at each failure: a sink failing since then.
    runner.on_failure.append(lambda name, text: failures.append((name, text)))
    runner.on_failure.append(lambda _n, _t: failing.append(runner.per_sink["late"].failing_since))
    read_meanwhile: list[int] = []
    runner.on_failure.append(lambda _n, _t: read_meanwhile.append(len(taken)))
    await asyncio.wait_for(runner.run(), 10)

    assert sink.start_attempts == 4
    assert sink.sequences() == [1, 2, 3, 4, 5, 6]
    # Nothing was read while the sink could not start.
    assert read_meanwhile == [0, 0, 0]
    assert [name for name, _ in failures] == ["late"] * 3
    assert failures[0][1].startswith("cannot start: connection refused (attempt 1, retrying in ")
    assert failing[0] is not None
    assert failing == [failing[0]] * 3
    assert runner.retries == runner.per_sink["late"].retries == 3
    # Started: no longer failing.
    assert runner.per_sink["late"].failing_since is None
    assert runner.last_error is None
    assert runner.dead_lettered == 0
    assert (sink.started, sink.closed) == (1, 1)


async def test_a_sink_that_cannot_start_for_good_stops_the_runner_before_reading() -> None:
    refused = SinkError("sink late: the stream 'NOPE' does not exist", retryable=False)
    sink = LateSink(start_errors=[refused])
    other = ListSink("other")
    taken: list[int] = []
    failures: list[str] = []
    runner = SinkRunner(
        counted(real_events(3), taken), [other, sink], discard, backoff=FAST, name="calls"
    )
    runner.on_failure.append(lambda _name, text: failures.append(text))
    with pytest.raises(SinkStartError) as caught:
        await asyncio.wait_for(runner.run(), 10)

    error = caught.value
    assert str(error) == "stream calls: sink late cannot start: the stream 'NOPE' does not exist"
    assert (error.stream_id, error.sink_name, error.retryable) == ("calls", "late", False)
    assert error.__cause__ is refused
    assert sink.start_attempts == 1
    assert failures == ["cannot start: the stream 'NOPE' does not exist (not retryable)"]
    # Nothing was taken from the stream: its buffer keeps every event.
    assert taken == []
    # Both sinks are closed, the one that failed to start included.
    assert (other.closed, sink.closed) == (1, 1)


async def test_a_sink_bug_on_start_is_not_retried() -> None:
    sink = LateSink(start_errors=[KeyError("servers")])
    runner = SinkRunner(source(real_events(2)), [sink], discard, backoff=FAST, name="calls")
    with pytest.raises(SinkStartError, match="sink late cannot start: unexpected KeyError"):
        await asyncio.wait_for(runner.run(), 10)
    assert sink.start_attempts == 1


async def test_a_stop_ends_the_retries_of_a_start() -> None:
    # The server asked for 30 s: far longer than the test waits.
    down = SinkError("down", retryable=True, retry_after=30.0)
    sink = LateSink(start_errors=[down] * 1000)
    failures: list[str] = []
    runner = SinkRunner(source(real_events(2)), [sink], discard, backoff=FAST)
    runner.on_failure.append(lambda _name, text: failures.append(text))
    task = asyncio.create_task(runner.run())
    await eventually(lambda: failures)
    runner.stop()
    # Stopped at once, not after the 30 s backoff.
    await asyncio.wait_for(task, 5)
    assert sink.start_attempts == 1
    assert sink.batches == []
    assert sink.closed == 1


async def test_exhausted_attempts_dead_letter_the_events_not_the_gaps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = ListSink("hook", errors=[SinkError("sink hook: HTTP 503", retryable=True)] * 3)
    letters: list[DeadLetter] = []
    events = real_events(4)
    gap = a_gap()
    runner = SinkRunner(
        source([*events[:2], gap, *events[2:]]),
        [sink],
        letters.append,
        max_attempts=3,
        backoff=FAST,
    )
    lost: list[tuple[Gap, str]] = []
    runner.on_gap_lost.append(lambda gap, why: lost.append((gap, why)))
    await asyncio.wait_for(runner.run(), 10)
    assert [d.sequence for d in letters] == [1, 2, 3, 4]
    assert {d.reason for d in letters} == {"sink_failed:hook: HTTP 503"}
    assert [d.raw for d in letters] == [e.raw for e in events]
    assert (runner.failed_batches, runner.dead_lettered, runner.sent) == (1, 4, 0)
    # The gap has no body to dead-letter: it is logged and told (the audit log hooks in).
    assert "gap of stream voice-main not delivered" in caplog.text
    assert lost == [(gap, "sink_failed:hook: HTTP 503")]


async def test_a_first_batch_retried_for_long_keeps_few_of_its_failures_texts() -> None:
    # A webhook behind a proxy naming a new request id in every answer,
    # retried for as long as the outage lasts (max_attempts None).
    errors = [SinkError(f"HTTP 502 request {n}", retryable=True) for n in range(60)]
    sink = ListSink("hook", errors=errors)
    runner = SinkRunner(source(real_events(1)), [sink], discard, backoff=FAST)
    told: list[int] = []
    runner.on_failure.append(lambda _sink, _text: told.append(len(counters.logged_reasons)))
    counters = runner.per_sink["hook"]
    await asyncio.wait_for(runner.run(), 20)
    assert len(told) == 60
    assert max(told) <= 8
    assert sink.sequences() == [1]


async def test_a_sink_that_keeps_failing_is_summed_up_in_the_log_not_line_by_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its first failed batch is told attempt by attempt; then a summary, and the recovery.

    A webhook that is down must not write two or three log lines for every
    batch of a busy stream; what the log leaves out is counted in the next
    line it writes, and every event still goes to the dead-letter queue.
    """
    caplog.set_level(logging.INFO, logger="genesys_mux")
    sink = ListSink("hook", errors=[SinkError("sink hook: HTTP 503", retryable=True)] * 30)
    letters: list[DeadLetter] = []
    runner = SinkRunner(
        source(real_events(11)), [sink], letters.append, batch_size=1, max_attempts=3, backoff=FAST
    )
    await asyncio.wait_for(runner.run(), 10)
    assert [d.sequence for d in letters] == list(range(1, 11))
    assert sink.sequences() == [11]
    said = told(caplog)
    assert len(said) == 4, said
    assert "failed (" in said[0]  # the first batch's retries...
    assert "failed a batch of 1 items after 3 attempt(s)" in said[2]  # ...and its end
    assert said[3] == (
        "sink hook of stream recovered after 1 attempt(s); since the last line: "
        "9 more batch(es) failed, 9 events to the dead-letter queue, 18 retries"
    )


async def test_a_sink_still_failing_says_so_once_per_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interval of 0: each later failed batch gets its summary line.
    monkeypatch.setattr(runner_module, "FAILURE_LOG_INTERVAL_S", 0.0)
    caplog.set_level(logging.INFO, logger="genesys_mux")
    sink = ListSink("hook", errors=[SinkError("sink hook: HTTP 503", retryable=True)] * 9)
    runner = SinkRunner(
        source(real_events(3)), [sink], discard, batch_size=1, max_attempts=3, backoff=FAST
    )
    await asyncio.wait_for(runner.run(), 10)
    said = told(caplog)
    assert (
        said[3:]
        == [
            "sink hook of stream still failing (HTTP 503); since the last line: "
            "1 more batch(es) failed, 1 events to the dead-letter queue, 2 retries"
        ]
        * 2
    )


async def test_a_new_failure_of_a_failing_sink_is_told_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """503s, then a 400 that no retry fixes: the 400 is named, not summed up as more of the same."""
    caplog.set_level(logging.INFO, logger="genesys_mux")
    unavailable = SinkError("sink hook: HTTP 503", retryable=True)
    rejected = SinkError("sink hook: HTTP 400 schema rejected: field 'x' missing", retryable=False)
    sink = ListSink("hook", errors=[unavailable] * 6 + [rejected])
    letters: list[DeadLetter] = []
    runner = SinkRunner(
        source(real_events(4)), [sink], letters.append, batch_size=1, max_attempts=3, backoff=FAST
    )
    await asyncio.wait_for(runner.run(), 10)
    assert [d.sequence for d in letters] == [1, 2, 3]
    said = told(caplog)
    assert said[3:] == [
        # The second batch's 503s were not told: counted here, before the new failure.
        "sink hook of stream failed a batch of 1 items after 1 attempt(s): "
        "HTTP 400 schema rejected: field 'x' missing; 1 events go to the dead-letter queue; "
        "since the last line: 1 more batch(es) failed, 1 events to the dead-letter queue, "
        "2 retries",
        "sink hook of stream recovered after 1 attempt(s)",
    ]


async def test_failures_not_yet_told_are_summed_up_when_the_runner_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="genesys_mux")
    sink = ListSink("hook", errors=[SinkError("sink hook: HTTP 503", retryable=True)] * 30)
    runner = SinkRunner(
        source(real_events(5)), [sink], discard, batch_size=1, max_attempts=3, backoff=FAST
    )
    await asyncio.wait_for(runner.run(), 10)
    said = told(caplog)
    assert said[3:] == [
        "sink hook of stream was still failing when its runner ended (HTTP 503); "
        "since the last line: 4 more batch(es) failed, 4 events to the dead-letter queue, "
        "8 retries"
    ]


@pytest.mark.parametrize("end", ["stop", "cancel"])
async def test_failures_not_yet_told_are_summed_up_when_the_runner_is_stopped(
    caplog: pytest.LogCaptureFixture, end: str
) -> None:
    caplog.set_level(logging.INFO, logger="genesys_mux")
    release = asyncio.Event()
    sink = ListSink("hook", errors=[SinkError("sink hook: HTTP 503", retryable=False)] * 30)
    letters: list[DeadLetter] = []
    runner = SinkRunner(
        held_open(real_events(3), release), [sink], letters.append, batch_size=1, backoff=FAST
    )
    task = asyncio.create_task(runner.run())
    await eventually(lambda: len(letters) == 3)
    if end == "stop":
        runner.stop()
        await asyncio.wait_for(task, 10)
    else:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    said = told(caplog)
    assert said[1:] == [
        "sink hook of stream was still failing when its runner ended (HTTP 503); "
        "since the last line: 2 more batch(es) failed, 2 events to the dead-letter queue, "
        "0 retries"
    ]


async def test_a_sink_alternating_between_two_failures_tells_each_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 502, a 503, a 502...: two failures, each told once, not one line per batch."""
    caplog.set_level(logging.INFO, logger="genesys_mux")
    bad_gateway = SinkError("sink hook: HTTP 502 Bad Gateway", retryable=False)
    unavailable = SinkError("sink hook: HTTP 503 Service Unavailable", retryable=False)
    sink = ListSink("hook", errors=[bad_gateway, unavailable] * 20)
    letters: list[DeadLetter] = []
    runner = SinkRunner(source(real_events(40)), [sink], letters.append, batch_size=1)
    await asyncio.wait_for(runner.run(), 10)
    assert len(letters) == 40
    told = [r.getMessage() for r in caplog.records if "failed a batch" in r.getMessage()]
    assert [("502" in m, "503" in m) for m in told] == [(True, False), (False, True)]
    # What was not told line by line is summed up as the runner ends.
    (summary,) = [r.getMessage() for r in caplog.records if "runner ended" in r.getMessage()]
    assert "38 more batch(es) failed, 38 events" in summary


async def test_a_sink_bug_costs_one_batch_not_the_stream() -> None:
    sink = ListSink(errors=[RuntimeError("boom")])
    letters: list[DeadLetter] = []
    runner = SinkRunner(source(real_events(15)), [sink], letters.append, batch_size=10)
    await asyncio.wait_for(runner.run(), 10)
    assert [d.sequence for d in letters] == list(range(1, 11))
    assert letters[0].reason == "sink_failed:list: unexpected RuntimeError: boom"
    assert sink.sequences() == list(range(11, 16))


async def test_each_sink_fails_on_its_own() -> None:
    good = ListSink("good")
    bad = ListSink("bad", errors=[SinkError("sink bad: HTTP 400", retryable=False)])
    letters: list[DeadLetter] = []
    runner = SinkRunner(
        source(real_events(15)), [bad, good], letters.append, batch_size=10, backoff=FAST
    )
    await asyncio.wait_for(runner.run(), 10)
    assert good.sequences() == list(range(1, 16))
    assert bad.sequences() == list(range(11, 16))
    assert [d.sequence for d in letters] == list(range(1, 11))
    assert runner.sent == 5  # items that every sink took
    stats = runner.stats()
    assert stats["sinks"] == {
        "bad": {
            "sent": 5,
            "failed_batches": 1,
            "dead_lettered": 10,
            "retries": 0,
            # It took the next batch: the failure is history (the counts keep it).
            "last_error": None,
        },
        "good": {
            "sent": 15,
            "failed_batches": 0,
            "dead_lettered": 0,
            "retries": 0,
            "last_error": None,
        },
    }


async def test_stop_while_idle_returns_promptly() -> None:
    release = asyncio.Event()
    sink = ListSink()
    runner = SinkRunner(held_open(real_events(5), release), [sink], discard)
    task = asyncio.create_task(runner.run())
    await eventually(lambda: runner.sent == 5)
    runner.stop()
    await asyncio.wait_for(task, 5)
    assert sink.closed == 1


async def test_stop_finishes_the_current_batch() -> None:
    release = asyncio.Event()
    sink = GatedSink()
    letters: list[DeadLetter] = []
    runner = SinkRunner(held_open(real_events(5), release), [sink], letters.append)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(sink.entered.wait(), 5)
    runner.stop()
    assert not task.done()
    sink.gate.set()
    await asyncio.wait_for(task, 5)
    assert sink.sequences() == [1, 2, 3, 4, 5]
    assert letters == []


async def test_stop_gives_a_failing_batch_only_the_grace_period() -> None:
    sink = ListSink("redis", errors=[SinkError("sink redis: refused", retryable=True)] * 10_000)
    letters: list[DeadLetter] = []
    runner = SinkRunner(
        source(real_events(3)),
        [sink],
        letters.append,
        max_attempts=None,
        backoff=Backoff(0.05, 0.05),
        stop_grace_s=0.2,
    )
    task = asyncio.create_task(runner.run())
    await eventually(lambda: runner.retries >= 3)
    runner.stop()
    await asyncio.wait_for(task, 5)
    assert [d.sequence for d in letters] == [1, 2, 3]
    assert letters[0].reason == "sink_failed:redis: refused (stopped while retrying)"


async def test_cancelling_the_runner_dead_letters_the_batch_in_hand() -> None:
    release = asyncio.Event()
    sink = GatedSink()
    letters: list[DeadLetter] = []
    runner = SinkRunner(held_open(real_events(4), release), [sink], letters.append)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(sink.entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [d.sequence for d in letters] == [1, 2, 3, 4]
    assert letters[0].reason == "sink_failed:gated: cancelled"
    assert sink.closed == 1


async def test_a_failing_callback_does_not_stop_delivery() -> None:
    sink = ListSink(errors=[SinkError("x", retryable=True)])
    runner = SinkRunner(source(real_events(2)), [sink], discard, backoff=FAST)

    def broken(_name: str, _text: str) -> None:
        raise ValueError("audit log is broken")

    runner.on_failure.append(broken)
    await asyncio.wait_for(runner.run(), 5)
    assert sink.sequences() == [1, 2]


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="at least one sink"):
        SinkRunner(source([]), [], discard)
    with pytest.raises(ConfigError, match="unique"):
        SinkRunner(source([]), [ListSink("a"), ListSink("a")], discard)
    with pytest.raises(ConfigError, match="batch_size"):
        SinkRunner(source([]), [ListSink()], discard, batch_size=0)
    with pytest.raises(ConfigError, match="max_attempts"):
        SinkRunner(source([]), [ListSink()], discard, max_attempts=0)


async def test_a_slow_sink_holds_back_only_its_own_stream() -> None:
    async with (
        Receiver(hang=True) as slow_rx,
        Receiver() as fast_rx,
        harness(org_settings(rate=20.0), buffer_threshold=5000) as h,
    ):
        # Both streams see the same conversations; only the sinks differ.
        await h.mux.add_stream({"id": "slow", "filter": {}})
        await h.mux.add_stream({"id": "fast", "filter": {}})
        slow = SinkRunner(
            h.mux.stream("slow"),
            [WebhookSink(slow_rx.url, SECRET, timeout_s=1.0, name="slow-hook")],
            h.mux.dead_letter,
            max_attempts=None,
            backoff=FAST,
            stop_grace_s=0.0,
            name="slow",
        )
        fast = SinkRunner(
            h.mux.stream("fast"),
            [WebhookSink(fast_rx.url, SECRET, timeout_s=1.0, name="fast-hook")],
            h.mux.dead_letter,
            name="fast",
        )
        tasks = [asyncio.create_task(slow.run()), asyncio.create_task(fast.run())]

        await asyncio.wait_for(slow_rx.got_request.wait(), 30)
        before = len(fast_rx.accepted_sequences())
        # While the slow sink hangs and is retried, the other stream flows...
        await eventually(
            lambda: slow.retries >= 2 and len(fast_rx.accepted_sequences()) >= before + 50,
            within=30,
        )
        assert slow.sent == 0
        assert slow_rx.accepted == []
        # ...and the slow stream's backlog waits in its own buffer.
        stats = h.mux.stats()["streams"]
        assert stats["slow"].buffered > 0
        assert stats["slow"].dead_lettered == 0
        assert stats["fast"].dead_lettered == 0
        fast_sequences = fast_rx.accepted_sequences()
        assert fast_sequences == list(range(1, len(fast_sequences) + 1))

        slow.stop()
        fast.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        # The batch the slow sink never took is in the DLQ, not lost.
        slow_letters = [d for d in h.dlq.letters if d.stream_id == "slow"]
        assert slow_letters
        assert all(d.reason.startswith("sink_failed:slow-hook: ") for d in slow_letters)
        assert fast_rx.bad_signatures == 0


async def test_last_error_shows_a_failure_while_it_lasts() -> None:
    sink = GatedSink()
    sink.errors = [SinkError("down", retryable=True)]
    sink.gate.set()
    release = asyncio.Event()
    runner = SinkRunner(
        held_open(real_events(2), release, real_events(1, start=3)),
        [sink],
        discard,
        backoff=FAST,
        linger_s=0.0,
    )
    seen: list[str | None] = []
    runner.on_failure.append(lambda _name, _text: seen.append(runner.last_error))
    task = asyncio.create_task(runner.run())
    await eventually(lambda: runner.sent == 2)
    assert seen == ["gated: down"]  # set while failing
    assert runner.last_error is None  # cleared by the next success
    release.set()
    await asyncio.wait_for(task, 10)


async def test_a_sink_refusing_the_fence_is_failing_until_the_runner_ends() -> None:
    """Fenced batches are left to the new owner; if the runner goes on, readiness must see it.

    Normally the stream stops here within a round (its lease is lost). A
    runner refused for longer has nobody newer behind it; only its end (the
    stream stopped or moved) clears the failure.
    """
    sink = ListSink("hook", errors=[FencedError("refused fencing token 3")] * 2)
    release = asyncio.Event()
    runner = SinkRunner(
        held_open(real_events(2), release, real_events(2, start=3)),
        [sink],
        discard,
        batch_size=2,
        linger_s=0.0,
    )
    task = asyncio.create_task(runner.run())
    await eventually(lambda: sink.attempts == 1)
    counters = runner.per_sink["hook"]
    assert counters.fenced == 2
    assert counters.failing_since is not None
    assert runner.last_error == "hook: refused fencing token 3"
    release.set()
    await asyncio.wait_for(task, 10)
    assert counters.fenced == 4
    assert counters.failing_since is None
