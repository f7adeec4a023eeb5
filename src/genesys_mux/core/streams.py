"""One stream's pipeline, sans-I/O: match, de-duplicate, order, sequence, buffer.

Theory of operation
-------------------
Genesys sends full conversation snapshots with no sequence numbers, no
ordering guarantee, and duplicates whenever two channels overlap. A
:class:`Stream` turns that into a feed a consumer can trust. Each
notification routed to it goes through, in order:

1. **Match** the client-side rules the topics cannot express: the media
   (a ``v2.users.{id}.conversations`` topic carries every media), SMS only
   (the ``messages`` media also carries web messaging and WhatsApp), and a
   queue when a stream names both a user and a queue.
2. **Duplicate**: the same key (conversation, user...) with a content hash
   already seen recently. Overlapping channels and fan-out to several topics
   both produce these.
3. **Stale**: a version key older than the newest one already delivered for
   that key. The version key is the newest timestamp in the body.
4. **Transition**: for streams with a ``state`` filter, a conversation that
   enters the state gives ``enter``, one that stays gives ``update``, one
   that leaves gives ``exit``; a conversation that is not and was not in the
   state is not this stream's business.
5. **Sequence**: a gap-free number per stream, assigned here, on acceptance.
6. **Buffer**, bounded, with an overflow policy. Whatever is pushed out goes
   to the dead-letter queue with its sequence and reason, so delivered
   sequences plus dead-lettered sequences always cover ``1..N`` exactly.

Duplicates, stale events and overflows are counted; none are silent.

Gaps (outages on the channels carrying a stream's topics) are queued in the
same buffer, in arrival order, and never dropped: a consumer must always
learn what it may have missed. A consumer that does not read for long
under a flapping link would let them pile up without bound, so past
:data:`MAX_BUFFERED_GAPS` the two oldest are merged into one that covers
both (see :func:`merged_gap`): fewer, wider gaps, never a window lost.

:class:`PriorityMerge` decides which stream is served next when consumers
read all streams together: smooth weighted round-robin, where priority 1
weighs 16 and priority 5 weighs 1. Higher priority gets proportionally more
turns and goes first on ties; no stream with items ever starves.

Nothing here reads a clock: receive times come with the notification, and
``now`` is passed to :meth:`Stream.take`.
"""

from __future__ import annotations

import bisect
import operator
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

import msgspec

from genesys_mux.core.checkpoint import Remembered, StreamCheckpoint
from genesys_mux.core.memory import KeyMemory, Record
from genesys_mux.core.snapshot import EventFacts
from genesys_mux.errors import InvalidStateError

__all__ = [
    "DeadLetter",
    "Gap",
    "PriorityMerge",
    "Stream",
    "StreamCounters",
    "StreamEvent",
    "StreamRules",
    "Transition",
]

Transition = Literal["enter", "update", "exit"]
Overflow = Literal["drop_oldest", "drop_newest", "backlog"]

#: ``backlog`` streams never displace buffered events; they may fall this many
#: buffers behind before new events go to the dead-letter queue instead.
#: (Nothing ever blocks: the dispatcher must not wait on one slow consumer.)
BACKLOG_FACTOR = 10

#: Gaps a stream buffers at most before its two oldest are merged into one.
MAX_BUFFERED_GAPS = 100

_UNPARSED: Any = object()
#: How the reasons of the letters sinks gave up on begin (DeadLetter.sink_failed).
_SINK_FAILED = "sink_failed:"
#: Handed-out events remembered until settled, at most (see Stream.settle).
_MAX_UNSETTLED = 100_000


@dataclass(slots=True, eq=False)
class StreamEvent:
    """One event delivered to one stream.

    ``sequence`` is gap-free per stream, starting at 1. ``transition`` is
    ``enter``/``update``/``exit`` for state-filtered streams and None
    otherwise. ``raw`` is the notification's ``eventBody`` exactly as it
    arrived; :attr:`body` parses it on first access. ``received_at`` is the
    Unix time it came off the socket; ``latency_s`` (socket to consumer) and
    ``age_s`` (consumer time minus the newest timestamp in the body) are set
    when the event is handed over.
    """

    # Stream.offer builds one per event with positional arguments (the
    # cheaper call): a field added or moved must be added or moved there too.
    stream_id: str
    sequence: int
    priority: int
    topic: str
    transition: Transition | None
    conversation_id: str | None
    correlation_id: str | None
    raw: bytes
    received_at: float
    latency_s: float | None = None
    age_s: float | None = None
    #: Fetched from REST after a gap rather than received on a socket.
    backfilled: bool = False
    #: The run (process) that delivered it: sequences of two runs never mix.
    epoch: str = ""
    #: Monotonic receive time, for latency; not part of the public payload.
    received_mono: float = field(default=0.0, repr=False)
    version: float | None = field(default=None, repr=False)
    #: What the event is about and its state digest (``EventFacts.key`` and
    #: ``.hash``): the content behind :attr:`idempotency_key`.
    content_key: str = field(default="", repr=False)
    digest: bytes = field(default=b"", repr=False)
    #: The facts read :attr:`raw` as JSON, so a dead letter need not check it again.
    well_formed: bool = field(default=False, repr=False)
    _body: Any = field(default=_UNPARSED, repr=False)

    @property
    def body(self) -> Any:
        """The decoded ``eventBody`` (parsed once, on first access).

        A generic decode builds the whole snapshot as dicts and lists; to
        read a few fields, decode :attr:`raw` into a msgspec struct naming
        only those, about ten times cheaper ("Using the library", Events).
        """
        if self._body is _UNPARSED:
            self._body = msgspec.json.decode(self.raw)
        return self._body

    @property
    def idempotency_key(self) -> str:
        """``stream_id:key:digest``: the same for the same state, whichever run delivers it.

        ``key`` names what the event is about (a conversation id,
        ``presence:{userId}``...) and ``digest`` its state (hex). The same
        state delivered again (a re-sent batch, a restart, a failover) has
        the same key; two different states never share one. An event built
        by hand without its facts falls back to ``stream_id:sequence``
        (``stream_id:epoch:sequence`` when it has an epoch).
        """
        if self.digest:
            return f"{self.stream_id}:{self.content_key}:{self.digest.hex()}"
        if self.epoch:
            return f"{self.stream_id}:{self.epoch}:{self.sequence}"
        return f"{self.stream_id}:{self.sequence}"


@dataclass(frozen=True, slots=True)
class Gap:
    """A window in which a stream may have missed events at the source.

    Events published on ``topics`` between ``start`` and ``end`` (Unix
    seconds) may never have reached us; fill them from REST if they matter.
    """

    stream_id: str
    start: float
    end: float
    topics: frozenset[str]
    channel_id: str
    reason: str

    @property
    def duration_s(self) -> float:
        """How long the window lasted."""
        return self.end - self.start


def merged_gap(first: Gap, second: Gap) -> Gap:
    """One gap covering both windows and all their topics.

    Wider than either (the time between them too), never narrower: it may
    say events were missed that were not, never the reverse. The channel
    and the reason are kept when both say the same, else ``""`` and
    ``merged``.
    """
    topics = first.topics
    if not second.topics <= topics:
        topics = second.topics if topics <= second.topics else topics | second.topics
    return Gap(
        first.stream_id,
        min(first.start, second.start),
        max(first.end, second.end),
        topics,
        first.channel_id if first.channel_id == second.channel_id else "",
        first.reason if first.reason == second.reason else "merged",
    )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that could not be delivered, and why.

    ``reason`` is one of ``overflow_drop_oldest``, ``overflow_drop_newest``,
    ``overflow_backlog_limit``, ``stopped`` or a sink's failure reason.
    """

    stream_id: str
    sequence: int
    reason: str
    topic: str
    conversation_id: str | None
    correlation_id: str | None
    received_at: float
    raw: bytes
    #: The event's :attr:`StreamEvent.idempotency_key`, so a replay keeps it.
    idempotency_key: str = ""
    #: The event's ``enter``/``update``/``exit``, so a replay keeps it.
    transition: Transition | None = None
    #: The run that numbered the event: a run killed before its checkpoint
    #: counted what it had handed out lets the next run number from there
    #: again, so ``(stream_id, epoch, sequence)`` names one event, not the pair.
    epoch: str = ""
    #: ``raw`` is known to be JSON (the event's :attr:`StreamEvent.well_formed`).
    well_formed: bool = False

    @classmethod
    def of(cls, event: StreamEvent, reason: str) -> DeadLetter:
        """The dead letter for ``event``."""
        return cls(
            event.stream_id,
            event.sequence,
            reason,
            event.topic,
            event.conversation_id,
            event.correlation_id,
            event.received_at,
            event.raw,
            event.idempotency_key,
            event.transition,
            event.epoch,
            event.well_formed,
        )

    @staticmethod
    def sink_failed(sinks: Sequence[str], why: str) -> str:
        """The reason of a letter ``sinks`` gave up on: ``sink_failed:<sink>[,<sink>...]: <why>``.

        :attr:`failed_sinks` reads the names back (``dlq replay`` sends the
        letter to those sinks only).
        """
        return f"{_SINK_FAILED}{','.join(sinks)}: {why}"

    @property
    def failed_sinks(self) -> tuple[str, ...]:
        """The sinks a ``sink_failed:<sink>[,<sink>...]: <why>`` letter failed at; else ()."""
        if not self.reason.startswith(_SINK_FAILED):
            return ()
        names = self.reason[len(_SINK_FAILED) :].partition(": ")[0]
        return tuple(n for n in names.split(",") if n)


@dataclass(frozen=True, slots=True)
class StreamRules:
    """The client-side part of a stream's filter (the topics do the rest)."""

    #: Media list the conversation must have (``calls``, ``chats``, ``messages``...).
    media: str | None = None
    #: Only conversations with an SMS message communication.
    sms: bool = False
    #: ``active``, ``queued`` or ``monitoring``: deliver enter/update/exit.
    state: Literal["active", "queued", "monitoring"] | None = None
    #: Queue the conversation must touch (when a stream names a user *and* a queue).
    queue_id: str | None = None


_NO_RULES = StreamRules()


@dataclass(slots=True)
class StreamCounters:
    """What happened to the notifications routed to one stream."""

    received: int = 0
    delivered: int = 0
    filtered: int = 0
    duplicates: int = 0
    stale: int = 0
    overflowed: int = 0
    dead_lettered: int = 0
    gaps: int = 0
    #: Buffered, then left to the stream's next owner (a cluster's handover).
    handed_over: int = 0


class CheckpointBuild:
    """A stream's checkpoint, built a slice of keys at a time (:meth:`Stream.begin_checkpoint`).

    Building 50,000 remembered keys in one go would hold an event loop for
    tens of milliseconds; :meth:`step` builds ``limit`` keys, so the shell
    can let events through between slices. Every entry is its key as of the
    checkpoint's start: a key seen again, or forgotten, before its slice is
    kept as it was just before that (:meth:`keep`, called by the memory),
    and the next checkpoint carries what changed.

    The records are shared by the streams of one
    :class:`~genesys_mux.core.memory.KeyMemory`; the build writes the view
    of the stream whose bit is ``bit``, and passes over the records that
    stream does not remember.

    The keys to build are ``keys``, then ``log``, least recently seen first,
    so the memory is built in the order it is written in. ``log`` is every
    sighting since the stream's previous checkpoint (clock value ``base``),
    the one at clock value ``base + 1`` first. A key is built where its
    stamp says it was seen last. Both hold the keys' records themselves,
    not their names: a record's stamp says whether it is still current, so
    building needs no lookup per key. ``again`` names the keys among
    ``keys`` stamped ``base`` or earlier (None: every key is to be built,
    a complete checkpoint).
    """

    def __init__(
        self,
        header: StreamCheckpoint,
        bit: int,
        keys: list[Record],
        log: list[Record],
        base: int,
        undone: dict[str, Remembered],
        clock: int,
        again: set[str] | None = None,
        finished: Callable[[CheckpointBuild], None] | None = None,
    ) -> None:
        self._header = header
        self._bit = bit
        self._keys = keys
        self._log = log
        self._base = base
        self._undone = undone
        self._clock = clock
        self._again = again
        self._finished = finished
        self._next = 0
        self._memory: list[Remembered] = []
        #: Keys seen again or forgotten before their slice, as they were.
        self._kept: list[Remembered] = []
        #: Every key to build stamped below this is built (or kept) already.
        self._done = 0

    def keep(self, record: Record) -> None:
        """``record`` is about to change (seen again, or forgotten): keep it if still to build."""
        stamp = record.stamp
        if stamp > self._clock or stamp < self._done or not record.streams & self._bit:
            return  # changed since the start (kept then), built already, or not this stream's
        key = record.key
        if stamp <= self._base and self._again is not None and key not in self._again:
            return  # not this checkpoint's: unchanged since the previous one
        if key in self._undone:
            return  # has its own entry
        self._kept.append(record.remembered(self._bit, stamp))

    def step(self, limit: int) -> bool:
        """Build up to ``limit`` more keys; True once every key is built."""
        undone, bit, join = self._undone, self._bit, b"".join
        keys, log, start = self._keys, self._log, self._next
        memory = self._memory
        built = len(memory)
        # Comprehensions, not loops of appends: this runs for every key that
        # changed, every checkpoint. A key seen again since the start (its
        # stamp is newer than the checkpoint's clock) or forgotten (its
        # stamp is FORGOTTEN) was kept as it was; a key with unsettled
        # changes has its own entry (see result). The test for those is
        # left out when there are none, as there usually are.
        if start < len(keys):
            end = min(start + limit, len(keys))
            clock = self._clock
            # A record whose digests every member holds (holders None, as
            # always with one stream) is written inline: a method call per
            # key measured a third dearer.
            memory += [
                Remembered(r.key, r.version, join(r.hashes), r.in_state & bit != 0, r.stamp)
                if r.holders is None
                else r.remembered(bit, r.stamp)
                for r in keys[start:end]
                if 0 <= r.stamp <= clock and (not undone or r.key not in undone)
            ]
            if len(memory) > built:
                # Keys passed over after it were kept, or are not to build.
                self._done = memory[-1].rank + 1
        else:
            at = start - len(keys)
            end = len(keys) + min(at + limit, len(log))
            # log[at] was seen at clock value base + at + 1: built there only
            # if that is when the key was seen last, and only if it is this
            # stream's.
            sliced = enumerate(log[at : end - len(keys)], self._base + at + 1)
            if undone:
                memory += [
                    Remembered(r.key, r.version, join(r.hashes), r.in_state & bit != 0, stamp)
                    if r.holders is None
                    else r.remembered(bit, stamp)
                    for stamp, r in sliced
                    if r.stamp == stamp and r.streams & bit and r.key not in undone
                ]
            else:
                memory += [
                    Remembered(r.key, r.version, join(r.hashes), r.in_state & bit != 0, stamp)
                    if r.holders is None
                    else r.remembered(bit, stamp)
                    for stamp, r in sliced
                    if r.stamp == stamp and r.streams & bit
                ]
            self._done = self._base + end - len(keys) + 1
        self._next = end
        done = end == len(keys) + len(log)
        if done:
            self._done = self._clock + 1  # nothing left to keep
            if self._finished is not None:
                self._finished(self)
        return done

    def result(self) -> StreamCheckpoint:
        """The checkpoint, its memory least recently seen first (call once :meth:`step` is done)."""
        memory = self._memory  # in that order already: so were the keys
        extra = self._kept
        if self._undone:
            # Keys with unsettled changes, as they were before them. There
            # is nearly always one (the event a reader holds), and rarely
            # many.
            extra += self._undone.values()
        if len(extra) <= _FEW:
            # Each into its place: sorting would call the key getter once
            # per entry, thousands of times, for one or two out of place.
            for remembered in extra:
                bisect.insort(memory, remembered, key=_rank)
        else:
            # Sorting a list sorted but for a short run is cheap.
            memory += extra
            memory.sort(key=_rank)
        return msgspec.structs.replace(self._header, memory=memory)


#: Entries out of order a checkpoint puts in place one by one (more: a sort).
_FEW = 16
#: A remembered key's rank, and a memory record's stamp (C getters: a sort
#: calls them once per key).
_rank = operator.attrgetter("rank")
_stamp = operator.attrgetter("stamp")


class Stream:
    """A stream's pipeline and buffer. Feed it with :meth:`offer`, drain it with :meth:`take`.

    ``dead_letter`` receives every event the buffer pushes out. ``memory``
    bounds how many keys (conversations, users, topics) are remembered for
    de-duplication and ordering; the least recently seen are forgotten first.
    Streams given one ``key_memory`` share one record per key (see
    :mod:`genesys_mux.core.memory`: its ``hashes_per_key`` is theirs, and
    their bounds add up); without one, the stream has a memory of its own.
    Call :meth:`close` when a stream sharing a memory is done with.
    """

    def __init__(
        self,
        stream_id: str,
        *,
        priority: int = 3,
        rules: StreamRules | None = None,
        buffer_size: int = 1000,
        overflow: Overflow = "drop_oldest",
        dead_letter: Callable[[DeadLetter], None],
        memory: int = 50_000,
        hashes_per_key: int = 8,
        epoch: str = "",
        key_memory: KeyMemory | None = None,
    ) -> None:
        if buffer_size < 1:
            # With no room at all, drop_oldest would have nothing to push out
            # and would hold the newcomer uncounted, breaking the accounting.
            raise ValueError(f"buffer_size must be at least 1, not {buffer_size}")
        if hashes_per_key < 1:
            raise ValueError(f"hashes_per_key must be at least 1, not {hashes_per_key}")
        self.id = stream_id
        #: The run this stream belongs to; stamped on every event.
        self.epoch = epoch
        self.priority = priority
        #: Turns per round in a priority merge (:func:`weight`).
        self.weight = weight(priority)
        self._rules = rules = rules or StreamRules()
        # Whether any client-side rule applies, decided once: offer asks per event.
        self._filtering = bool(
            rules.media is not None or rules.sms or rules.queue_id is not None or rules.state
        )
        self.buffer_size = buffer_size
        self.overflow = overflow
        self.counters = StreamCounters()
        self._dead_letter = dead_letter
        if key_memory is None:
            key_memory = KeyMemory(hashes_per_key=hashes_per_key)
        #: The memory this stream remembers keys in (perhaps with others).
        self.key_memory = key_memory
        #: This stream's bit in the memory's masks.
        self._bound = memory
        self._bit = key_memory.join(memory)
        # For incremental checkpoints: the memory's clock when the last one
        # was built (the memory logs every sighting since, in order, and
        # stamps each record when seen), whether this stream saw a key since,
        # and the keys whose unsettled changes the last checkpoint left out
        # (to be written again).
        self._checkpointed = 0
        self._touched = False
        self._rewrite: set[str] = set()
        # The next checkpoint carries the whole memory (the first of a run,
        # and the one after a write failed).
        self._complete_due = True
        # The checkpoint being built, if any: the memory tells it of keys
        # about to change (see CheckpointBuild.keep).
        self._build: CheckpointBuild | None = None
        self._closed = False
        self._buffer: deque[StreamEvent | Gap] = deque()
        # (sequence, received_at) of events handed out and not yet settled:
        # the restart watermark may not pass them (see unsettled_since).
        self._handed: deque[tuple[int, float]] = deque()
        # Gaps hold the watermark back too, until they are done with: a
        # restart must not report a window later than one never delivered.
        # Those buffered; those handed out, as (the sequence whose settling
        # settles it: the event after it, start); the earliest start of
        # those dropped (a stop, a hand-over), which holds it for good.
        self._buffered_gaps: list[Gap] = []
        self._handed_gaps: deque[tuple[int, float, Gap]] = deque()
        self._dropped_gaps_since: float | None = None
        self._last_taken = 0
        # What accepting each event not settled yet (buffered, or handed out
        # and not acknowledged) changed in its key's memory, by sequence,
        # oldest first: (key, digest, the key's version and in-state before).
        # A checkpoint leaves these changes out (see begin_checkpoint).
        self._unsettled: dict[int, tuple[str, bytes, float | None, bool]] = {}
        self._events_buffered = 0
        self._next_sequence = 1
        limit = buffer_size * (BACKLOG_FACTOR if overflow == "backlog" else 1)
        self._limit = limit

    @property
    def rules(self) -> StreamRules:
        """The client-side part of the stream's filter (fixed for its lifetime)."""
        return self._rules

    # -- intake ------------------------------------------------------------------

    def offer(
        self,
        topic: str,
        raw: bytes,
        correlation_id: str | None,
        received_at: float,
        received_mono: float,
        facts: EventFacts,
        *,
        filtered_topic: bool = True,
        backfilled: bool = False,
    ) -> StreamEvent | None:
        """Run one notification through the pipeline; the buffered event, or None.

        ``filtered_topic`` says the topic came from the stream's filter, so the
        client-side rules apply; events on a stream's raw topics (presence,
        detail events...) pass through them untouched.
        """
        if self._closed:
            raise InvalidStateError(
                f"stream {self.id!r} is closed (removed or handed over): offer to its successor"
            )
        counters = self.counters
        counters.received += 1
        filtering = filtered_topic and self._filtering
        rules = self._rules if filtering else _NO_RULES
        conversation = facts.conversation
        if filtering:
            if conversation is None:
                counters.filtered += 1
                return None
            if (
                (rules.media is not None and rules.media not in conversation.media)
                or (rules.sms and "sms" not in conversation.message_types)
                or (rules.queue_id is not None and rules.queue_id not in conversation.queue_ids)
            ):
                counters.filtered += 1
                return None

        bit, keys = self._bit, self.key_memory
        seen = keys.touch(facts.key, bit)
        self._touched = True
        prior_version = seen.version
        prior_in_state = bool(seen.in_state & bit)
        digest = facts.hash
        if digest in seen.hashes and seen.holds(digest, bit):
            counters.duplicates += 1
            return None
        version = facts.version
        if version is not None and prior_version is not None and version < prior_version:
            counters.stale += 1
            return None

        transition: Transition | None = None
        if rules.state is not None:
            assert conversation is not None
            now_in = getattr(conversation, rules.state)
            if now_in:
                transition = "update" if prior_in_state else "enter"
            elif prior_in_state:
                transition = "exit"
            else:
                # Not in the state and never was: not this stream's business,
                # but remember the content so a repeat is not counted twice.
                keys.add_digest(seen, digest, bit)
                if version is not None:
                    seen.version = version
                counters.filtered += 1
                return None
            keys.set_in_state(seen, bit, bool(now_in))

        keys.add_digest(seen, digest, bit)
        if version is not None:
            seen.version = version
        # Positional, in field order: a dataclass's generated __init__ binds
        # keywords by name, which measured 2.1 µs per event against 0.8.
        event = StreamEvent(
            self.id,  # stream_id
            self._next_sequence,  # sequence
            self.priority,  # priority
            topic,  # topic
            transition,  # transition
            conversation.conversation_id if conversation is not None else None,
            correlation_id,  # correlation_id
            raw,  # raw
            received_at,  # received_at
            None,  # latency_s
            None,  # age_s
            backfilled,  # backfilled
            self.epoch,  # epoch
            received_mono,  # received_mono
            version,  # version
            facts.key,  # content_key
            facts.hash,  # digest
            not facts.malformed,  # well_formed
        )
        self._unsettled[event.sequence] = (facts.key, facts.hash, prior_version, prior_in_state)
        self._next_sequence += 1
        if self._events_buffered < self._limit:
            # Room in the buffer (the usual case), without a call.
            self._buffer.append(event)
            self._events_buffered += 1
            return event
        return self._overflow(event)

    def checkpoint(
        self, *, fingerprint: str, watermark: float | None, saved_at: float, refresh: int = 0
    ) -> StreamCheckpoint:
        """What the stream needs to continue after a restart, built in one go.

        See :meth:`begin_checkpoint`, which builds it a slice at a time.
        """
        build = self.begin_checkpoint(
            fingerprint=fingerprint, watermark=watermark, saved_at=saved_at, refresh=refresh
        )
        while not build.step(1 << 30):
            pass
        return build.result()

    def begin_checkpoint(
        self,
        *,
        fingerprint: str,
        watermark: float | None,
        saved_at: float,
        refresh: int = 0,
        fence: int = 0,
    ) -> CheckpointBuild:
        """Start a checkpoint of the stream as of its *settled* events.

        It carries the keys seen or forgotten since the previous checkpoint
        (the whole memory when a complete one is due). Events accepted but
        not settled yet (buffered, or handed out and not acknowledged) may
        never reach their consumer if the process dies now, so they are left
        out: the next run numbers from the oldest of them, and its memory
        does not hold their states, so the restart gap's back-fill delivers
        those states again (with the same idempotency keys) instead of
        dropping them as already delivered. If the store cannot write the
        checkpoint, call :meth:`checkpoint_failed`.

        With ``refresh``, it also carries, unchanged, the keys not seen for
        ``refresh`` times as many sightings as the memory holds keys. A
        store that keeps checkpoints as a log drops the entries ranked
        below the checkpoint's ``floor``, the oldest remembered key's rank;
        a key remembered but never seen again would keep the floor, and so
        the whole log after it, from moving (see
        :mod:`genesys_mux.state.sqlite`).
        """
        next_sequence = self._next_sequence
        memory, bit = self.key_memory, self._bit
        undone: dict[str, Remembered] = {}
        if self._unsettled:
            next_sequence = next(iter(self._unsettled))
            # Newest first, so each key ends as it was before its oldest
            # unsettled event.
            for key, digest, version, in_state in reversed(self._unsettled.values()):
                seen = memory.get(key)
                if seen is None or not seen.streams & bit:
                    continue  # forgotten since (the memory bound)
                before = undone.get(key)
                hashes = before.digests() if before is not None else seen.digests_of(bit)
                if digest in hashes:
                    hashes.remove(digest)
                undone[key] = Remembered(key, version, b"".join(hashes), in_state, seen.stamp)
        forgotten = memory.take_forgotten(bit)
        # Too many forgotten keys to list (see KeyMemory.take_forgotten):
        # the whole memory instead, which replaces the store's.
        complete = self._complete_due or forgotten is None
        last, clock = self._checkpointed, memory.clock
        keys: list[Record] = []
        logged: list[Record] = []
        again: set[str] | None = None
        # Every key remembered was seen at or after the oldest one's stamp,
        # and is written at that rank or later; every key forgotten was seen
        # before it (the memory forgets the least recently seen first).
        floor = memory.floor()
        if complete:
            keys = memory.records_of(bit)
        else:
            keys = self._again(last)
            below = clock - refresh * len(memory)
            if refresh > 0 and floor < below:
                floor, keys = self._refreshed(keys, undone, below)
            again = {s.key for s in keys}
            since = memory.logged_since(last)
            if since is not None:
                logged = since
            else:  # more keys were seen than the log holds
                keys += memory.seen_since(last, bit)
        # Keys with unsettled changes are written again once those settle.
        self._rewrite = set(undone)
        self._complete_due = False
        self._touched = False
        self._checkpointed = clock
        header = StreamCheckpoint(
            stream_id=self.id,
            fingerprint=fingerprint,
            next_sequence=next_sequence,
            watermark=watermark,
            epoch=self.epoch,
            saved_at=saved_at,
            complete=complete,
            forgotten=[] if forgotten is None or complete else list(forgotten),
            fence=fence,
            floor=floor,
        )
        build = CheckpointBuild(header, bit, keys, logged, last, undone, clock, again, self._built)
        if self._build is not None:
            memory.end_build(self._build)
        self._build = build
        memory.begin_build(build)
        return build

    def _built(self, build: CheckpointBuild) -> None:
        """Every key of ``build`` is built: none needs keeping any more."""
        self.key_memory.end_build(build)
        if self._build is build:
            self._build = None

    def _refreshed(
        self, again: list[Record], undone: Mapping[str, Remembered], below: int
    ) -> tuple[int, list[Record]]:
        """The floor once the keys last seen before stamp ``below`` are written, and those keys.

        They are the oldest in the memory: its head. Those seen since the
        last checkpoint, or to be written again anyway, are left where
        they are (written once); those of other streams are not this
        stream's to write. The floor is the stamp of the first key not
        written.
        """
        last, bit = self._checkpointed, self._bit
        skip = {s.key for s in again}.union(undone)
        refreshed: list[Record] = []
        floor = self.key_memory.clock + 1
        for seen in self.key_memory.records():
            if seen.stamp >= below:
                floor = seen.stamp
                break
            if seen.stamp <= last and seen.streams & bit and seen.key not in skip:
                refreshed.append(seen)
        return floor, sorted(again + refreshed, key=_stamp)

    def _again(self, last: int) -> list[Record]:
        """Keys to write again that were not seen since the last checkpoint, by stamp."""
        memory, bit = self.key_memory, self._bit
        again = [
            kept
            for key in self._rewrite
            if (kept := memory.get(key)) is not None and kept.streams & bit and kept.stamp <= last
        ]
        again.sort(key=_stamp)
        return again

    def checkpoint_failed(self) -> None:
        """The last checkpoint was not written: the next one carries the whole memory."""
        self._complete_due = True
        if self._build is not None:
            self.key_memory.end_build(self._build)
            self._build = None

    @property
    def memory_changed(self) -> bool:
        """True when keys were seen or forgotten since the last checkpoint."""
        return (
            self._touched
            or bool(self._rewrite)
            or self.key_memory.has_forgotten(self._bit)
            or self._complete_due
        )

    def number_from(self, sequence: int) -> None:
        """Number the next event ``sequence`` or later (call before any offer).

        For a stream added again in the run that numbered it before: its
        events' ``(epoch, sequence)`` must not repeat the earlier ones'.
        """
        self._next_sequence = max(self._next_sequence, sequence)

    def restore(self, checkpoint: StreamCheckpoint) -> None:
        """Continue from ``checkpoint``: its numbering and its memory (call before any offer)."""
        self._next_sequence = max(self._next_sequence, checkpoint.next_sequence)
        self.key_memory.restore(self._bit, checkpoint.memory[-self._bound :])
        self._touched = True

    def close(self) -> None:
        """Leave the shared memory: what only this stream remembered is to be forgotten.

        Idempotent; the stream must not be offered events afterwards. The
        memory clears the stream's bit from its records as it is swept
        (:meth:`~genesys_mux.core.memory.KeyMemory.sweep`).
        """
        if self._closed:
            return
        self._closed = True
        if self._build is not None:
            self.key_memory.end_build(self._build)
            self._build = None
        self.key_memory.leave(self._bit)

    @property
    def next_sequence(self) -> int:
        """The sequence number the next accepted event gets."""
        return self._next_sequence

    def add_gap(self, gap: Gap, *, first: bool = False) -> None:
        """Queue a gap; gaps are never dropped and do not count against the buffer.

        ``first`` puts it ahead of everything buffered: a window that ended
        before they were received (a restart's) comes before them.
        """
        self.counters.gaps += 1
        self._buffered_gaps.append(gap)
        if first:
            self._buffer.appendleft(gap)
        else:
            self._buffer.append(gap)
        if len(self._buffered_gaps) > MAX_BUFFERED_GAPS:
            self._merge_oldest_gaps()

    def _merge_oldest_gaps(self) -> None:
        """Merge the two oldest buffered gaps into one, where the older one was."""
        buffer = self._buffer
        at = list(islice((i for i, item in enumerate(buffer) if isinstance(item, Gap)), 2))
        older, newer = buffer[at[0]], buffer[at[1]]
        assert isinstance(older, Gap)
        assert isinstance(newer, Gap)
        merged = merged_gap(older, newer)
        del buffer[at[1]]
        buffer[at[0]] = merged
        # By identity: two gaps may be equal in every field.
        self._buffered_gaps = [
            merged if g is older else g for g in self._buffered_gaps if g is not newer
        ]

    def _overflow(self, event: StreamEvent) -> StreamEvent | None:
        """``event`` arrives at a full buffer: the overflow policy decides."""
        self.counters.overflowed += 1
        if self.overflow == "drop_oldest":
            self._drop_oldest_event()
            self._buffer.append(event)
            return event
        reason = (
            "overflow_drop_newest" if self.overflow == "drop_newest" else "overflow_backlog_limit"
        )
        self._dead(event, reason)
        return None

    def _drop_oldest_event(self) -> None:
        for i, item in enumerate(self._buffer):
            if isinstance(item, StreamEvent):
                del self._buffer[i]
                self._dead(item, "overflow_drop_oldest")
                return

    def not_handled(self, event: StreamEvent, reason: str) -> None:
        """The consumer took ``event`` but failed on it: dead-lettered (it stays delivered).

        Counters only ever grow (Prometheus reads a drop as a restart): the
        event was handed over, as one a sink runner gives up on is.
        """
        self._dead(event, reason)

    def _dead(self, event: StreamEvent, reason: str) -> None:
        self._unsettled.pop(event.sequence, None)  # settled: it is in the dead-letter queue
        self.counters.dead_lettered += 1
        self._dead_letter(DeadLetter.of(event, reason))

    # -- output ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def items(self) -> deque[StreamEvent | Gap]:
        """The buffer itself, oldest first, for a merge that only asks whether it is empty.

        (Testing the deque costs a fraction of ``len(stream)``, a call into
        Python; merging ten streams asks for every item.) Read only: items
        leave through :meth:`take`.
        """
        return self._buffer

    @property
    def events_buffered(self) -> int:
        """Events (not gaps) waiting in the buffer."""
        return self._events_buffered

    @property
    def behind(self) -> bool:
        """True when a ``backlog`` stream has more than its buffer waiting."""
        return self._events_buffered > self.buffer_size

    def take(self, now: float, now_mono: float) -> StreamEvent | Gap | None:
        """Hand the oldest item to the consumer, stamping latency and age."""
        if not self._buffer:
            return None
        item = self._buffer.popleft()
        if isinstance(item, StreamEvent):
            self._events_buffered -= 1
            self.counters.delivered += 1
            self._handed.append((item.sequence, item.received_at))
            if len(self._handed) > _MAX_UNSETTLED:
                # A consumer that never settles: see settle().
                self._unsettled.pop(self._handed.popleft()[0], None)
            item.latency_s = now_mono - item.received_mono
            if item.version:
                item.age_s = now - item.version
            self._last_taken = item.sequence
        else:
            # Done with once the event after it is settled (the consumer,
            # or its sinks, went past it), or settle_gap() or settle_gaps()
            # says so.
            self._buffered_gaps.remove(item)
            self._handed_gaps.append((self._last_taken + 1, item.start, item))
        return item

    def settle(self, through: int) -> None:
        """Events handed out up to sequence ``through`` are done with (delivered, or given up).

        Their receive times no longer hold the watermark back. A consumer
        that never settles holds at most the last 100,000 handed events
        back; older ones count as settled.
        """
        handed, unsettled = self._handed, self._unsettled
        while handed and handed[0][0] <= through:
            unsettled.pop(handed.popleft()[0], None)
        gaps = self._handed_gaps
        while gaps and gaps[0][0] <= through:
            gaps.popleft()

    def settle_gap(self, gap: Gap) -> None:
        """``gap``, handed out, and the gaps handed out before it are done with.

        For a consumer that settles explicitly (a sink runner, once every
        sink has the gap): on a quiet stream no event may follow to settle
        it. A gap not handed out (or settled already) is ignored.
        """
        gaps = self._handed_gaps
        for index, (_, _, handed) in enumerate(gaps):
            if handed is gap:
                for _ in range(index + 1):
                    gaps.popleft()
                return

    def settle_gaps(self) -> None:
        """The gaps handed out so far are done with (a consumer that settles as it reads)."""
        self._handed_gaps.clear()

    def unsettled_since(self) -> float | None:
        """The receive time of the oldest event whose fate is not settled yet, if any.

        Buffered events and handed-out unsettled ones count; dead-lettered
        ones are settled. Everything received before this time is settled.
        A gap not done with yet (buffered, handed out and not settled, or
        dropped at a stop) holds it at its start, so that a restart's gap
        covers its window.
        """
        oldest = self._handed[0][1] if self._handed else None
        for item in self._buffer:
            if isinstance(item, StreamEvent):
                if oldest is None or item.received_at < oldest:
                    oldest = item.received_at
                break
        if self._buffered_gaps or self._handed_gaps or self._dropped_gaps_since is not None:
            starts = [g.start for g in self._buffered_gaps]
            starts += [start for _, start, _ in self._handed_gaps]
            if self._dropped_gaps_since is not None:
                starts.append(self._dropped_gaps_since)
            if oldest is not None:
                starts.append(oldest)
            oldest = min(starts)
        return oldest

    @property
    def unacknowledged(self) -> int:
        """Events handed out whose consumer has not settled them yet."""
        return len(self._handed)

    def hand_over(self) -> int:
        """Drop every buffered event, counted as handed over; returns how many.

        For a stream whose next owner delivers them: its checkpoint leaves
        unsettled events out, so that owner numbers and delivers them again.
        """
        count = 0
        while self._buffer:
            item = self._buffer.popleft()
            if isinstance(item, StreamEvent):
                self._events_buffered -= 1
                count += 1
            else:
                self._gap_dropped(item)
        self.counters.handed_over += count
        return count

    def flush_to_dead_letters(self, reason: str) -> int:
        """Dead-letter every buffered event; returns how many.

        Gaps cannot be dead-lettered: they are dropped, and the earliest of
        their starts holds the watermark from then on, so that the next
        run's restart gap covers their windows.
        """
        count = 0
        while self._buffer:
            item = self._buffer.popleft()
            if isinstance(item, StreamEvent):
                self._events_buffered -= 1
                self._dead(item, reason)
                count += 1
            else:
                self._gap_dropped(item)
        return count

    def _gap_dropped(self, gap: Gap) -> None:
        self._buffered_gaps.remove(gap)
        since = self._dropped_gaps_since
        self._dropped_gaps_since = gap.start if since is None else min(since, gap.start)


def weight(priority: int) -> int:
    """Turns per round for a priority: 1 → 16, 2 → 8, 3 → 4, 4 → 2, 5 → 1."""
    return 1 << (5 - priority)


class PriorityMerge:
    """Smooth weighted round-robin over streams that have items."""

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def pick(self, ready: Sequence[Stream]) -> Stream | None:
        """The stream to serve next among ``ready`` (streams with items)."""
        if len(ready) == 1:
            # Its credit would gain its weight and lose it again: unchanged.
            return ready[0]
        best: Stream | None = None
        best_score = best_priority = total = 0
        current = self._current
        for stream in ready:
            w = stream.weight
            total += w
            stream_id = stream.id
            score = current.get(stream_id, 0) + w
            current[stream_id] = score
            if (
                best is None
                or score > best_score
                or (score == best_score and stream.priority < best_priority)
            ):
                best, best_score, best_priority = stream, score, stream.priority
        if best is not None:
            current[best.id] = best_score - total
        return best

    def forget(self, stream_id: str) -> None:
        """Drop a removed stream's credit."""
        self._current.pop(stream_id, None)
