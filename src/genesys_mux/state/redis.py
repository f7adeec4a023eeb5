"""Checkpoints in Redis, under a prefix: the store several instances can share.

Keys: ``{prefix}state:meta`` (a hash with ``application`` and
``schema_version``, checked on every open), ``{prefix}state:stream:{id}``
(the checkpoint's header) and ``{prefix}state:memory:{id}`` (a hash of the
stream's remembered keys, so that an incremental checkpoint writes only the
keys that changed). A batch is one ``MULTI``/``EXEC`` transaction. The URL
may carry a password; ``name`` (used in every message) never does.

Keys of an older schema are migrated on open by the steps in
``_MIGRATIONS`` (one per version), written in one transaction; a newer
schema is refused.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.connection import AbstractConnection

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

__all__ = ["RedisStateStore", "redis_name"]

_APPLICATION = b"genesys-mux"
_ERRORS = (rexc.RedisError, OSError, TimeoutError)
log = logging.getLogger("genesys_mux.state")
#: Remembered keys per HSET: a round trip each, so the loop is never held long.
_SLICE = 2000


def redis_name(url: str) -> str:
    """A Redis URL for messages: host, port and database only, never the password."""
    parts = urlsplit(url)
    return f"redis:{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"


class RedisStateStore:
    """Checkpoints on the Redis server at ``url``, keys under ``prefix``."""

    def __init__(self, url: str, *, prefix: str = "genesys-mux:", timeout_s: float = 5.0) -> None:
        self.name = redis_name(url)
        self.prefix = prefix
        self._url = url
        self._timeout_s = timeout_s
        self._client: aioredis.Redis | None = None
        #: Writes the remembered keys (see _bulk).
        self._writer: AbstractConnection | None = None

    @property
    def _meta(self) -> str:
        return f"{self.prefix}state:meta"

    def _key(self, stream_id: str) -> str:
        return f"{self.prefix}state:stream:{stream_id}"

    def _memory_key(self, stream_id: str) -> str:
        return f"{self.prefix}state:memory:{stream_id}"

    async def open(self) -> None:
        """Connect; create the metadata, or check the one there; StateError if unusable."""
        try:
            await self._open()
        except StateError:
            await self.close()  # a store that cannot be used holds no connection
            raise

    async def _open(self) -> None:
        client = self._connect()
        try:
            meta = await client.hgetall(self._meta)
            if not meta:
                await client.hset(
                    self._meta,
                    mapping={"application": _APPLICATION, "schema_version": str(SCHEMA_VERSION)},
                )
                return
        except _ERRORS as exc:
            raise StateError(
                f"{self.name}: cannot reach the state store ({exc}); check that Redis runs "
                "there, or fix [state] url"
            ) from exc
        version = meta.get(b"schema_version", b"")
        if meta.get(b"application") != _APPLICATION or not version.isdigit():
            raise StateError(
                f"{self.name}: {self._meta} is not genesys-mux's; choose another [state] prefix"
            )
        found = int(version)
        if found > SCHEMA_VERSION or found not in (SCHEMA_VERSION, *_MIGRATIONS):
            newer = found > SCHEMA_VERSION
            raise StateError(
                f"{self.name}: state schema {found}, this release reads {SCHEMA_VERSION}"
                + ("; it was written by a newer release: upgrade" if newer else "")
                + " (or start afresh with --reset-state, which moves the keys aside)"
            )
        if found < SCHEMA_VERSION:
            await self._migrate(client, found)

    async def _migrate(self, client: aioredis.Redis, version: int) -> None:
        """Bring the keys from ``version`` to this release's schema, in one transaction."""
        try:
            async with client.pipeline(transaction=True) as pipe:
                for step in range(version, SCHEMA_VERSION):
                    await _MIGRATIONS[step](self, client, pipe)
                pipe.hset(self._meta, "schema_version", str(SCHEMA_VERSION))
                await pipe.execute()
        except _ERRORS as exc:
            raise StateError(f"{self.name}: cannot migrate the state: {exc}") from exc
        except StateError as exc:
            raise StateError(
                f"{self.name}: cannot migrate it from schema {version} ({exc}); nothing was "
                "changed: start afresh with --reset-state, which moves the keys aside"
            ) from exc
        log.warning(
            "%s: migrated the state from schema %d to %d", self.name, version, SCHEMA_VERSION
        )

    async def _migrate_1_to_2(self, client: aioredis.Redis, pipe: _Pipeline) -> None:
        """Schema 1 kept each stream's memory inside its checkpoint: a hash of keys now."""
        for stream_id, old in (await self._headers(client)).items():
            pipe.set(self._key(stream_id), encode_checkpoint(old))
            if old.memory:
                pipe.hset(
                    self._memory_key(stream_id),
                    mapping={r.key: encode_remembered(r) for r in old.memory},
                )

    async def load(self) -> Mapping[str, StreamCheckpoint]:
        """Every stream's checkpoint, by stream id, with its whole memory."""
        client = self._connect()
        headers = await self._headers(client)
        ids = list(headers)
        try:
            async with client.pipeline(transaction=True) as pipe:
                for stream_id in ids:
                    pipe.hvals(self._memory_key(stream_id))
                memories: list[list[bytes]] = await pipe.execute() if ids else []
        except _ERRORS as exc:
            raise StateError(f"{self.name}: cannot read the state: {exc}") from exc
        found: dict[str, StreamCheckpoint] = {}
        for stream_id, entries in zip(ids, memories, strict=True):
            where = f"{self.name} key {self._memory_key(stream_id)!r}"
            kept = sorted((decode_remembered(e, where) for e in entries), key=lambda r: r.rank)
            found[stream_id] = msgspec.structs.replace(headers[stream_id], memory=kept)
        return found

    async def _headers(self, client: aioredis.Redis) -> dict[str, StreamCheckpoint]:
        """Every stream's stored header (schema 1: its whole checkpoint), by stream id."""
        prefix = self._key("")
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
            values = await client.mget(keys) if keys else []
        except _ERRORS as exc:
            raise StateError(f"{self.name}: cannot read the state: {exc}") from exc
        found: dict[str, StreamCheckpoint] = {}
        for key, value in zip(keys, values, strict=True):
            if value is None:
                continue  # removed meanwhile
            stream_id = key.decode()[len(prefix) :]
            data = value if isinstance(value, bytes) else value.encode()
            found[stream_id] = decode_checkpoint(data, f"{self.name} key {key.decode()!r}")
        return found

    async def save(self, checkpoints: Sequence[StreamCheckpoint]) -> None:
        """Write these streams' checkpoints (each whole or incremental).

        The remembered keys go first, a slice per round trip so that the
        event loop is never held for long; the headers last, in one
        transaction with the switch to a complete checkpoint's new memory.
        A write cut short leaves each stream's header as it was, and
        memory entries at least as settled as it (see
        :mod:`genesys_mux.core.checkpoint`).
        """
        if not checkpoints:
            return
        client = self._connect()
        try:
            for checkpoint in checkpoints:
                memory = self._memory_key(checkpoint.stream_id)
                if checkpoint.complete:
                    # Built aside, then renamed over the old memory below.
                    memory += ":new"
                    await client.delete(memory)
                name = memory.encode()
                forgotten = checkpoint.forgotten
                for start in range(0, len(forgotten), _SLICE):
                    await self._bulk(_hdel(name, forgotten[start : start + _SLICE]))
                entries = checkpoint.memory
                for start in range(0, len(entries), _SLICE):
                    await self._bulk(_hset(name, entries[start : start + _SLICE]))
            async with client.pipeline(transaction=True) as pipe:
                for checkpoint in checkpoints:
                    memory = self._memory_key(checkpoint.stream_id)
                    if checkpoint.complete:
                        if checkpoint.memory:
                            pipe.rename(memory + ":new", memory)
                        else:
                            pipe.delete(memory)
                    pipe.set(self._key(checkpoint.stream_id), encode_checkpoint(checkpoint))
                await pipe.execute()
        except _ERRORS as exc:
            raise StateError(f"{self.name}: cannot write the state: {exc}") from exc

    async def _bulk(self, command: bytes) -> None:
        """Send one command packed by :func:`_hset` or :func:`_hdel`, and wait for its reply.

        On a connection of its own, made like the pool's: redis-py packs a
        command in Python, argument by argument (several µs per remembered
        key), which was most of what a checkpoint cost the event loop.
        An error reply is raised. A connection that fails is closed (by
        redis-py) and opened again for a second try: the server may have
        closed it since the last checkpoint (a restart), and HSET and HDEL
        can be sent twice.
        """
        if self._writer is None:
            pool = self._connect().connection_pool
            self._writer = pool.connection_class(**pool.connection_kwargs)
        for attempt in (1, 2):
            try:
                await self._writer.send_packed_command(command)
                await self._writer.read_response()
                return
            except rexc.ConnectionError:
                if attempt == 2:
                    raise

    async def remove(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams."""
        ids = list(stream_ids)
        keys = [
            k
            for s in ids
            for k in (self._key(s), self._memory_key(s), self._memory_key(s) + ":new")
        ]
        if not keys:
            return
        try:
            await self._connect().delete(*keys)
        except _ERRORS as exc:
            raise StateError(f"{self.name}: cannot write the state: {exc}") from exc

    async def move_aside(self) -> str:
        """Rename every state key to ``{prefix}state-moved-<time>:...``; returns that prefix."""
        client = self._connect()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        old = f"{self.prefix}state:"
        new = f"{self.prefix}state-moved-{stamp}:"
        try:
            async for key in client.scan_iter(match=f"{old}*", count=500):
                name = key.decode()
                await client.rename(name, new + name[len(old) :])
        except _ERRORS as exc:
            raise StateError(f"{self.name}: cannot move the state aside: {exc}") from exc
        finally:
            await self.close()
        return f"{self.name} keys {new}*"

    async def close(self) -> None:
        """Close the connection pool, and the connection that writes remembered keys."""
        client, self._client = self._client, None
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.disconnect()
        if client is not None:
            await client.aclose()

    def _connect(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url,
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
            )
        return self._client


_Pipeline = aioredis.client.Pipeline


class _Heads(dict[int, bytes]):
    """The head of a RESP bulk string (``$``, its length, CRLF), by length (kept once made)."""

    def __missing__(self, size: int) -> bytes:
        head = b"$%d\r\n" % size
        if size < 4096:  # the usual sizes of keys and entries; others are rare
            self[size] = head
        return head


_HEAD = _Heads()
_KEY = operator.attrgetter("key")


def _hset(name: bytes, entries: Sequence[Remembered]) -> bytes:
    """``HSET name key entry...`` in the Redis protocol, one field per remembered key."""
    head = _HEAD
    out = [b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * len(entries)), head[len(name)], name, b"\r\n"]
    add = out.extend
    keys = map(str.encode, map(_KEY, entries))
    for key, entry in zip(keys, encode_memory(entries), strict=True):
        add((head[len(key)], key, b"\r\n", head[len(entry)], entry, b"\r\n"))
    return b"".join(out)


def _hdel(name: bytes, keys: Sequence[str]) -> bytes:
    """``HDEL name key...`` in the Redis protocol."""
    head = _HEAD
    out = [b"*%d\r\n$4\r\nHDEL\r\n" % (2 + len(keys)), head[len(name)], name, b"\r\n"]
    add = out.extend
    for key in map(str.encode, keys):
        add((head[len(key)], key, b"\r\n"))
    return b"".join(out)


#: How to bring keys of schema N to N + 1: reads go through the client, the
#: writes into the one transaction that also records the new version.
_MIGRATIONS: dict[int, Callable[[RedisStateStore, aioredis.Redis, _Pipeline], Awaitable[None]]] = {
    1: RedisStateStore._migrate_1_to_2
}
