"""Checkpoints in Redis, under a prefix: the store several instances can share.

Keys: ``{prefix}state:meta`` (a hash with ``application`` and
``schema_version``, checked on every open) and ``{prefix}state:stream:{id}``
(the encoded checkpoint). A batch is one ``MULTI``/``EXEC`` transaction. The
URL may carry a password; ``name`` (used in every message) never does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as rexc

from genesys_mux.core.checkpoint import (
    SCHEMA_VERSION,
    StreamCheckpoint,
    decode_checkpoint,
    encode_checkpoint,
)
from genesys_mux.errors import StateError

__all__ = ["RedisStateStore"]

_APPLICATION = b"genesys-mux"
_ERRORS = (rexc.RedisError, OSError, TimeoutError)


class RedisStateStore:
    """Checkpoints on the Redis server at ``url``, keys under ``prefix``."""

    def __init__(self, url: str, *, prefix: str = "genesys-mux:", timeout_s: float = 5.0) -> None:
        parts = urlsplit(url)
        # Host, port and database only: the URL's password stays out of messages.
        self.name = f"redis:{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"
        self.prefix = prefix
        self._url = url
        self._timeout_s = timeout_s
        self._client: aioredis.Redis | None = None

    @property
    def _meta(self) -> str:
        return f"{self.prefix}state:meta"

    def _key(self, stream_id: str) -> str:
        return f"{self.prefix}state:stream:{stream_id}"

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
            raise StateError(f"{self.name}: cannot reach the state store: {exc}") from exc
        version = meta.get(b"schema_version", b"")
        if meta.get(b"application") != _APPLICATION or not version.isdigit():
            raise StateError(
                f"{self.name}: {self._meta} is not genesys-mux's; choose another [state] prefix"
            )
        if int(version) != SCHEMA_VERSION:
            newer = int(version) > SCHEMA_VERSION
            raise StateError(
                f"{self.name}: state schema {int(version)}, this release reads {SCHEMA_VERSION}"
                + ("; it was written by a newer release: upgrade" if newer else "")
                + " (or start afresh with --reset-state, which moves the keys aside)"
            )

    async def load(self) -> Mapping[str, StreamCheckpoint]:
        """Every stream's checkpoint, by stream id."""
        client = self._connect()
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
        """Replace these streams' checkpoints in one transaction."""
        if not checkpoints:
            return
        client = self._connect()
        try:
            async with client.pipeline(transaction=True) as pipe:
                for checkpoint in checkpoints:
                    pipe.set(self._key(checkpoint.stream_id), encode_checkpoint(checkpoint))
                await pipe.execute()
        except _ERRORS as exc:
            raise StateError(f"{self.name}: cannot write the state: {exc}") from exc

    async def remove(self, stream_ids: Iterable[str]) -> None:
        """Forget these streams."""
        keys = [self._key(s) for s in stream_ids]
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
        """Close the connection pool."""
        client, self._client = self._client, None
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
