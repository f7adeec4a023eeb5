"""One stream to sinks that batch differently: one runner per batching, fed by a tee.

Theory of operation
-------------------
A :class:`~genesys_mux.sinks.runner.SinkRunner` hands the same batches to
all of its sinks, so they share one ``batch_size``, ``linger_s`` and
``max_attempts``. :func:`deliver_stream` groups a stream's sinks by those
settings (a :class:`Batching`): one group gets one runner reading the stream
directly, as before; several groups get a :class:`SinkFanOut`.

The fan-out reads the stream once and copies each item into one bounded
queue per group, in order; each group's runner reads its queue as its
stream. A queue holds up to the group's ``batch_size`` items, so a runner can
fill a whole batch without waiting for the tee.

Backpressure is what one runner over every sink would give: the tee waits
for room in every queue before it reads the next item, so the slowest group
holds back the stream, whose own buffer and overflow policy then decide. A
fast group is never held back by more than the slow group's queue.

Nothing taken from the stream is dropped. At the end of the stream every
queue gets an end marker and every runner delivers what it has. Items still
queued for a group whose runner ended early (a stop, a cancellation, a sink
that could not start) were taken from the stream, so the Multiplexer can no
longer dead-letter them: the fan-out does, once per group, with the reason
``sink_failed:<sinks>: stopped`` (events only; a gap is logged).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

from genesys_mux.core.backoff import Backoff
from genesys_mux.core.streams import DeadLetter, Gap, StreamEvent
from genesys_mux.errors import ConfigError, InvalidStateError
from genesys_mux.sinks.base import Batching, Item, Sink
from genesys_mux.sinks.runner import SinkCounters, SinkRunner, gap_lost

__all__ = ["Batching", "SinkFanOut", "StreamDelivery", "deliver_stream"]

log = logging.getLogger("genesys_mux.sinks.fanout")

#: Put behind a stream's last item in every queue.
_END: Final = object()


class SinkFanOut:
    """Delivers one stream to groups of sinks that batch differently. Start with :meth:`run`.

    ``groups`` pairs each :class:`Batching` with its sinks. The counters
    have the meaning they have on a :class:`SinkRunner`, summed over the
    groups; ``per_sink`` holds every sink's own counters.
    """

    def __init__(
        self,
        stream_items: AsyncIterator[StreamEvent | Gap],
        groups: Sequence[tuple[Batching, Sequence[Sink]]],
        dead_letter: Callable[[DeadLetter], None],
        *,
        backoff: Backoff | None = None,
        stop_grace_s: float = 10.0,
        name: str = "stream",
    ) -> None:
        names = [sink.name for _, sinks in groups for sink in sinks]
        if len(set(names)) != len(names):
            raise ConfigError(f"stream {name}: sink names must be unique, got {names}")
        if len(groups) < 2:
            raise ConfigError(f"stream {name}: a fan-out needs two groups of sinks at least")
        self.name = name
        # Every line names its stream (for the one log schema, see cli/logs.py).
        self._log = logging.LoggerAdapter(log, {"stream_id": name})
        self._items = stream_items
        self._dead_letter = dead_letter
        self._queues: list[asyncio.Queue[Item | object]] = [
            asyncio.Queue(maxsize=batching.batch_size) for batching, _ in groups
        ]
        self.runners: tuple[SinkRunner, ...] = tuple(
            SinkRunner(
                self._branch(queue),
                sinks,
                dead_letter,
                batch_size=batching.batch_size,
                linger_s=batching.linger_s,
                max_attempts=batching.max_attempts,
                backoff=backoff,
                stop_grace_s=stop_grace_s,
                name=name,
            )
            for queue, (batching, sinks) in zip(self._queues, groups, strict=True)
        )
        #: Called as ``(sink_name, error_text)`` on every failed attempt of any group.
        self.on_failure: list[Callable[[str, str], None]] = []
        #: Called with the highest sequence every group has settled.
        self.on_settled: list[Callable[[int], None]] = []
        #: Called with the last gap every group has settled.
        self.on_gap_settled: list[Callable[[Gap], None]] = []
        #: Called as ``(gap, why)`` with a gap a group's sinks did not get.
        self.on_gap_lost: list[Callable[[Gap, str], None]] = []
        self._group_settled = [0] * len(self.runners)
        # Each group's settled gaps not yet settled by all, oldest first:
        # the groups see the same gaps in the same order.
        self._group_gaps: list[list[Gap]] = [[] for _ in self.runners]
        # Every gap the tee passed on and not yet done with, in order, by
        # identity: the gap and the sequence of the event before it (0: none).
        # A gap is done with once every group settled it, or an event after
        # it (as in the stream itself): a group whose sink gives up on every
        # batch settles no gap, and the others' would pile up for ever.
        self._open_gaps: dict[int, tuple[Gap, int]] = {}
        for index, runner in enumerate(self.runners):
            runner.on_failure = self.on_failure
            runner.on_gap_lost = self.on_gap_lost
            runner.on_settled.append(functools.partial(self._settled, index))
            runner.on_gap_settled.append(functools.partial(self._gap_settled, index))
        #: Every sink's counters, by sink name (the runners' own objects).
        self.per_sink: dict[str, SinkCounters] = {
            sink: counters for runner in self.runners for sink, counters in runner.per_sink.items()
        }
        # The item the tee holds and how many queues already have it, so a
        # cancellation can dead-letter it for the others.
        self._in_hand: tuple[Item, int] | None = None
        self._running = False

    def __repr__(self) -> str:
        groups = [[s.name for s in r.sinks] for r in self.runners]
        return f"SinkFanOut(name={self.name!r}, groups={groups!r})"

    @property
    def sent(self) -> int:
        """Items every sink took (the least of the groups' counts)."""
        return min(r.sent for r in self.runners)

    @property
    def failed_batches(self) -> int:
        """Batch deliveries that ended in the dead-letter queue, over all groups."""
        return sum(r.failed_batches for r in self.runners)

    @property
    def dead_lettered(self) -> int:
        """Events written to the dead-letter queue by any group."""
        return sum(r.dead_lettered for r in self.runners)

    @property
    def retries(self) -> int:
        """Failed attempts that were tried again, over all groups."""
        return sum(r.retries for r in self.runners)

    @property
    def last_error(self) -> str | None:
        """The current failure of the first group that has one."""
        return next((r.last_error for r in self.runners if r.last_error), None)

    def _settled(self, index: int, through: int) -> None:
        before = min(self._group_settled)
        self._group_settled[index] = max(self._group_settled[index], through)
        after = min(self._group_settled)
        if after > before:
            # The gaps before an event every group settled are done with:
            # settling that event settles them in the stream too.
            done = []
            for key, (_, preceding) in self._open_gaps.items():
                if preceding >= after:
                    break
                done.append(key)
            self._forget_gaps(done)
            for callback in self.on_settled:
                callback(after)

    def _gap_settled(self, index: int, gap: Gap) -> None:
        if id(gap) not in self._open_gaps:
            return  # done with already (an event after it was settled by all)
        # By identity: two gaps may be equal in every field.
        mine = self._group_gaps[index]
        if not any(g is gap for g in mine):
            mine.append(gap)
        # The latest gap every group has settled: each settles in order, so
        # it and the gaps before it are done with in all of them.
        common = [g for g in mine if all(any(x is g for x in o) for o in self._group_gaps)]
        if not common:
            return
        last = common[-1]
        done = []
        for key in self._open_gaps:
            done.append(key)
            if key == id(last):
                break
        self._forget_gaps(done)
        for callback in self.on_gap_settled:
            callback(last)

    def _forget_gaps(self, keys: list[int]) -> None:
        """The gaps of ``keys`` (the oldest open ones) are done with, in every group."""
        if not keys:
            return
        gone = set(keys)
        for key in keys:
            del self._open_gaps[key]
        for gaps in self._group_gaps:
            gaps[:] = [g for g in gaps if id(g) not in gone]

    def stop(self) -> None:
        """Let every group finish its current batch, then make :meth:`run` return."""
        for runner in self.runners:
            runner.stop()

    async def run(self) -> None:
        """Deliver until the stream ends or :meth:`stop` is called.

        A runner that fails (a sink that cannot start) stops the others and
        its exception is raised here, after what was queued is dead-lettered.
        """
        if self._running:
            raise InvalidStateError(f"sink fan-out {self.name} is already running")
        self._running = True
        tee = asyncio.create_task(self._tee(), name=f"sink-fanout-{self.name}-tee")
        tasks = [
            asyncio.create_task(r.run(), name=f"sink-fanout-{self.name}-{i}")
            for i, r in enumerate(self.runners)
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = next((t.exception() for t in done if t.exception() is not None), None)
            if failed is not None:
                raise failed
        finally:
            for task in (tee, *tasks):
                task.cancel()
            await asyncio.gather(tee, *tasks, return_exceptions=True)
            self._dead_letter_queued()
            self._running = False

    async def _tee(self) -> None:
        queues = self._queues
        preceding = 0
        async for item in self._items:
            if isinstance(item, StreamEvent):
                preceding = item.sequence
            else:
                self._open_gaps[id(item)] = (item, preceding)
            for given, queue in enumerate(queues):
                self._in_hand = (item, given)
                await queue.put(item)
            self._in_hand = None
        for queue in queues:
            # The runners are reading, or have stopped (and nothing waits).
            await queue.put(_END)

    @staticmethod
    async def _branch(queue: asyncio.Queue[Item | object]) -> AsyncIterator[StreamEvent | Gap]:
        while True:
            item = await queue.get()
            if item is _END:
                return
            assert isinstance(item, StreamEvent | Gap)
            yield item

    def _dead_letter_queued(self) -> None:
        """Dead-letter, per group, what was taken from the stream but not delivered."""
        in_hand, self._in_hand = self._in_hand, None
        for index, (queue, runner) in enumerate(zip(self._queues, self.runners, strict=True)):
            left: list[Item] = []
            while not queue.empty():
                item = queue.get_nowait()
                if isinstance(item, StreamEvent | Gap):
                    left.append(item)
            if in_hand is not None and index >= in_hand[1]:
                left.append(in_hand[0])
            if not left:
                continue
            reason = DeadLetter.sink_failed([s.name for s in runner.sinks], "stopped")
            for item in left:
                if isinstance(item, StreamEvent):
                    try:
                        self._dead_letter(DeadLetter.of(item, reason))
                    except Exception:
                        self._log.exception("dead-letter write failed: stream=%s", self.name)
                        continue
                    runner.dead_lettered += 1
                else:
                    gap_lost(item, reason, self.on_gap_lost, self._log)


#: What delivers one stream to its sinks.
StreamDelivery = SinkRunner | SinkFanOut


def deliver_stream(
    stream_items: AsyncIterator[StreamEvent | Gap],
    sinks: Sequence[tuple[Sink, Batching]],
    dead_letter: Callable[[DeadLetter], None],
    *,
    backoff: Backoff | None = None,
    stop_grace_s: float = 10.0,
    name: str = "stream",
) -> StreamDelivery:
    """A runner for one stream's sinks: one :class:`SinkRunner` when they all
    batch alike (they then share its batches), else a :class:`SinkFanOut`
    with one runner per batching, in the order the sinks were given."""
    groups: dict[Batching, list[Sink]] = {}
    for sink, batching in sinks:
        groups.setdefault(batching, []).append(sink)
    if len(groups) == 1:
        ((batching, only),) = groups.items()
        return SinkRunner(
            stream_items,
            only,
            dead_letter,
            batch_size=batching.batch_size,
            linger_s=batching.linger_s,
            max_attempts=batching.max_attempts,
            backoff=backoff,
            stop_grace_s=stop_grace_s,
            name=name,
        )
    return SinkFanOut(
        stream_items,
        list(groups.items()),
        dead_letter,
        backoff=backoff,
        stop_grace_s=stop_grace_s,
        name=name,
    )
