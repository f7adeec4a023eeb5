"""Checkpoints in a SQLite file: the embedded default, no server needed.

The file has three tables: ``genesys_mux_meta`` (``application`` and
``schema_version``, checked on every open), ``genesys_mux_streams`` (one
row per stream: the checkpoint's header and when it was saved) and
``genesys_mux_memory`` (each stream's remembered keys, in blocks). WAL mode
lets ``genesys-mux state show`` read while ``run`` writes; a batch is one
transaction. Every call runs in a worker thread on one connection, in turn,
so the event loop never waits on the disk.

The memory is a log of blocks (schema 3). A checkpoint appends what it
carries as new blocks of up to 2,000 keys, each one msgpack value, with
the lowest and highest rank in it; loading replays a stream's blocks in
order, a key's newest entry winning, the keys forgotten dropped. A row
per key (schema 2) cost SQLite 4 to 6 µs per key written or forgotten,
more than the events themselves at 10,000 a second; a block costs it a
fraction of a µs per key, and the store keeps nothing per key.

Old blocks go by rank. A stream's checkpoint says its ``floor``: every
key it remembers has an entry ranked at least that, or one in this
checkpoint, and every key it forgot ranked lower. An older block whose
highest rank is below the floor holds nothing current and is deleted
(one that carries forgotten keys only once no block before it may still
hold their entries). So that the floor moves even when some keys are
remembered but never seen again, the store asks streams to ``refresh``:
to write such keys again, unchanged, now and then. The keys forgotten
are written only while a block may still hold an entry of theirs: when
every event is a new conversation, the oldest blocks are forgotten
whole, and go. Should a stream's log still grow to four times what it
held when last written whole (its checkpoints carry no floor, say), the
store replays it and writes it whole again.

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
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import msgspec

from genesys_mux.core.checkpoint import (
    Remembered,
    StreamCheckpoint,
    decode_checkpoint,
    decode_memory_block,
    decode_remembered,
    encode_checkpoint,
    encode_memory_block,
    encode_remembered,
)
from genesys_mux.errors import StateError
from genesys_mux.state.blocks import Block, Blocks, ranks
from genesys_mux.state.store import fenced

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["FILE_SCHEMA_VERSION", "SqliteStateStore"]

#: The layout of the file this release writes: 1, one blob per stream, its
#: memory inside; 2, a row per remembered key; 3, the memory in blocks. The
#: checkpoint header's encoding is versioned apart from it
#: (:data:`~genesys_mux.core.checkpoint.SCHEMA_VERSION`, shared with Redis).
FILE_SCHEMA_VERSION = 3

_APPLICATION = "genesys-mux"
_T = TypeVar("_T")
log = logging.getLogger("genesys_mux.state")

#: Schema 2's memory: a row per remembered key (kept for the migrations).
_MEMORY_TABLE_2 = (
    "CREATE TABLE genesys_mux_memory (stream_id TEXT NOT NULL, key TEXT NOT NULL, "
    "entry BLOB NOT NULL, PRIMARY KEY (stream_id, key)) WITHOUT ROWID"
)
_SAVE_KEY_2 = "INSERT OR REPLACE INTO genesys_mux_memory (stream_id, key, entry) VALUES (?, ?, ?)"
#: Schema 3's: blocks of remembered keys (a rowid table: its rows are large).
#: ``lo`` and ``hi`` are the lowest and highest rank in ``entries`` (an
#: empty block has ``lo`` above ``hi``), ``size`` how many it holds.
_MEMORY_TABLE = (
    "CREATE TABLE genesys_mux_memory (stream_id TEXT NOT NULL, block INTEGER NOT NULL, "
    "lo INTEGER NOT NULL, hi INTEGER NOT NULL, size INTEGER NOT NULL, "
    "entries BLOB NOT NULL, forgotten BLOB NOT NULL, PRIMARY KEY (stream_id, block))"
)
_SAVE_HEADER = (
    "INSERT INTO genesys_mux_streams (stream_id, checkpoint, saved_at) "
    "VALUES (?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET "
    "checkpoint = excluded.checkpoint, saved_at = excluded.saved_at"
)
_SAVE_BLOCK = (
    "INSERT INTO genesys_mux_memory (stream_id, block, lo, hi, size, entries, forgotten) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_READ_BLOCKS = (
    "SELECT block, entries, forgotten FROM genesys_mux_memory WHERE stream_id = ? ORDER BY block"
)
_READ_LAYOUT = (
    "SELECT block, lo, hi, size, length(forgotten) > 1 FROM genesys_mux_memory "
    "WHERE stream_id = ? ORDER BY block"
)
_DROP_BLOCK = "DELETE FROM genesys_mux_memory WHERE stream_id = ? AND block = ?"
_DROP_MEMORY = "DELETE FROM genesys_mux_memory WHERE stream_id = ?"
_LOAD_HEADERS = "SELECT stream_id, checkpoint FROM genesys_mux_streams"
_LOAD_BLOCKS = "SELECT stream_id, block, entries, forgotten FROM genesys_mux_memory"
_OF_STREAM = " WHERE stream_id = ?"
_KEY = operator.attrgetter("key")
_RANK = operator.attrgetter("rank")
#: Remembered keys per block: one encoding call (it holds the GIL, and the
#: event loop needs it).
_SLICE = 2000
_KEYS = msgspec.msgpack.Decoder(list[str])
_NO_KEYS = msgspec.msgpack.encode([])
#: A new file's page size (SQLite's default is 4,096).
_PAGE_BYTES = 16_384
#: The page cache, in KiB (SQLite's default is 2,000): a stream's full
#: memory takes 3 to 9 MB of pages, and a save that rewrites a stream's log
#: reads them all. Pages are only cached as they are read, so a small
#: state stays small.
_CACHE_KIB = 65_536


def _block(
    stream_id: str, number: int, memory: Sequence[Remembered], forgotten: bytes = _NO_KEYS
) -> tuple[tuple[str, int, int, int, int, bytes, bytes], Block]:
    """A block's row, and what the store keeps track of it (``memory`` least recent first)."""
    lo, hi = ranks(memory)
    row = (stream_id, number, lo, hi, len(memory), encode_memory_block(memory), forgotten)
    return row, Block(lo, hi, len(memory), forgotten != _NO_KEYS)


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Schema 1 kept each stream's memory inside its checkpoint: one row per key now."""
    db.execute(_MEMORY_TABLE_2)
    rows = db.execute("SELECT stream_id, checkpoint FROM genesys_mux_streams").fetchall()
    for stream_id, blob in rows:
        old = decode_checkpoint(bytes(blob), f"stream {stream_id!r}")
        db.execute(
            "UPDATE genesys_mux_streams SET checkpoint = ? WHERE stream_id = ?",
            (encode_checkpoint(old), stream_id),
        )
        db.executemany(
            _SAVE_KEY_2,
            ((stream_id, r.key, encode_remembered(r)) for r in old.memory),
        )


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    """Schema 2 kept a row per remembered key: blocks of them now, least recently seen first."""
    db.execute("ALTER TABLE genesys_mux_memory RENAME TO genesys_mux_memory_2")
    db.execute(_MEMORY_TABLE)
    ids = [row[0] for row in db.execute("SELECT DISTINCT stream_id FROM genesys_mux_memory_2")]
    for stream_id in ids:
        where = f"stream {stream_id!r}"
        rows = db.execute(
            "SELECT entry FROM genesys_mux_memory_2 WHERE stream_id = ?", (stream_id,)
        )
        memory = sorted((decode_remembered(bytes(entry), where) for (entry,) in rows), key=_RANK)
        db.executemany(_SAVE_BLOCK, (row for row, _ in _blocks(stream_id, memory, 1)))
    db.execute("DROP TABLE genesys_mux_memory_2")


def _blocks(
    stream_id: str, memory: Sequence[Remembered], first: int
) -> Iterator[tuple[tuple[str, int, int, int, int, bytes, bytes], Block]]:
    """``memory`` in blocks numbered from ``first``: their rows, and what to keep track of."""
    for number, start in enumerate(range(0, len(memory), _SLICE), first):
        yield _block(stream_id, number, memory[start : start + _SLICE])


#: How to bring a file of schema N to N + 1.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_1_to_2,
    2: _migrate_2_to_3,
}


class SqliteStateStore:
    """Checkpoints in the SQLite file at ``path`` (created, with its schema, on open)."""

    #: Asks streams to write again, unchanged, the keys they have not seen
    #: for twice as many sightings as they remember keys, so that the
    #: floor of their checkpoints moves and old blocks go (see
    #: :meth:`~genesys_mux.core.streams.Stream.begin_checkpoint`). It
    #: bounds a stream's blocks to about three entries per key remembered.
    refresh = 2

    def __init__(self, path: Path, *, exclusive: bool = True) -> None:
        self.path = path
        self.name = f"sqlite:{path}"
        #: Take the one-writer lock on open (False: a reader, such as ``state show``).
        self.exclusive = exclusive
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._owner: int | None = None  # the lock file's descriptor, while we hold it
        self._fences: dict[str, int] = {}
        #: By stream id: what is known of its blocks (see Blocks).
        self._blocks: dict[str, Blocks] = {}

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

        def read(
            db: sqlite3.Connection,
        ) -> tuple[list[tuple[str, bytes]], dict[str, dict[str, Remembered]]]:
            with db:  # one read transaction: headers and blocks of the same moment
                if only is None:
                    found = db.execute(_LOAD_HEADERS).fetchall()
                    blocks = db.execute(_LOAD_BLOCKS + " ORDER BY stream_id, block").fetchall()
                else:
                    found, blocks = [], []
                    for stream_id in only:
                        found += db.execute(_LOAD_HEADERS + _OF_STREAM, (stream_id,)).fetchall()
                        blocks += db.execute(
                            _LOAD_BLOCKS + _OF_STREAM + " ORDER BY block", (stream_id,)
                        ).fetchall()
            memories: dict[str, dict[str, Remembered]] = {}
            for stream_id, group in itertools.groupby(blocks, key=operator.itemgetter(0)):
                memories[stream_id] = self._replay(stream_id, (row[1:] for row in group))
            return found, memories

        headers, memories = await self._run(read)
        found: dict[str, StreamCheckpoint] = {}
        for stream_id, blob in headers:
            header = decode_checkpoint(bytes(blob), f"{self.name} stream {stream_id!r}")
            kept = sorted(memories.get(stream_id, {}).values(), key=_RANK)
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

        def write(db: sqlite3.Connection) -> None:
            # Encoded here, in the worker thread, a block at a time: a
            # checkpoint is not changed once built.
            try:
                with db:
                    db.executemany(_SAVE_HEADER, headers)
                    for checkpoint in checkpoints:
                        self._write(db, checkpoint)
            except BaseException:
                # Rolled back: what was learnt of these blocks is not so.
                for checkpoint in checkpoints:
                    self._blocks.pop(checkpoint.stream_id, None)
                raise

        await self._run(write)

    async def remove(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams."""
        ids = [(s,) for s in stream_ids]

        def delete(db: sqlite3.Connection) -> None:
            for (stream_id,) in ids:
                self._blocks.pop(stream_id, None)
            with db:
                db.executemany("DELETE FROM genesys_mux_streams WHERE stream_id = ?", ids)
                db.executemany("DELETE FROM genesys_mux_memory WHERE stream_id = ?", ids)

        await self._run(delete)

    async def close(self) -> None:
        """Close the connection (the file stays)."""

        def close(_db: sqlite3.Connection) -> None:
            self._blocks.clear()
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

    # -- the memory's blocks (in the worker thread) ---------------------------------

    def _replay(
        self, stream_id: str, rows: Iterable[tuple[int, bytes, bytes]]
    ) -> dict[str, Remembered]:
        """A stream's memory from its blocks, oldest first: each key's newest entry."""
        where = f"{self.name} stream {stream_id!r}"
        kept: dict[str, Remembered] = {}
        for _, entries, forgotten in rows:
            try:
                gone = _KEYS.decode(forgotten)
            except msgspec.DecodeError as exc:
                raise StateError(f"{where}: not a list of forgotten keys ({exc})") from exc
            memory = decode_memory_block(bytes(entries), where)
            for key in gone:
                kept.pop(key, None)
            kept.update(zip(map(_KEY, memory), memory, strict=True))
        return kept

    def _blocks_of(self, db: sqlite3.Connection, stream_id: str) -> Blocks:
        """What is known of a stream's blocks; read from the file if nothing is."""
        known = self._blocks.get(stream_id)
        if known is None:
            known = Blocks()
            for number, lo, hi, size, marked in db.execute(_READ_LAYOUT, (stream_id,)):
                known.add(number, Block(lo, hi, size, bool(marked)))
            known.whole = known.stored
            self._blocks[stream_id] = known
        return known

    def _write(self, db: sqlite3.Connection, checkpoint: StreamCheckpoint) -> None:
        """Append a checkpoint's memory to its stream's log of blocks, and prune the log."""
        stream_id, floor = checkpoint.stream_id, checkpoint.floor
        if checkpoint.complete:
            db.execute(_DROP_MEMORY, (stream_id,))
            known = self._blocks[stream_id] = Blocks()
        else:
            known = self._blocks_of(db, stream_id)
        gone = known.prune(floor)
        db.executemany(_DROP_BLOCK, [(stream_id, number) for number in gone])
        forgotten = _NO_KEYS
        if checkpoint.forgotten and known.holding_forgotten(floor):
            # Only while a block may still hold their entries: when every
            # event is a new conversation, the keys forgotten are the
            # oldest blocks' whole, and those went above.
            forgotten = msgspec.msgpack.encode(checkpoint.forgotten)
        memory = checkpoint.memory
        rows = []
        for number, start in enumerate(range(0, max(len(memory), 1), _SLICE), known.next):
            part = memory[start : start + _SLICE]
            if not part and forgotten == _NO_KEYS:
                break
            row, block = _block(stream_id, number, part, forgotten)
            forgotten = _NO_KEYS  # with the first block only
            rows.append(row)
            known.add(number, block)
        db.executemany(_SAVE_BLOCK, rows)
        if checkpoint.complete:
            known.whole = known.stored
        elif known.due(_SLICE):
            self._rewrite(db, stream_id, known)

    def _rewrite(self, db: sqlite3.Connection, stream_id: str, known: Blocks) -> None:
        """Write a stream's log whole: one entry per remembered key, least recently seen first."""
        kept = self._replay(stream_id, db.execute(_READ_BLOCKS, (stream_id,)))
        memory = sorted(kept.values(), key=_RANK)
        db.execute(_DROP_MEMORY, (stream_id,))
        known.blocks.clear()
        known.stored = 0
        rows = []
        for row, block in _blocks(stream_id, memory, known.next):
            rows.append(row)
            known.add(row[1], block)
        db.executemany(_SAVE_BLOCK, rows)
        known.whole = known.stored

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
            # Only a new file's page size can be set (before WAL and its first
            # table): blocks span many pages, and SQLite's work per page (the
            # WAL's frames and checksums, overflow chains) took a fifth to a
            # third less CPU per save with 16 KiB pages than with 4 KiB.
            db.execute(f"PRAGMA page_size = {_PAGE_BYTES}")
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
                    [("application", _APPLICATION), ("schema_version", str(FILE_SCHEMA_VERSION))],
                )
            self._tune(db)
            return
        meta = dict(db.execute("SELECT key, value FROM genesys_mux_meta").fetchall())
        version = meta.get("schema_version", "")
        if meta.get("application") != _APPLICATION or not version.isdigit():
            self._forget(db)
            raise StateError(f"{self.name}: its metadata is not genesys-mux's ({meta!r:.100})")
        current = FILE_SCHEMA_VERSION
        if int(version) > current or int(version) not in (current, *_MIGRATIONS):
            self._forget(db)
            newer = int(version) > current
            raise StateError(
                f"{self.name}: state schema {version}, this release reads {current}"
                + ("; it was written by a newer release: upgrade" if newer else "")
                + " (or start afresh with --reset-state, which moves the file aside)"
            )
        if int(version) < FILE_SCHEMA_VERSION:
            self._migrate(db, int(version))
        # Only once the file is known to be ours, and of our schema: a file
        # refused is left exactly as it was.
        db.execute("PRAGMA journal_mode = WAL")
        self._tune(db)

    @staticmethod
    def _tune(db: sqlite3.Connection) -> None:
        """This connection's settings (not the file's)."""
        db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        # Some builds zero every page they free by default. Blocks are freed
        # as often as they are written, so that doubled what a save wrote,
        # to hide remembered conversation ids and digests: nothing secret.
        db.execute("PRAGMA secure_delete = OFF")

    def _migrate(self, db: sqlite3.Connection, version: int) -> None:
        """Bring the file from ``version`` to this release's schema, all steps or none."""
        try:
            with db:
                # Explicitly: sqlite3 would run the steps' CREATE TABLEs outside
                # a transaction, and a failed migration must leave no trace.
                db.execute("BEGIN")
                for step in range(version, FILE_SCHEMA_VERSION):
                    _MIGRATIONS[step](db)
                db.execute(
                    "UPDATE genesys_mux_meta SET value = ? WHERE key = 'schema_version'",
                    (str(FILE_SCHEMA_VERSION),),
                )
        except StateError as exc:
            self._forget(db)
            raise StateError(
                f"{self.name}: cannot migrate it from schema {version} ({exc}); nothing was "
                "changed: start afresh with --reset-state, which moves the file aside"
            ) from exc
        log.warning(
            "%s: migrated the state from schema %d to %d", self.name, version, FILE_SCHEMA_VERSION
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
