"""The dead-letter queue: every event a stream could not deliver, with why.

The default is a JSON-lines file, one dead letter per line. Letters are
written in batches: those of one event-loop iteration together, at the end
of it (a stalled consumer dead-letters thousands a second, and a lock, a
write and a flush per letter cost more than the letter), and always before
a checkpoint counts them as settled, so a crash loses nothing a checkpoint
relies on. The file has a size cap: past it letters are counted and
logged, never silently lost, and the operator is told what to do. A file
that cannot be written (its directory gone, no permission, no descriptor
left, disk full) loses nothing either: the letters are held in memory
(bounded, the rest counted), said once by stream and sequence, and
:meth:`JsonlDeadLetterQueue.flush` raises until they are on file, so no
checkpoint counts them as settled before. The raw ``eventBody`` is
stored verbatim as JSON text when it is compact JSON (the common case) so the
file stays readable with ``jq``; any other body (not JSON, not UTF-8, nested
too deeply to decode, or spread over lines) is stored base64-encoded. Either
way :func:`read_dead_letters` gives back the exact bytes.

Anything with a ``write(letter)`` method can stand in (see
:class:`DeadLetterQueue`). :class:`MemoryDeadLetterQueue`, bounded, is the
library's default, so a library writes no file unless asked; the command
line keeps the file.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, runtime_checkable

import msgspec

from genesys_mux._files import path_replaced
from genesys_mux.core.streams import DeadLetter
from genesys_mux.errors import ConfigError, StateError
from genesys_mux.sinks.base import DECODE_ERRORS, embeddable

log = logging.getLogger("genesys_mux.dlq")

__all__ = [
    "DEFAULT_DLQ_MAX_BYTES",
    "DeadLetterQueue",
    "JsonlDeadLetterQueue",
    "MemoryDeadLetterQueue",
    "dead_letter_line",
    "file_lock",
    "read_dead_letters",
]


@runtime_checkable
class DeadLetterQueue(Protocol):
    """Somewhere to put events that could not be delivered."""

    def write(self, letter: DeadLetter) -> None:
        """Store one dead letter durably enough for the deployment."""


class MemoryDeadLetterQueue:
    """Dead letters kept in memory, readable as :attr:`letters` (the library's default).

    ``limit`` bounds how many are held (None: no bound). Past it the first
    ``limit`` letters are kept and every further one is counted in
    :attr:`dropped` and logged (the first, then every thousandth), so a
    stalled consumer cannot grow memory without bound and no loss is silent.
    """

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be at least 0, not {limit}")
        self.letters: list[DeadLetter] = []
        self.limit = limit
        #: Letters that arrived while the queue was full: counted, not kept.
        self.dropped = 0

    def write(self, letter: DeadLetter) -> None:
        """Keep ``letter``, or count and log it when the queue is full."""
        if self.limit is None or len(self.letters) < self.limit:
            self.letters.append(letter)
            return
        self.dropped += 1
        if self.dropped % 1000 == 1:
            log.error(
                "dead-letter queue full (%d held): %d letter(s) counted but not kept, the "
                "latest stream=%s sequence=%d reason=%s; give the Multiplexer a dlq path "
                "to keep every letter on disk",
                len(self.letters),
                self.dropped,
                letter.stream_id,
                letter.sequence,
                letter.reason,
            )


#: The JSON-lines file's default size cap: about half a million 2 KB letters.
DEFAULT_DLQ_MAX_BYTES = 1 << 30
#: Letters held for one batch at most; a burst larger than this is written in several.
_BATCH_BYTES = 1 << 20
#: Letters held in memory at most while the file cannot be written; past it they are counted.
_HELD_BYTES = 64 * _BATCH_BYTES


class JsonlDeadLetterQueue:
    """Dead letters appended to a JSON-lines file, in batches, up to ``max_bytes``.

    In an event loop, the letters of one iteration are written together
    when it ends (or once a megabyte is pending); outside one, each at
    once. :meth:`flush` writes what is pending now (the multiplexer calls
    it before every checkpoint). ``fsync`` forces each batch to disk;
    without it a batch survives a crash of this process but not of the
    machine. Once the file holds ``max_bytes`` (None: no cap), further
    letters are counted in :attr:`dropped` and logged, not written: a
    consumer stalled for hours must not fill the disk the state lives on.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        max_bytes: int | None = DEFAULT_DLQ_MAX_BYTES,
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be at least 0, not {max_bytes}")
        self.path = Path(path)
        directory = self.path.parent
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise ConfigError(
                f"cannot write the dead-letter file {self.path}: {directory} is not a writable "
                "directory; choose another path for the dead-letter queue"
            )
        self.max_bytes = max_bytes
        #: Letters not written because the file reached ``max_bytes``: counted, logged.
        self.dropped = 0
        #: The file's size as last written (what the cap compares with).
        self.size = 0
        # Opened on the first dead letter, so a healthy run leaves no empty file.
        self._file: BinaryIO | None = None
        self._fsync = fsync
        self._lock = threading.Lock()
        # The batch: its lines one after another, and where each one ends.
        self._pending = bytearray()
        self._ends: list[int] = []
        # Who each line is for (stream, sequence): named when they cannot be written.
        self._ids: list[tuple[str, int]] = []
        # Bytes of the batch held back by a failed write (retried, not re-tried per letter).
        self._held = 0
        # The last write failed (said once, until one succeeds).
        self._failing = False
        self._flush_due: asyncio.Handle | None = None
        self._flush_loop: asyncio.AbstractEventLoop | None = None

    def write(self, letter: DeadLetter) -> None:
        """Add one line to the batch; written at the end of this loop iteration (see the class).

        Safe beside ``dlq purge`` and ``dlq replay`` in another process: both
        hold the file's lock while they rewrite it, and a writer that finds
        the file replaced under it reopens it, so no letter lands in a file
        that is gone. Never raises for a file it cannot write: the letters
        are held and retried (see :meth:`flush`).
        """
        record = _record(letter)
        with self._lock:
            pending = self._pending
            # Encoded in place at the end of the batch: no copy per line.
            _ENCODER.encode_into(record, pending, -1)
            pending += b"\n"
            self._ends.append(len(pending))
            self._ids.append((letter.stream_id, letter.sequence))
            full = len(pending) - self._held >= _BATCH_BYTES
            if full:
                self._held = len(pending)  # one attempt per batch while the file fails
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # a thread of its own, or no loop: written now
        if loop is None or full:
            self._write_pending()
        elif self._flush_due is None or self._flush_loop is not loop:
            # (A flush left scheduled on a loop that has ended never runs.)
            self._flush_due = loop.call_soon(self._write_pending)
            self._flush_loop = loop

    def flush(self) -> None:
        """Write the pending letters now (those past the size cap are counted instead).

        Raises :class:`StateError` while letters cannot be written (the
        directory is gone, no permission, no descriptor left, disk full):
        they stay pending, retried at the next write or flush, so a
        checkpoint that flushes first does not count them as settled.
        """
        error = self._write_pending()
        if error is not None:
            raise StateError(error)

    def _write_pending(self) -> str | None:
        """Write the pending letters; on failure keep them (bounded) and say why."""
        with self._lock:
            if self._flush_due is not None:
                self._flush_due.cancel()
                self._flush_due = None
            pending, ends, ids = self._pending, self._ends, self._ids
            if not ends:
                return None
            self._pending, self._ends, self._ids, self._held = bytearray(), [], [], 0
            try:
                self._write(pending, ends)
            except _WriteFailed as failed:
                # Lines past the cap were counted already: only those before it are held.
                kept = bisect.bisect_right(ends, failed.kept)
                return self._hold(pending, ends[:kept], ids[:kept], failed.error)
            except OSError as exc:
                return self._hold(pending, ends, ids, exc)
            if self._failing:
                self._failing = False
                log.warning(
                    "dead-letter file %s is writable again: the held letters are on file", self.path
                )
            return None

    def _write(self, pending: bytearray, ends: list[int]) -> None:
        """Append the batch under the file's lock; on OSError the file is as it was."""
        with file_lock(self.path):
            if self._file is not None and path_replaced(self.path, self._file.fileno()):
                self._file.close()
                self._file = None
            if self._file is None:
                self._file = self.path.open("ab", buffering=0)
            fd = self._file.fileno()
            # Read at every batch: an operator may have emptied the file.
            self.size = os.fstat(fd).st_size
            kept = self._within_cap(ends)
            if not kept:
                return
            try:
                view = memoryview(pending)[:kept]
                while view:
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            except OSError as exc:
                # No partial line left behind: the batch is written again whole.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self.size)
                raise _WriteFailed(exc, kept) from exc
            self.size += kept

    def _hold(
        self,
        pending: bytearray,
        ends: list[int],
        ids: list[tuple[str, int]],
        exc: OSError,
    ) -> str:
        """Keep the letters that failed (up to ``_HELD_BYTES``), count the rest; log; say why."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None  # reopened (the path may name a new file) next time
        keep = bisect.bisect_right(ends, _HELD_BYTES)
        lost = len(ends) - keep
        self._pending = pending[: ends[keep - 1]] if keep else bytearray()
        self._ends, self._ids = ends[:keep], ids[:keep]
        self._held = len(self._pending)
        before, self.dropped = self.dropped, self.dropped + lost
        message = (
            f"cannot write {len(ends)} dead letter(s) ({_ranges(ids)}) to {self.path}: "
            f"{exc.strerror or type(exc).__name__}; "
        )
        if lost:
            message += f"{keep} held in memory, {lost} counted as dropped ({_ranges(ids[keep:])}); "
        else:
            message += "held in memory and written when the file can be; "
        if keep:
            message += "no checkpoint is saved until they are written; "
        message += (
            "make the directory "
            f"{self.path.parent} exist and writable (or free disk space and file descriptors)"
        )
        # Loud once per outage, then per thousand dropped: never a line per letter.
        if not self._failing or (lost and before // 1000 != self.dropped // 1000):
            log.error("%s", message)
        self._failing = True
        return message

    def _within_cap(self, ends: list[int]) -> int:
        """Bytes of the batch that fit under ``max_bytes``, in whole lines; the rest is counted."""
        if self.max_bytes is None:
            return ends[-1]
        room = self.max_bytes - self.size
        # The lines that end within the room are written, in order.
        lines = bisect.bisect_right(ends, room)
        over = len(ends) - lines
        if over:
            before, self.dropped = self.dropped, self.dropped + over
            # The first time, then every thousandth: loud, never a flood.
            if before == 0 or before // 1000 != self.dropped // 1000:
                log.error(
                    "dead-letter file %s is full (%d bytes, max_bytes %d): %d letter(s) "
                    "counted but not written; replay or purge it (genesys-mux dlq), or "
                    "raise the cap",
                    self.path,
                    self.size,
                    self.max_bytes,
                    self.dropped,
                )
        return ends[lines - 1] if lines else 0

    def close(self) -> None:
        """Write what is pending, then close the file.

        Letters that still cannot be written are counted in :attr:`dropped`
        and logged (by stream and sequence), not raised: nothing holds them after.
        """
        if self._write_pending() is not None:
            with self._lock:
                if self._ends:
                    self.dropped += len(self._ends)
                    log.error(
                        "dead-letter queue %s closed with %d letter(s) unwritten (%s): "
                        "counted as dropped; replay them from the source if you can",
                        self.path,
                        len(self._ends),
                        _ranges(self._ids),
                    )
                self._pending, self._ends, self._ids, self._held = bytearray(), [], [], 0
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold the lock of a dead-letter file (``<path>.lock``) across processes.

    Writers take it for each letter; rewriters (purge, replay) for the whole
    rewrite. An advisory ``flock``: every genesys-mux process honours it.
    """
    lock_path = path.with_name(path.name + ".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


class _WriteFailed(Exception):
    """A write that failed after ``kept`` bytes of the batch fitted under the cap."""

    def __init__(self, error: OSError, kept: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.kept = kept


def _ranges(ids: list[tuple[str, int]]) -> str:
    """``stream=a sequence 3-9, stream=b sequence 4``: which letters, in a few words."""
    spans: dict[str, tuple[int, int]] = {}
    for stream_id, sequence in ids:
        low, high = spans.get(stream_id, (sequence, sequence))
        spans[stream_id] = (min(low, sequence), max(high, sequence))
    parts = [
        f"stream={stream_id} sequence {low}" + (f"-{high}" if high != low else "")
        for stream_id, (low, high) in sorted(spans.items())
    ]
    if len(parts) > 5:
        parts = [*parts[:5], f"and {len(parts) - 5} more stream(s)"]
    return ", ".join(parts)


_ENCODER = msgspec.json.Encoder()


def dead_letter_line(letter: DeadLetter) -> bytes:
    """``letter`` as one line of the file, newline included (as the queue writes it)."""
    return _ENCODER.encode(_record(letter)) + b"\n"


def _record(letter: DeadLetter) -> dict[str, Any]:
    record: dict[str, Any] = {
        "stream_id": letter.stream_id,
        "sequence": letter.sequence,
        "idempotency_key": letter.idempotency_key or f"{letter.stream_id}:{letter.sequence}",
        "reason": letter.reason,
        "topic": letter.topic,
        "conversation_id": letter.conversation_id,
        "correlation_id": letter.correlation_id,
        "received_at": letter.received_at,
        "transition": letter.transition,
    }
    if letter.epoch:
        record["epoch"] = letter.epoch
    if embeddable(letter.raw, letter.well_formed):
        record["event_body"] = msgspec.Raw(letter.raw)
    else:
        record["event_body_b64"] = base64.b64encode(letter.raw).decode()
    return record


class _Line(msgspec.Struct):
    stream_id: str
    sequence: int
    reason: str
    topic: str
    received_at: float
    conversation_id: str | None = None
    correlation_id: str | None = None
    idempotency_key: str = ""
    transition: Literal["enter", "update", "exit"] | None = None
    epoch: str = ""  # absent from letters written before it was added
    # An empty Raw stands for "absent": msgspec cannot put Raw in a union.
    event_body: msgspec.Raw = msgspec.Raw()
    event_body_b64: str | None = None


def read_dead_letters(path: str | os.PathLike[str]) -> Iterator[DeadLetter]:
    """The dead letters in a JSON-lines file, in order.

    Raises :class:`ConfigError` naming the line for anything unreadable.
    """
    with Path(path).open("rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                item = msgspec.json.decode(line, type=_Line)
                raw = (
                    bytes(item.event_body)
                    if len(item.event_body)
                    else base64.b64decode(item.event_body_b64 or "")
                )
            except (*DECODE_ERRORS, ValueError) as exc:
                raise ConfigError(f"{path}:{number}: not a dead-letter record: {exc}") from exc
            yield DeadLetter(
                item.stream_id,
                item.sequence,
                item.reason,
                item.topic,
                item.conversation_id,
                item.correlation_id,
                item.received_at,
                raw,
                item.idempotency_key,
                item.transition,
                item.epoch,
            )
