"""Checkpoints in a SQLite file: the embedded default, no server needed.

The file has three tables: ``genesys_mux_meta`` (``application`` and
``schema_version``, checked on every open), ``genesys_mux_streams`` (one
row per stream: the checkpoint's header and when it was saved) and
``genesys_mux_memory`` (one row per remembered key of each stream, so an
incremental checkpoint writes only the keys that changed). WAL mode lets
``genesys-mux state show`` read while ``run`` writes; a batch is one
transaction. Every call runs in a worker thread on one connection, in turn,
so the event loop never waits on the disk.

One process at a time writes a file: ``open`` takes an advisory lock on
``<file>.lock`` (``flock``, released by the kernel if the process dies),
so a second ``run`` on the same state is refused instead of numbering the
same streams twice. Readers (``state show``) open without it.

A file of an older schema is migrated on open, in one transaction, by the
steps in ``_MIGRATIONS`` (one per version); a newer one is refused.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec

from genesys_mux.core.checkpoint import (
    SCHEMA_VERSION,
    Remembered,
    StreamCheckpoint,
    decode_checkpoint,
    decode_remembered,
    encode_checkpoint,
    encode_memory,
    encode_remembered,
)
from genesys_mux.errors import StateError
from genesys_mux.state.store import fenced

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["SqliteStateStore"]

_APPLICATION = "genesys-mux"
_T = TypeVar("_T")
log = logging.getLogger("genesys_mux.state")

_MEMORY_TABLE = (
    "CREATE TABLE genesys_mux_memory (stream_id TEXT NOT NULL, key TEXT NOT NULL, "
    "entry BLOB NOT NULL, PRIMARY KEY (stream_id, key)) WITHOUT ROWID"
)
_SAVE_HEADER = (
    "INSERT INTO genesys_mux_streams (stream_id, checkpoint, saved_at) "
    "VALUES (?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET "
    "checkpoint = excluded.checkpoint, saved_at = excluded.saved_at"
)
_SAVE_KEY = "INSERT OR REPLACE INTO genesys_mux_memory (stream_id, key, entry) VALUES (?, ?, ?)"
_FORGET_KEY = "DELETE FROM genesys_mux_memory WHERE stream_id = ? AND key = ?"
_LOAD_HEADERS = "SELECT stream_id, checkpoint FROM genesys_mux_streams"
_LOAD_MEMORY = "SELECT stream_id, entry FROM genesys_mux_memory"
_OF_STREAM = " WHERE stream_id = ?"
_KEY = operator.attrgetter("key")
#: Remembered keys encoded per call (see save).
_SLICE = 2000
#: The page cache, in KiB (SQLite's default is 2,000). A stream's full
#: memory takes 7 to 9 MB of pages, and an incremental checkpoint of
#: random conversation ids touches most of them: with the default, each
#: checkpoint reads them all again and spills changed pages mid-write.
#: Pages are only cached as they are read, so a small state stays small.
_CACHE_KIB = 65_536


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Schema 1 kept each stream's memory inside its checkpoint: one row per key now."""
    db.execute(_MEMORY_TABLE)
    rows = db.execute("SELECT stream_id, checkpoint FROM genesys_mux_streams").fetchall()
    for stream_id, blob in rows:
        old = decode_checkpoint(bytes(blob), f"stream {stream_id!r}")
        db.execute(
            "UPDATE genesys_mux_streams SET checkpoint = ? WHERE stream_id = ?",
            (encode_checkpoint(old), stream_id),
        )
        db.executemany(
            _SAVE_KEY,
            ((stream_id, r.key, encode_remembered(r)) for r in old.memory),
        )


#: How to bring a file of schema N to N + 1.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_1_to_2}


class SqliteStateStore:
    """Checkpoints in the SQLite file at ``path`` (created, with its schema, on open)."""

    def __init__(self, path: Path, *, exclusive: bool = True) -> None:
        self.path = path
        self.name = f"sqlite:{path}"
        #: Take the one-writer lock on open (False: a reader, such as ``state show``).
        self.exclusive = exclusive
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._owner: int | None = None  # the lock file's descriptor, while we hold it
        self._fences: dict[str, int] = {}

    async def open(self) -> None:
        """Create the file and schema, or check the ones there; StateError if unusable.

        Raises StateError, too, when another process holds the file.
        """
        if self.exclusive:
            await asyncio.to_thread(self._take_ownership)
        try:
            await self._run(self._open)
        except BaseException:
            self._give_up_ownership()
            raise

    async def load(self, only: Collection[str] | None = None) -> Mapping[str, StreamCheckpoint]:
        """Every stream's checkpoint (or those of ``only``), by stream id, with its whole memory."""

        def read(db: sqlite3.Connection) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
            with db:  # one read transaction: headers and keys of the same moment
                if only is None:
                    headers = db.execute(_LOAD_HEADERS).fetchall()
                    return headers, db.execute(_LOAD_MEMORY).fetchall()
                headers, keys = [], []
                for stream_id in only:
                    headers += db.execute(_LOAD_HEADERS + _OF_STREAM, (stream_id,)).fetchall()
                    keys += db.execute(_LOAD_MEMORY + _OF_STREAM, (stream_id,)).fetchall()
                return headers, keys

        headers, keys = await self._run(read)
        memory: dict[str, list[Remembered]] = {}
        for stream_id, entry in keys:
            where = f"{self.name} stream {stream_id!r}"
            memory.setdefault(stream_id, []).append(decode_remembered(bytes(entry), where))
        found: dict[str, StreamCheckpoint] = {}
        for stream_id, blob in headers:
            header = decode_checkpoint(bytes(blob), f"{self.name} stream {stream_id!r}")
            kept = sorted(memory.get(stream_id, ()), key=lambda r: r.rank)
            found[stream_id] = msgspec.structs.replace(header, memory=kept)
        return found

    async def claim(self, stream_id: str, fence: int) -> None:
        """Refuse the stream's checkpoints older than ``fence`` from now on.

        Kept in this process only: the file has one writer at a time (its
        lock), so there is no other process to fence off.
        """
        fenced({stream_id: fence}, self._fences, self.name)
        self._fences[stream_id] = max(fence, self._fences.get(stream_id, 0))

    async def save(self, checkpoints: Sequence[StreamCheckpoint]) -> None:
        """Write these streams' checkpoints (each whole or incremental) in one transaction."""
        fenced({c.stream_id: c.fence for c in checkpoints}, self._fences, self.name)
        headers = [(c.stream_id, encode_checkpoint(c), c.saved_at) for c in checkpoints]
        cleared = [(c.stream_id,) for c in checkpoints if c.complete]

        def write(db: sqlite3.Connection) -> None:
            # The rows are made here, in the worker thread, by C-level
            # iterators (no Python call per key): a checkpoint is not
            # changed once built. Encoded a slice at a time: one encoding
            # call holds the GIL throughout, and the event loop needs it.
            with db:
                db.executemany(_SAVE_HEADER, headers)
                db.executemany("DELETE FROM genesys_mux_memory WHERE stream_id = ?", cleared)
                for c in checkpoints:
                    stream_id = itertools.repeat(c.stream_id)  # endless: strict=False
                    db.executemany(_FORGET_KEY, zip(stream_id, c.forgotten, strict=False))
                    for start in range(0, len(c.memory), _SLICE):
                        memory = c.memory[start : start + _SLICE]
                        entries = encode_memory(memory)
                        rows = zip(stream_id, map(_KEY, memory), entries, strict=False)
                        db.executemany(_SAVE_KEY, rows)

        await self._run(write)

    async def remove(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams."""
        ids = [(s,) for s in stream_ids]

        def delete(db: sqlite3.Connection) -> None:
            with db:
                db.executemany("DELETE FROM genesys_mux_streams WHERE stream_id = ?", ids)
                db.executemany("DELETE FROM genesys_mux_memory WHERE stream_id = ?", ids)

        await self._run(delete)

    async def close(self) -> None:
        """Close the connection (the file stays)."""

        def close(_db: sqlite3.Connection) -> None:
            db, self._db = self._db, None
            if db is not None:
                db.close()

        if self._db is not None:
            await self._run(close)
        self._give_up_ownership()

    async def move_aside(self) -> str:
        """Rename the file (and its WAL files) to ``<name>.moved-<time>``; returns the new name.

        Refused (StateError) while another process holds the file.
        """
        await self.close()

        def move() -> str:
            self._take_ownership()
            try:
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                target = self.path.with_name(f"{self.path.name}.moved-{stamp}")
                for suffix in ("", "-wal", "-shm"):
                    source = Path(f"{self.path}{suffix}")
                    if source.exists():
                        source.rename(Path(f"{target}{suffix}"))
                return str(target)
            finally:
                self._give_up_ownership()

        try:
            return await asyncio.to_thread(move)
        except OSError as exc:
            raise StateError(f"{self.name}: cannot move it aside: {exc}") from exc

    # -- internals ---------------------------------------------------------------

    async def _run(self, call: Callable[[sqlite3.Connection], _T]) -> _T:
        def locked() -> _T:
            with self._lock:
                try:
                    return call(self._connection())
                except sqlite3.Error as exc:
                    raise StateError(f"{self.name}: {exc}") from exc

        return await asyncio.to_thread(locked)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._check_directory()
            self._db = sqlite3.connect(self.path, check_same_thread=False)
        return self._db

    def _open(self, db: sqlite3.Connection) -> None:
        try:
            tables = {
                row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.DatabaseError as exc:
            self._forget(db)
            raise StateError(
                f"{self.name} is not a SQLite database ({exc}); move it aside "
                "(--reset-state does) or point [state] path elsewhere"
            ) from exc
        if tables and "genesys_mux_meta" not in tables:
            self._forget(db)
            raise StateError(
                f"{self.name} is a SQLite database of something else (tables: "
                f"{', '.join(sorted(tables)[:5])}); point [state] path at a file of its own"
            )
        if not tables:
            with db:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("CREATE TABLE genesys_mux_meta (key TEXT PRIMARY KEY, value TEXT)")
                db.execute(
                    "CREATE TABLE genesys_mux_streams (stream_id TEXT PRIMARY KEY, "
                    "checkpoint BLOB NOT NULL, saved_at REAL NOT NULL)"
                )
                db.execute(_MEMORY_TABLE)
                db.executemany(
                    "INSERT INTO genesys_mux_meta (key, value) VALUES (?, ?)",
                    [("application", _APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
                )
            db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            return
        meta = dict(db.execute("SELECT key, value FROM genesys_mux_meta").fetchall())
        version = meta.get("schema_version", "")
        if meta.get("application") != _APPLICATION or not version.isdigit():
            self._forget(db)
            raise StateError(f"{self.name}: its metadata is not genesys-mux's ({meta!r:.100})")
        if int(version) > SCHEMA_VERSION or int(version) not in (SCHEMA_VERSION, *_MIGRATIONS):
            self._forget(db)
            newer = int(version) > SCHEMA_VERSION
            raise StateError(
                f"{self.name}: state schema {version}, this release reads {SCHEMA_VERSION}"
                + ("; it was written by a newer release: upgrade" if newer else "")
                + " (or start afresh with --reset-state, which moves the file aside)"
            )
        if int(version) < SCHEMA_VERSION:
            self._migrate(db, int(version))
        # Only once the file is known to be ours, and of our schema: a file
        # refused is left exactly as it was.
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")  # this connection's, not the file's

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        """Bring the file from ``version`` to this release's schema, all steps or none."""
        try:
            with db:
                # Explicitly: sqlite3 would run the steps' CREATE TABLEs outside
                # a transaction, and a failed migration must leave no trace.
                db.execute("BEGIN")
                for step in range(version, SCHEMA_VERSION):
                    _MIGRATIONS[step](db)
                db.execute(
                    "UPDATE genesys_mux_meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION),),
                )
        except StateError as exc:
            self._forget(db)
            raise StateError(
                f"{self.name}: cannot migrate it from schema {version} ({exc}); nothing was "
                "changed: start afresh with --reset-state, which moves the file aside"
            ) from exc
        log.warning(
            "%s: migrated the state from schema %d to %d", self.name, version, SCHEMA_VERSION
        )

    def _check_directory(self) -> None:
        if not self.path.parent.is_dir():
            raise StateError(
                f"{self.name}: directory {self.path.parent} does not exist; create it "
                "or set [state] path elsewhere"
            )

    def _take_ownership(self) -> None:
        """Hold ``<file>.lock`` for as long as the store is open, or say who does."""
        if self._owner is not None or fcntl is None:
            return  # held already; or a platform without flock: no guard
        self._check_directory()
        lock = Path(f"{self.path}.lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateError(f"{self.name}: cannot create its lock file {lock}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateError(
                f"{self.name} is in use by another genesys-mux process (pid {holder}); stop "
                "it first, or give this configuration a [state] path of its own"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._owner = fd

    def _give_up_ownership(self) -> None:
        fd, self._owner = self._owner, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _forget(self, db: sqlite3.Connection) -> None:
        """Close a connection to a file we will not use, so nothing is ever written to it."""
        db.close()
        self._db = None
