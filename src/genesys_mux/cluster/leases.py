"""Members and stream leases of a cluster, in Redis: who is alive, who carries what.

Theory of operation
-------------------
Redis is the arbiter; every decision that two instances could race on is
one Lua script, which Redis runs atomically. There is no consensus of our
own: an instance owns a stream exactly while Redis holds its lease.

- A **member** key per instance (``member:{id}``), written with a TTL and
  renewed at every heartbeat, says the instance is alive and which OAuth
  client it uses. An instance whose key expired is no longer a member.
- A **lease** key per stream (``lease:{stream}``) holds ``{instance}|{token}``
  with a TTL of ``lease_ttl_s``. Acquiring a free lease increments the
  stream's **fencing token** (``fence:{stream}``, never reset): every
  acquisition, by anyone, gets a larger token than all before it. A token
  is also never below Redis's clock in milliseconds, so a Redis that lost
  the counter (restarted without persistence, flushed) still gives out
  tokens larger than those the sinks and the state store have seen,
  rather than 1, 2, 3 that they would refuse for ever. Renewing
  checks the holder in the same script, so an instance whose lease expired
  and was taken cannot renew it back: it learns it lost the stream.
- A **ready** key per stream (``ready:{stream}``) names the member that
  stands by to take the stream over (subscribed, keeping what arrives):
  one member at a time, never overwritten by another. Before the holder
  hands the stream over it *promises* it to that member (``{id}|promised``,
  in one script that checks it still holds the lease and the member is
  still ready); a member that was promised a stream keeps its standby
  whatever placement it computes meanwhile, and takes the stream when the
  holder lets go. Without the promise the holder could check the
  readiness, hand over, and find the stream taken by a member that never
  subscribed it: a window without an owner, on a planned move.
- Sinks are given the token with every write. A sink that keeps the
  largest token it has seen per stream refuses a write with a smaller one,
  so an ex-owner that was frozen past its lease cannot write once the new
  owner has (see the sinks' fencing).

All keys share the hash tag ``{cluster name}``. Redis Cluster is not
supported all the same (the client talks to one server):
:meth:`LeaseTable.check_server` refuses it, and a server that may evict any
key, before an instance takes part. Ids are validated before they go into a
key: an instance id or a stream id never contains ``|`` or braces.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from genesys_mux._extras import raise_if_extra_missing
from genesys_mux.errors import ClusterError, ClusterPermissionError, ConfigError

try:
    import redis.asyncio as aioredis
    import redis.exceptions as rexc
except ModuleNotFoundError as exc:  # pip install 'genesys-mux[redis]'
    raise_if_extra_missing(exc, "a cluster (leases in Redis)")
    raise

from genesys_mux.state.redis_server import (
    CLUSTER,
    is_permission_error,
    permission_problem,
    server_problem,
)

__all__ = ["Lease", "LeaseTable", "MemberInfo"]

_ERRORS = (rexc.RedisError, OSError, TimeoutError)
_T = TypeVar("_T")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")

# KEYS: lease, fence. ARGV: instance, ttl ms.
# Returns the token held (a new one when the lease was free), or 0 when
# another instance holds it. A new token is the counter plus one, and at
# least the server's clock in milliseconds: should the counter be lost (a
# restart without persistence, a flush), the next token is still larger
# than every one given out before, which the sinks and the state store
# remember. Written with %d: Lua's default formatting of a number that
# large is an exponent.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder then
  local sep = string.find(holder, '|', 1, true)
  if string.sub(holder, 1, sep - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(holder, sep + 1))
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if token < floor then
  token = floor
  redis.call('SET', KEYS[2], string.format('%d', token))
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. string.format('%d', token), 'PX', ARGV[2])
return token
"""

# KEYS: leases. ARGV: instance, ttl ms, then the token expected for each key.
# Returns, per key, 1 when it was still ours (and is extended), else 0.
_RENEW = """
local held = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] .. '|' .. ARGV[i + 2] then
    redis.call('PEXPIRE', key, ARGV[2])
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
"""

# KEYS: ready. ARGV: instance, ttl ms. Says this instance stands by, unless
# another one does. Returns 1 when the key is ours (promised or not), else 0.
_SIGNAL_READY = """
local value = redis.call('GET', KEYS[1])
if not value or value == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if value == ARGV[1] .. '|promised' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: ready, lease. ARGV: successor, holder, token, ttl ms. The holder's
# promise: only while the lease is still its own and the successor still ready.
_PROMISE = """
if redis.call('GET', KEYS[2]) ~= ARGV[2] .. '|' .. ARGV[3] then return 0 end
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] or value == ARGV[1] .. '|promised' then
  redis.call('SET', KEYS[1], ARGV[1] .. '|promised', 'PX', ARGV[4])
  return 1
end
return 0
"""

# KEYS: ready. ARGV: instance, ttl ms. Withdraws this instance's readiness
# unless the stream was promised to it: 1 withdrawn (or not ours), 0 promised
# to it (the promise is kept for one more TTL, the holder may still be at it).
_WITHDRAW_READY = """
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] .. '|promised' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
if value == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: ready. ARGV: instance. Clears this instance's readiness, promised or not.
_CLEAR_READY = """
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] or value == ARGV[1] .. '|promised' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lease. ARGV: instance, token. Deletes the lease only if it is ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] .. '|' .. ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class MemberInfo(msgspec.Struct, frozen=True):
    """What an instance says about itself in its member key."""

    id: str
    #: The OAuth client its channels count against (a name, never a secret).
    client: str
    #: When it joined (Unix).
    since: float
    #: Its address for humans (host name and pid).
    host: str = ""
    #: How many plain topics each stream it carries or stands by for
    #: subscribes: what the placement weighs those streams by, when more
    #: than their configuration says (see ``cluster.member.stream_weights``).
    topics: dict[str, int] = msgspec.field(default_factory=dict)
    #: How many queues the org has, as it last listed them (None: never),
    #: and when (Unix time): the weight of an all-queues stream that nobody
    #: carries, taken from the member that listed them last.
    queues: int | None = None
    queues_at: float = 0.0
    #: The channels it needs (one per slot, two while a slot rotates): its
    #: part of its OAuth client's channels.
    channels: int = 0
    #: The streams its configuration has, each with the weight that
    #: configuration gives it (None: a release before this field, known to
    #: have only what it carries). A stream is placed only on a member that
    #: has it: during a rolling deploy that adds one, the members still on
    #: the old configuration cannot carry it. The weights make every member
    #: weigh a stream alike, including those that lack it.
    streams: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A stream held by an instance, with the fencing token of that acquisition."""

    stream_id: str
    holder: str
    token: int
    #: Milliseconds left before it expires, when read from Redis (-1: unknown).
    ttl_ms: int = -1


_MEMBER = msgspec.json.Decoder(MemberInfo)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def checked_id(kind: str, value: str) -> str:
    """``value`` if it is safe in a key and a lease value, else a ConfigError saying why."""
    if _ID.fullmatch(value) is None:
        raise ConfigError(
            f"{kind} {value!r} must be 1-128 letters, digits or . _ - : @, starting with a "
            "letter or digit"
        )
    return value


class LeaseTable:
    """One instance's view of a cluster's members and leases in Redis.

    ``client`` is a redis-py asyncio client (the caller owns it); keys go
    under ``{prefix}cluster:{{{cluster}}}:``. ``reader`` is a table that
    only looks (``cluster status``): its errors do not speak of forwarding.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        cluster: str,
        instance: str,
        lease_ttl_s: float = 10.0,
        prefix: str = "genesys-mux:",
        where: str = "redis",
        reader: bool = False,
    ) -> None:
        self._redis = client
        #: A reader (``cluster status``) takes part in nothing: a failure
        #: says what to check, not what a member does about it.
        self.reader = reader
        self.cluster = checked_id("cluster name", cluster)
        self.instance = checked_id("instance id", instance)
        if not lease_ttl_s > 0:
            raise ConfigError("lease_ttl_s must be positive")
        self.lease_ttl_ms = max(1, round(lease_ttl_s * 1000))
        #: Names the server in messages (never with a password).
        self.where = where
        self._base = f"{prefix}cluster:{{{cluster}}}:"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._signal_ready = client.register_script(_SIGNAL_READY)
        self._promise = client.register_script(_PROMISE)
        self._withdraw_ready = client.register_script(_WITHDRAW_READY)
        self._clear_ready = client.register_script(_CLEAR_READY)

    # -- keys --------------------------------------------------------------------

    def _lease(self, stream_id: str) -> str:
        return f"{self._base}lease:{stream_id}"

    def _fence(self, stream_id: str) -> str:
        return f"{self._base}fence:{stream_id}"

    def _ready(self, stream_id: str) -> str:
        return f"{self._base}ready:{stream_id}"

    def _member(self, instance: str) -> str:
        return f"{self._base}member:{instance}"

    # -- members -----------------------------------------------------------------

    async def heartbeat(self, info: MemberInfo) -> None:
        """Say this instance is alive for one more lease TTL."""
        if info.id != self.instance:
            raise ConfigError(f"member info for {info.id!r} given to instance {self.instance!r}")
        await self._call(
            "heartbeat",
            self._redis.set(self._member(info.id), msgspec.json.encode(info), px=self.lease_ttl_ms),
        )

    async def clock_reading(self) -> tuple[float, float]:
        """How far this host's clock is ahead of Redis's (the members' shared clock), and how sure.

        Read with ``TIME`` between two readings of this host's clock, their
        midpoint taken as the moment Redis read its own: ``(offset, round
        trip)``, the offset right to within half the round trip, in seconds.
        """
        before = time.time()
        seconds, microseconds = await self._call("read the clock", self._redis.time())
        after = time.time()
        return (before + after) / 2 - (int(seconds) + int(microseconds) / 1e6), after - before

    async def clock_offset(self, max_round_trip_s: float = 0.1) -> float | None:
        """:meth:`clock_reading`'s offset, or None when its round trip took longer than allowed."""
        offset, round_trip = await self.clock_reading()
        return offset if round_trip <= max_round_trip_s else None

    async def leave(self) -> None:
        """Stop being a member at once (a planned stop)."""
        await self._call("leave", self._redis.delete(self._member(self.instance)))

    async def members(self) -> list[MemberInfo]:
        """Every live member, sorted by id."""
        pattern = self._member("*")
        keys = await self._call("list members", self._scan(pattern))
        values = await self._call("list members", self._redis.mget(keys)) if keys else []
        found = []
        for value in values:
            if value is None:
                continue  # expired meanwhile
            try:
                found.append(_MEMBER.decode(value))
            except msgspec.DecodeError:
                continue  # not ours to read; an instance of another release says who it is
        return sorted(found, key=lambda m: m.id)

    # -- leases ------------------------------------------------------------------

    async def acquire(self, stream_id: str) -> Lease | None:
        """Take the stream's lease if it is free (or already ours); None if another holds it."""
        checked_id("stream id", stream_id)
        token = await self._call(
            f"acquire the lease of {stream_id}",
            self._acquire(
                keys=[self._lease(stream_id), self._fence(stream_id)],
                args=[self.instance, self.lease_ttl_ms],
            ),
        )
        if not token:
            return None
        return Lease(stream_id, self.instance, int(token), self.lease_ttl_ms)

    async def renew(self, leases: Sequence[Lease]) -> list[Lease]:
        """Extend the leases still ours; returns those that were lost (expired or taken)."""
        if not leases:
            return []
        held = await self._call(
            "renew leases",
            self._renew(
                keys=[self._lease(lease.stream_id) for lease in leases],
                args=[self.instance, self.lease_ttl_ms, *(lease.token for lease in leases)],
            ),
        )
        return [lease for lease, ok in zip(leases, held, strict=True) if not int(ok)]

    async def release(self, lease: Lease) -> bool:
        """Give the lease up at once (a planned handover); False if it was no longer ours."""
        done = await self._call(
            f"release the lease of {lease.stream_id}",
            self._release(keys=[self._lease(lease.stream_id)], args=[self.instance, lease.token]),
        )
        return bool(int(done))

    async def holders(self, stream_ids: Iterable[str]) -> dict[str, str]:
        """Which instance holds each of these streams now, in one MGET (every round's read)."""
        ids = list(stream_ids)
        if not ids:
            return {}
        values = await self._call("read leases", self._redis.mget([self._lease(s) for s in ids]))
        return {
            s: _text(v).rpartition("|")[0]
            for s, v in zip(ids, values, strict=True)
            if v is not None
        }

    async def leases(self, stream_ids: Iterable[str]) -> dict[str, Lease]:
        """Who holds each of these streams, with the token and time left (free ones left out).

        Two commands a stream: for ``cluster status``; a member's round uses
        :meth:`holders`.
        """
        ids = list(stream_ids)
        if not ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream_id in ids:
                pipe.get(self._lease(stream_id))
                pipe.pttl(self._lease(stream_id))
            answers = await self._call("read leases", pipe.execute())
        found: dict[str, Lease] = {}
        for i, stream_id in enumerate(ids):
            value, ttl = answers[2 * i], answers[2 * i + 1]
            if value is None:
                continue
            holder, _, token = value.decode().rpartition("|")
            found[stream_id] = Lease(stream_id, holder, int(token), int(ttl))
        return found

    async def signal_ready(self, stream_id: str) -> bool:
        """Say this instance stands by for the stream and can take it over.

        Renews the signal (and a promise made to it) for one lease TTL.
        False when another instance stands by for it already: the holder
        hands over to one member at a time, so this one is not ready yet.
        """
        ours = await self._call(
            f"signal readiness for {stream_id}",
            self._signal_ready(
                keys=[self._ready(stream_id)], args=[self.instance, self.lease_ttl_ms]
            ),
        )
        return bool(int(ours))

    async def promise(self, lease: Lease, successor: str) -> bool:
        """Promise the stream of ``lease`` (held here) to ``successor``, which is ready for it.

        From then on the successor keeps its standby and takes the stream
        once this instance lets go. False, with nothing changed, when the
        lease is no longer ours or the successor no longer ready: do not
        hand over then.
        """
        promised = await self._call(
            f"promise {lease.stream_id} to {successor}",
            self._promise(
                keys=[self._ready(lease.stream_id), self._lease(lease.stream_id)],
                args=[successor, self.instance, lease.token, self.lease_ttl_ms],
            ),
        )
        return bool(int(promised))

    async def withdraw_ready(self, stream_id: str) -> bool:
        """Take back this instance's readiness for the stream (it gives up its standby).

        False when the stream was promised to this instance: its holder is
        handing it over, so the standby must stay (and take the stream); the
        promise is then renewed for one lease TTL.
        """
        withdrawn = await self._call(
            f"withdraw readiness for {stream_id}",
            self._withdraw_ready(
                keys=[self._ready(stream_id)], args=[self.instance, self.lease_ttl_ms]
            ),
        )
        return bool(int(withdrawn))

    async def clear_ready(self, stream_id: str) -> None:
        """Forget this instance's readiness for the stream, promised or not (it took the stream)."""
        await self._call(
            f"clear readiness for {stream_id}",
            self._clear_ready(keys=[self._ready(stream_id)], args=[self.instance]),
        )

    async def ready_for(self, stream_ids: Iterable[str]) -> dict[str, str]:
        """Which instance, if any, stands by to take over each of these streams."""
        ids = list(stream_ids)
        if not ids:
            return {}
        values = await self._call("read readiness", self._redis.mget([self._ready(s) for s in ids]))
        return {
            s: _text(v).partition("|")[0] for s, v in zip(ids, values, strict=True) if v is not None
        }

    async def promised_here(self, stream_id: str) -> bool:
        """Whether the stream's holder promised it to this instance (it is handing it over)."""
        value = await self._call(
            f"read readiness for {stream_id}", self._redis.get(self._ready(stream_id))
        )
        return value is not None and _text(value) == f"{self.instance}|promised"

    async def fence(self, stream_id: str) -> int:
        """The stream's latest fencing token (0 if it was never leased)."""
        value = await self._call("read a fencing token", self._redis.get(self._fence(stream_id)))
        return int(value or 0)

    # -- the server --------------------------------------------------------------

    async def check_server(self, *, scripts: bool = True) -> None:
        """Check, before taking part, that this Redis can carry a cluster.

        A Redis Cluster, or a server that may evict any key, raises
        :class:`~genesys_mux.errors.ClusterError` saying so (the same checks
        as the state store's and the sink's); the scripts are loaded (unless
        ``scripts`` is False: a reader such as ``cluster status`` runs
        none), so that a user who may not run them is told now, by a
        :class:`~genesys_mux.errors.ClusterPermissionError`.
        """
        problem = await self._call(
            "check the server", server_problem(self._redis, CLUSTER, self.where)
        )
        if problem is not None:
            raise ClusterError(problem)
        if scripts:
            for script in (
                self._acquire,
                self._renew,
                self._release,
                self._signal_ready,
                self._promise,
                self._withdraw_ready,
                self._clear_ready,
            ):
                await self._call(
                    "load the cluster's scripts", self._redis.script_load(script.script)
                )

    # -- internals ---------------------------------------------------------------

    async def _scan(self, pattern: str) -> list[bytes]:
        return [key async for key in self._redis.scan_iter(match=pattern, count=500)]

    async def _call(self, what: str, call: Awaitable[_T]) -> _T:
        """Await ``call``; a Redis failure becomes a ClusterError naming the server and the step.

        A permission the user lacks is a :class:`~genesys_mux.errors.ClusterPermissionError`
        (a ClusterError too), saying what to grant: no retry fixes it.
        """
        try:
            return await call
        except _ERRORS as exc:
            if is_permission_error(exc):
                keys = f"{self._base}*"
                raise ClusterPermissionError(
                    permission_problem(exc, CLUSTER, self.where, keys, what)
                ) from exc
            consequence = (
                "nothing was changed; check that Redis runs there and that [cluster] names it"
                if self.reader
                else "this instance stops forwarding what it cannot prove it owns"
            )
            raise ClusterError(
                f"{self.where}: cannot {what} ({type(exc).__name__}: {exc}); {consequence}"
            ) from exc
