"""Checkpoints in Redis, under a prefix: the store several instances can share.

Keys: ``{prefix}state:meta`` (a hash with ``application`` and
``schema_version``, checked on every open, and ``cluster``, the name of the
cluster whose instances write here, if one does), ``{prefix}state:stream:{id}``
(the checkpoint's header), ``{prefix}state:memory:{id}`` (the stream's
remembered keys, as a log of blocks: see below) and
``{prefix}state:fence:{id}`` (the fencing token of the latest owner that
claimed the stream, in a cluster). The headers of a batch are written by
one script, all or none. The URL may carry a password; ``name`` (used in
every message) never does.

The memory is a log of blocks (schema 3), kept as SQLite keeps it (see
:mod:`genesys_mux.state.blocks`): a hash whose fields are block numbers,
each value one block of up to 2,000 remembered keys (the lowest and
highest rank in it, how many, the keys forgotten before it, and the
entries, in one msgpack value). A checkpoint appends its keys as new
blocks, an HSET each, and deletes by number the old blocks that hold
nothing current any more; loading replays the blocks in order. A hash
field per key (schema 2) cost the event loop about 1 µs per key written
and 0.5 per key forgotten, packing each into the commands; a block is one
encoder call and one argument. A complete checkpoint, and a log that grew
to four times what it held when last written whole, is written aside
(``:new``) and renamed over the memory with the headers.

Fencing: several instances of a cluster share this store, and one that was
frozen past its lease may wake up in the middle of a checkpoint. Every
write of a checkpoint with a fence (blocks written or deleted, and headers
alike) goes through a script that first compares it with the stream's claim, so
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

import msgspec

from genesys_mux._extras import raise_if_extra_missing
from genesys_mux.core.checkpoint import (
    Remembered,
    StreamCheckpoint,
    decode_checkpoint,
    decode_memory_block,
    decode_remembered,
    encode_checkpoint,
    encode_memory_block,
)
from genesys_mux.errors import FencedStateError, StateError, StatePermissionError
from genesys_mux.state.blocks import Block, Blocks, ranks
from genesys_mux.state.redis_server import (
    STATE,
    TLS_REFUSED,
    check_redis_url,
    connect,
    is_permission_error,
    permission_problem,
    redis_name,
    server_problem,
    tls_refused,
)
from genesys_mux.state.store import refused_message

try:
    import redis.asyncio as aioredis
    import redis.exceptions as rexc
    from redis.asyncio.connection import AbstractConnection
except ModuleNotFoundError as exc:  # pip install 'genesys-mux[redis]'
    raise_if_extra_missing(exc, "the Redis state store")
    raise

__all__ = ["KEYS_SCHEMA_VERSION", "RedisStateStore", "redis_name"]

#: The layout of the keys this release writes: 1, one value per stream, its
#: memory inside; 2, a hash field per remembered key; 3, the memory in
#: blocks. The checkpoint header's encoding is versioned apart from it
#: (:data:`~genesys_mux.core.checkpoint.SCHEMA_VERSION`, shared with SQLite).
KEYS_SCHEMA_VERSION = 3

_APPLICATION = b"genesys-mux"
#: Starts the messages about the store's URL.
_WHERE = "the Redis state store"
_ERRORS = (rexc.RedisError, OSError, TimeoutError)
log = logging.getLogger("genesys_mux.state")
#: Remembered keys per block: one encoder call, and one HSET (a round trip)
#: each, so the loop is never held long. Also the most block numbers per
#: HDEL (under 4,000: a fenced command's arguments pass through Lua's
#: ``unpack``, which takes 8,000).
_SLICE = 2000


class _StoredBlock(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One block of a stream's memory as the hash keeps it (a field's value)."""

    #: The lowest and highest rank of its entries (lo > hi: it has none).
    lo: int
    hi: int
    size: int
    #: Keys forgotten since the blocks before it were written.
    forgotten: list[str]
    #: What :func:`~genesys_mux.core.checkpoint.encode_memory_block` made of
    #: its entries: kept as bytes, so that reading a block's ranks does not
    #: decode them.
    entries: msgspec.Raw


_BLOCK_ENCODER = msgspec.msgpack.Encoder()
_BLOCK_DECODER = msgspec.msgpack.Decoder(_StoredBlock)

# KEYS: fence. ARGV: token. Raises the stream's claim to the token; returns
# the claim found when it is newer (nothing changed then), else 0.
_CLAIM = """
local claimed = tonumber(redis.call('GET', KEYS[1]) or '0')
if claimed > tonumber(ARGV[1]) then return claimed end
redis.call('SET', KEYS[1], ARGV[1])
return 0
"""

# KEYS: fence, memory. ARGV: token, HSET, HDEL or DEL, then its arguments.
# One write of the stream's blocks (blocks written or deleted, the memory
# written aside cleared), unless a newer owner claimed the stream.
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


class RedisStateStore:
    """Checkpoints on the Redis server at ``url``, keys under ``prefix``.

    A URL that :func:`~genesys_mux.state.redis_server.redis_url_problem`
    refuses raises :class:`~genesys_mux.errors.ConfigError` here, quoting
    none of it.
    """

    #: Asks streams to write again, unchanged, the keys they have not seen
    #: for twice as many sightings as they remember keys, so that the floor
    #: of their checkpoints moves and old blocks go (as SQLite does).
    refresh = 2

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "genesys-mux:",
        timeout_s: float = 5.0,
        cluster: str | None = None,
        setting: str = "[state] url",
    ) -> None:
        check_redis_url(url, _WHERE)
        #: The configuration's key that names this Redis, for what to fix.
        self.setting = setting
        self.name = redis_name(url)
        self.prefix = prefix
        #: The cluster this instance belongs to, if any: the first to open
        #: the keys owns them, and another is refused (see :meth:`open`).
        self.cluster = cluster
        self._url = url
        self._timeout_s = timeout_s
        self._client: aioredis.Redis | None = None
        #: Writes the blocks (see _bulk).
        self._writer: AbstractConnection | None = None
        #: By stream id: what is known of its blocks, as this store last
        #: wrote them (read from Redis again when missing).
        self._blocks: dict[str, Blocks] = {}

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
        """Connect; create the metadata, or check the one there; StateError if unusable.

        With ``cluster``, the keys are that cluster's: the first instance to
        open them says so in the metadata, and an instance of another
        cluster is refused. Two clusters under one prefix would write each
        other's streams, each with fencing tokens of its own counter, which
        the other's claims cannot order.
        """
        try:
            await self._open()
        except StateError:
            await self.close()  # a store that cannot be used holds no connection
            raise

    async def _open(self) -> None:
        client = self._connect()
        try:
            # First: a Redis Cluster would answer the keys' commands with
            # MOVED, and a server that may evict them is refused before
            # anything is written.
            problem = await server_problem(client, STATE, self.name)
            if problem is not None:
                raise StateError(problem)
            meta = await client.hgetall(self._meta)
            # Loaded now, so that a user who may not run scripts is told at
            # the start, not at the first checkpoint.
            for script in (_CLAIM, _FENCED_SLICE, _COMMIT):
                await client.script_load(script)
        except _ERRORS as exc:
            raise self._unreachable(exc) from exc
        if not meta:
            try:
                await client.hset(
                    self._meta,
                    mapping={
                        "application": _APPLICATION,
                        "schema_version": str(KEYS_SCHEMA_VERSION),
                    },
                )
            except _ERRORS as exc:
                raise self._unreachable(exc) from exc
            await self._check_cluster(client)
            return
        version = meta.get(b"schema_version", b"")
        if meta.get(b"application") != _APPLICATION or not version.isdigit():
            raise StateError(
                f"{self.name}: {self._meta} is not genesys-mux's; choose another [state] prefix"
            )
        found = int(version)
        if found > KEYS_SCHEMA_VERSION or found not in (KEYS_SCHEMA_VERSION, *_MIGRATIONS):
            newer = found > KEYS_SCHEMA_VERSION
            raise StateError(
                f"{self.name}: state schema {found}, this release reads {KEYS_SCHEMA_VERSION}"
                + ("; it was written by a newer release: upgrade" if newer else "")
                + " (or start afresh with --reset-state, which moves the keys aside)"
            )
        if found < KEYS_SCHEMA_VERSION:
            await self._migrate(client, found)
        await self._check_cluster(client)

    async def _check_cluster(self, client: aioredis.Redis) -> None:
        """Claim the keys for this instance's cluster, or refuse another cluster's.

        HSETNX, so that of two clusters that start at once only the first
        to write goes on.
        """
        if self.cluster is None:
            return
        try:
            await client.hsetnx(self._meta, "cluster", self.cluster)
            meta = await client.hgetall(self._meta)
        except _ERRORS as exc:
            raise self._error("read the state's cluster", exc) from exc
        found = meta.get(b"cluster")
        owner = found.decode() if isinstance(found, bytes) else found
        if owner is not None and owner != self.cluster:
            raise StateError(
                f"{self.name}: the state under prefix {self.prefix!r} is cluster "
                f"{owner!r}'s, and this instance is in cluster {self.cluster!r}; "
                "give each cluster a [state] prefix of its own (and its sinks prefixes of "
                f"their own). A cluster renamed: delete the field cluster of {self._meta} first"
            )

    async def _migrate(self, client: aioredis.Redis, version: int) -> None:
        """Bring the keys from ``version`` to this release's schema, in one transaction."""
        try:
            async with client.pipeline(transaction=True) as pipe:
                # Each stream's memory as the steps so far left it: the
                # writes wait in the transaction, where the next step
                # cannot read them.
                staged: dict[str, list[Remembered]] = {}
                for step in range(version, KEYS_SCHEMA_VERSION):
                    await _MIGRATIONS[step](self, client, pipe, staged)
                pipe.hset(self._meta, "schema_version", str(KEYS_SCHEMA_VERSION))
                await pipe.execute()
        except _ERRORS as exc:
            raise self._error("migrate the state", exc) from exc
        except StatePermissionError:
            raise
        except StateError as exc:
            raise StateError(
                f"{self.name}: cannot migrate it from schema {version} ({exc}); nothing was "
                "changed: start afresh with --reset-state, which moves the keys aside"
            ) from exc
        log.warning(
            "%s: migrated the state from schema %d to %d", self.name, version, KEYS_SCHEMA_VERSION
        )

    async def _migrate_1_to_2(
        self, client: aioredis.Redis, pipe: _Pipeline, staged: dict[str, list[Remembered]]
    ) -> None:
        """Schema 1 kept each stream's memory inside its checkpoint: its own key now.

        Only the headers are written here: the memory goes straight to
        schema 3's blocks (the next step), a hash of keys being of no use
        to this release.
        """
        for stream_id, old in (await self._headers(client)).items():
            pipe.set(self._key(stream_id), encode_checkpoint(old))
            staged[stream_id] = sorted(old.memory, key=_RANK)

    async def _migrate_2_to_3(
        self, client: aioredis.Redis, pipe: _Pipeline, staged: dict[str, list[Remembered]]
    ) -> None:
        """Schema 2 kept a hash field per remembered key: blocks of them now, least recent first."""
        for stream_id in await self._headers(client):
            key = self._memory_key(stream_id)
            memory = staged.get(stream_id)
            if memory is None:
                try:
                    entries = await client.hvals(key)
                except _ERRORS as exc:
                    raise self._error(f"read {key!r}", exc) from exc
                where = f"key {key!r}"
                memory = sorted((decode_remembered(_bytes(e), where) for e in entries), key=_RANK)
            pipe.delete(key)
            if memory:
                pairs: list[int | bytes] = []
                for number, start in enumerate(range(0, len(memory), _SLICE), 1):
                    pairs += (number, _encoded_block(memory[start : start + _SLICE], [])[0])
                pipe.hset(key, items=pairs)

    async def load(self, only: Collection[str] | None = None) -> Mapping[str, StreamCheckpoint]:
        """Every stream's checkpoint (or those of ``only``), by stream id, with its whole memory."""
        client = self._connect()
        headers = await self._headers(client, only)
        ids = list(headers)
        try:
            async with client.pipeline(transaction=True) as pipe:
                for stream_id in ids:
                    pipe.hgetall(self._memory_key(stream_id))
                memories: list[dict[bytes | str, bytes | str]] = await pipe.execute() if ids else []
        except _ERRORS as exc:
            raise self._error("read the state", exc) from exc
        found: dict[str, StreamCheckpoint] = {}
        for stream_id, blocks in zip(ids, memories, strict=True):
            kept = sorted(self._replay(stream_id, blocks).values(), key=_RANK)
            found[stream_id] = msgspec.structs.replace(headers[stream_id], memory=kept)
        return found

    def _where(self, stream_id: str) -> str:
        return f"{self.name} key {self._memory_key(stream_id)!r}"

    def _layout(
        self, stream_id: str, fields: Mapping[bytes | str, bytes | str]
    ) -> list[tuple[int, _StoredBlock]]:
        """A stream's blocks by number, oldest first (their entries still encoded)."""
        where = self._where(stream_id)
        blocks = []
        for number, value in fields.items():
            try:
                blocks.append((int(number), _BLOCK_DECODER.decode(_bytes(value))))
            except (ValueError, msgspec.DecodeError) as exc:
                raise StateError(f"{where}: field {number!r:.40} is not a block ({exc})") from exc
        blocks.sort(key=_NUMBER)
        return blocks

    def _replay(
        self, stream_id: str, fields: Mapping[bytes | str, bytes | str]
    ) -> dict[str, Remembered]:
        """A stream's memory from its blocks, oldest first: each key's newest entry."""
        where = self._where(stream_id)
        kept: dict[str, Remembered] = {}
        for _, block in self._layout(stream_id, fields):
            for key in block.forgotten:
                kept.pop(key, None)
            memory = decode_memory_block(bytes(block.entries), where)
            kept.update(zip(map(_KEY, memory), memory, strict=True))
        return kept

    async def _blocks_of(self, stream_id: str) -> Blocks:
        """What is known of a stream's blocks; read from Redis if nothing is."""
        known = self._blocks.get(stream_id)
        if known is None:
            fields = await self._connect().hgetall(self._memory_key(stream_id))
            known = Blocks()
            for number, block in self._layout(stream_id, fields):
                known.add(number, Block(block.lo, block.hi, block.size, bool(block.forgotten)))
            known.whole = known.stored
            self._blocks[stream_id] = known
        return known

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
            raise self._error("read the state", exc) from exc
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

        The blocks go first, one per round trip so that the event loop is
        never held for long; the headers last, in one transaction with the
        switch to a memory written whole. A write cut short leaves each
        stream's header as it was, and memory entries at least as settled
        as it (see :mod:`genesys_mux.core.checkpoint`): a block is deleted
        only after the blocks that hold what it did were written.
        """
        if not checkpoints:
            return
        client = self._connect()
        refused = None
        try:
            endings = [await self._save_memory(c) for c in checkpoints]
            keys: list[str] = []
            args: list[bytes | int | str] = []
            for c, ending in zip(checkpoints, endings, strict=True):
                memory = self._memory_key(c.stream_id)
                keys += (
                    self._fence_key(c.stream_id),
                    self._key(c.stream_id),
                    memory,
                    memory + ":new",
                )
                args += (c.fence, encode_checkpoint(c), ending)
            refused = await client.register_script(_COMMIT)(keys=keys, args=args)
        except _ERRORS as exc:
            self._forget(checkpoints)
            raise self._error("write the state", exc) from exc
        except BaseException:
            self._forget(checkpoints)
            raise
        if refused:
            self._forget(checkpoints)
            pairs = zip(refused[::2], refused[1::2], strict=True)
            self._fenced(checkpoints, {checkpoints[int(i)].stream_id: int(t) for i, t in pairs})

    def _forget(self, checkpoints: Sequence[StreamCheckpoint]) -> None:
        """What was learnt of these streams' blocks may not be so: a write failed."""
        for checkpoint in checkpoints:
            self._blocks.pop(checkpoint.stream_id, None)

    async def _save_memory(self, checkpoint: StreamCheckpoint) -> str:
        """Write a checkpoint's blocks, and delete those it leaves with nothing current.

        Returns how the headers' script ends the stream's memory: ``n``,
        the memory written aside renamed over it; ``e``, deleted; ``k``,
        kept as updated.
        """
        stream_id, floor = checkpoint.stream_id, checkpoint.floor
        fence = None
        if checkpoint.fence:
            fence = (self._fence_key(stream_id).encode(), checkpoint.fence)
        if checkpoint.complete:
            return await self._write_whole(checkpoint, checkpoint.memory, fence)
        known = await self._blocks_of(stream_id)
        name = self._memory_key(stream_id).encode()
        gone = known.prune(floor)
        forgotten: list[str] = []
        if checkpoint.forgotten and known.holding_forgotten(floor):
            # Only while a block may still hold their entries: when every
            # event is a new conversation, the keys forgotten are the
            # oldest blocks' whole, and those go.
            forgotten = checkpoint.forgotten
        await self._append(checkpoint, name, known, checkpoint.memory, forgotten, fence)
        for start in range(0, len(gone), _SLICE):
            numbers = _numbers(gone[start : start + _SLICE])
            await self._send(checkpoint, _packed(b"HDEL", name, numbers, fence))
        if known.due(_SLICE):
            # Replayed from what Redis holds (this checkpoint's blocks included).
            fields = await self._connect().hgetall(name)
            memory = sorted(self._replay(stream_id, fields).values(), key=_RANK)
            return await self._write_whole(checkpoint, memory, fence)
        return "k"

    async def _write_whole(
        self,
        checkpoint: StreamCheckpoint,
        memory: Sequence[Remembered],
        fence: tuple[bytes, int] | None,
    ) -> str:
        """Write ``memory`` aside, in blocks: the headers' script renames it over the stream's."""
        stream_id = checkpoint.stream_id
        name = (self._memory_key(stream_id) + ":new").encode()
        known = self._blocks[stream_id] = Blocks()
        await self._send(checkpoint, _packed(b"DEL", name, (0, b""), fence))
        await self._append(checkpoint, name, known, memory, [], fence)
        known.whole = known.stored
        return "n" if known.blocks else "e"

    async def _append(
        self,
        checkpoint: StreamCheckpoint,
        name: bytes,
        known: Blocks,
        memory: Sequence[Remembered],
        forgotten: list[str],
        fence: tuple[bytes, int] | None,
    ) -> None:
        """Write ``memory`` (and the keys ``forgotten``, with the first) as the log's next blocks.

        Each block is encoded only once the one before was sent: the event
        loop runs between.
        """
        for number, start in enumerate(range(0, max(len(memory), 1), _SLICE), known.next):
            part = memory[start : start + _SLICE]
            if not part and not forgotten:
                break
            value, block = _encoded_block(part, forgotten)
            forgotten = []  # with the first block only
            known.add(number, block)
            pair = b"%d" % number
            fields = b"".join((_bulk_string(pair), _bulk_string(value)))
            await self._send(checkpoint, _packed(b"HSET", name, (2, fields), fence))

    async def _send(self, checkpoint: StreamCheckpoint, command: bytes) -> None:
        """Send one of a checkpoint's commands; FencedStateError if its stream was claimed."""
        try:
            await self._bulk(command)
        except rexc.ResponseError as exc:
            claimed = str(exc).removeprefix("FENCED ")
            if not claimed.isdigit():
                raise
            self._fenced([checkpoint], {checkpoint.stream_id: int(claimed)})

    def _unreachable(self, exc: BaseException) -> StateError:
        """The error for a store that could not be opened: refused, not trusted, or unreachable."""
        if is_permission_error(exc):
            return self._error("open the state store", exc)
        if tls_refused(exc):
            return StateError(f"{self.name}: {TLS_REFUSED} ({exc})")
        return StateError(
            f"{self.name}: cannot reach the state store ({exc}); check that Redis runs "
            f"there, or fix {self.setting}"
        )

    def _error(self, doing: str, exc: BaseException) -> StateError:
        """The error for a Redis command that failed while ``doing`` something.

        A permission the user lacks is a configuration to fix, told apart
        (:class:`~genesys_mux.errors.StatePermissionError`, saying what to
        grant); anything else is the store failing, which may pass.
        """
        if is_permission_error(exc):
            keys = f"{self.prefix}state*"  # and state-moved-*, for --reset-state
            return StatePermissionError(permission_problem(exc, STATE, self.name, keys, doing))
        return StateError(f"{self.name}: cannot {doing}: {exc}")

    def _fenced(self, checkpoints: Sequence[StreamCheckpoint], refused: dict[str, int]) -> None:
        fences = {c.stream_id: c.fence for c in checkpoints}
        raise FencedStateError(refused_message(self.name, fences, refused), refused)

    async def claim(self, stream_id: str, fence: int) -> None:
        """Raise the stream's claim to ``fence``: older fences are refused from now on."""
        # Its new owner may write the stream from now on: what this store
        # knows of its blocks is read again when next needed.
        self._blocks.pop(stream_id, None)
        if not fence:
            return
        try:
            script = self._connect().register_script(_CLAIM)
            claimed = int(await script(keys=[self._fence_key(stream_id)], args=[fence]))
        except _ERRORS as exc:
            raise self._error(f"claim stream {stream_id}", exc) from exc
        if claimed:
            refused = {stream_id: claimed}
            raise FencedStateError(refused_message(self.name, {stream_id: fence}, refused), refused)

    async def _bulk(self, command: bytes) -> None:
        """Send one command packed by :func:`_packed`, and wait for its reply.

        On a connection of its own, made like the pool's: redis-py packs a
        command in Python, argument by argument, copying each (with a hash
        field per remembered key, as schema 2 had, several µs per key, most
        of what a checkpoint cost the event loop; a block is one argument
        of about 100 KB, packed here with one join).
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
        for stream_id in ids:
            self._blocks.pop(stream_id, None)
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
            raise self._error("write the state", exc) from exc

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
            raise self._error("move the state aside", exc) from exc
        finally:
            await self.close()
        return f"{self.name} keys {new}*"

    async def close(self) -> None:
        """Close the connection pool, and the connection that writes blocks."""
        self._blocks.clear()
        client, self._client = self._client, None
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.disconnect()
        if client is not None:
            await client.aclose()

    def _connect(self) -> aioredis.Redis:
        if self._client is None:
            self._client = connect(
                self._url,
                _WHERE,
                socket_timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
            )
        return self._client


_Pipeline = aioredis.client.Pipeline


class _Heads(dict[int, bytes]):
    """The head of a RESP bulk string (``$``, its length, CRLF), by length (kept once made)."""

    def __missing__(self, size: int) -> bytes:
        head = b"$%d\r\n" % size
        if size < 4096:  # names, block numbers, scripts' arguments; blocks vary
            self[size] = head
        return head


_HEAD = _Heads()
_KEY = operator.attrgetter("key")
_RANK = operator.attrgetter("rank")
_NUMBER = operator.itemgetter(0)


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


def _encoded_block(memory: Sequence[Remembered], forgotten: list[str]) -> tuple[bytes, Block]:
    """A block's value in the hash, and what the store keeps track of it.

    ``memory`` is least recently seen first; ``forgotten``, the keys
    forgotten before it.
    """
    lo, hi = ranks(memory)
    entries = msgspec.Raw(encode_memory_block(memory))
    value = _BLOCK_ENCODER.encode(_StoredBlock(lo, hi, len(memory), forgotten, entries))
    return value, Block(lo, hi, len(memory), bool(forgotten))


def _bytes(value: bytes | str) -> bytes:
    """A value read from Redis (bytes: the client does not decode responses)."""
    return value if isinstance(value, bytes) else value.encode()


def _numbers(numbers: Sequence[int]) -> tuple[int, bytes]:
    """HDEL's fields (block numbers) in the Redis protocol."""
    return len(numbers), b"".join(_bulk_string(b"%d" % n) for n in numbers)


#: How to bring keys of schema N to N + 1: reads go through the client, the
#: writes into the one transaction that also records the new version.
#: Each step adds to ``staged`` the memories it wrote, by stream id.
_MIGRATIONS: dict[
    int,
    Callable[
        [RedisStateStore, aioredis.Redis, _Pipeline, dict[str, list[Remembered]]],
        Awaitable[None],
    ],
] = {
    1: RedisStateStore._migrate_1_to_2,
    2: RedisStateStore._migrate_2_to_3,
}
