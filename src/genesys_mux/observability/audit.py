"""The audit log: what the multiplexer did, as JSON lines an operator can grep and ship.

Theory of operation
-------------------
The multiplexer offers every control-plane fact to ``mux.on_control`` as a
typed :data:`~genesys_mux.core.events.ControlEvent`; :meth:`AuditLog.attach`
subscribes there (:meth:`AuditLog.record` takes facts from anywhere else,
such as a cluster member). The event's type gives its code (``kind``) and
level. Each fact becomes one line::

    {"ts": "2025-01-01T12:00:00.000Z", "level": "INFO", "logger": "genesys_mux.audit",
     "event": "CHANNEL_ROTATED", ...}

``ts`` is ISO-8601 UTC, ``level`` is ``INFO``, ``WARNING`` or ``ERROR``
(upper case), ``logger`` is always :data:`AUDIT_LOGGER`, ``event`` is the
kind in upper case: the keys of the command line's log lines, so one
schema covers both. The target may also be a :class:`logging.Logger`: each
fact is then logged there at its level, with the event code as the message
and the fields in the record's ``audit`` attribute (the command line does
this when the audit log shares stderr with the other log lines).

**What is written.** Only fields this module knows, each converted to its
expected type (a count stays a count, an id stays a string); anything else
in ``fields`` is dropped. Nothing is ever written from a whole dict, an
exception's ``repr`` or a request. On top of that every record goes through
:mod:`~genesys_mux.observability.sanitize`: a field whose name mentions a
token, secret, password or authorization is redacted, and so is a string
value shaped like a credential. Token refreshes are recorded as the fact
alone, never the token.

**Volume.** The audit log never writes a line per event at INFO. Facts
that can come once per event or per attempt are WARNING-level or worse and
collapsed: the first at once, then at most one line per interval (1 s)
standing for everything held since, with its ``count``:

* ``DLQ_WRITE`` (WARNING) and ``DLQ_DROPPED`` (ERROR), per stream, every
  ``dlq_interval_s``: the letters the dead-letter queue wrote, and those it
  counted but did not keep (its file at ``dlq_max_bytes``), each with the
  first and last sequence of the letters it stands for and their reasons;
* ``SINK_FAILURE``, per stream and sink, every ``sink_failure_interval_s``:
  the first ``error`` of the interval (never lost, however many follow)
  and, when it differs, the ``last_error``.

A fact inside the interval is held, and a timer on the running loop writes
the held count when the interval ends, so the last burst of a storm is
reported too (and :meth:`flush` writes anything held, e.g. at shutdown).
Throughput is summarised instead: :meth:`run_periodic` writes one
``STREAM_METRIC`` line per stream per interval with its counters, rate and
latency percentiles.

**Written or dropped.** A multiplexer reports a dead letter as it hands it
to its queue, which writes a loop turn's letters together at the start of
the next and only then knows which fit under its cap. So the letter waits
for that turn: a callback scheduled by the same letter runs right after the
queue's write, and the growth of the queue's count of dropped letters says
how many of the letters it processed it dropped, the last ones, as it keeps
a write's letters in order while they fit and drops the rest. The
``DLQ_DROPPED`` counts add up to the queue's own count, and the
``DLQ_WRITE`` counts to the letters it kept. Two rare cases blur which
letters: letters the queue wrote out of turn (a turn's letters filling a
megabyte, or a checkpoint's flush, with more letters after it in the same
turn) may have their drops given to the next turn's letters; and letters
held in memory while the file cannot be written, counted as written and
lost later, are counted again in a ``DLQ_DROPPED`` line without a stream
(the queue's own error log names them).

**Rotation.** A file the log opened itself is checked before every line:
when its path names another file, or none (``logrotate`` moved it away, an
operator deleted it), the old one is closed and a new one opened at the
path, so lines never go on into a file that was rotated away. No signal or
restart is needed; ``copytruncate`` works as well, the file being opened
for appending.

**Failure.** A log that cannot be written (disk full, closed pipe, a
directory that is gone) must not take the feed down: write errors are
reported once per outage through stdlib logging, with the path and the
system's words for the error, and the line is lost; a file is opened again
at the next line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

# The dead-letter queue's check that its path still names the file it has
# open (the JSONL sink does the same): one implementation for all three.
from genesys_mux._files import path_replaced
from genesys_mux.core.events import (
    ControlEvent,
    DeadLettered,
    GapReported,
    GapUndelivered,
    Level,
    SinkFailed,
    fields_of,
)
from genesys_mux.core.timestamps import format_iso
from genesys_mux.observability.sanitize import MAX_STRING, REDACTED, looks_secret, redact

if TYPE_CHECKING:
    from genesys_mux.net.multiplexer import Multiplexer

__all__ = ["AUDIT_LOGGER", "OWN_EVENTS", "WITHHELD", "AuditLog", "Level"]

log = logging.getLogger("genesys_mux.observability.audit")


#: The ``logger`` of every audit line.
AUDIT_LOGGER = "genesys_mux.audit"

# The configured stream id pattern: an id that matches it is ours, not a secret.
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if looks_secret(text):
        return REDACTED
    return text if len(text) <= MAX_STRING else text[:MAX_STRING] + "…"


def _stream_id(value: Any) -> str | None:
    # Stream ids are validated configuration: written as they are, but only
    # if they still have the configured shape.
    if isinstance(value, str) and _STREAM_ID.fullmatch(value):
        return value
    return _text(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, list | tuple | set | frozenset | dict):
        return len(value)  # a collection where a count is expected: count it
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return round(float(value), 6)
    return None


def _iso(value: Any) -> str | None:
    seconds = _float(value)
    return None if seconds is None else format_iso(seconds)


def _texts(value: Any) -> list[str] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple | set | frozenset):
        return None
    items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    return [t for t in (_text(v) for v in items[:50]) if t is not None]


def _stream_ids(value: Any) -> list[str] | None:
    texts = value if isinstance(value, list | tuple) else None
    if texts is None:
        return None
    return [s for s in (_stream_id(v) for v in texts[:50]) if s is not None]


#: Input field name → (output name, converter). Anything not here is dropped,
#: unless :data:`WITHHELD` says why it is; a test walks every control event's
#: fields and fails on one that is in neither.
_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "stream_id": ("stream_id", _stream_id),
    "streams": ("streams", _stream_ids),
    "slot": ("slot", _int),
    "channel_id": ("channel_id", _text),
    "old": ("old_channel_id", _text),
    "old_channel_id": ("old_channel_id", _text),
    "reason": ("reason", _text),
    "topic": ("topic", _text),
    "topics": ("topics", _int),
    "missing_permissions": ("missing_permissions", _texts),
    "start": ("start", _iso),
    "end": ("end", _iso),
    "duration_s": ("duration_s", _float),
    "sequence": ("sequence", _int),
    "queues": ("queues", _int),
    "attempts": ("attempts", _int),
    "sink": ("sink", _text),
    "store": ("store", _text),
    "error": ("error", _text),
    # Why a gap did not reach the sinks (GapUndelivered): the sinks and the reason.
    "why": ("why", _text),
    "expires_in_s": ("expires_in_s", _int),
    "conversations": ("conversations", _int),
    # A lease's fencing token (LeaseAcquired.token): a counter, written as
    # ``fence`` because a field named ``token`` is redacted by its name. Only
    # an int survives the converter, so text (an access token, were one ever
    # to reach a field of that name) would be dropped, never written.
    "token": ("fence", _int),
    "kept": ("kept", _int),
}

#: Event codes the audit log writes of its own, besides each control event's kind.
OWN_EVENTS = ("STREAM_METRIC", "DLQ_DROPPED", "RUN_STOPPED")

#: Control-event fields deliberately not written: ``"Class.field"`` → why.
#: Empty: every field of every :data:`ControlEvent` is a fact worth keeping.
#: A field added to an event must be given a line in ``_FIELDS`` or here.
WITHHELD: Mapping[str, str] = {}


#: Windows of each kind held at most; past it everything held is written and forgotten.
_MAX_WINDOWS = 1000

#: One line to write: level, event kind, fields.
_Line = tuple[Level, str, dict[str, Any]]


@dataclass(slots=True)
class _Window:
    """Repeated facts about one subject, held back by the rate limit: a line per interval."""

    last_line_at: float = -math.inf
    timer: asyncio.TimerHandle | None = None

    def take(self) -> list[_Line]:
        """The lines standing for what is held (none if nothing is), which is then let go."""
        raise NotImplementedError


@dataclass(slots=True)
class _Letters:
    """Dead letters of one stream: how many, their first and last sequence, their reasons."""

    count: int = 0
    first_sequence: int | None = None
    last_sequence: int | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, sequence: int | None, reason: str | None) -> None:
        self.count += 1
        if sequence is not None:
            if self.first_sequence is None:
                self.first_sequence = sequence
            self.last_sequence = sequence
        key = reason or "unknown"
        if key in self.reasons or len(self.reasons) < 20:
            self.reasons[key] = self.reasons.get(key, 0) + 1

    def take(self) -> dict[str, Any]:
        fields = {
            "count": self.count,
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "reasons": dict(self.reasons),
        }
        self.count = 0
        self.first_sequence = self.last_sequence = None
        self.reasons = {}
        return fields


@dataclass(slots=True)
class _LetterWindow(_Window):
    """Dead letters of one stream the queue wrote (``DLQ_WRITE``) and dropped (``DLQ_DROPPED``).

    The stream ``""`` holds drops of letters already counted as written (see
    ``_settle``): their line has a count and nothing else.
    """

    stream_id: str = ""
    written: _Letters = field(default_factory=_Letters)
    dropped: _Letters = field(default_factory=_Letters)

    def take(self) -> list[_Line]:
        lines: list[_Line] = []
        if self.written.count:
            lines.append(
                ("WARNING", "dlq_write", {"stream_id": self.stream_id, **self.written.take()})
            )
        if self.dropped.count:
            if self.stream_id:
                fields = {"stream_id": self.stream_id, **self.dropped.take()}
            else:
                fields = {"count": self.dropped.take()["count"]}
            # Lost events: as loud as the queue's own log line about them.
            lines.append(("ERROR", "dlq_dropped", fields))
        return lines


#: A dead letter reported, its fate not known yet: stream id, sequence, reason.
_Pending = tuple[str, int | None, str | None]


@dataclass(slots=True)
class _Source:
    """One attached multiplexer, and the dead letters its queue has not been asked about yet.

    A multiplexer reports each letter (``DeadLettered``) as it hands it to
    its queue; a file queue writes the letters of a loop turn together, in
    order, at the start of the next, and only then knows which fitted under
    its ``dlq_max_bytes`` (the first ones) and which it dropped (the rest).
    A queue in memory keeps or drops each at once.
    """

    mux: Multiplexer | None
    #: Letters reported, in order, whose fate is not known yet.
    pending: list[_Pending] = field(default_factory=list)
    #: The queue's count of dropped letters when last read (None: it has none).
    dropped_seen: int | None = None
    #: The next turn's callback, while one is scheduled.
    turn: asyncio.Handle | None = None
    #: What the multiplexer calls (``mux.on_control``).
    callback: Callable[[ControlEvent], None] | None = None


def _dropped_count(mux: Multiplexer) -> int | None:
    """The multiplexer's queue's count of letters counted but not kept, if it keeps one.

    Read once per loop turn that had dead letters. ``mux.stats()`` has it
    too, but also sorts every stream's latencies: too dear that often in a
    dead-letter storm. Both queue kinds keep it as a public ``dropped``, so
    the multiplexer's queue is asked directly; ``stats()`` stands in if it
    cannot be found.
    """
    value = getattr(getattr(mux, "_dlq", None), "dropped", None)
    if value is None:
        dlq = mux.stats().get("dlq")
        value = dlq.get("dropped") if isinstance(dlq, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class _FailureWindow(_Window):
    """Failed attempts of one sink of one stream (``SINK_FAILURE``)."""

    stream_id: str = ""
    sink: str = ""
    count: int = 0
    #: The window's first error, never lost however many follow it.
    error: str | None = None
    #: Its latest, written when it differs from the first.
    last_error: str | None = None

    def add(self, error: str | None) -> None:
        self.count += 1
        if self.count == 1:
            self.error = error
        self.last_error = error

    def take(self) -> list[_Line]:
        if not self.count:
            return []
        fields: dict[str, Any] = {
            "stream_id": self.stream_id,
            "sink": self.sink,
            "count": self.count,
            "error": self.error,
        }
        if self.last_error != self.error:
            fields["last_error"] = self.last_error
        self.count = 0
        self.error = self.last_error = None
        return [("WARNING", "sink_failure", fields)]


@dataclass(slots=True)
class _Previous:
    delivered: int
    at: float


class AuditLog:
    """JSON-lines audit log of one or more multiplexers.

    ``target`` is a path (appended to, created if missing, opened again
    when it is rotated away: see the module documentation), an open text
    stream, or None for the process's current ``sys.stderr``.
    ``dlq_interval_s`` and ``sink_failure_interval_s`` space the collapsed
    ``DLQ_WRITE`` and ``SINK_FAILURE`` lines of one stream (and sink).
    ``clock`` is a monotonic clock for those rate limits, injectable for tests.
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | TextIO | logging.Logger | None = None,
        *,
        dlq_interval_s: float = 1.0,
        sink_failure_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if dlq_interval_s <= 0:
            raise ValueError("dlq_interval_s must be positive")
        if sink_failure_interval_s <= 0:
            raise ValueError("sink_failure_interval_s must be positive")
        #: The file this log opened itself (a path target), and its path.
        self._path: Path | None = None
        self._file: BinaryIO | None = None
        self._stream: TextIO | None = None
        self._logger: logging.Logger | None = None
        if isinstance(target, logging.Logger):
            self._logger = target
        elif target is None:
            self._stream = None  # sys.stderr, looked up per write
        elif isinstance(target, str | os.PathLike):
            self._path = Path(target)
            # Opened now, so a path that cannot be written fails here, at start.
            self._file = self._open()
        else:
            self._stream = target
        self.dlq_interval_s = dlq_interval_s
        self.sink_failure_interval_s = sink_failure_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._letters: dict[str, _LetterWindow] = {}
        # Facts given to record() directly, from no multiplexer: no queue to ask.
        self._unattached = _Source(None)
        self._sources: list[_Source] = []
        self._failures: dict[tuple[str, str], _FailureWindow] = {}
        self._previous: dict[str, _Previous] = {}
        self._write_failed = False
        self._closed = False

    # -- wiring ----------------------------------------------------------------

    def attach(self, mux: Multiplexer) -> None:
        """Record every control-plane fact ``mux`` reports."""
        if any(source.mux is mux for source in self._sources):
            return
        # Letters its queue dropped before now are not this log's to report.
        source = _Source(mux, dropped_seen=_dropped_count(mux))
        source.callback = functools.partial(self._record_from, source)
        self._sources.append(source)
        mux.on_control.append(source.callback)

    def detach(self, mux: Multiplexer) -> None:
        """Stop recording ``mux``'s facts (anything held back is written first)."""
        for source in [s for s in self._sources if s.mux is mux]:
            self._sources.remove(source)
            if source.callback is not None:
                with contextlib.suppress(ValueError):
                    mux.on_control.remove(source.callback)
            self._settle(source)
        self.flush()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Write anything held back, then close the file if this log opened it."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    # -- facts -------------------------------------------------------------------

    def record(self, event: ControlEvent) -> None:
        """Write one fact (a cluster member's ``on_control`` callback, or by hand).

        A dead letter recorded here, from no attached multiplexer, is
        written as ``DLQ_WRITE``: there is no queue to ask whether it kept it.
        """
        self._record_from(self._unattached, event)

    def _record_from(self, source: _Source, event: ControlEvent) -> None:
        fields = fields_of(event)
        if isinstance(event, DeadLettered):
            self._dead_letter(source, fields)
            return
        if isinstance(event, SinkFailed):
            self._sink_failed(fields)
            return
        clean = self._known(fields)
        if isinstance(event, GapReported | GapUndelivered):
            clean["duration_s"] = round(event.end - event.start, 3)
        self.write(event.level, event.kind, clean)

    def sink_failure(self, stream_id: str, sink: object, error: BaseException | str) -> None:
        """Record that ``sink`` failed for ``stream_id``.

        ``sink`` is a name, or a sink object: then its ``name`` attribute if
        it has a string one, else its class name, never its ``str`` (which
        could hold a URL with credentials). Only the exception's type and
        message are written, never its arguments or attributes, and the
        message is redacted like any field.
        """
        if not isinstance(sink, str):
            name = getattr(sink, "name", None)
            sink = name if isinstance(name, str) else type(sink).__name__
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        else:
            message = error
        self.record(SinkFailed(stream_id, sink, message))

    def run_stopped(
        self, reason: str, streams: int, taken: int, dead_lettered: int, sink_dead_lettered: int
    ) -> None:
        """Write the ``RUN_STOPPED`` line: why a run stopped, and what its streams had done.

        ``taken`` counts the events the streams handed on (to their sinks, or
        to the output); ``dead_lettered`` those dead-lettered, by the buffers
        and the sinks, of which ``sink_dead_lettered`` by the sinks (an event
        a sink gave up on was taken first, so it is in both counts).

        Written last, once everything held is: a clean stop then always ends
        the file with it, and a file that ends without it was a crash.
        """
        self.flush()
        self.write(
            "INFO",
            "run_stopped",
            {
                "reason": reason,
                "streams": streams,
                "taken": taken,
                "dead_lettered": dead_lettered,
                "sink_dead_lettered": sink_dead_lettered,
            },
        )

    def stream_metrics(
        self, mux: Multiplexer, sink_dead_lettered: Callable[[str], int] | None = None
    ) -> None:
        """Write one ``STREAM_METRIC`` line per stream of ``mux``, now.

        ``sink_dead_lettered`` gives the events a stream's sinks gave up on
        (``dead_lettered`` is its buffer's); without it they count as 0.
        """
        now = self._clock()
        streams = mux.stats()["streams"]
        for stream_id, s in streams.items():
            previous = self._previous.get(stream_id)
            rate = None
            if previous is not None and now > previous.at:
                rate = round((s.delivered - previous.delivered) / (now - previous.at), 3)
            self._previous[stream_id] = _Previous(s.delivered, now)
            self.write(
                "INFO",
                "stream_metric",
                {
                    "stream_id": _stream_id(stream_id),
                    "priority": s.priority,
                    "topics": s.topics,
                    "buffered": s.buffered,
                    "received": s.received,
                    "delivered": s.delivered,
                    "filtered": s.filtered,
                    "duplicates": s.duplicates,
                    "stale": s.stale,
                    "overflowed": s.overflowed,
                    "dead_lettered": s.dead_lettered,
                    "sink_dead_lettered": (
                        0 if sink_dead_lettered is None else sink_dead_lettered(stream_id)
                    ),
                    "gaps": s.gaps,
                    "rejected_topics": len(s.rejected_topics),
                    "delivered_per_s": rate,
                    "latency_p50_s": _float(s.latency_p50_s),
                    "latency_p99_s": _float(s.latency_p99_s),
                },
            )
        for gone in set(self._previous) - set(streams):
            del self._previous[gone]

    async def run_periodic(
        self,
        mux: Multiplexer,
        interval_s: float = 60.0,
        sink_dead_lettered: Callable[[str], int] | None = None,
    ) -> None:
        """Write :meth:`stream_metrics` every ``interval_s`` until cancelled."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        # A silent baseline, so the first line already has a rate.
        now = self._clock()
        self._previous = {
            sid: _Previous(s.delivered, now) for sid, s in mux.stats()["streams"].items()
        }
        while True:
            await asyncio.sleep(interval_s)
            self.stream_metrics(mux, sink_dead_lettered)

    def flush(self) -> None:
        """Write everything the rate limits hold back (dead letters, sink failures).

        Dead letters whose queue has not said yet whether it kept them are
        taken as written by now (at shutdown, the queue was closed first).
        """
        for source in (*self._sources, self._unattached):
            self._settle(source)
        self._write_all()

    def _write_all(self) -> None:
        for letters in list(self._letters.values()):
            self._write_window(letters)
        for failures in list(self._failures.values()):
            self._write_window(failures)

    # -- repeated facts, collapsed ------------------------------------------------

    def _offer(self, window: _Window, interval_s: float, write: Callable[[], None]) -> None:
        """``window`` holds a new fact: its line now if ``interval_s`` has passed since the last.

        Otherwise a timer on the running loop writes it when the interval
        ends, so the last burst of a storm is reported too (without a
        running loop it waits for the next fact or :meth:`flush`).
        """
        now = self._clock()
        if now - window.last_line_at >= interval_s:
            write()
        elif window.timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: flushed later
                loop = asyncio.get_running_loop()
                window.timer = loop.call_later(window.last_line_at + interval_s - now, write)

    def _write_window(self, window: _Window) -> None:
        if window.timer is not None:
            window.timer.cancel()
            window.timer = None
        lines = window.take()
        if not lines:
            return
        window.last_line_at = self._clock()
        for level, kind, fields in lines:
            self.write(level, kind, fields)

    # -- dead letters: written or dropped ------------------------------------------

    def _letter_window(self, stream_id: str) -> _LetterWindow:
        window = self._letters.get(stream_id)
        if window is None:
            if len(self._letters) >= _MAX_WINDOWS:
                self._write_all()
                self._letters.clear()
            window = self._letters[stream_id] = _LetterWindow(stream_id=stream_id)
        return window

    def _dead_letter(self, source: _Source, fields: Mapping[str, Any]) -> None:
        """A letter handed to the queue: its line waits until the queue has written or dropped it.

        The queue writes a turn's letters at the start of the next (see
        :class:`_Source`); the turn callback scheduled here runs right after
        that write, as both are scheduled by the same letter, and the
        letters the queue dropped in it are the last of those it processed.
        """
        stream_id = _stream_id(fields.get("stream_id")) or "unknown"
        source.pending.append(
            (stream_id, _int(fields.get("sequence")), _text(fields.get("reason")))
        )
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or source.mux is None:
            # Outside a loop the queue has written it already; without a
            # multiplexer there is no queue to ask. Its fate is known now.
            self._settle(source)
        elif source.turn is None:
            source.turn = loop.call_soon(self._turn, source)

    def _turn(self, source: _Source) -> None:
        """The queue has had its turn at every letter reported so far: sort them."""
        source.turn = None
        self._settle(source)

    def _settle(self, source: _Source) -> None:
        """Sort the letters reported so far into written and dropped; offer their lines.

        Within one write the queue keeps the letters that fit under its cap,
        in order, and drops the rest, so the ones it dropped since the last
        look (one turn ago) are the last of those reported since. Drops
        beyond them are of letters an earlier line counted as written (see
        the module documentation): a ``DLQ_DROPPED`` line without a stream
        counts them.
        """
        letters, source.pending = source.pending, []
        dropped = self._newly_dropped(source)
        kept = max(0, len(letters) - dropped)
        untold = dropped - (len(letters) - kept)
        touched: dict[str, _LetterWindow] = {}
        for stream_id, sequence, reason in letters[:kept]:
            window = touched[stream_id] = self._letter_window(stream_id)
            window.written.add(sequence, reason)
        for stream_id, sequence, reason in letters[kept:]:
            window = touched[stream_id] = self._letter_window(stream_id)
            window.dropped.add(sequence, reason)
        if untold > 0:
            window = touched[""] = self._letter_window("")
            window.dropped.count += untold
        for window in touched.values():
            self._offer(window, self.dlq_interval_s, functools.partial(self._write_window, window))

    @staticmethod
    def _newly_dropped(source: _Source) -> int:
        """Letters the source's queue dropped since the last look."""
        if source.mux is None:
            return 0
        now = _dropped_count(source.mux)
        before, source.dropped_seen = source.dropped_seen, now
        if now is None or before is None or now < before:
            return 0  # no count to go by (yet), or another queue's
        return now - before

    # -- sink failures -----------------------------------------------------------------

    def _sink_failed(self, fields: Mapping[str, Any]) -> None:
        # One line per attempt flooded the log (a webhook down at a few events
        # a second wrote hundreds): the first at once, then a count per interval.
        stream_id = _stream_id(fields.get("stream_id")) or "unknown"
        sink = _text(fields.get("sink")) or "unknown"
        key = (stream_id, sink)
        window = self._failures.get(key)
        if window is None:
            if len(self._failures) >= _MAX_WINDOWS:
                self.flush()
                self._failures.clear()
            window = self._failures[key] = _FailureWindow(stream_id=stream_id, sink=sink)
        window.add(_text(fields.get("error")))
        self._offer(
            window, self.sink_failure_interval_s, functools.partial(self._write_window, window)
        )

    # -- output --------------------------------------------------------------------

    @staticmethod
    def _known(fields: Mapping[str, Any]) -> dict[str, Any]:
        clean: dict[str, Any] = {}
        for name, (out, convert) in _FIELDS.items():
            if name in fields:
                value = convert(fields[name])
                if value is not None:
                    clean[out] = value
        return clean

    def write(self, level: Level, kind: str, fields: Mapping[str, Any]) -> None:
        """Write one line. ``fields`` are redacted (by name and value) on the way out."""
        if self._closed:
            return
        if self._logger is not None:
            self._logger.log(
                logging.getLevelNamesMapping()[level],
                kind.upper(),
                extra={"audit": redact(fields)},
            )
            return
        record: dict[str, Any] = {
            "ts": format_iso(time.time()),
            "level": level,
            "logger": AUDIT_LOGGER,
            "event": kind.upper(),
        }
        for name, value in redact(fields).items():
            if name not in record:
                record[name] = value
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"
        try:
            with self._lock:
                if self._path is not None:
                    self._write_file(self._path, line.encode())
                else:
                    stream = self._stream if self._stream is not None else sys.stderr
                    stream.write(line)
                    stream.flush()
        except (OSError, ValueError) as exc:
            # Never let a broken log take the feed down; say so once per outage.
            if not self._write_failed:
                self._write_failed = True
                where = self._path if self._path is not None else "its stream"
                why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
                # The path and the system's words (disk full, no such
                # directory): what to fix; the lines are lost until it is.
                log.warning(
                    "cannot write the audit log %s: %s%s; its lines are lost until it can",
                    where,
                    why or type(exc).__name__,
                    f" ({type(exc).__name__})" if why else "",
                )
        else:
            self._write_failed = False

    def _open(self) -> BinaryIO:
        """The log's file, opened for appending (created if missing)."""
        assert self._path is not None
        # Unbuffered: each line is one write, whole, at the end of the file.
        return self._path.open("ab", buffering=0)

    def _write_file(self, path: Path, data: bytes) -> None:
        """Append ``data`` to the file at ``path``, reopening it if it was rotated away."""
        file = self._file
        if file is not None and path_replaced(path, file.fileno()):
            # Moved or deleted (logrotate, an operator): lines written to the
            # old file would go wherever it went, or be lost with it.
            self._file = None
            with contextlib.suppress(OSError):
                file.close()
            file = None
        if file is None:
            file = self._file = self._open()
        view = memoryview(data)
        while view:
            # A write may take less than asked (a signal, a nearly full disk).
            written = file.write(view)
            if not written:
                raise OSError("the audit file took nothing")
            view = view[written:]
