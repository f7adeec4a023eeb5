"""Checkpoints in Redis, under a prefix: the store several instances can share.

Keys: ``{prefix}state:meta`` (a hash with ``application`` and
``schema_version``, checked on every open), ``{prefix}state:stream:{id}``
(the checkpoint's header), ``{prefix}state:memory:{id}`` (a hash of the
stream's remembered keys, so that an incremental checkpoint writes only the
keys that changed) and ``{prefix}state:fence:{id}`` (the fencing token of
the latest owner that claimed the stream, in a cluster). The headers of a
batch are written by one script, all or none. The URL may carry a
password; ``name`` (used in every message) never does.

Fencing: several instances of a cluster share this store, and one that was
frozen past its lease may wake up in the middle of a checkpoint. Every
write of a checkpoint with a fence (remembered keys and headers alike)
goes through a script that first compares it with the stream's claim, so
once a new owner claimed the stream (before it reads the checkpoint it
continues from) nothing of its predecessor's lands any more.

Keys of an older schema are migrated on open by the steps in
``_MIGRATIONS`` (one per version), written in one transaction; a newer
schema is refused.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
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
from genesys_mux.errors import FencedStateError, StateError
from genesys_mux.state.store import refused_message

__all__ = ["RedisStateStore", "redis_name"]

_APPLICATION = b"genesys-mux"
_ERRORS = (rexc.RedisError, OSError, TimeoutError)
log = logging.getLogger("genesys_mux.state")
#: Remembered keys per HSET: a round trip each, so the loop is never held long.
#: (Under 4,000: a fenced slice passes through Lua's ``unpack``, which takes 8,000.)
_SLICE = 2000

# KEYS: fence. ARGV: token. Raises the stream's claim to the token; returns
# the claim found when it is newer (nothing changed then), else 0.
_CLAIM = """
local claimed = tonumber(redis.call('GET', KEYS[1]) or '0')
if claimed > tonumber(ARGV[1]) then return claimed end
redis.call('SET', KEYS[1], ARGV[1])
return 0
"""

# KEYS: fence, memory. ARGV: token, HSET or HDEL, then its arguments. One
# slice of remembered keys, unless a newer owner claimed the stream.
_FENCED_SLICE = """
local claimed = tonumber(redis.call('GET', KEYS[1]) or '0')
if claimed > tonumber(ARGV[1]) then
  return redis.error_reply('FENCED ' .. claimed)
end
return redis.call(ARGV[2], KEYS[2], unpack(ARGV, 3))
"""

# KEYS: per stream its fence, header, memory and new memory keys. ARGV: per
# stream its token (0: not fenced), header, and how its memory ends: 'n'ew
# (the complete checkpoint's, renamed over), 'e'mpty, or 'k'ept (updated in
# place). Writes every header, or none when one stream's claim is newer
# than its token: then returns {index, claim} pairs of the refused ones.
_COMMIT = """
local refused = {}
for i = 1, #KEYS, 4 do
  local token = tonumber(ARGV[(i - 1) / 4 * 3 + 1])
  if token > 0 then
    local claimed = tonumber(redis.call('GET', KEYS[i]) or '0')
    if claimed > token then
      table.insert(refused, (i - 1) / 4)
      table.insert(refused, claimed)
    end
  end
end
if #refused > 0 then return refused end
for i = 1, #KEYS, 4 do
  local a = (i - 1) / 4 * 3
  local memory = ARGV[a + 3]
  if memory == 'n' then
    redis.call('RENAME', KEYS[i + 3], KEYS[i + 2])
  elseif memory == 'e' then
    redis.call('DEL', KEYS[i + 2])
  end
  redis.call('SET', KEYS[i + 1], ARGV[a + 2])
end
return refused
"""


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

    def _fence_key(self, stream_id: str) -> str:
        return f"{self.prefix}state:fence:{stream_id}"

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

    async def load(self, only: Collection[str] | None = None) -> Mapping[str, StreamCheckpoint]:
        """Every stream's checkpoint (or those of ``only``), by stream id, with its whole memory."""
        client = self._connect()
        headers = await self._headers(client, only)
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

    async def _headers(
        self, client: aioredis.Redis, only: Collection[str] | None = None
    ) -> dict[str, StreamCheckpoint]:
        """Every stream's stored header (or those of ``only``; schema 1: the whole checkpoint)."""
        prefix = self._key("")
        try:
            if only is None:
                keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=500)]
            else:
                keys = [self._key(s).encode() for s in only]
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
                await self._save_memory(checkpoint)
            keys: list[str] = []
            args: list[bytes | int | str] = []
            for c in checkpoints:
                memory = self._memory_key(c.stream_id)
                keys += (
                    self._fence_key(c.stream_id),
                    self._key(c.stream_id),
                    memory,
                    memory + ":new",
                )
                ending = ("n" if c.memory else "e") if c.complete else "k"
                args += (c.fence, encode_checkpoint(c), ending)
            refused = await client.register_script(_COMMIT)(keys=keys, args=args)
        except _ERRORS as exc:
            raise StateError(f"{self.name}: cannot write the state: {exc}") from exc
        if refused:
            pairs = zip(refused[::2], refused[1::2], strict=True)
            self._fenced(checkpoints, {checkpoints[int(i)].stream_id: int(t) for i, t in pairs})

    async def _save_memory(self, checkpoint: StreamCheckpoint) -> None:
        """Write a checkpoint's remembered and forgotten keys, a slice per round trip."""
        stream_id = checkpoint.stream_id
        memory = self._memory_key(stream_id)
        fence = None
        if checkpoint.fence:
            fence = (self._fence_key(stream_id).encode(), checkpoint.fence)
        if checkpoint.complete:
            # Built aside, then renamed over the old memory by the headers' script.
            memory += ":new"
        name = memory.encode()
        commands = [_packed(b"DEL", name, (0, b""), fence)] if checkpoint.complete else []
        forgotten = checkpoint.forgotten
        for start in range(0, len(forgotten), _SLICE):
            commands.append(_packed(b"HDEL", name, _keys(forgotten[start : start + _SLICE]), fence))
        entries = checkpoint.memory
        for start in range(0, len(entries), _SLICE):
            commands.append(_packed(b"HSET", name, _fields(entries[start : start + _SLICE]), fence))
        for command in commands:
            try:
                await self._bulk(command)
            except rexc.ResponseError as exc:
                claimed = str(exc).removeprefix("FENCED ")
                if not claimed.isdigit():
                    raise
                self._fenced([checkpoint], {stream_id: int(claimed)})

    def _fenced(self, checkpoints: Sequence[StreamCheckpoint], refused: dict[str, int]) -> None:
        fences = {c.stream_id: c.fence for c in checkpoints}
        raise FencedStateError(refused_message(self.name, fences, refused), refused)

    async def claim(self, stream_id: str, fence: int) -> None:
        """Raise the stream's claim to ``fence``: older fences are refused from now on."""
        if not fence:
            return
        try:
            script = self._connect().register_script(_CLAIM)
            claimed = int(await script(keys=[self._fence_key(stream_id)], args=[fence]))
        except _ERRORS as exc:
            raise StateError(f"{self.name}: cannot claim stream {stream_id}: {exc}") from exc
        if claimed:
            self._fenced([], {stream_id: claimed})

    async def _bulk(self, command: bytes) -> None:
        """Send one command packed by :func:`_packed`, and wait for its reply.

        On a connection of its own, made like the pool's: redis-py packs a
        command in Python, argument by argument (several µs per remembered
        key), which was most of what a checkpoint cost the event loop.
        An error reply is raised. A connection that fails is closed (by
        redis-py) and opened again for a second try: the server may have
        closed it since the last checkpoint (a restart), and these commands
        can be sent twice. A server that does not know the fencing script
        (restarted since, or flushed) is taught it, and asked again.
        """
        if self._writer is None:
            pool = self._connect().connection_pool
            self._writer = pool.connection_class(**pool.connection_kwargs)
        for attempt in (1, 2):
            try:
                await self._writer.send_packed_command(command)
                await self._writer.read_response()
                return
            except rexc.NoScriptError:
                if attempt == 2:
                    raise
                await self._connect().script_load(_FENCED_SLICE)
            except rexc.ConnectionError:
                if attempt == 2:
                    raise

    async def remove(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams."""
        ids = list(stream_ids)
        keys = [
            k
            for s in ids
            for k in (
                self._key(s),
                self._memory_key(s),
                self._memory_key(s) + ":new",
                self._fence_key(s),
            )
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


_FENCED_SLICE_SHA = hashlib.sha1(_FENCED_SLICE.encode(), usedforsecurity=False).hexdigest().encode()


def _bulk_string(data: bytes) -> bytes:
    return b"".join((_HEAD[len(data)], data, b"\r\n"))


def _packed(
    verb: bytes, name: bytes, arguments: tuple[int, bytes], fence: tuple[bytes, int] | None
) -> bytes:
    """``verb name arguments...`` in the Redis protocol, itself or through the fencing script.

    ``arguments`` is their count and their bulk strings; ``fence`` the
    stream's fence key and the writer's token, for a checkpoint with one
    (:data:`_FENCED_SLICE` then runs the command unless a newer owner
    claimed the stream).
    """
    count, packed = arguments
    if fence is None:
        return b"".join((b"*%d\r\n" % (2 + count), _bulk_string(verb), _bulk_string(name), packed))
    fence_key, token = fence
    parts = (b"EVALSHA", _FENCED_SLICE_SHA, b"2", fence_key, name, b"%d" % token, verb)
    return b"".join((b"*%d\r\n" % (len(parts) + count), *map(_bulk_string, parts), packed))


def _fields(entries: Sequence[Remembered]) -> tuple[int, bytes]:
    """HSET's field and value pairs, one per remembered key, in the Redis protocol."""
    head = _HEAD
    out: list[bytes] = []
    add = out.extend
    keys = map(str.encode, map(_KEY, entries))
    for key, entry in zip(keys, encode_memory(entries), strict=True):
        add((head[len(key)], key, b"\r\n", head[len(entry)], entry, b"\r\n"))
    return 2 * len(entries), b"".join(out)


def _keys(keys: Sequence[str]) -> tuple[int, bytes]:
    """HDEL's fields (remembered keys) in the Redis protocol."""
    head = _HEAD
    out: list[bytes] = []
    add = out.extend
    for key in map(str.encode, keys):
        add((head[len(key)], key, b"\r\n"))
    return len(keys), b"".join(out)


#: How to bring keys of schema N to N + 1: reads go through the client, the
#: writes into the one transaction that also records the new version.
_MIGRATIONS: dict[int, Callable[[RedisStateStore, aioredis.Redis, _Pipeline], Awaitable[None]]] = {
    1: RedisStateStore._migrate_1_to_2
}
