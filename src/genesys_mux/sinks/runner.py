"""Feeding one stream's items to its sinks: batching, retries, and the dead-letter queue.

Theory of operation
-------------------
A :class:`SinkRunner` serves exactly one stream. It reads that stream's
items (``Multiplexer.stream(id)``, events and gaps in order), forms batches
and hands each batch to every sink of the stream in turn.

Batching: a batch starts with the next item, however long that takes, then
takes whatever else arrives within ``linger_s``, up to ``batch_size``. A busy
stream thus sends full batches; a quiet one sends each event after at most
``linger_s``.

The items are read by one reader task per runner, which pulls from the
stream only while the runner asks for a batch and stops once the batch is
full. Items that are already there are taken in one go, without a timer or a
task each; the linger timer only runs while the reader waits for the stream.
When the linger ends, a read in progress is never cancelled (cancelling it
would finalise an async-generator source and lose the item it was about to
produce): its item starts the next batch.

Backpressure: the runner holds at most one batch (plus the one item being
fetched) and reads the next only once every sink has dealt with the current
one. While a sink is slow or failing, new items wait in the stream's own
bounded buffer, whose overflow policy decides what happens next; nothing
else is held back. Other streams have their own buffers and their own
runners, so one slow sink never delays another stream. (The Multiplexer's
dispatcher never waits on a buffer.)

Failures: a sink raises :class:`~genesys_mux.errors.SinkError`. When it is
retryable the *same* batch is sent again after a full-jitter backoff, or
after the server's ``retry_after`` hint when it gave one, up to
``max_attempts`` attempts per sink and batch (None: until it works, which
suits a Redis that is restarting). A non-retryable failure, or running out
of attempts, ends that batch for that sink: each *event* of the batch is
written to the dead-letter queue with the reason
``sink_failed:<sink>: <short reason>``, and the runner carries on with the
next sink and the next batch. Gaps are not events, so they cannot be
dead-lettered; an undeliverable gap is logged at WARNING with its window
and given to the ``on_gap_lost`` callbacks (the audit log hooks in). An
unexpected exception from a sink (a bug) is treated as a non-retryable
failure, so it costs one batch, not the stream. Delivery is at-least-once:
a re-sent batch may reach the service twice (identified by
``idempotency_key``), and an event can be dead-lettered once per failing
sink.

Starting: the runner starts its sinks before it reads anything. A sink
whose ``start`` fails retryably (its server is not up yet) is started again
after the same backoff, for as long as it takes; each failure is counted and
reported like a failed send, so the sink shows as failing on ``/readyz``, in
the metrics and in the audit log, and the stream's items wait in its buffer.
A non-retryable failure (a missing destination, a refused login) raises
:class:`~genesys_mux.errors.SinkStartError`: no wait fixes configuration.

Stopping: :meth:`SinkRunner.stop` lets the current batch finish. A batch
still being retried then gets ``stop_grace_s`` more before it is
dead-lettered, so a stop never hangs on a dead service. Items not yet read
stay in the stream's buffer (the Multiplexer dead-letters them with
``stopped`` when it stops). If the runner task is cancelled outright, the
events of the batch in hand are dead-lettered (``... cancelled``): whatever
it took from the stream, it either delivered or dead-lettered.

Every failed attempt is reported to the ``on_failure`` callbacks as
``(sink_name, error_text)`` (the audit log hooks in here; the backoff keeps
them to a few a minute per stream) and counted for the status page.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from genesys_mux.core.backoff import Backoff, Retries
from genesys_mux.core.streams import DeadLetter, Gap, StreamEvent
from genesys_mux.errors import (
    ConfigError,
    FencedError,
    InvalidStateError,
    SinkError,
    SinkStartError,
)
from genesys_mux.sinks.base import Item, Sink

__all__ = ["SEND_BUCKETS", "SinkCounters", "SinkRunner"]

log = logging.getLogger("genesys_mux.sinks.runner")

#: What a settle callback takes: a sequence number, or a gap.
_T = TypeVar("_T")

#: Longest failure text kept in a dead letter's reason and in ``last_error``.
REASON_CHARS: Final = 200
#: Seconds between the log lines of a sink that keeps failing, after the
#: lines of its first failed batch (the audit log has a line a second).
FAILURE_LOG_INTERVAL_S: Final = 10.0
#: Distinct failures of one run of failures told at once, each the first
#: time; the rest are summed up every FAILURE_LOG_INTERVAL_S (a failure
#: naming a new address or request id each time must not flood the log).
_TOLD_REASONS: Final = 8
#: Upper bounds in seconds of the buckets of :attr:`SinkCounters.send_buckets`:
#: a local Redis answers in a millisecond, a webhook over the internet in
#: tens or hundreds, and a struggling one hits its timeout.
SEND_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(slots=True)
class SinkCounters:
    """What one sink of a runner has done."""

    #: Items the sink took.
    sent: int = 0
    #: Batches the sink finally failed (each one dead-lettered).
    failed_batches: int = 0
    #: Events dead-lettered because of this sink.
    dead_lettered: int = 0
    #: Events of batches the sink refused by fencing (another instance owns the stream).
    fenced: int = 0
    #: Attempts that were retried.
    retries: int = 0
    #: The current failure: set when a send fails, cleared when one succeeds.
    last_error: str | None = None
    #: Monotonic time of the first failure of the current run of failures.
    failing_since: float | None = None
    #: How long each ``send`` of a batch took, failed or not: a count per
    #: bucket of :data:`SEND_BUCKETS` (not cumulative), the last one for
    #: longer sends; and their total in seconds.
    send_buckets: list[int] = field(default_factory=lambda: [0] * (len(SEND_BUCKETS) + 1))
    send_seconds: float = 0.0
    #: While failing, after the first failed batch, what the log has not said
    #: line by line: batches given up, their events, retries; when it last
    #: said it, and the failure it named then (see SinkRunner._deliver_to).
    unlogged_batches: int = 0
    unlogged_events: int = 0
    unlogged_retries: int = 0
    logged_at: float = 0.0
    logged_reason: str | None = None
    #: Every failure told while this run of failures lasts (at most
    #: _TOLD_REASONS): a sink alternating between two (a 502, a 503) is
    #: told each once, not at every batch.
    logged_reasons: set[str] = field(default_factory=set)

    def observe_send(self, seconds: float) -> None:
        """Count one ``send`` that took ``seconds``."""
        self.send_buckets[bisect.bisect_left(SEND_BUCKETS, seconds)] += 1
        self.send_seconds += seconds


class SinkRunner:
    """Reads one stream and delivers it, batched, to its sinks. Start with :meth:`run`.

    ``dead_letter`` receives the events a sink could not take (wire it to
    ``Multiplexer.dead_letter``). ``batch_size`` and ``linger_s`` shape the
    batches; ``max_attempts`` caps the attempts per sink and batch (None: no
    cap); ``backoff`` times the retries (default ``Backoff(0.2, 10.0)``).
    ``stop_grace_s`` is how long a failing batch may still be retried after
    :meth:`stop`. With ``own_sinks`` (default) the runner starts the sinks
    when it starts and closes them when it ends; ``start_attempts`` caps the
    attempts to start each (None, the default: until it starts or the runner
    stops; a finite run, such as a replay, must not wait for ever). ``name``
    labels the logs, usually the stream id.
    """

    def __init__(
        self,
        stream_items: AsyncIterator[StreamEvent | Gap],
        sinks: Sequence[Sink],
        dead_letter: Callable[[DeadLetter], None],
        *,
        batch_size: int = 100,
        linger_s: float = 0.05,
        max_attempts: int | None = None,
        backoff: Backoff | None = None,
        stop_grace_s: float = 10.0,
        own_sinks: bool = True,
        start_attempts: int | None = None,
        name: str = "stream",
    ) -> None:
        if not sinks:
            raise ConfigError(f"sink runner {name}: at least one sink is needed")
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ConfigError(f"sink runner {name}: sink names must be unique, got {names}")
        if batch_size < 1:
            raise ConfigError(f"sink runner {name}: batch_size must be at least 1")
        if linger_s < 0 or stop_grace_s < 0:
            raise ConfigError(f"sink runner {name}: linger_s and stop_grace_s must be >= 0")
        if max_attempts is not None and max_attempts < 1:
            raise ConfigError(f"sink runner {name}: max_attempts must be at least 1 or None")
        if start_attempts is not None and start_attempts < 1:
            raise ConfigError(f"sink runner {name}: start_attempts must be at least 1 or None")
        self.name = name
        # Every line names its stream (for the one log schema, see cli/logs.py).
        self._log = logging.LoggerAdapter(log, {"stream_id": name})
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.max_attempts = max_attempts
        self.start_attempts = start_attempts
        self.backoff = backoff or Backoff(0.2, 10.0)
        self.stop_grace_s = stop_grace_s
        #: Items every sink took.
        self.sent = 0
        #: Batches formed.
        self.batches = 0
        #: Batch deliveries that ended in the dead-letter queue (one per failing sink).
        self.failed_batches = 0
        #: Events written to the dead-letter queue by this runner.
        self.dead_lettered = 0
        #: Failed attempts that were tried again.
        self.retries = 0
        #: ``"<sink>: <reason>"`` of the most recent failure, or None.
        self.last_error: str | None = None
        #: Per-sink counters, by sink name.
        self.per_sink: dict[str, SinkCounters] = {n: SinkCounters() for n in names}
        #: Called as ``(sink_name, error_text)`` on every failed attempt.
        self.on_failure: list[Callable[[str, str], None]] = []
        #: Called with the highest sequence of a batch once every sink has
        #: taken it or it was dead-lettered (``Multiplexer.settle`` hooks in).
        self.on_settled: list[Callable[[int], None]] = []
        #: Called with the last gap of such a batch: it, and the gaps before
        #: it, are done with (``Multiplexer.gap_settler`` hooks in).
        self.on_gap_settled: list[Callable[[Gap], None]] = []
        #: Called as ``(gap, why)`` with a gap the sinks did not get (it has
        #: no body to dead-letter; ``Multiplexer.gap_undelivered`` hooks in).
        self.on_gap_lost: list[Callable[[Gap, str], None]] = []
        self._items = stream_items
        self._dead_letter = dead_letter
        self._own_sinks = own_sinks
        # The reader task and what it shares with the loop: the items read
        # for the next batch, whether the runner wants more, and the futures
        # each side sleeps on while it waits for the other.
        self._reader: asyncio.Task[None] | None = None
        self._buffer: list[Item] = []
        self._want = False
        self._reader_wake: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[bool] | None = None
        #: The source ended (or failed, see ``_source_error``); nothing more will be read.
        self._source_done = False
        self._source_error: Exception | None = None
        self._exhausted = False
        self._stopping = asyncio.Event()
        self._stop_deadline = float("inf")
        self._running = False
        # The batch in hand and the index of the sink it is with, so a
        # cancellation can dead-letter what it would otherwise drop.
        self._in_hand: tuple[Sequence[Item], int] | None = None

    def __repr__(self) -> str:
        return f"SinkRunner(name={self.name!r}, sinks={[s.name for s in self.sinks]!r})"

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Finish the current batch, then make :meth:`run` return."""
        if not self._stopping.is_set():
            self._stop_deadline = time.monotonic() + self.stop_grace_s
            self._stopping.set()
            _release(self._waiter, False)

    def stats(self) -> dict[str, object]:
        """The counters, for the status page and the dashboard."""
        return {
            "sent": self.sent,
            "batches": self.batches,
            "failed_batches": self.failed_batches,
            "dead_lettered": self.dead_lettered,
            "retries": self.retries,
            "last_error": self.last_error,
            "sinks": sink_figures(self.per_sink),
        }

    # -- the loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until the stream ends or :meth:`stop` is called.

        Returns once the last batch is delivered or dead-lettered. A sink
        whose ``start`` fails retryably is started again with the backoff
        until it works (nothing is read meanwhile; a stop ends the wait); one
        that fails for good makes this raise :class:`SinkStartError` before
        anything is read, the stream's items left in its buffer.
        """
        if self._running:
            raise InvalidStateError(f"sink runner {self.name} is already running")
        self._running = True
        started: list[Sink] = []
        try:
            if self._own_sinks:
                for sink in self.sinks:
                    # Closed at the end even when a stop interrupted its start:
                    # a start that failed half-way may hold a socket or a file.
                    started.append(sink)
                    if not await self._start(sink):
                        return
            self._reader = asyncio.create_task(self._read(), name=f"sink-runner-{self.name}-read")
            while not self._exhausted and not self._stopping.is_set():
                batch = await self._next_batch()
                if batch:
                    await self._deliver(batch)
            await self._finish_pending()
        except asyncio.CancelledError:
            self._abandon_in_hand()
            raise
        finally:
            if self._reader is not None and not self._reader.done():
                self._reader.cancel()
            self._running = False
            self._log_untold()
            # Ended (its stream stopped here, or moved to another instance):
            # no longer failing, or readiness would say so for ever.
            for counters in self.per_sink.values():
                counters.failing_since = None
            for sink in started:
                try:
                    await sink.close()
                except Exception:
                    self._log.exception("closing sink %s of %s failed", sink.name, self.name)

    async def _start(self, sink: Sink) -> bool:
        """Start ``sink``, again and again while it fails retryably; False if stopped first.

        Each failed attempt is counted and reported like a failed send (the
        sink's ``last_error`` and ``failing_since``, ``retries``, the
        ``on_failure`` callbacks), so ``/readyz``, the metrics and the audit
        log show a sink that cannot start as one that is failing. A
        non-retryable failure (a missing destination, a refused login: a
        configuration to fix) raises :class:`SinkStartError`; so does an
        unexpected exception, which no wait would fix either, and the last of
        ``start_attempts``.
        """
        counters = self.per_sink[sink.name]
        retries = Retries(
            f"start of sink {sink.name} of {self.name}",
            self.backoff,
            max_attempts=self.start_attempts,
            logger=self._log,
        )
        while not self._stopping.is_set():
            try:
                await sink.start()
            except SinkError as exc:
                error = exc
            except Exception as exc:
                self._log.exception("sink %s of %s raised on start", sink.name, self.name)
                error = _unexpected(exc)
            else:
                if retries.attempts:
                    self._log.info(
                        "sink %s of %s started after %d attempts",
                        sink.name,
                        self.name,
                        retries.attempts + 1,
                    )
                    counters.last_error = counters.failing_since = None
                    self.last_error = next(
                        (c.last_error for c in self.per_sink.values() if c.last_error), None
                    )
                return True
            reason = _short_reason(sink.name, error)
            counters.last_error = self.last_error = f"{sink.name}: cannot start: {reason}"
            if counters.failing_since is None:
                counters.failing_since = time.monotonic()
            wait = retries.failed(
                f"cannot start: {reason}",
                retry_after_s=error.retry_after,
                retryable=error.retryable,
            )
            if wait is None:
                if error.retryable:  # the last of start_attempts
                    reason = f"{reason} (gave up after {retries.attempts} attempts)"
                    self._notify(sink.name, f"cannot start: {reason}")
                else:
                    self._notify(sink.name, f"cannot start: {reason} (not retryable)")
                raise SinkStartError(self.name, sink.name, reason) from error
            counters.retries += 1
            self.retries += 1
            self._notify(
                sink.name,
                f"cannot start: {reason} (attempt {retries.attempts}, retrying in {wait:.2f} s)",
            )
            # A stop ends the wait at once: there is no batch in hand to finish.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._stopping.wait()
        return False

    async def _read(self) -> None:
        """The reader task: fill ``_buffer`` from the source while ``_want`` is set.

        It stops asking the source once the batch is full or the runner took
        the batch; a read in progress then finishes, and its item waits in
        the buffer for the next batch. It wakes the runner on the first item
        of a batch, on a full batch and at the end of the source.
        """
        loop = asyncio.get_running_loop()
        items = self._items
        batch_size = self.batch_size
        try:
            while True:
                while not self._want:
                    wake: asyncio.Future[None] = loop.create_future()
                    self._reader_wake = wake
                    await wake
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    return
                buffer = self._buffer
                buffer.append(item)
                if len(buffer) >= batch_size:
                    self._want = False
                    _release(self._waiter, False)
                elif len(buffer) == 1:
                    _release(self._waiter, False)
        except Exception as exc:
            self._source_error = exc
        finally:
            self._reader_wake = None
            self._source_done = True
            _release(self._waiter, False)

    def _ask_reader(self) -> None:
        self._want = True
        wake = self._reader_wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _wait(self, deadline: float | None) -> bool:
        """Sleep until the reader or :meth:`stop` wakes the loop; True if ``deadline`` came."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = None if deadline is None else loop.call_at(deadline, _release, waiter, True)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _next_batch(self) -> list[Item]:
        """The next batch; empty at the end of the source or on a stop while idle.

        A source that failed raises here, once the items it produced before
        the failure were handed out.
        """
        if not self._buffer and not self._source_done:
            self._ask_reader()
            while not self._buffer and not self._source_done and not self._stopping.is_set():
                await self._wait(None)
        if not self._buffer:
            if self._source_done:
                self._exhausted = True
                if self._source_error is not None:
                    raise self._source_error
            return []
        if len(self._buffer) < self.batch_size and not self._source_done:
            self._ask_reader()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.linger_s
            while len(self._buffer) < self.batch_size and not self._source_done:
                if await self._wait(deadline):
                    break
        batch, self._buffer = self._buffer, []
        self._want = False
        return batch

    async def _finish_pending(self) -> None:
        """Deliver an item fetched just as the stop came, rather than drop it."""
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.wait({reader})
        if self._source_error is not None:
            self._log.warning(
                "the source of %s failed while stopping: %r", self.name, self._source_error
            )
        batch, self._buffer = self._buffer, []
        if batch:
            await self._deliver(batch)

    # -- delivery --------------------------------------------------------------

    async def _deliver(self, batch: Sequence[Item]) -> None:
        self.batches += 1
        everywhere = True
        fenced_before = sum(c.fenced for c in self.per_sink.values())
        for index, sink in enumerate(self.sinks):
            self._in_hand = (batch, index)
            if await self._deliver_to(sink, batch):
                self.per_sink[sink.name].sent += len(batch)
            else:
                everywhere = False
        self._in_hand = None
        if everywhere:
            self.sent += len(batch)
        if sum(c.fenced for c in self.per_sink.values()) == fenced_before:
            # A fenced batch is not settled: it is the new owner's, and the
            # watermark must not pass it.
            self._settled(batch, gaps=everywhere)

    def _settled(self, batch: Sequence[Item], *, gaps: bool) -> None:
        """Acknowledge a batch's events (delivered or dead-lettered), and its gaps if ``gaps``.

        A gap cannot be dead-lettered: one that a sink did not take is only
        logged, so it stays unsettled and holds the watermark at its start
        (the next run's restart gap covers its window again) until an
        event after it is settled.
        """
        last = max((i.sequence for i in batch if isinstance(i, StreamEvent)), default=None)
        if last is not None:
            self._tell(self.on_settled, last, "on_settled")
        # The batch's last gap (those before it go with it): on a quiet
        # stream, no event after it may come to settle it.
        gap = next((i for i in reversed(batch) if isinstance(i, Gap)), None) if gaps else None
        if gap is not None:
            self._tell(self.on_gap_settled, gap, "on_gap_settled")

    def _tell(self, callbacks: Sequence[Callable[[_T], None]], value: _T, what: str) -> None:
        """Call each of ``callbacks`` with ``value``; one that raises is logged, not fatal."""
        for callback in callbacks:
            try:
                callback(value)
            except Exception:
                self._log.exception("%s callback of %s failed", what, self.name)

    async def _deliver_to(self, sink: Sink, batch: Sequence[Item]) -> bool:
        counters = self.per_sink[sink.name]
        retries = Retries(
            f"sink {sink.name} of {self.name}",
            self.backoff,
            max_attempts=self.max_attempts,
            logger=self._log,
        )
        # A sink failing since an earlier batch was said to fail then: its
        # retries and give-ups are summed up once per interval, not logged
        # two or three lines per batch (a webhook that is down would flood
        # the log at the stream's rate). The audit log collapses them too.
        # A give-up for a reason not logged yet is logged at once, and what
        # is still untold when the runner ends is summed up then.
        quiet = counters.failing_since is not None
        while True:
            attempt = retries.attempts + 1
            started = time.perf_counter()
            try:
                await sink.send(batch)
            except FencedError as exc:
                # Not ours to deliver any more, nor to dead-letter: the
                # stream's new owner delivers these (our checkpoint left them
                # out), and the cluster member stops the stream here.
                events = sum(1 for item in batch if isinstance(item, StreamEvent))
                counters.fenced += events
                counters.last_error = self.last_error = f"{sink.name}: {exc}"
                # Failing, for readiness: a stream whose lease is lost stops
                # here within a round, and its runner with it. One refused
                # for longer is held by nobody newer (a fencing counter that
                # went back, two deployments on one sink): its events would
                # pile up unseen behind a ready instance.
                if counters.failing_since is None:
                    counters.failing_since = time.monotonic()
                self._log.warning("%s; %d events left to the new owner", exc, events)
                self._notify(sink.name, str(exc))
                return False
            except SinkError as exc:
                error = exc
            except Exception as exc:
                # A bug in a sink must cost one batch, not the whole stream.
                self._log.exception("sink %s of %s raised unexpectedly", sink.name, self.name)
                error = _unexpected(exc)
            else:
                counters.observe_send(time.perf_counter() - started)
                if attempt > 1 or quiet:
                    self._log.info(
                        "sink %s of %s recovered after %d attempt(s)%s",
                        sink.name,
                        self.name,
                        attempt,
                        self._unlogged(counters),
                    )
                # A sink that takes a batch again is no longer failing: /status
                # must not keep showing an error that has gone.
                counters.last_error = None
                counters.failing_since = None
                counters.logged_reason = None
                counters.logged_reasons.clear()
                self.last_error = next(
                    (c.last_error for c in self.per_sink.values() if c.last_error), None
                )
                return True

            counters.observe_send(time.perf_counter() - started)
            reason = _short_reason(sink.name, error)
            counters.last_error = self.last_error = f"{sink.name}: {reason}"
            if counters.failing_since is None:
                counters.failing_since = time.monotonic()
            wait = retries.failed(
                reason, retry_after_s=error.retry_after, retryable=error.retryable, log=not quiet
            )
            failure = reason  # what went wrong, without how the batch ended
            if not quiet:
                counters.logged_reason = failure
                # Bounded: the first batch's retries last as long as the
                # outage with max_attempts None, each perhaps with a new text.
                if len(counters.logged_reasons) < _TOLD_REASONS:
                    counters.logged_reasons.add(failure)
            if wait is not None and time.monotonic() + wait > self._stop_deadline:
                wait = None
                reason = f"{reason} (stopped while retrying)"
            if wait is None:
                events = sum(1 for item in batch if isinstance(item, StreamEvent))
                now = time.monotonic()
                told = counters.logged_reasons
                if not quiet or (failure not in told and len(told) < _TOLD_REASONS):
                    # The first failed batch, or a failure the log has not
                    # named yet (a 400 after the 503s): told at once, with
                    # what was not told before it. This batch's retries are
                    # in its attempts, not in that count.
                    if quiet:
                        counters.unlogged_retries -= attempt - 1
                    counters.logged_at = now
                    counters.logged_reason = failure
                    told.add(failure)
                    self._log.warning(
                        "sink %s of %s failed a batch of %d items after %d attempt(s): %s; "
                        "%d events go to the dead-letter queue%s",
                        sink.name,
                        self.name,
                        len(batch),
                        attempt,
                        reason,
                        events,
                        self._unlogged(counters),
                    )
                else:
                    counters.unlogged_batches += 1
                    counters.unlogged_events += events
                    if now - counters.logged_at >= FAILURE_LOG_INTERVAL_S:
                        counters.logged_at = now
                        self._log.warning(
                            "sink %s of %s still failing (%s)%s",
                            sink.name,
                            self.name,
                            reason,
                            self._unlogged(counters),
                        )
                self._notify(
                    sink.name,
                    f"{reason} (attempt {attempt}, gave up: {events} events dead-lettered)",
                )
                self._give_up(sink, batch, reason)
                return False
            counters.retries += 1
            self.retries += 1
            if quiet:
                counters.unlogged_retries += 1
            self._notify(sink.name, f"{reason} (attempt {attempt}, retrying in {wait:.2f} s)")
            await self._pause(wait)

    def _log_untold(self) -> None:
        """As the runner ends: sum up, once, the failures of each sink the log did not tell."""
        for name, counters in self.per_sink.items():
            if counters.unlogged_batches or counters.unlogged_retries:
                self._log.warning(
                    "sink %s of %s was still failing when its runner ended (%s)%s",
                    name,
                    self.name,
                    counters.logged_reason,
                    self._unlogged(counters),
                )

    @staticmethod
    def _unlogged(counters: SinkCounters) -> str:
        """What the log did not say of a failing sink since it last did, then forgotten."""
        said = ""
        if counters.unlogged_batches or counters.unlogged_retries:
            said = (
                f"; since the last line: {counters.unlogged_batches} more batch(es) failed, "
                f"{counters.unlogged_events} events to the dead-letter queue, "
                f"{counters.unlogged_retries} retries"
            )
        counters.unlogged_batches = counters.unlogged_events = counters.unlogged_retries = 0
        return said

    async def _pause(self, delay: float) -> None:
        """Wait ``delay``, cut short by the stop grace ending, whichever is first."""
        end = time.monotonic() + delay
        if not self._stopping.is_set():
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                return
        # Stopping: the caller checked the delay fits the grace; a stop that
        # came during the wait may have shortened it.
        remaining = min(end, self._stop_deadline) - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)

    def _give_up(self, sink: Sink, batch: Sequence[Item], reason: str) -> None:
        counters = self.per_sink[sink.name]
        counters.failed_batches += 1
        self.failed_batches += 1
        dead = self._dead_letter_events(batch, DeadLetter.sink_failed([sink.name], reason))
        counters.dead_lettered += dead

    def _dead_letter_events(self, batch: Sequence[Item], reason: str) -> int:
        dead = 0
        for item in batch:
            if isinstance(item, StreamEvent):
                try:
                    self._dead_letter(DeadLetter.of(item, reason))
                except Exception:
                    self._log.exception(
                        "dead-letter write failed: stream=%s sequence=%d reason=%s",
                        item.stream_id,
                        item.sequence,
                        reason,
                    )
                    continue
                dead += 1
            else:
                gap_lost(item, reason, self.on_gap_lost, self._log)
        self.dead_lettered += dead
        return dead

    def _abandon_in_hand(self) -> None:
        in_hand, self._in_hand = self._in_hand, None
        if in_hand is not None:
            batch, index = in_hand
            sink = self.sinks[index]
            self.failed_batches += 1
            self.per_sink[sink.name].failed_batches += 1
            self.per_sink[sink.name].dead_lettered += self._dead_letter_events(
                batch, DeadLetter.sink_failed([sink.name], "cancelled")
            )
        # Items read for the next batch: taken from the stream, so not to be dropped.
        fetched, self._buffer = self._buffer, []
        if fetched:
            self._dead_letter_events(
                fetched, DeadLetter.sink_failed([self.sinks[0].name], "cancelled")
            )
        # Dead-lettered: their fate is settled too; the gaps were not written.
        self._settled([*(in_hand[0] if in_hand is not None else ()), *fetched], gaps=False)

    def _notify(self, sink_name: str, text: str) -> None:
        for callback in self.on_failure:
            try:
                callback(sink_name, text)
            except Exception:
                self._log.exception("on_failure callback of %s failed", self.name)


def sink_figures(per_sink: Mapping[str, SinkCounters]) -> dict[str, dict[str, object]]:
    """Each sink's counters by name, as the status page shows them."""
    return {
        name: {
            "sent": c.sent,
            "failed_batches": c.failed_batches,
            "dead_lettered": c.dead_lettered,
            "retries": c.retries,
            "last_error": c.last_error,
        }
        for name, c in per_sink.items()
    }


def gap_lost(
    gap: Gap,
    why: str,
    callbacks: Sequence[Callable[[Gap, str], None]],
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """``gap`` will not reach the sinks (``why``): log it and tell ``callbacks``.

    A gap has no body to dead-letter, so this is all that is left of it.
    """
    logger.warning(
        "gap of stream %s not delivered (%s): %.3f..%.3f on channel %s, %d topics, %s",
        gap.stream_id,
        why,
        gap.start,
        gap.end,
        gap.channel_id,
        len(gap.topics),
        gap.reason,
    )
    for callback in callbacks:
        try:
            callback(gap, why)
        except Exception:
            logger.exception("on_gap_lost callback of %s failed", gap.stream_id)


def _release(waiter: asyncio.Future[bool] | None, timed_out: bool) -> None:
    """Wake whoever sleeps on ``waiter``, if anyone still does."""
    if waiter is not None and not waiter.done():
        waiter.set_result(timed_out)


def _unexpected(exc: Exception) -> SinkError:
    """A sink's bug as a final failure: no retry fixes it."""
    return SinkError(f"unexpected {type(exc).__name__}: {exc}", retryable=False)


def _short_reason(sink_name: str, error: SinkError) -> str:
    """The error text without the ``sink <name>: `` prefix sinks use, on one line, capped."""
    text = " ".join(str(error).split())
    prefix = f"sink {sink_name}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 1] + "…"
    return text or type(error).__name__
