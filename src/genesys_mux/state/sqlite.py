"""Checkpoints in a SQLite file: the embedded default, no server needed.

The file has two tables: ``genesys_mux_meta`` (``application`` and
``schema_version``, checked on every open) and ``genesys_mux_streams`` (one
row per stream: the encoded checkpoint and when it was saved). WAL mode
lets ``genesys-mux state show`` read while ``run`` writes; a batch is one
transaction. Every call runs in a worker thread on one connection, in turn,
so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from genesys_mux.core.checkpoint import (
    SCHEMA_VERSION,
    StreamCheckpoint,
    decode_checkpoint,
    encode_checkpoint,
)
from genesys_mux.errors import StateError

__all__ = ["SqliteStateStore"]

_APPLICATION = "genesys-mux"
_T = TypeVar("_T")


class SqliteStateStore:
    """Checkpoints in the SQLite file at ``path`` (created, with its schema, on open)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"sqlite:{path}"
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        """Create the file and schema, or check the ones there; StateError if unusable."""
        await self._run(self._open)

    async def load(self) -> Mapping[str, StreamCheckpoint]:
        """Every stream's checkpoint, by stream id."""
        rows = await self._run(
            lambda db: db.execute(
                "SELECT stream_id, checkpoint FROM genesys_mux_streams"
            ).fetchall()
        )
        return {
            stream_id: decode_checkpoint(bytes(blob), f"{self.name} stream {stream_id!r}")
            for stream_id, blob in rows
        }

    async def save(self, checkpoints: Sequence[StreamCheckpoint]) -> None:
        """Replace these streams' checkpoints in one transaction."""
        rows = [(c.stream_id, encode_checkpoint(c), c.saved_at) for c in checkpoints]

        def write(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT INTO genesys_mux_streams (stream_id, checkpoint, saved_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET "
                    "checkpoint = excluded.checkpoint, saved_at = excluded.saved_at",
                    rows,
                )

        await self._run(write)

    async def remove(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams."""
        ids = [(s,) for s in stream_ids]

        def delete(db: sqlite3.Connection) -> None:
            with db:
                db.executemany("DELETE FROM genesys_mux_streams WHERE stream_id = ?", ids)

        await self._run(delete)

    async def close(self) -> None:
        """Close the connection (the file stays)."""

        def close(_db: sqlite3.Connection) -> None:
            db, self._db = self._db, None
            if db is not None:
                db.close()

        if self._db is not None:
            await self._run(close)

    async def move_aside(self) -> str:
        """Rename the file (and its WAL files) to ``<name>.moved-<time>``; returns the new name."""
        await self.close()

        def move() -> str:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            target = self.path.with_name(f"{self.path.name}.moved-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    source.rename(Path(f"{target}{suffix}"))
            return str(target)

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
            if not self.path.parent.is_dir():
                raise StateError(
                    f"{self.name}: directory {self.path.parent} does not exist; create it "
                    "or set [state] path elsewhere"
                )
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
                db.executemany(
                    "INSERT INTO genesys_mux_meta (key, value) VALUES (?, ?)",
                    [("application", _APPLICATION), ("schema_version", str(SCHEMA_VERSION))],
                )
            return
        meta = dict(db.execute("SELECT key, value FROM genesys_mux_meta").fetchall())
        version = meta.get("schema_version", "")
        if meta.get("application") != _APPLICATION or not version.isdigit():
            self._forget(db)
            raise StateError(f"{self.name}: its metadata is not genesys-mux's ({meta!r:.100})")
        if int(version) != SCHEMA_VERSION:
            self._forget(db)
            newer = int(version) > SCHEMA_VERSION
            raise StateError(
                f"{self.name}: state schema {version}, this release reads {SCHEMA_VERSION}"
                + ("; it was written by a newer release: upgrade" if newer else "")
                + " (or start afresh with --reset-state, which moves the file aside)"
            )
        db.execute("PRAGMA journal_mode = WAL")

    def _forget(self, db: sqlite3.Connection) -> None:
        """Close a connection to a file we will not use, so nothing is ever written to it."""
        db.close()
        self._db = None
