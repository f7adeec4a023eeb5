"""The dead-letter queue: every event a stream could not deliver, with why.

The default is a JSON-lines file, one dead letter per line, flushed as it is
written so a crash loses nothing already reported. The raw ``eventBody`` is
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

import base64
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, runtime_checkable

import msgspec

from genesys_mux.core.streams import DeadLetter
from genesys_mux.errors import ConfigError

log = logging.getLogger("genesys_mux.dlq")

__all__ = [
    "DeadLetterQueue",
    "JsonlDeadLetterQueue",
    "MemoryDeadLetterQueue",
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


class JsonlDeadLetterQueue:
    """Dead letters appended to a JSON-lines file.

    ``fsync`` forces each line to disk; without it a line survives a crash
    of this process but not of the machine.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        directory = self.path.parent
        if not directory.is_dir() or not os.access(directory, os.W_OK):
            raise ConfigError(
                f"cannot write the dead-letter file {self.path}: {directory} is not a writable "
                "directory; choose another path for the dead-letter queue"
            )
        # Opened on the first dead letter, so a healthy run leaves no empty file.
        self._file: BinaryIO | None = None
        self._fsync = fsync
        self._lock = threading.Lock()

    def write(self, letter: DeadLetter) -> None:
        """Append one line and flush it.

        Safe beside ``dlq purge`` and ``dlq replay`` in another process: both
        hold the file's lock while they rewrite it, and a writer that finds
        the file replaced under it reopens it, so no letter lands in a file
        that is gone.
        """
        line = msgspec.json.encode(_record(letter)) + b"\n"
        with self._lock, file_lock(self.path):
            if self._file is not None and _replaced(self.path, self._file):
                self._file.close()
                self._file = None
            if self._file is None:
                self._file = self.path.open("ab")
            self._file.write(line)
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        """Close the file."""
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


def _replaced(path: Path, file: BinaryIO) -> bool:
    """True when ``path`` no longer names the file ``file`` has open."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return True
    mine = os.fstat(file.fileno())
    return (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino)


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
    if _fits_on_the_line(letter.raw):
        record["event_body"] = msgspec.Raw(letter.raw)
    else:
        record["event_body_b64"] = base64.b64encode(letter.raw).decode()
    return record


# What msgspec raises for bytes it cannot decode: malformed JSON, invalid
# UTF-8 in a string (UnicodeDecodeError), nesting too deep (RecursionError).
_DECODE_ERRORS = (msgspec.DecodeError, RecursionError, UnicodeError)


def _fits_on_the_line(raw: bytes) -> bool:
    """True when ``raw`` can be embedded verbatim and read back byte for byte.

    That is one JSON value on one line with no surrounding whitespace (a
    reader's ``Raw`` would drop it). Genesys bodies are compact, so this is
    the common case; anything else is stored base64 rather than re-encoded,
    which would change its bytes and so its content hash.
    """
    if not raw or raw != raw.strip() or b"\n" in raw or b"\r" in raw:
        return False
    try:
        msgspec.json.decode(raw)
    except _DECODE_ERRORS:
        return False
    return True


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
            except (*_DECODE_ERRORS, ValueError) as exc:
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
            )
