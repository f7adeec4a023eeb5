"""A sink that appends items to Redis Streams, one stream key per genesys-mux stream.

Theory of operation
-------------------
Each item becomes one stream entry, ``XADD {prefix}{stream_id} MAXLEN ~ N *
record <json> idempotency_key <key>``, where ``record`` is the shared wire
record of :mod:`genesys_mux.sinks.base`. Redis assigns the entry id, so
ordering within a key is the order of sending. A batch is sent as one
pipeline without ``MULTI`` (``transaction=False``): one round trip, and no
transaction to abort, since every ``XADD`` stands alone.

``MAXLEN ~ N`` keeps each key bounded. The ``~`` lets Redis trim only whole
internal nodes, which is far cheaper than exact trimming; a key therefore
holds *at least* N entries and somewhat more. Pass ``approximate=False`` for
an exact cap, or ``maxlen=None`` for none.

Restarts and failover: the client runs with socket timeouts and with
redis-py's own retries turned off, so a dead connection or a Redis that is
restarting (connection refused, ``LOADING``, ``READONLY``, ``OOM``) surfaces
at once as a retryable :class:`~genesys_mux.errors.SinkError`. The runner
backs off and sends the *whole* batch again; redis-py reconnects on the next
command. A pipeline cut off by the connection may have been applied in part,
so the re-send can add some entries twice: delivery is at-least-once and
consumers drop repeats by ``idempotency_key``. Errors that waiting cannot
fix (bad credentials, a key of the wrong type) are not retryable; a command
the user's ACL refuses is a :class:`~genesys_mux.errors.SinkPermissionError`
saying what to grant. :meth:`RedisStreamsSink.start` also checks the server
as every Redis of genesys-mux is checked: a Redis Cluster, or one that may
evict any key (these records have no TTL), is refused, not retryably.

Fencing and de-duplication (a cluster's instances sharing the streams):
with a ``fence`` token, or a ``dedupe_ttl_s``, a batch goes through one Lua
script instead. It refuses the batch when the stream's fence key
(``{key}:fence``) holds a larger token than the batch's, raising
:class:`~genesys_mux.errors.FencedError` (an ex-owner that was frozen past
its lease cannot write once the new owner has), and raises the key to the
batch's token otherwise. It then adds only the records whose
``idempotency_key`` the sorted set ``{key}:seen`` has not had within
``dedupe_ttl_s``, so a state delivered twice (a handover, a crash's
unacknowledged window) is stored once. A key is marked seen only after its
``XADD`` succeeded (Redis does not roll a script back), so a batch that
failed part-way (a key of the wrong type, out of memory) is stored in full
when it is sent again. The script's first write is one that Redis refuses
when it is out of memory (the fence's ``SET`` or an ``XADD``; the expired
keys are pruned last), so a full Redis under ``noeviction`` refuses the
batch with a retryable ``OOM`` like a plain ``XADD``: Redis checks
``maxmemory`` at a script's first write only, and an earlier prune let
every later ``XADD`` through.

The URL may carry a password; it never appears in reprs, logs or errors.
It follows the URL policy of every Redis genesys-mux uses
(:func:`~genesys_mux.state.redis_server.redis_url_problem`): a password
must be percent-encoded where it holds ``/``, ``?`` or ``#`` (otherwise it
reads as the URL's path, query or fragment, and a piece of it as the port),
and TLS verification stays on. A URL it refuses is refused when the sink is
built, with a :class:`~genesys_mux.errors.ConfigError` that says why and
echoes none of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from genesys_mux._extras import raise_if_extra_missing
from genesys_mux.core.redaction import userinfo_not_encoded
from genesys_mux.errors import ConfigError, FencedError, SinkError, SinkPermissionError
from genesys_mux.sinks.base import Hidden, Item, encode_record, idempotency_key
from genesys_mux.state.redis_server import (
    SINK,
    check_redis_url,
    connect,
    is_permission_error,
    permission_problem,
    redis_name,
    server_problem,
)

try:
    import redis.asyncio as aioredis
    import redis.exceptions as rexc
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ModuleNotFoundError as exc:  # pip install 'genesys-mux[redis]'
    raise_if_extra_missing(exc, "the Redis Streams sink")
    raise

__all__ = ["DEFAULT_PREFIX", "RedisStreamSink", "RedisStreamsSink", "redact_url"]

log = logging.getLogger("genesys_mux.sinks.redis")

#: Keys are ``{prefix}{stream_id}``.
DEFAULT_PREFIX = "genesys-mux:"

# Server answers that mean "not now" rather than "never": a replica that is
# read-only during a failover, memory that a trim or eviction will free,
# a cluster moving slots.
_TRANSIENT_RESPONSES = (
    rexc.OutOfMemoryError,
    rexc.ReadOnlyError,
    rexc.TryAgainError,
    rexc.ClusterDownError,
)
# KEYS: stream, fence, seen. ARGV: token (0: none), maxlen (0: none),
# approximate (1/0), now ms, dedupe ttl ms (0: none), then (key, record) pairs.
# Returns the number of records added, or -1 when a newer token wrote here.
#
# Out of memory: Redis checks maxmemory (under noeviction) at a script's
# first write only, and only for a command that may grow memory (SET, XADD,
# ZADD: "deny-oom"); once a script has written, the rest goes through. So
# the first write must be one of those, the fence's SET or the first XADD,
# and the expired keys of the :seen set are pruned last (ZREMRANGEBYSCORE
# is not deny-oom, and written first it let every XADD of a batch through a
# full Redis). Until pruned, an expired key is told by its score.
_FENCED_XADD = """
local token = tonumber(ARGV[1])
if token > 0 then
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if token < current then return -1 end
  if token > current then redis.call('SET', KEYS[2], ARGV[1]) end
end
local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local expired = now - ttl
local trim = {}
if ARGV[2] ~= '0' then
  trim = ARGV[3] == '1' and {'MAXLEN', '~', ARGV[2]} or {'MAXLEN', ARGV[2]}
end
local added = 0
for i = 6, #ARGV, 2 do
  local seen = ttl > 0 and redis.call('ZSCORE', KEYS[3], ARGV[i])
  if not seen or tonumber(seen) <= expired then
    local args = {KEYS[1]}
    for _, v in ipairs(trim) do args[#args + 1] = v end
    args[#args + 1] = '*'
    args[#args + 1] = 'record'
    args[#args + 1] = ARGV[i + 1]
    args[#args + 1] = 'idempotency_key'
    args[#args + 1] = ARGV[i]
    redis.call('XADD', unpack(args))
    -- Seen only once stored: a script is not rolled back, so a key marked
    -- before an XADD that failed (WRONGTYPE, OOM) would be skipped for good.
    if ttl > 0 then redis.call('ZADD', KEYS[3], now, ARGV[i]) end
    added = added + 1
  end
end
if ttl > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', expired) end
return added
"""

# Connection-level errors that are about who we are, not about the network.
_PERMANENT_CONNECTION_ERRORS = (rexc.AuthenticationError, rexc.AuthorizationError)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for reprs and logs).

    A URL whose user info cannot be read (a ``/``, ``?`` or ``#`` not
    percent-encoded in it) or whose port is not a number gives
    ``<scheme>://***``: nothing of it is echoed.
    """
    if userinfo_not_encoded(url):
        return f"{urlsplit(url).scheme}://***"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return f"{parts.scheme}://***"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if port is not None:
        host = f"{host}:{port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class RedisStreamsSink:
    """Items appended to ``{prefix}{stream_id}`` Redis streams with pipelined ``XADD``.

    ``url`` is a ``redis://`` or ``rediss://`` URL (``redis://:password@host:6379/0``).
    ``maxlen`` bounds each key (approximately unless ``approximate=False``;
    None for no bound). ``socket_timeout_s`` and ``connect_timeout_s`` bound
    every command and connection attempt. ``client`` lets an application
    share its own ``redis.asyncio.Redis``; the sink then does not close it.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        maxlen: int | None = 100_000,
        approximate: bool = True,
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        name: str = "redis",
        client: aioredis.Redis | None = None,
        fence: int = 0,
        dedupe_ttl_s: float = 0.0,
    ) -> None:
        if maxlen is not None and maxlen < 1:
            raise ConfigError(f"Redis sink maxlen must be at least 1 (or None), not {maxlen}")
        if socket_timeout_s <= 0 or connect_timeout_s <= 0:
            raise ConfigError("Redis sink timeouts must be positive")
        if fence < 0 or dedupe_ttl_s < 0:
            raise ConfigError("Redis sink fence and dedupe_ttl_s must not be negative")
        # The policy the state store and a cluster's Redis follow too.
        check_redis_url(url, f"Redis sink {name}")
        self.name = name
        self.prefix = prefix
        self.maxlen = maxlen
        self.approximate = approximate
        self.display_url = redact_url(url)
        #: Names the server in the checks' messages and warnings.
        self._where = redis_name(url)
        # The real URL may hold a password: kept where no repr or dump shows it.
        self._url = Hidden(url, self.display_url)
        self._socket_timeout_s = socket_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._client = client
        self._own_client = client is None
        #: The fencing token of this instance's lease on the stream (0: no fencing).
        self.fence = fence
        #: How long an idempotency key is remembered (0: no de-duplication).
        self.dedupe_ttl_s = dedupe_ttl_s
        #: Records the de-duplication dropped, and events of batches refused by fencing.
        self.deduplicated = 0
        self.fenced = 0

    def __repr__(self) -> str:
        return (
            f"RedisStreamsSink(name={self.name!r}, url={self.display_url!r}, "
            f"prefix={self.prefix!r}, maxlen={self.maxlen!r})"
        )

    def key(self, stream_id: str) -> str:
        """The Redis key of a genesys-mux stream."""
        return f"{self.prefix}{stream_id}"

    async def start(self) -> None:
        """Create the client and check that Redis answers and suits, or raise ``SinkError``.

        A Redis that is down (or still loading) is retryable: the sink
        runner starts the sink again after its backoff. A refused password
        or user is not: no wait fixes a credential. Nor is a server that
        cannot keep the records (a Redis Cluster, one that may evict any
        key: the checks every Redis of genesys-mux gets), or a user that
        may not run the sink's commands
        (:class:`~genesys_mux.errors.SinkPermissionError`).
        """
        self._create_client()
        assert self._client is not None
        try:
            await self._client.ping()
            problem = await server_problem(self._client, SINK, self._where)
            if problem is None and (self.fence or self.dedupe_ttl_s):
                # Loaded now: a user who may not run scripts is told at the
                # start, not by every batch going to the dead-letter queue.
                await self._client.script_load(_FENCED_XADD)
        except (rexc.RedisError, OSError, TimeoutError) as exc:
            raise self._translate(exc, "start") from exc
        if problem is not None:
            raise SinkError(f"sink {self.name}: {problem}", retryable=False)

    def _create_client(self) -> None:
        """The client, created once; it connects lazily, on its first command."""
        if self._client is None:
            self._client = connect(
                self._url.value,
                f"Redis sink {self.name}",
                socket_timeout=self._socket_timeout_s,
                socket_connect_timeout=self._connect_timeout_s,
                # The runner owns retrying: it re-sends the whole batch with
                # its backoff, and reports each failure. Hidden retries here
                # would only stretch the time to the first report.
                retry=Retry(NoBackoff(), 0),
            )
            self._own_client = True

    async def send(self, batch: Sequence[Item]) -> None:
        """``XADD`` every item of the batch in one pipeline, or raise ``SinkError``."""
        if not batch:
            return
        # Lazily: a send after close, or without start, connects on its own.
        self._create_client()
        assert self._client is not None
        if self.fence or self.dedupe_ttl_s:
            await self._send_guarded(batch)
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for item in batch:
                    pipe.xadd(
                        self.key(item.stream_id),
                        {"record": encode_record(item), "idempotency_key": idempotency_key(item)},
                        maxlen=self.maxlen,
                        approximate=self.approximate,
                    )
                await pipe.execute()
        except (rexc.RedisError, OSError, TimeoutError) as exc:
            raise self._translate(exc, "send a batch") from exc

    async def _send_guarded(self, batch: Sequence[Item]) -> None:
        """The batch through the fencing and de-duplication script, one per genesys-mux stream."""
        assert self._client is not None
        by_stream: dict[str, list[Item]] = {}
        for item in batch:
            by_stream.setdefault(item.stream_id, []).append(item)
        script = self._client.register_script(_FENCED_XADD)
        for stream_id, items in by_stream.items():
            key = self.key(stream_id)
            args: list[bytes | str | int] = [
                self.fence,
                self.maxlen or 0,
                1 if self.approximate else 0,
                int(time.time() * 1000),
                int(self.dedupe_ttl_s * 1000),
            ]
            for item in items:
                args += [idempotency_key(item), encode_record(item)]
            try:
                added = int(await script(keys=[key, f"{key}:fence", f"{key}:seen"], args=args))
            except (rexc.RedisError, OSError, TimeoutError) as exc:
                raise self._translate(exc, "send a batch") from exc
            if added < 0:
                self.fenced += len(items)
                raise FencedError(
                    f"sink {self.name}: stream {stream_id} has a newer owner than fencing token "
                    f"{self.fence}; this instance no longer writes it"
                )
            self.deduplicated += len(items) - added

    def _translate(self, exc: Exception, doing: str) -> SinkError:
        if is_permission_error(exc):
            # Before the other answers: a refused command is a configuration
            # to fix, and its message says which permission to grant.
            keys = f"{self.prefix}*"
            return SinkPermissionError(
                f"sink {self.name}: {permission_problem(exc, SINK, self._where, keys, doing)}"
            )
        if isinstance(exc, _PERMANENT_CONNECTION_ERRORS):
            retryable = False
        elif isinstance(exc, rexc.ConnectionError | rexc.TimeoutError | OSError | TimeoutError):
            # Includes BusyLoadingError: Redis is up but still loading its data.
            retryable = True
        else:
            retryable = isinstance(exc, _TRANSIENT_RESPONSES)
        # redis-py messages name host and port at most, never the password.
        detail = str(exc).replace(self._url.value, self.display_url)[:200]
        hint = ""
        if isinstance(exc, rexc.AuthenticationError):
            # Which server refused, and what to fix: the message alone names neither.
            hint = (
                f" (at {self._where}): check the user name and password in the sink's URL "
                "(its url_env variable)"
            )
        return SinkError(
            f"sink {self.name}: Redis {type(exc).__name__}: {detail}{hint}", retryable=retryable
        )

    async def close(self) -> None:
        """Close the client if this sink created it; a shared client stays open."""
        if not self._own_client:
            return
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except (rexc.RedisError, OSError, TimeoutError) as exc:
                log.debug("closing the Redis client of %s: %s", self.name, type(exc).__name__)


#: The same class under its singular name.
RedisStreamSink = RedisStreamsSink
