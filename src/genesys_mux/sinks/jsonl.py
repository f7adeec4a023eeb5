"""A sink that appends items to a JSON-lines file, rotated by size.

Theory of operation
-------------------
Each item becomes one line (the shared record of
:mod:`genesys_mux.sinks.base`). Lines are appended to ``path``; before a line
would take the file past ``max_bytes`` the file is rotated the way
``logging.handlers.RotatingFileHandler`` does it: ``name.jsonl`` becomes
``name.jsonl.1``, ``.1`` becomes ``.2`` and so on, and the file past
``backups`` is deleted (with ``backups=0`` the file is simply started
afresh). A line is never split across files, so a file exceeds
``max_bytes`` only when a single line is larger than that.

Durability is a choice, ``fsync``:

* ``never``: every batch is written to the operating system before
  :meth:`JsonlSink.send` returns, so it survives a crash of this process but
  not of the machine. Fastest.
* ``batch`` (default): one ``fsync`` per batch, and one when a file is
  rotated, so an acknowledged batch survives a power cut.
* ``always``: one ``fsync`` per line; slow, for low-volume audit trails.

``fsyncs`` and ``rotations`` count what was done, for metrics and tests.

A file moved or deleted under the sink (``logrotate`` without
``copytruncate``, an operator) is noticed at the next batch: the sink opens
a new file at ``path`` rather than keep writing to one that is gone.

The file is written through a raw descriptor (no user-space buffer) from a
worker thread, so a slow disk or a long ``fsync`` holds back only the stream
this sink serves, never the event loop. A write that fails half-way is cut
back to the last whole line before the error is raised, and the runner sends
the whole batch again, so the file holds only whole lines; lines written
before the failure may appear twice (at-least-once, told apart by
``idempotency_key``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, get_args

from genesys_mux._files import path_replaced
from genesys_mux.errors import ConfigError, SinkError
from genesys_mux.sinks.base import Item, encode_record

__all__ = ["FsyncPolicy", "JsonlSink"]

log = logging.getLogger("genesys_mux.sinks.jsonl")

FsyncPolicy = Literal["never", "batch", "always"]

# Failures that the same write will hit again however long we wait.
_PERMANENT_ERRNOS = frozenset(
    {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOENT, errno.EROFS}
)


class JsonlSink:
    """Items appended to ``path`` as JSON lines, rotated by size.

    ``max_bytes`` is the size at which a file is rotated and ``backups`` how
    many rotated files are kept (``name.jsonl.1`` is the newest). ``fsync``
    is ``never``, ``batch`` or ``always`` (see the module documentation).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 100 * 1024 * 1024,
        backups: int = 5,
        fsync: FsyncPolicy = "batch",
        name: str | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ConfigError(f"JSONL sink max_bytes must be at least 1, not {max_bytes}")
        if backups < 0:
            raise ConfigError(f"JSONL sink backups must be 0 or more, not {backups}")
        if fsync not in get_args(FsyncPolicy):
            raise ConfigError(
                f"JSONL sink fsync must be one of {', '.join(get_args(FsyncPolicy))}, not {fsync!r}"
            )
        self.path = Path(path)
        self.name = name or f"jsonl:{self.path.name}"
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync: FsyncPolicy = fsync
        #: ``fsync`` calls made on data files (not directories).
        self.fsyncs = 0
        #: Files rotated away.
        self.rotations = 0
        self._fd: int | None = None
        self._size = 0
        # Serialises sends, in case one sink is shared by several runners.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"JsonlSink(name={self.name!r}, path={str(self.path)!r}, fsync={self.fsync!r})"

    def backup_path(self, index: int) -> Path:
        """The path of rotated file number ``index`` (1 is the newest)."""
        return self.path.with_name(f"{self.path.name}.{index}")

    async def start(self) -> None:
        """Open (or create) the file for appending."""
        async with self._lock:
            await asyncio.to_thread(self._guarded, self._ensure_open)

    async def send(self, batch: Sequence[Item]) -> None:
        """Append the batch, rotating as needed, and apply the fsync policy."""
        if not batch:
            return
        lines = [encode_record(item) + b"\n" for item in batch]
        async with self._lock:
            await asyncio.to_thread(self._guarded, lambda: self._write_batch(lines))

    async def close(self) -> None:
        """Close the file."""
        async with self._lock:
            await asyncio.to_thread(self._close_fd)

    # -- worker-thread side ----------------------------------------------------

    def _guarded(self, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as exc:
            # Leave the file at its last whole line and reopen on the next
            # attempt: the runner re-sends the whole batch.
            self._abandon()
            permanent = exc.errno in _PERMANENT_ERRNOS
            raise SinkError(
                # The path as configured: the file name alone does not say which file.
                f"sink {self.name}: cannot write {self.path}: "
                + (exc.strerror or type(exc).__name__),
                retryable=not permanent,
            ) from exc

    def _ensure_open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def _write_batch(self, lines: list[bytes]) -> None:
        if self._fd is not None and self._replaced():
            # Moved or deleted under us (logrotate, an operator): lines
            # written to the old file would be lost with it.
            log.info("%s was moved or deleted: writing to a new one at that path", self.path)
            self._close_fd()
        self._ensure_open()
        pending: list[bytes] = []
        pending_size = 0
        for line in lines:
            projected = self._size + pending_size
            if projected > 0 and projected + len(line) > self.max_bytes:
                self._write(pending)
                pending, pending_size = [], 0
                self._rotate()
            if self.fsync == "always":
                self._write([line])
                self._sync()
            else:
                pending.append(line)
                pending_size += len(line)
        self._write(pending)
        if self.fsync == "batch":
            self._sync()

    def _replaced(self) -> bool:
        """True when ``path`` no longer names the file that is open."""
        assert self._fd is not None
        return path_replaced(self.path, self._fd)

    def _write(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        fd = self._ensure_open()
        data = memoryview(b"".join(chunks))
        while data:
            # os.write may write less than asked (signals, nearly full disks).
            written = os.write(fd, data)
            data = data[written:]
        # Counted only once the whole chunk is down, so a failure can cut the
        # file back to the last whole line.
        self._size += sum(len(c) for c in chunks)

    def _sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            self.fsyncs += 1

    def _rotate(self) -> None:
        if self.fsync == "batch" and self._size:
            # "always" already synced every line; "batch" must not lose the
            # tail of a file that is about to stop being the current one.
            self._sync()
        self._close_fd()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for index in range(self.backups - 1, 0, -1):
                source = self.backup_path(index)
                if source.exists():
                    os.replace(source, self.backup_path(index + 1))
            os.replace(self.path, self.backup_path(1))
        if self.fsync != "never":
            self._sync_directory()
        self.rotations += 1
        log.debug("rotated %s (%d rotations)", self.path.name, self.rotations)
        self._ensure_open()

    def _sync_directory(self) -> None:
        # The renames are metadata of the directory: without this a power
        # cut could undo a rotation that fsynced data already relies on.
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _abandon(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
        self._close_fd()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
