"""The public face: streams in, a trustworthy feed out, over as few channels as possible.

Theory of operation
-------------------
A :class:`Multiplexer` owns one aiohttp session, one token provider, one
REST client and one :class:`~genesys_mux.net.connection.ChannelPool`.

* Adding or removing a stream recomputes the union of every stream's topics
  and hands it to the pool, which applies only the difference.
* A stream without a queue or user covers every queue of the org; the
  queue list is read from the routing API and refreshed periodically, so
  new queues are subscribed and deleted ones dropped, incrementally.
* One dispatcher task reads the pool's notifications. For each one it
  computes the :class:`~genesys_mux.core.snapshot.EventFacts` once, then
  offers the notification to every stream whose topics include it.
  Offering never blocks: each stream has its own bounded buffer and
  overflow policy, so a slow consumer of one stream never holds back
  another.
* Every outage the pool reports becomes a :class:`Gap` in each stream whose
  topics it touched.
* Consumers read one stream (:meth:`Multiplexer.stream`), all streams
  merged by priority (:meth:`Multiplexer.events`), or register callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec

from genesys_mux.config import (
    StreamConfig,
    filter_topics,
    media_for,
    needs_all_queues,
    parse_stream,
    queue_constraint,
    raw_topics,
    requires_sms,
)
from genesys_mux.core.backoff import Backoff, Retries
from genesys_mux.core.channel import Outage
from genesys_mux.core.checkpoint import StreamCheckpoint, fingerprint
from genesys_mux.core.events import (
    Backfilled,
    ControlEvent,
    DeadLettered,
    Fatal,
    GapReported,
    GapUndelivered,
    QueuesRefreshed,
    StateStoreFailed,
    StreamActivated,
    StreamAdded,
    StreamRemoved,
    StreamStateReset,
    TokenRefreshed,
    TopicRejected,
)
from genesys_mux.core.limits import PLATFORM
from genesys_mux.core.memory import LOG_LIMIT, KeyMemory
from genesys_mux.core.snapshot import EventFacts, event_facts
from genesys_mux.core.streams import (
    DeadLetter,
    Gap,
    PriorityMerge,
    Stream,
    StreamEvent,
    StreamRules,
)
from genesys_mux.core.topics import TopicFamily, parse_topic
from genesys_mux.errors import (
    AuthenticationError,
    ConfigError,
    FencedStateError,
    GenesysMuxError,
    InvalidStateError,
    InvalidTopicError,
    StateError,
    TransportError,
)
from genesys_mux.net.auth import TokenProvider
from genesys_mux.net.connection import ChannelPool, InboundNotification, PoolSettings
from genesys_mux.net.rest import Rejection, RestClient
from genesys_mux.regions import endpoints_for
from genesys_mux.sinks.dlq import DeadLetterQueue, JsonlDeadLetterQueue, MemoryDeadLetterQueue
from genesys_mux.state import StateStore, open_store

__all__ = ["DEFAULT_DLQ_LIMIT", "Multiplexer", "StreamStats"]

#: Dead letters the in-memory default queue holds; further ones are counted.
DEFAULT_DLQ_LIMIT = 10_000

log = logging.getLogger("genesys_mux.multiplexer")

#: What a settler takes: a sequence number, or a gap.
_T = TypeVar("_T")

Item = StreamEvent | Gap
EventCallback = Callable[[StreamEvent], Awaitable[None] | None]
GapCallback = Callable[[Gap], Awaitable[None] | None]
#: Remembered keys built per slice of a checkpoint, between which events go through.
_CHECKPOINT_SLICE = 2000
#: Seconds the back-fill query reaches past each side of a gap. A gap's ends
#: are receive times on this host; the analytics query compares them with
#: the platform's timestamps, which are earlier by the notification's
#: delivery time and apart by the clocks' skew: a call that ended just
#: before the gap, and whose end arrived inside it, would be missed.
_BACKFILL_MARGIN_S = 10.0
#: Records cleared per slice of the memory of a stream that left (see _forget_left).
_SWEEP_SLICE = 5000
#: A change of wall minus monotonic time below this is the noise of reading
#: two clocks, not a step of the wall clock.
_CLOCK_STEP_MIN_S = 0.01
#: A step of this host's wall clock beyond this many seconds is logged.
_CLOCK_STEP_WARNING_S = 1.0
_CALLBACKS = "genesys-mux-callbacks"
_GAP_CALLBACKS = "genesys-mux-gap-callbacks"
_DISPATCH = "genesys-mux-dispatch"
_STOP = "genesys-mux-stop"
#: Says how a Multiplexer runs once (see start and stop).
_RUNS_ONCE = "a Multiplexer runs once; make a new one"


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A snapshot of one stream's counters and latency."""

    stream_id: str
    priority: int
    topics: int
    buffered: int
    received: int
    delivered: int
    filtered: int
    duplicates: int
    stale: int
    overflowed: int
    dead_lettered: int
    gaps: int
    latency_p50_s: float | None
    latency_p99_s: float | None
    rejected_topics: tuple[str, ...]


class _StreamState:
    """A stream plus what the multiplexer keeps about it."""

    def __init__(self, config: StreamConfig, stream: Stream) -> None:
        self.config = config
        self.stream = stream
        #: The stream's buffer (``stream.items``): is anything waiting?
        self.items = stream.items
        self.topics: frozenset[str] = frozenset()
        #: The topics that come from the filter: client-side rules apply to these.
        self.filter_topics: frozenset[str] = frozenset()
        self.ready = asyncio.Event()
        self.latencies: list[float] = []
        #: Names what the stream carries, to tell whether saved state is its own.
        self.fingerprint = fingerprint(config.model_dump_json(include={"filter", "topics"}))
        #: When the stream was added (its watermark before it has seen anything).
        self.added_at = time.time()
        #: (next sequence, watermark) of the last checkpoint written.
        self.saved: tuple[int, float | None] | None = None
        #: A reader settles explicitly (``stream(settle=False)``): a stop waits for it.
        self.settles_explicitly = False
        #: While on standby (see ``add_stream``): the notifications received,
        #: kept raw until the stream is activated. None once active.
        self.standby: deque[InboundNotification] | None = None
        #: Standby notifications pushed out by the bound (the activation's gap covers them).
        self.standby_dropped = 0
        #: When the standby's topics were known to be subscribed: kept from then on.
        self.standby_since: float | None = None
        #: Being handed over: readers stop taking from it.
        self.leaving = False
        #: The fencing token its checkpoints carry (a cluster lease's; 0 outside one).
        self.fence = 0
        #: A newer owner claimed the stream in the store: its checkpoints stop here.
        self.fenced_off = False
        #: Its gaps not yet told to every gap callback: each holds the
        #: watermark at its start, as a gap not done with does.
        self.untold: list[Gap] = []


class Multiplexer:
    """Many interaction streams over a few Notifications-API WebSockets.

    Credentials default to ``GENESYSCLOUD_OAUTHCLIENT_ID`` /
    ``GENESYSCLOUD_OAUTHCLIENT_SECRET`` and the region to
    ``GENESYSCLOUD_REGION``; ``base_url`` points everything at an emulator
    instead. ``credentials_from`` names where the id and secret were found
    (``genesys-mux run``: a secrets file, say), for the error that says
    they were refused; by default, where this looked for each.
    ``buffer_threshold`` is the buffer size of streams that do not set their
    own. ``dlq`` is a :class:`DeadLetterQueue` or a path for a
    JSON-lines file; by default dead letters are kept in memory
    (:attr:`dead_letters`, at most :data:`DEFAULT_DLQ_LIMIT`, the rest counted
    in ``stats()["dlq"]``): the library writes no file unless asked.
    """

    def __init__(
        self,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        region: str | None = None,
        base_url: str | None = None,
        max_streams: int = 10,
        buffer_threshold: int = 500,
        heartbeat_timeout: float = 75.0,
        pong_timeout: float = 10.0,
        subscription_check_s: float | None = 300.0,
        topics_per_channel: int = PLATFORM.topics_per_channel,
        max_channels: int = PLATFORM.channels_per_client,
        parallel_rotations: bool = True,
        queue_refresh_s: float = 300.0,
        requests_per_minute: int = PLATFORM.requests_per_minute,
        dlq: DeadLetterQueue | str | os.PathLike[str] | None = None,
        backfill: bool = False,
        backfill_limit: int = 200,
        pool_settings: PoolSettings | None = None,
        session: aiohttp.ClientSession | None = None,
        state: StateStore | str | os.PathLike[str] | None = None,
        checkpoint_interval_s: float = 1.0,
        credentials_from: str | None = None,
    ) -> None:
        if credentials_from is None:
            # Each of the two from where it was found, for the error that
            # says they were refused (ENVIRONMENT_CREDENTIALS when both were).
            credentials_from = (
                f"{'client_id' if client_id else 'GENESYSCLOUD_OAUTHCLIENT_ID'} and "
                f"{'client_secret' if client_secret else 'GENESYSCLOUD_OAUTHCLIENT_SECRET'}"
            )
        client_id = client_id or os.environ.get("GENESYSCLOUD_OAUTHCLIENT_ID")
        client_secret = client_secret or os.environ.get("GENESYSCLOUD_OAUTHCLIENT_SECRET")
        if base_url is None:
            region = region or os.environ.get("GENESYSCLOUD_REGION")
        if not client_id or not client_secret:
            raise ConfigError(
                "no OAuth client credentials: pass client_id and client_secret, or set "
                "GENESYSCLOUD_OAUTHCLIENT_ID and GENESYSCLOUD_OAUTHCLIENT_SECRET"
            )
        if base_url is None and region is None:
            raise ConfigError(
                "no region: pass region (e.g. 'mypurecloud.com' or 'eu_west_1') or set "
                "GENESYSCLOUD_REGION; or pass base_url to use the emulator"
            )
        if max_streams < 1 or buffer_threshold < 1:
            raise ConfigError("max_streams and buffer_threshold must be at least 1")
        if not checkpoint_interval_s > 0:
            raise ConfigError("checkpoint_interval_s must be positive")
        self._endpoints = endpoints_for(
            region=region if base_url is None else None, base_url=base_url
        )
        self._client_id = client_id
        self._secret = client_secret
        self._credentials_from = credentials_from
        self.max_streams = max_streams
        self.buffer_threshold = buffer_threshold
        self.queue_refresh_s = queue_refresh_s
        self.backfill_enabled = backfill
        self.backfill_limit = backfill_limit
        self._requests_per_minute = requests_per_minute
        self._pool_settings = pool_settings or PoolSettings(
            heartbeat_timeout_s=heartbeat_timeout,
            pong_timeout_s=pong_timeout,
            subscription_check_s=subscription_check_s,
            topics_per_channel=topics_per_channel,
            max_channels=max_channels,
            parallel_rotations=parallel_rotations,
        )
        if isinstance(dlq, DeadLetterQueue):
            self._dlq: DeadLetterQueue = dlq
        elif dlq is None:
            self._dlq = MemoryDeadLetterQueue(limit=DEFAULT_DLQ_LIMIT)
        else:
            self._dlq = JsonlDeadLetterQueue(Path(dlq))
        self._own_session = session is None
        self._session = session
        #: Where streams keep their checkpoints (see :mod:`genesys_mux.state`).
        self.state_store = open_store(state)
        self.checkpoint_interval_s = checkpoint_interval_s
        # With no store asked for, nothing outlives the process: no point
        # in paying for periodic checkpoints.
        self._checkpointing = state is not None
        #: Why the last checkpoint failed, while the store keeps failing (for ``/readyz``).
        self.state_failure: str | None = None
        # Streams whose saved state this run has read (at their first add or
        # an activation): added again, they continue from their own state in
        # this process, not from the store's. Read per stream, not all at
        # start: a cluster member never adds most of the streams in the
        # store, and held each one's whole memory for nothing.
        self._consulted: set[str] = set()
        # The next sequence of each stream this run removed or handed on: a
        # stream added again numbers on from it, whatever else it restores
        # (its checkpoint was taken at its first add, or its filter changed),
        # so that no (epoch, sequence) of this run names two events.
        self._numbered: dict[str, int] = {}
        # See clock_offset: the offset, and wall minus monotonic time when it
        # was measured (None: never, outside a cluster).
        self._clock_offset = 0.0
        self._clock_anchor: float | None = None
        self._clock_step_told = False
        # The last checkpoint this process wrote of each stream, without its
        # memory: numbering and watermark, for a store that lost it (a Redis
        # restarted without its data) while this process carried the stream.
        self._written: dict[str, StreamCheckpoint] = {}
        #: Receive time of the last notification dispatched: everything
        #: received before it has been offered to the streams.
        self._dispatched_at: float | None = None
        self._streams: dict[str, _StreamState] = {}
        self._by_topic: dict[str, tuple[tuple[_StreamState, bool], ...]] = {}
        self._queue_ids: list[str] | None = None
        #: The org's queue count as last listed, for whatever reason (None:
        #: never), and when (Unix time).
        self._queue_count: int | None = None
        self._queues_listed_at: float | None = None
        #: A listing of the queues under way, which every caller joins, and how many wait for it.
        self._listing: asyncio.Future[list[str]] | None = None
        self._listing_waiters = 0
        self._merge = PriorityMerge()
        # One record per remembered key, shared by every stream that sees it.
        # Without a store no checkpoint is taken but by hand: no log of
        # sightings for incremental ones (see KeyMemory).
        self._key_memory = KeyMemory(log_limit=LOG_LIMIT if self._checkpointing else 0)
        self._anything = asyncio.Event()
        self._emptied = asyncio.Event()
        self._settled = asyncio.Event()
        # One checkpoint at a time: a periodic one and a handover's must not
        # interleave their builds and writes of the same stream.
        self._checkpoint_lock = asyncio.Lock()
        self._change_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        # The org's queue ids (lower case) as last listed for a stream's
        # check that its queue exists (see _say_if_no_such_queue).
        self._queues_seen: frozenset[str] | None = None
        # What the final stop awaits before its last checkpoint (see stop()).
        self._before_checkpoint: Callable[[], Awaitable[None]] | None = None
        self._backfills: set[asyncio.Task[None]] = set()
        self._event_callbacks: list[EventCallback] = []
        self._gap_callbacks: list[GapCallback] = []
        #: Who takes the items: "callbacks" (on_event) or "readers"
        #: (events(), stream()); never both, as each item is handed out once.
        self._consumers: str | None = None
        #: Gaps reported and not yet told to the gap callbacks, oldest first.
        self._untold: deque[tuple[_StreamState, Gap]] = deque()
        self._gap_reported = asyncio.Event()
        #: Set when a callback task ends (a draining stop waits for them).
        self._callbacks_ended = asyncio.Event()
        self._stopping = False
        self._stopped = False
        #: start() was called (and has not failed before opening anything).
        self._start_begun = False
        #: The one stop in progress (or done): every stop() call awaits it.
        self._stopper: asyncio.Task[None] | None = None
        #: Loop time until which the stop waits for consumers; a later
        #: stop() may bring it forward, and sets _stop_wake to say so.
        self._stop_deadline = math.inf
        self._stop_wake = asyncio.Event()
        #: Tasks awaiting the stop: it must not wait for, or cancel, those
        #: among its own (a callback that called stop()).
        self._stop_callers: set[asyncio.Task[Any]] = set()
        #: This run's id, on every event and record: a crash may give a
        #: sequence number again in the next run (see "Restarts and deploys" in
        #: the docs), and the epoch says which run it is from.
        self.epoch = uuid.uuid4().hex[:16]
        #: The error that stopped the feed for good (refused credentials).
        self._failure: AuthenticationError | None = None
        #: True once :meth:`start` has returned (it waits for a first token).
        self.started = False
        self._draining = False
        self.pool: ChannelPool | None = None
        self.rest: RestClient | None = None
        self.tokens: TokenProvider | None = None
        #: Topic → rejection, for topics the platform refused.
        self.rejections: dict[str, Rejection] = {}
        #: Called with every control-plane fact (see :mod:`genesys_mux.core.events`).
        self.on_control: list[Callable[[ControlEvent], None]] = []
        #: Called with each event as it is handed to a consumer (latency and
        #: age are set by then). Metrics hook in here; keep it cheap.
        self.on_delivered: list[Callable[[StreamEvent], None]] = []

    def __repr__(self) -> str:
        return f"Multiplexer(client_id={self._client_id!r}, api={self._endpoints.api!r})"

    @property
    def clock_offset(self) -> float:
        """How far this host's clock is ahead of the cluster's shared clock (its Redis's), in s.

        A cluster member measures it every round, and sets it here. It is
        written in each checkpoint, so that a next owner on another host
        reckons a failover gap from the same instant (see
        :class:`~genesys_mux.core.checkpoint.StreamCheckpoint`). 0 outside a
        cluster.
        """
        return self._clock_offset

    @clock_offset.setter
    def clock_offset(self, value: float) -> None:
        self._clock_offset = value
        # Where wall time stood against monotonic time when it was measured:
        # a step of the wall clock since (set by hand, or by a time daemon
        # that steps rather than slews) changes the difference, a slew does
        # not (both clocks are slewed alike).
        self._clock_anchor = time.time() - time.monotonic()
        self._clock_step_told = False

    def _clock_step(self) -> float:
        """How far this host's wall clock was stepped since the offset was measured, in s."""
        if self._clock_anchor is None:
            return 0.0
        step = time.time() - time.monotonic() - self._clock_anchor
        if abs(step) < _CLOCK_STEP_MIN_S:
            return 0.0
        if abs(step) > _CLOCK_STEP_WARNING_S and not self._clock_step_told:
            self._clock_step_told = True
            log.warning(
                "this host's clock was stepped by %+.1f s since its offset from the cluster's "
                "was measured: failover gaps are reckoned on the safe side until the next "
                "measurement; keep the clock slewed, not stepped (NTP)",
                step,
            )
        return step

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> Multiplexer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop(drain=False)

    async def start(self) -> None:
        """Open the session, get a first token and start the dispatcher.

        Raises :class:`~genesys_mux.errors.AuthenticationError` when the
        platform refuses the credentials, and
        :class:`~genesys_mux.errors.StateError` when the state store cannot
        be used (nothing is changed in it then). An unreachable login host
        is retried (a warning per attempt) and then left to the channels,
        which keep retrying. A start that fails or is cancelled leaves
        nothing open.

        A Multiplexer starts once: a second call raises
        :class:`~genesys_mux.errors.InvalidStateError` ("already running"),
        and so does a call after :meth:`stop`, or after a start that failed
        or was cancelled once the store was read (it stopped what it had
        opened). Only a start refused by the state store may be tried again.
        """
        if self._stopper is not None:
            raise InvalidStateError(
                "the multiplexer is not running: it was stopped (by stop(), or by a start "
                f"that failed), and {_RUNS_ONCE}"
            )
        if self._start_begun:
            raise InvalidStateError(
                "the multiplexer is already running: start() was called already "
                "(`async with Multiplexer(...)` calls it)"
            )
        self._start_begun = True
        try:
            # The state store first: one that cannot be opened (or read: its
            # schema is checked) stops us before anything is subscribed. Each
            # stream's state is read when it is added (see _install).
            await self.state_store.open()
        except BaseException:
            # Nothing else is open yet: the start may be tried again.
            self._start_begun = False
            raise
        if self._session is None:
            # trust_env: HTTPS_PROXY, NO_PROXY and .netrc as other HTTP tools
            # honour them; corporate networks often reach the cloud only so.
            self._session = aiohttp.ClientSession(trust_env=True)
        self.tokens = TokenProvider(
            self._session,
            self._endpoints,
            self._client_id,
            self._secret,
            credentials_from=self._credentials_from,
        )
        self.tokens.on_refresh.append(
            lambda token: self._report(TokenRefreshed(round(token.lifetime_s)))
        )
        self.rest = RestClient(
            self._session,
            self._endpoints,
            self.tokens,
            requests_per_minute=self._requests_per_minute,
        )
        # Every body is decoded here anyway (event_facts): the pool need not
        # scan each one first to check it; _offer has a broken one rechecked.
        self.pool = ChannelPool(
            self._session, self.rest, self.tokens, self._pool_settings, check_bodies=False
        )
        self.pool.on_outage.append(self._outage)
        self.pool.on_rejection.append(self._rejected)
        self.pool.on_control.append(self._report)
        self.pool.on_failure.append(self._failed)
        self._tasks.append(asyncio.create_task(self._dispatch(), name=_DISPATCH))
        self._tasks.append(asyncio.create_task(self._refresh_queues(), name="genesys-mux-queues"))
        if self._checkpointing:
            self._tasks.append(
                asyncio.create_task(self._checkpoint_periodically(), name="genesys-mux-checkpoints")
            )
        # Refused credentials are fatal: say so here, not after the first
        # stream quietly fails to subscribe. A login host that cannot be
        # reached is not: the channels keep retrying, and log each retry.
        try:
            await self.tokens.token()
        except (AuthenticationError, asyncio.CancelledError):
            # Refused, or cancelled while the first login was still being
            # retried (a stop, a start-up deadline): no ``__aexit__`` follows
            # a failed ``__aenter__``, so close what was opened here (the
            # session, the tasks, the state store) before the error goes on.
            await self.stop(drain=False)
            raise
        except TransportError as exc:
            log.warning("no OAuth token yet (%s); the channels will keep retrying", exc)
        self.started = True

    async def stop(
        self,
        drain: bool = True,
        timeout_s: float = 30.0,
        *,
        before_checkpoint: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Stop receiving; with ``drain``, give consumers ``timeout_s`` to empty the buffers.

        First every socket is unsubscribed and drained (ping, pong): what the
        platform had already sent is read and goes through the streams. A
        socket that cannot be drained within ``pong_timeout`` (at most
        ``timeout_s``) leaves a final :class:`Gap` (reason ``stopped``) from
        its last frame read. Whatever is still buffered at the end goes to
        the dead-letter queue (reason ``stopped``): nothing is dropped silently.
        Readers that settle explicitly (``stream(settle=False)``, as sink
        runners do) get the same ``timeout_s`` to settle what they took, so
        that the final checkpoint comes after their acknowledgements.

        ``before_checkpoint`` is awaited once that time is up, before the
        buffers are dead-lettered and the final checkpoint is written: the
        place for a consumer to finish or give up what it holds (a sink
        runner's batch in hand), so that the checkpoint counts it settled
        rather than leaving the next run to number it again.

        There is one stop: a call while one is in progress (a signal
        handler's, then leaving ``async with``) waits for it to end, and
        brings its deadline for consumers forward to its own (``drain=False``:
        now). A call once stopped returns at once. A caller that is cancelled
        stops waiting; the stop itself goes on.
        """
        if before_checkpoint is not None and self._before_checkpoint is None:
            self._before_checkpoint = before_checkpoint
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s if drain else 0.0)
        if deadline < self._stop_deadline:
            self._stop_deadline = deadline
            self._stop_wake.set()
        if self._stopper is None:
            self._stopper = asyncio.create_task(self._stop(timeout_s), name=_STOP)
        stopper = self._stopper
        if stopper.done():
            return
        caller = asyncio.current_task()
        if caller is not None:
            self._stop_callers.add(caller)
            # The stop's waits look again: it must not wait for this caller.
            self._stop_wake.set()
        try:
            # Shielded: a caller cancelled while it waits (a start-up deadline,
            # a second Ctrl-C) must not leave the session and the store half closed.
            await asyncio.shield(stopper)
        finally:
            if caller is not None:
                self._stop_callers.discard(caller)

    async def _stop(self, timeout_s: float) -> None:
        """The stop itself, in a task of its own (see :meth:`stop`)."""
        # No new back-fills or queue refreshes; the dispatcher keeps running
        # while the sockets are drained, so what they still hold is delivered.
        self._draining = True
        side = [
            t for t in self._tasks if t.get_name() not in (_CALLBACKS, _GAP_CALLBACKS, _DISPATCH)
        ] + list(self._backfills)
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        if self.pool is not None and self.running:
            bound = min(timeout_s, self._pool_settings.pong_timeout_s)
            for outage in await self.pool.drain(bound):
                # Frames that could not be read before the stop: a final gap.
                self._outage(outage)
            await self.pool.flushed(bound)
        self._stopping = True
        intake = [t for t in self._tasks if t.get_name() == _DISPATCH]
        for task in intake:
            task.cancel()
        await asyncio.gather(*intake, return_exceptions=True)
        if self.pool is not None:
            await self.pool.close()
        if self.tokens is not None:
            # A token request under way is shielded from its callers: a
            # start cancelled during its first login leaves one retrying.
            await self.tokens.close()
        # Wake every reader: iterators end once their buffers are empty.
        self._anything.set()
        self._gap_reported.set()
        for state in self._streams.values():
            state.ready.set()
        callbacks = [t for t in self._tasks if t.get_name() in (_CALLBACKS, _GAP_CALLBACKS)]

        def emptied() -> bool:
            # An event callback awaiting this stop cannot take what is left:
            # no point waiting for it to (that is dead-lettered below).
            stuck = any(t.get_name() == _CALLBACKS for t in self._stop_callers)
            return stuck or not self._buffered()

        await self._until_deadline(emptied, self._emptied)
        # Readers that settle explicitly (sink runners) still hold what
        # they took: the final checkpoint waits for their acknowledgements,
        # so that the next run's restart gap does not repeat them.
        await self._until_deadline(lambda: not self._unsettled(), self._settled)
        # The callbacks finish what they were given (the last event's, the
        # last gaps'): their tasks end by themselves once nothing is left,
        # but for one awaiting this stop, which ends once it returns.
        await self._until_deadline(
            lambda: all(t.done() or t in self._stop_callers for t in callbacks),
            self._callbacks_ended,
        )
        # A callback that called stop() waits for it: cancelling it would
        # break its own wait (it ends by itself once its callback returns).
        ending = [t for t in self._tasks if t not in self._stop_callers]
        for task in ending:
            task.cancel()
        await asyncio.gather(*ending, return_exceptions=True)
        self._tasks.clear()
        if self._before_checkpoint is not None:
            try:
                await self._before_checkpoint()
            except Exception:
                log.exception("finishing the consumers before the last checkpoint failed")
        for state in self._streams.values():
            state.stream.flush_to_dead_letters("stopped")
        # Everything is settled now (delivered or dead-lettered): the last
        # checkpoint lets the next run continue from here.
        if self._checkpointing:
            try:
                await self._checkpoint_all()
            except StateError as exc:
                self._report(StateStoreFailed(self.state_store.name, str(exc)))
        await self.state_store.close()
        self._stopped = True
        if isinstance(self._dlq, JsonlDeadLetterQueue):
            self._dlq.close()
        if self._own_session and self._session is not None:
            await self._session.close()

    async def _until_deadline(self, done: Callable[[], bool], signal: asyncio.Event) -> None:
        """Wait, woken by ``signal``, until ``done()`` or the stop's deadline for consumers.

        A later :meth:`stop` may bring the deadline forward; it sets
        ``_stop_wake`` so that the wait looks at it again.
        """
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before looking: a change after the look sets them again.
            signal.clear()
            self._stop_wake.clear()
            remaining = self._stop_deadline - loop.time()
            if done() or remaining <= 0:
                return
            waits = [
                asyncio.ensure_future(signal.wait()),
                asyncio.ensure_future(self._stop_wake.wait()),
            ]
            try:
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
                await asyncio.gather(*waits, return_exceptions=True)

    def _refuse_unless_running(self) -> None:
        """InvalidStateError unless started and not stopping (for calls that need the pool)."""
        if self._stopper is not None:
            if self._stopper.done():
                raise InvalidStateError(
                    f"the multiplexer is not running: it was stopped, and {_RUNS_ONCE}"
                )
            raise InvalidStateError(
                f"the multiplexer is not running: it is stopping, and {_RUNS_ONCE}"
            )
        if self.pool is None:
            raise InvalidStateError(
                "the multiplexer is not started: call `await mux.start()` first, "
                "or use it as `async with Multiplexer(...) as mux:`"
            )

    def _buffered(self) -> bool:
        return any(len(s.stream) for s in self._streams.values())

    def _unsettled(self) -> bool:
        return any(
            s.settles_explicitly and s.stream.unsettled_since() is not None
            for s in self._streams.values()
        )

    # -- streams --------------------------------------------------------------

    async def add_stream(
        self, config: StreamConfig | Mapping[str, Any], *, standby: bool = False
    ) -> list[Rejection]:
        """Add a stream; returns the topics of it the platform refused (others carry on).

        With ``standby`` the stream's topics are subscribed but nothing is
        delivered: what arrives is kept, raw (up to the stream's buffer
        size, the oldest pushed out), until :meth:`activate`. This is the
        first half of a make-before-break handover between two processes:
        the next owner subscribes while the current one still delivers.

        Raises :class:`~genesys_mux.errors.ConfigError` for an invalid config,
        a duplicate id or more than ``max_streams`` streams, and
        :class:`~genesys_mux.errors.InvalidStateError` before :meth:`start`
        and once :meth:`stop` was called. A call that fails or is cancelled
        (a deadline around it) leaves no stream behind: it may be tried
        again, and its retry continues from the stream's checkpoint and
        reports the restart gap as the first call would have.
        """
        config = parse_stream(config)
        self._running_pool()
        # A hand-over that failed half-way may have left a stream's bit to clear.
        await self._forget_left()
        async with self._change_lock:
            # A stop may have begun while this waited for its turn.
            self._refuse_unless_running()
            if config.id in self._streams:
                raise ConfigError(
                    f"a stream with id {config.id!r} already exists; ids must be unique"
                )
            if len(self._streams) >= self.max_streams:
                raise ConfigError(
                    f"stream {config.id!r} would be stream {len(self._streams) + 1}, "
                    f"but max_streams is {self.max_streams}; remove a stream or raise max_streams"
                )
            buffer_size = (
                config.buffer_size
                if "buffer_size" in config.model_fields_set
                else self.buffer_threshold
            )
            stream = Stream(
                config.id,
                priority=config.priority,
                rules=StreamRules(
                    media=media_for(config),
                    sms=requires_sms(config),
                    state=config.filter.state if config.filter is not None else None,
                    queue_id=queue_constraint(config),
                ),
                buffer_size=buffer_size,
                overflow=config.overflow,
                dead_letter=self.dead_letter,
                epoch=self.epoch,
                key_memory=self._key_memory,
            )
            stream.number_from(self._numbered.get(config.id, 1))
            try:
                state, restored = await self._install(config, stream, standby=standby)
                # Every slot carrying the stream's topics has its subscription
                # confirmed by now (_install waited for each PUT's answer).
                subscribed_at = time.time()
            except BaseException:
                # Events it numbered while subscribing (topics it shares with
                # running streams) may have been handed out: a retry numbers on.
                self._numbered[config.id] = stream.next_sequence
                stream.close()  # never added (_install undid it): it remembers nothing
                self._key_memory.sweep(_SWEEP_SLICE)
                raise
            # No await from the install to here: a cancellation cannot come
            # between the stream being there and its restart gap.
            self._report(StreamAdded(config.id, len(state.topics)))
            if restored is not None:
                # What the platform sent while no process ran is missing: from
                # the last settled event to when the topics were subscribed
                # again. Not to the first event received since: with topics on
                # several channels (or shared with streams already running) an
                # event proves only its own channel's subscription, and a
                # channel still subscribing would be left out of the gap.
                self._resume_gap(state, restored, "restart", subscribed_at)
        named = config.filter.queue_id if config.filter is not None else None
        if named is not None and not standby:
            # Looked up on the side: add_stream has done its work, and a
            # caller's deadline must not cut it short after the fact.
            check = asyncio.create_task(
                self._say_if_no_such_queue(config.id, named), name="genesys-mux-queue-check"
            )
            self._tasks.append(check)
            check.add_done_callback(self._forget_task)
        return [r for t, r in self.rejections.items() if t in state.topics]

    async def _say_if_no_such_queue(self, stream_id: str, queue_id: str) -> None:
        """Warn when a stream names a queue the org does not have: nothing would ever come.

        The platform may take the topic of a queue that does not exist (a
        typo, a queue of another org, one deleted) and simply never send on
        it. Read from the queue list (again, if the cached one lacks it: the
        queue may be new); a list the client may not read says nothing.
        """
        wanted = queue_id.lower()
        # The last list read, for every stream's check: a cluster adding
        # fifty queue streams must not list the org's queues fifty times.
        # Only a queue not on it is looked for again.
        seen = self._queues_seen
        if seen is None or wanted not in seen:
            try:
                listed = await self._list_queues()
            except GenesysMuxError as exc:
                log.debug("could not list the queues to check stream %s's: %s", stream_id, exc)
                return
            seen = self._queues_seen = frozenset(q.lower() for q in listed)
        if wanted not in seen:
            log.warning(
                "stream %s names queue %s, which is not one of the org's %d queues "
                "(GET /api/v2/routing/queues): nothing will arrive for it unless it is "
                "created; check the queueId in its filter",
                stream_id,
                queue_id,
                len(seen),
                extra={"stream_id": stream_id},
            )

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _install(
        self, config: StreamConfig, stream: Stream, *, standby: bool
    ) -> tuple[_StreamState, StreamCheckpoint | None]:
        """Restore ``stream`` (unless on standby) and subscribe its topics; its state.

        A failure or a cancellation (a deadline around ``add_stream``) undoes
        it all: the stream is not there, so that a retry is not refused, and
        its checkpoint is read again, so that the retry (or the next run)
        still reports the restart gap from it.
        """
        state = _StreamState(config, stream)
        # On standby, the saved state is read at activation: its
        # current owner is still writing it. Read before anything is
        # subscribed: a store that cannot be read fails the add before any
        # event is numbered anew.
        saved = None
        if not standby and config.id not in self._consulted:
            saved = (await self.state_store.load(only=(config.id,))).get(config.id)
            self._consulted.add(config.id)
        restored = None if saved is None else self._restore(state, saved)
        if standby:
            state.standby = deque()
        try:
            if needs_all_queues(config) and not any(
                needs_all_queues(s.config) for s in self._streams.values()
            ):
                # No all-queues stream kept the list fresh (refresh_queues):
                # it may be missing queues created since.
                self._queue_ids = await self._list_queues()
            self._set_topics(state)
            self._streams[config.id] = state
            await self._apply_topics()
            if self.pool is not None:
                # Also a slot planned before and still connecting (this call's
                # own earlier try, cancelled): until it is subscribed, the
                # restart or standby window is not over.
                await self.pool.subscribed(state.topics)
        except BaseException:
            if saved is not None:
                self._consulted.discard(config.id)
            if self._streams.get(config.id) is state:
                del self._streams[config.id]
                self._merge.forget(config.id)
                state.ready.set()  # a reader made meanwhile ends
                # Its notifications are dropped from here. The pool keeps its
                # topics until the next change (a retry wants them anyway):
                # nothing here awaits, as a cancelled caller must not wait.
                self._reindex()
            raise
        if standby:
            state.standby_since = time.time()
        return state, restored

    def _resume_gap(
        self,
        state: _StreamState,
        restored: StreamCheckpoint,
        reason: str,
        covered_from: float | None,
    ) -> None:
        """Report the window from the checkpoint's watermark to ``covered_from`` (or now).

        ``covered_from`` is when every topic of the stream was subscribed
        again. A gap like any other, back-filled when asked, ahead of the
        events received since. Nothing when the watermark is later.
        """
        if restored.watermark is None:
            return
        # On this host's clock: the writer's may be another's (a failover).
        # Never later than as written: a conversion can only widen the gap
        # (two measurements of one clock differ by their noise, and a writer
        # whose clock was behind wrote a watermark that is early already).
        # This host's offset now is the one measured plus any step of its
        # clock since. Only a step back is counted in: counting a step
        # forward would move the start later.
        mine = self._clock_offset + min(0.0, self._clock_step())
        converted = restored.watermark - restored.clock_offset + mine
        start = min(restored.watermark, converted)
        end = time.time() if covered_from is None else min(time.time(), covered_from)
        if end <= start:
            return
        self._outage(
            Outage(
                slot=-1,
                channel_id="",
                topics=state.topics,
                start=start,
                end=end,
                reason=reason,
            ),
            only=state,
        )

    async def activate(self, stream_id: str, *, reason: str = "failover", fence: int = 0) -> None:
        """Start delivering a stream added on standby, from its owner's last checkpoint.

        The stream's checkpoint is read again from the state store (the
        previous owner's, shared), so numbering and de-duplication continue
        from it; then what arrived on standby goes through the pipeline in
        order, dropping what the previous owner delivered. If the checkpoint
        ends before the first notification kept, the window between is a
        :class:`Gap` with ``reason`` (``failover``: the previous owner
        vanished; ``handover``: it let go).

        ``fence`` is the fencing token of the lease this process holds for
        the stream (a cluster's). The stream is claimed with it in the store
        before its checkpoint is read, so a previous owner that wakes up
        from a freeze cannot write the stream's state any more, and every
        checkpoint written from here carries it.

        Raises :class:`~genesys_mux.errors.InvalidStateError` for a stream
        not on standby, :class:`~genesys_mux.errors.FencedStateError` when a
        newer owner claimed the stream already, and
        :class:`~genesys_mux.errors.StateError` when the store cannot be
        used (the stream stays on standby in each case), and
        :class:`~genesys_mux.errors.InvalidStateError` once :meth:`stop` was called.
        """
        self._refuse_unless_running()
        state = self._streams.get(stream_id)
        if state is None or state.standby is None:
            raise InvalidStateError(f"stream {stream_id!r} is not on standby")
        # Claimed first: a checkpoint the previous owner writes after the
        # read below would otherwise be lost to this owner, or overwrite it.
        await self.state_store.claim(stream_id, fence)
        saved = (await self.state_store.load(only=(stream_id,))).get(stream_id)
        written = self._written.get(stream_id)
        if saved is None and written is not None:
            # This process wrote one, and the store has none: it lost its
            # data. Numbering again from 1 would repeat (epoch, sequence)
            # pairs of this run, and no gap would cover the time since.
            log.warning(
                "stream %s: the state store has no checkpoint of it, though this process "
                "wrote one (a Redis that restarted without its data?); continuing from that "
                "one, at sequence %d, the time since reported as a gap",
                stream_id,
                written.next_sequence,
            )
            saved = written
        if state.standby is None or self._streams.get(stream_id) is not state:
            return  # activated or removed meanwhile
        self._refuse_unless_running()  # the stop began while the store answered
        state.fence = fence
        self._consulted.add(stream_id)
        # The store's checkpoint now, never one read before.
        restored = None if saved is None else self._restore(state, saved)
        kept, state.standby = state.standby, None
        if restored is not None:
            # Everything since the standby's topics were subscribed was kept,
            # unless some was pushed out: then only from the first one kept.
            # Never earlier than the subscription: the first one kept proves
            # only its own channel's (see add_stream).
            covered = state.standby_since
            if state.standby_dropped:
                first = kept[0].received_at if kept else None  # None: up to now
                covered = None if first is None or covered is None else max(covered, first)
            self._resume_gap(state, restored, reason, covered)
        for note in kept:
            # Each stream's topics decide whether client-side rules apply.
            self._offer(
                note.topic,
                note,
                ((state, note.topic in state.filter_topics),),
                event_facts(note.topic, note.body),
            )
        self._report(StreamActivated(stream_id, len(kept), reason))

    async def handover(
        self, stream_id: str, *, timeout_s: float = 5.0, checkpoint: bool = True
    ) -> StreamCheckpoint | None:
        """Stop delivering a stream so that another process carries it on; returns its checkpoint.

        Its readers stop taking events; those they took are given
        ``timeout_s`` to be settled; its checkpoint is written (it leaves out
        what is not settled, so the next owner delivers those); then the
        stream is removed, its buffered events counted as ``handed_over``,
        not dead-lettered. Raises :class:`~genesys_mux.errors.StateError`
        when the checkpoint cannot be written: the stream is then still
        removed, and the next owner starts from the last checkpoint written.

        Without ``checkpoint`` (the stream is no longer ours: a lost lease,
        or a standby given up) nothing is waited for or written: another
        process may be writing the stream's state already. Returns None.

        :class:`~genesys_mux.errors.InvalidStateError` once :meth:`stop` was
        called: the stop writes the last checkpoint of every stream itself.
        """
        self._refuse_unless_running()
        state = self._streams.get(stream_id)
        if state is None:
            raise ConfigError(f"no stream with id {stream_id!r}; known: {sorted(self._streams)}")
        state.leaving = True
        state.ready.set()
        self._anything.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s if checkpoint else 0.0)
        while state.stream.unacknowledged and loop.time() < deadline:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline - loop.time()):
                    await self._settled.wait()
        saved: list[tuple[_StreamState, tuple[int, float], StreamCheckpoint]] = []
        try:
            if checkpoint and not state.fenced_off:
                if self.pool is not None:
                    # A quiet socket's last frame may be a heartbeat old: a
                    # pong now brings the watermark up to the handover, past
                    # the moment the next owner subscribed.
                    await self.pool.prove_live(self._pool_settings.pong_timeout_s)
                async with self._checkpoint_lock:
                    saved = await self._checkpoint_streams([state], force=True)
        finally:
            async with self._change_lock:
                if self._streams.get(stream_id) is state:
                    del self._streams[stream_id]
                    self._merge.forget(stream_id)
                    await self._apply_topics()
            state.stream.hand_over()
            self._numbered[stream_id] = state.stream.next_sequence
            state.stream.close()
            if checkpoint:
                # Handed on: the next owner's checkpoints are the stream's
                # now, and this one's would start a later gap far too early.
                self._written.pop(stream_id, None)
            self._report(StreamRemoved(stream_id))
        await self._forget_left()
        return saved[0][2] if saved else None

    def _restore(
        self, state: _StreamState, checkpoint: StreamCheckpoint
    ) -> StreamCheckpoint | None:
        """Continue a stream from its checkpoint, if of the same configuration; the one used."""
        if checkpoint.fingerprint != state.fingerprint:
            self._report(
                StreamStateReset(state.config.id, "its filter or topics changed; starting afresh")
            )
            return None
        state.stream.restore(checkpoint)
        return checkpoint

    def watermark(self, stream_id: str) -> float:
        """Receive time before which every event of the stream is settled (for checkpoints)."""
        state = self._streams[stream_id]
        pending = state.stream.unsettled_since()
        if state.untold:
            # A gap the gap callbacks were not told of yet is not done with.
            told_from = min(gap.start for gap in state.untold)
            pending = told_from if pending is None else min(pending, told_from)
        if pending is not None:
            mark = pending
        else:
            # Nothing pending: everything dispatched so far is settled, and what
            # is not dispatched yet was received after it (the queue is FIFO).
            dispatched = self._dispatched_at
            mark = max(state.added_at, dispatched) if dispatched is not None else state.added_at
            # With every socket live and nothing queued, everything received up
            # to each socket's last frame (a heartbeat, say) was dispatched: a
            # quiet stream's watermark keeps up with time, not with its last event.
            read = self.pool.read_until() if self.pool is not None and not self._draining else None
            if read is not None:
                mark = max(mark, read)
        # Never past a window of the stream's topics that is not reported yet
        # (a socket that may have died silently, one shedding, an outage that
        # ends only when a successor delivers): traffic on the other channels
        # moves the marks above on, and a crash would then lose the window.
        unreported = self.pool.unreported_since(state.topics) if self.pool is not None else None
        return mark if unreported is None else min(mark, unreported)

    async def checkpoint(self) -> int:
        """Write the checkpoint of every stream that moved since the last one; returns how many.

        Each carries only what changed since the previous one, and is built
        a slice at a time so that the event path never waits for it (see
        :mod:`genesys_mux.core.checkpoint`). Raises
        :class:`~genesys_mux.errors.StateError` when the store fails (the
        periodic checkpoints report it and try again), and
        :class:`~genesys_mux.errors.InvalidStateError` once :meth:`stop` was
        called (the stop writes the last one; the store is closed after it).
        """
        if self._stopper is not None:
            self._refuse_unless_running()
        return await self._checkpoint_all()

    async def _checkpoint_all(self) -> int:
        """:meth:`checkpoint`, for the stop and the periodic checkpoints."""
        async with self._checkpoint_lock:
            # A stream on standby has no state of its own yet (its owner's is
            # in the store), one leaving wrote its last, and one fenced off
            # belongs to another process now.
            states = [
                s
                for s in self._streams.values()
                if s.standby is None and not s.leaving and not s.fenced_off
            ]
            return len(await self._checkpoint_streams(states))

    async def _checkpoint_streams(
        self, states: list[_StreamState], *, force: bool = False
    ) -> list[tuple[_StreamState, tuple[int, float], StreamCheckpoint]]:
        """Build and write these streams' checkpoints (those that moved, or all with ``force``)."""
        now = time.time()
        # A store that keeps checkpoints as a log asks for its oldest keys
        # to be written again now and then (see Stream.begin_checkpoint).
        refresh = int(getattr(self.state_store, "refresh", 0))
        begun: list[_StreamState] = []
        due: list[tuple[_StreamState, tuple[int, float], StreamCheckpoint]] = []
        try:
            for state in states:
                # What moved: the numbering, what is settled, or what is remembered.
                mark = (state.stream.next_sequence, self.watermark(state.config.id))
                if not force and mark == state.saved and not state.stream.memory_changed:
                    continue
                build = state.stream.begin_checkpoint(
                    fingerprint=state.fingerprint,
                    watermark=mark[1],
                    saved_at=now,
                    fence=state.fence,
                    refresh=refresh,
                )
                begun.append(state)
                # Not a wait for anything: a yield, so events go through between slices.
                while not build.step(_CHECKPOINT_SLICE):  # noqa: ASYNC110
                    await asyncio.sleep(0)
                checkpoint = build.result()
                # A watermark stamped after a step forward of this host's
                # clock is that much later than the offset measured before
                # it says; one stamped before it is early by as much with
                # the step counted in. Counted in, then: a gap may only
                # widen. (A step back leaves the measured offset the safe one.)
                offset = self._clock_offset + max(0.0, self._clock_step())
                if offset:
                    checkpoint = msgspec.structs.replace(checkpoint, clock_offset=offset)
                due.append((state, mark, checkpoint))
            if due:
                # A dead-lettered event counts as settled: its letter must be
                # on file before a checkpoint says so (the queue batches).
                flush = getattr(self._dlq, "flush", None)
                if flush is not None:
                    flush()
                await self.state_store.save([c for _, _, c in due])
        except FencedStateError as exc:
            for state in begun:
                state.stream.checkpoint_failed()
                if state.config.id in exc.streams:
                    # Lost while this process was not looking (frozen past
                    # its lease): whoever owns it now writes its state.
                    state.fenced_off = True
                    log.warning("stream %s: %s", state.config.id, exc)
            raise
        except BaseException:
            # Whatever reached the store is unknown: write everything next time.
            for state in begun:
                state.stream.checkpoint_failed()
            raise
        for state, mark, written in due:
            state.saved = mark
            self._written[state.config.id] = msgspec.structs.replace(
                written, memory=[], complete=False, forgotten=[]
            )
        return due

    async def _checkpoint_periodically(self) -> None:
        retries = Retries(f"checkpoint to {self.state_store.name}", Backoff(1.0, 10.0), logger=log)
        task = asyncio.current_task()
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            try:
                await self._checkpoint_all()
            except StateError as exc:
                self.state_failure = str(exc)
                self._report(StateStoreFailed(self.state_store.name, str(exc)))
                delay = retries.failed(exc) or 0.0
                await asyncio.sleep(delay)
            else:
                self.state_failure = None
                retries.succeeded()
            if task is not None and task.cancelling():
                # A client library may swallow a cancellation that lands in
                # the middle of its call (redis-py can); the stop still wins.
                raise asyncio.CancelledError

    async def remove_stream(self, stream_id: str) -> None:
        """Remove a stream; its topics are unsubscribed unless another stream needs them.

        Events still buffered for it go to the dead-letter queue (``stream_removed``).
        :class:`~genesys_mux.errors.InvalidStateError` before :meth:`start`
        and once :meth:`stop` was called (a stop dead-letters them all).
        """
        self._refuse_unless_running()
        async with self._change_lock:
            self._refuse_unless_running()
            state = self._streams.pop(stream_id, None)
            if state is None:
                raise ConfigError(
                    f"no stream with id {stream_id!r}; known: {sorted(self._streams)}"
                )
            self._merge.forget(stream_id)
            state.stream.flush_to_dead_letters("stream_removed")
            self._numbered[stream_id] = state.stream.next_sequence
            state.stream.close()
            state.ready.set()
            await self._apply_topics()
        self._report(StreamRemoved(stream_id))
        await self._forget_left()

    async def _forget_left(self) -> None:
        """Clear the streams that left from the memory, a slice at a time, events going through.

        (Hundreds of thousands of records at once would hold the event
        loop for a good part of a second.)
        """
        memory = self._key_memory
        # Not a wait for anything: a yield, so events go through between slices.
        while not memory.sweep(_SWEEP_SLICE):  # noqa: ASYNC110
            await asyncio.sleep(0)

    def streams(self) -> list[StreamConfig]:
        """The configs of the current streams."""
        return [s.config for s in self._streams.values()]

    def topic_counts(self) -> dict[str, int]:
        """How many plain topics each current stream subscribes, standby ones included.

        A combined topic counts as its parts; an all-queues stream as the
        queues last listed. Two streams that share a topic each count it.
        """
        return {stream_id: len(state.topics) for stream_id, state in self._streams.items()}

    @property
    def channels_in_use(self) -> int:
        """The channels the pool needs now: one per slot, two while a slot rotates; 0 before start.

        See :attr:`ChannelPool.channels_in_use`.
        """
        return 0 if self.pool is None else self.pool.channels_in_use

    @property
    def queue_count(self) -> int | None:
        """How many queues the org had when they were last listed; None if never."""
        return self._queue_count

    @property
    def queues_listed_at(self) -> float | None:
        """When (Unix time) the queues were last listed; None if never."""
        return self._queues_listed_at

    async def count_queues(self) -> int:
        """List the org's queues now (joining a listing under way); how many there are.

        Only counts: the streams' topics change with :meth:`refresh_queues`.
        :class:`~genesys_mux.errors.InvalidStateError` before :meth:`start`
        and once :meth:`stop` was called; the REST client's errors as they
        come.
        """
        return len(await self._list_queues())

    async def _apply_topics(self) -> None:
        self._reindex()
        if self._stopper is not None:
            # A change that was under way when the stop began (a hand-over's
            # removal): the pool closes every channel anyway, and a closed
            # pool would open new ones that nobody closes.
            return
        await self._running_pool().set_topics(self._by_topic)

    def _running_pool(self) -> ChannelPool:
        self._refuse_unless_running()
        assert self.pool is not None  # set by start, never unset
        return self.pool

    def _running_rest(self) -> RestClient:
        self._running_pool()
        assert self.rest is not None  # set together with the pool
        return self.rest

    def _set_topics(self, state: _StreamState) -> None:
        state.filter_topics = filter_topics(state.config, self._queue_ids or ())
        state.topics = state.filter_topics | raw_topics(state.config)

    def _reindex(self) -> None:
        index: dict[str, list[tuple[_StreamState, bool]]] = {}
        for state in self._streams.values():
            for topic in state.topics:
                index.setdefault(topic, []).append((state, topic in state.filter_topics))
        self._by_topic = {t: tuple(s) for t, s in index.items()}

    async def _list_queues(self) -> list[str]:
        """The org's queue ids, from one listing shared by every caller that asks meanwhile.

        A large org's queues take many pages, counted against the client's
        request budget: a stream added while a cluster member counts them
        waits for that listing rather than starting its own. A caller
        cancelled meanwhile leaves the listing to the others.
        """
        rest = self._running_rest()
        listing = self._listing
        if listing is None:
            listing = self._listing = asyncio.ensure_future(self._list_queues_now(rest))
            listing.add_done_callback(self._listed)
            self._listing_waiters = 0
        self._listing_waiters += 1
        try:
            return await asyncio.shield(listing)
        finally:
            self._listing_waiters -= 1
            if not self._listing_waiters and not listing.done():
                # Every caller gave up (a deadline around add_stream): a
                # listing that hangs must not hold up the next caller's,
                # who starts afresh (this one ends at the loop's next turn).
                listing.cancel()
                if self._listing is listing:
                    self._listing = None

    async def _list_queues_now(self, rest: RestClient) -> list[str]:
        queue_ids = [q.id for q in await rest.list_queues()]
        self._queue_count, self._queues_listed_at = len(queue_ids), time.time()
        return queue_ids

    def _listed(self, listing: asyncio.Future[list[str]]) -> None:
        if self._listing is listing:
            self._listing = None
        if not listing.cancelled():
            listing.exception()  # retrieved: each caller has it raised already

    async def refresh_queues(self) -> None:
        """Re-read the org's queues and update every all-queues stream, incrementally.

        :class:`~genesys_mux.errors.InvalidStateError` before :meth:`start`
        and once :meth:`stop` was called.
        """
        self._refuse_unless_running()
        if not any(needs_all_queues(s.config) for s in self._streams.values()):
            return
        queue_ids = await self._list_queues()
        async with self._change_lock:
            if queue_ids == self._queue_ids:
                return
            self._queue_ids = queue_ids
            for state in self._streams.values():
                if needs_all_queues(state.config):
                    self._set_topics(state)
            await self._apply_topics()
        self._report(QueuesRefreshed(len(queue_ids)))

    async def _refresh_queues(self) -> None:
        while True:
            await asyncio.sleep(self.queue_refresh_s)
            try:
                await self.refresh_queues()
            except GenesysMuxError as exc:
                log.warning("queue refresh failed, keeping the current list: %s", exc)

    # -- the hot path ---------------------------------------------------------

    async def _dispatch(self) -> None:
        assert self.pool is not None
        next_frame = self.pool.next_frame_nowait
        async for first in self.pool.frames():
            # Everything else queued behind it too, without a step of the
            # generator each (the loop was not given a turn between them
            # either way).
            note: InboundNotification | None = first
            while note is not None:
                self._dispatched_at = note.received_at
                try:
                    self._dispatch_one(note)
                except Exception:
                    # One bad notification (a bug, not bad input: facts never
                    # raise) must not stop the feed; say which one it was.
                    log.exception("dispatching a notification on %s failed", note.topic)
                note = next_frame()

    def _dispatch_one(self, note: InboundNotification) -> None:
        targets = self._by_topic.get(note.topic)
        if not targets:
            return  # a topic just removed: its last events are not wanted
        facts = event_facts(note.topic, note.body)
        if facts.malformed and note.unchecked:
            # The pool split the frame without reading the body, and the
            # body is not JSON: the whole frame says what it really is.
            checked = self.pool.recheck(note) if self.pool is not None else None
            if checked is not None:
                self._dispatch_one(checked)
            return
        self._offer(note.topic, note, targets, facts)

    def _offer(
        self,
        topic: str,
        note: InboundNotification,
        targets: tuple[tuple[_StreamState, bool], ...],
        facts: EventFacts,
    ) -> None:
        delivered = False
        for state, filtered_topic in targets:
            standby = state.standby
            if standby is not None:
                standby.append(note)
                if len(standby) > state.stream.buffer_size:
                    standby.popleft()
                    state.standby_dropped += 1
                continue
            event = state.stream.offer(
                topic,
                note.body,
                note.correlation_id,
                note.received_at,
                note.received_mono,
                facts,
                filtered_topic=filtered_topic,
            )
            if event is not None:
                state.ready.set()
                delivered = True
        if delivered:
            self._anything.set()

    def _failed(self, exc: AuthenticationError) -> None:
        """The pool stopped for good: wake every reader, so each one raises it."""
        self._failure = exc
        self._report(Fatal(str(exc)))
        self._anything.set()
        for state in self._streams.values():
            state.ready.set()

    def dead_letter(self, letter: DeadLetter) -> None:
        """Write ``letter`` to the dead-letter queue and audit it (sink runners use this)."""
        try:
            self._dlq.write(letter)
        except Exception:
            # The DLQ is the last resort; if it fails, say so loudly, with
            # enough to find the event again, rather than crash the feed.
            log.exception(
                "dead-letter write failed: stream=%s sequence=%d reason=%s",
                letter.stream_id,
                letter.sequence,
                letter.reason,
                extra={"stream_id": letter.stream_id},
            )
        self._report(DeadLettered(letter.stream_id, letter.sequence, letter.reason))

    def gap_undelivered(self, gap: Gap, why: str) -> None:
        """Report that ``gap``, handed out, never reached its consumers (sink runners use this).

        A gap has no body to dead-letter; this puts it in the audit log
        (``GAP_UNDELIVERED``) and the metrics, so that a window of possible
        loss is never known to the log alone.
        """
        self._report(
            GapUndelivered(
                gap.stream_id,
                gap.channel_id,
                gap.start,
                gap.end,
                len(gap.topics),
                gap.reason,
                why,
            )
        )

    def _outage(self, outage: Outage, only: _StreamState | None = None) -> None:
        # ``only``: one stream's own window (a restart's), ahead of its events.
        gaps: list[Gap] = []
        for state in self._streams.values() if only is None else (only,):
            # The stream's own set when the outage covers it all (the usual
            # case): gaps held unread share it instead of a copy each.
            topics = state.topics
            affected = topics if topics <= outage.topics else topics & outage.topics
            if affected:
                gap = Gap(
                    state.config.id,
                    outage.start,
                    outage.end,
                    frozenset(affected),
                    outage.channel_id,
                    outage.reason,
                )
                state.stream.add_gap(gap, first=only is not None)
                gaps.append(gap)
                if self._gap_callbacks:
                    self._untold.append((state, gap))
                    state.untold.append(gap)
                    self._gap_reported.set()
                state.ready.set()
                self._anything.set()
                self._report(
                    GapReported(
                        state.config.id,
                        outage.channel_id,
                        outage.start,
                        outage.end,
                        len(affected),
                        outage.reason,
                    )
                )

        if gaps and self.backfill_enabled and not self._stopping and not self._draining:
            task = asyncio.create_task(self._backfill_quietly(gaps), name="genesys-mux-backfill")
            self._backfills.add(task)
            task.add_done_callback(self._backfills.discard)

    async def _backfill_quietly(self, gaps: list[Gap]) -> None:
        try:
            await self.backfill(*gaps)
        except GenesysMuxError as exc:
            streams = sorted({gap.stream_id for gap in gaps})
            log.warning(
                "back-fill after a gap of %s failed: %s",
                ", ".join(streams),
                exc,
                extra={"stream_id": streams[0]} if len(streams) == 1 else None,
            )

    async def backfill(self, *gaps: Gap) -> int:
        """Fetch the current snapshot of every conversation a gap may have hidden.

        For the queue and user conversation topics of the gaps, the analytics
        query finds the conversations that overlapped the window (widened by
        ``_BACKFILL_MARGIN_S`` on each side), and each one's current
        snapshot (``GET /api/v2/conversations/{id}``) goes through the
        stream's pipeline like a received event, marked ``backfilled``.
        De-duplication and ordering still apply: a snapshot the stream
        already has, or an older one, is dropped. At most ``backfill_limit``
        conversations per call. Returns how many snapshots were offered.
        """
        rest = self._running_rest()
        # (family, entity id) -> the (stream, topic) pairs that carry it.
        targets: dict[tuple[TopicFamily, str], list[tuple[_StreamState, str]]] = {}
        for gap in gaps:
            state = self._streams.get(gap.stream_id)
            if state is None:
                continue
            for topic in gap.topics:
                entity = _conversation_entity(topic)
                if entity is not None:
                    targets.setdefault(entity, []).append((state, topic))
        if not targets:
            return 0
        start = min(g.start for g in gaps) - _BACKFILL_MARGIN_S
        end = max(g.end for g in gaps) + _BACKFILL_MARGIN_S
        queues = [e for f, e in targets if f is TopicFamily.QUEUE_CONVERSATIONS]
        users = [e for f, e in targets if f is TopicFamily.USER_CONVERSATIONS]
        ids = await rest.conversations_between(start, end, queues, users, limit=self.backfill_limit)
        offered = 0
        for conversation_id in ids:
            body = await rest.get_conversation(conversation_id)
            if body is None:
                continue
            facts = None
            for (family, entity_id), pairs in targets.items():
                for state, topic in pairs:
                    if self._streams.get(state.config.id) is not state:
                        continue  # removed or handed over while REST answered
                    facts = facts or event_facts(topic, body)
                    conversation = facts.conversation
                    if conversation is None or entity_id not in (
                        conversation.queue_ids
                        if family is TopicFamily.QUEUE_CONVERSATIONS
                        else conversation.user_ids
                    ):
                        continue
                    event = state.stream.offer(
                        topic,
                        body,
                        None,
                        time.time(),
                        time.monotonic(),
                        facts,
                        filtered_topic=topic in state.filter_topics,
                        backfilled=True,
                    )
                    offered += 1
                    if event is not None:
                        state.ready.set()
                        self._anything.set()
        self._report(Backfilled(tuple(sorted({g.stream_id for g in gaps})), len(ids)))
        return offered

    def _rejected(self, rejection: Rejection) -> None:
        self.rejections[rejection.topic] = rejection
        streams = [s.config.id for s in self._streams.values() if rejection.topic in s.topics]
        self._report(
            TopicRejected(
                rejection.topic,
                rejection.reason,
                tuple(rejection.missing_permissions),
                tuple(streams),
            )
        )

    def _report(self, event: ControlEvent) -> None:
        for callback in self.on_control:
            try:
                callback(event)
            except Exception:
                log.exception("control callback failed for %s", event.kind)

    # -- consumption ------------------------------------------------------------

    def _take(self, state: _StreamState) -> Item | None:
        stream = state.stream
        item = stream.take(time.time(), time.monotonic())
        if not stream.items:
            self._emptied.set()
        if isinstance(item, StreamEvent) and item.latency_s is not None:
            latencies = state.latencies
            latencies.append(item.latency_s)
            if len(latencies) > 2048:
                del latencies[:1024]
            for observe in self.on_delivered:
                try:
                    observe(item)
                except Exception:
                    log.exception("on_delivered callback failed")
        return item

    def events(self) -> AsyncIterator[Item]:
        """Every stream's events and gaps, merged by priority, until :meth:`stop`.

        An event is settled (done with, as far as restarts are concerned)
        when the consumer asks for the next item, or the callback given it
        returns. Raises :class:`~genesys_mux.errors.InvalidStateError` once
        :meth:`on_event` callbacks read the streams (each item is handed out
        once).
        """
        self._consume_with("readers")
        return self._merged()

    async def _merged(self) -> AsyncIterator[Item]:
        """:meth:`events`, for its readers and for the event callbacks."""
        while True:
            ready = [s.stream for s in self._streams.values() if s.items and not s.leaving]
            chosen = self._merge.pick(ready)
            if chosen is not None:
                state = self._streams[chosen.id]
                item = self._take(state)
                if item is not None:
                    yield item
                    if isinstance(item, StreamEvent):
                        state.stream.settle(item.sequence)
                    else:
                        state.stream.settle_gaps()
                continue
            if self._failure is not None:
                raise self._failure.with_traceback(None)  # one instance, raised again and again
            if self._stopping:
                return
            self._anything.clear()
            await self._anything.wait()

    def stream(self, stream_id: str, *, settle: bool = True) -> AsyncIterator[Item]:
        """One stream's events and gaps, in order, until it is removed or the mux stops.

        An event is settled when the consumer asks for the next item; with
        ``settle=False`` the consumer says so itself with :meth:`settle`
        (a sink runner does, once every sink has the event), and
        :meth:`stop` gives it its ``timeout_s`` to settle what it took.

        The iterator is bound to the stream as it is when this is called
        (a :class:`~genesys_mux.errors.ConfigError` at once if there is no
        such stream): if the stream is removed, or taken away and given
        back, before it is first read, it ends instead of reading the new
        one, whose items belong to whoever read it since.

        Raises :class:`~genesys_mux.errors.InvalidStateError` once
        :meth:`on_event` callbacks read the streams (each item is handed out
        once).
        """
        state = self._streams.get(stream_id)
        if state is None:
            raise ConfigError(f"no stream with id {stream_id!r}; known: {sorted(self._streams)}")
        self._consume_with("readers")
        if not settle:
            state.settles_explicitly = True
        return self._read_stream(state, stream_id, settle)

    async def _read_stream(
        self, state: _StreamState, stream_id: str, settle: bool
    ) -> AsyncIterator[Item]:
        while not state.leaving:
            item = self._take(state)
            if item is not None:
                yield item
                if settle:
                    if isinstance(item, StreamEvent):
                        state.stream.settle(item.sequence)
                    else:
                        state.stream.settle_gaps()
                continue
            if self._failure is not None:
                raise self._failure.with_traceback(None)  # one instance, raised again and again
            if self._stopping or self._streams.get(stream_id) is not state:
                return
            state.ready.clear()
            await state.ready.wait()

    def settle(self, stream_id: str, through: int) -> None:
        """The stream's events up to sequence ``through`` are done with (delivered or given up).

        Until then a restart treats them as possibly lost (its gap starts no
        later than the oldest unsettled event). Unknown streams are ignored.
        """
        state = self._streams.get(stream_id)
        if state is not None:
            state.stream.settle(through)
            self._settled.set()

    def gap_settler(self, stream_id: str) -> Callable[[Gap], None]:
        """Like :meth:`settler`, for the gaps: the callable says a gap handed out is done with.

        A reader that settles explicitly calls it once its consumers have
        the gap (the gaps handed out before it are done with too). Without
        it a gap is done with once an event after it is settled, which on
        a quiet stream may never come: it would hold the watermark (the
        next run's restart gap would start at its start) and a stop would
        wait out its deadline for it.
        """
        return self._bound_to(stream_id, Stream.settle_gap)

    def settler(self, stream_id: str) -> Callable[[int], None]:
        """:meth:`settle` for the stream as it is now, for a reader made at the same time.

        Once the stream is removed, or stopped here and started again (a
        cluster that took it away and gave it back numbers its events again
        from the checkpoint), the callable does nothing: a late
        acknowledgement from an earlier reader would otherwise settle
        sequence numbers that the new one has taken but not delivered.
        """
        return self._bound_to(stream_id, Stream.settle)

    def _bound_to(
        self, stream_id: str, settle: Callable[[Stream, _T], None]
    ) -> Callable[[_T], None]:
        """``settle`` on the stream as it is now; nothing once it was removed or made again."""
        state = self._streams.get(stream_id)
        if state is None:
            raise ConfigError(f"no stream with id {stream_id!r}; known: {sorted(self._streams)}")

        def bound(value: _T) -> None:
            if self._streams.get(stream_id) is state:
                settle(state.stream, value)
                self._settled.set()

        return bound

    def on_event(self, callback: EventCallback) -> None:
        """Call ``callback`` (sync or async) for every event of every stream, priority-merged.

        A task of the multiplexer reads every stream as :meth:`events` does
        and calls the event callbacks in turn; an event is settled once they
        returned. They are the streams' consumer, so they do not go with
        :meth:`events` or :meth:`stream` readers: registering one after a
        reader was made, or making a reader after, raises
        :class:`~genesys_mux.errors.InvalidStateError` (each item is handed
        out once, and they would split the items between them). Gaps go to
        :meth:`on_gap` callbacks. A draining :meth:`stop` lets the callback
        given the last event return.
        """
        if self._stopper is not None:
            self._refuse_unless_running()  # it would never be called
        self._consume_with("callbacks")
        self._event_callbacks.append(callback)
        self._ensure_task(_CALLBACKS, self._run_callbacks)

    def on_gap(self, callback: GapCallback) -> None:
        """Call ``callback`` (sync or async) with every gap of every stream, as it is reported.

        A task of the multiplexer calls the gap callbacks in the order the
        gaps are reported. They take nothing: each gap still reaches the
        stream's reader (or the event callbacks) in its place, and events
        stay where they are, so a gap callback goes with any consumer. A gap
        not yet told to every gap callback holds the stream's watermark at
        its start (a restart's gap covers it). Only gaps reported after the
        first gap callback is registered are told.
        """
        if self._stopper is not None:
            self._refuse_unless_running()  # it would never be called
        self._gap_callbacks.append(callback)
        self._ensure_task(_GAP_CALLBACKS, self._tell_gaps)

    def _consume_with(self, consumers: str) -> None:
        """Say who takes the items (``callbacks`` or ``readers``); the other kind is refused."""
        if self._consumers not in (None, consumers):
            if consumers == "callbacks":
                raise InvalidStateError(
                    "on_event callbacks read every stream, and events()/stream() readers were "
                    "made already: each item is handed out once, so the two would split the "
                    "items between them. Use callbacks or readers, not both (on_gap callbacks "
                    "take nothing and go with either)"
                )
            raise InvalidStateError(
                "on_event callbacks read every stream already: each item is handed out once, "
                "so a reader would take items from them. Use events()/stream() or callbacks, "
                "not both (on_gap callbacks take nothing and go with either)"
            )
        self._consumers = consumers

    def _ensure_task(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if not any(t.get_name() == name for t in self._tasks):
            task = asyncio.create_task(run(), name=name)
            task.add_done_callback(lambda _: self._callbacks_ended.set())
            self._tasks.append(task)

    async def _run_callbacks(self) -> None:
        async for item in self._merged():
            if not isinstance(item, StreamEvent):
                # The gap callbacks were told of it when it was reported.
                continue
            # The stream it was just taken from (nothing ran since): the one
            # to count a failure against, even if it is replaced meanwhile.
            origin = self._streams[item.stream_id].stream
            failed = await _call_each(self._event_callbacks, item, "event")
            if failed is not None:
                # Not handled, though handed out (delivered, as to a sink
                # runner that then gives up on it): kept for a replay.
                origin.not_handled(item, f"callback_failed:{failed}")

    async def _tell_gaps(self) -> None:
        untold = self._untold
        while True:
            while untold:
                state, gap = untold[0]
                await _call_each(self._gap_callbacks, gap, "gap")
                # Told: it no longer holds the watermark. (Left in place when
                # a stop cancels this: the next run's restart gap covers it.)
                untold.popleft()
                state.untold.remove(gap)
            if self._stopping:
                return
            self._gap_reported.clear()
            await self._gap_reported.wait()

    # -- introspection -----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` while the dispatcher runs."""
        return not self._stopping and any(
            t.get_name() == _DISPATCH and not t.done() for t in self._tasks
        )

    @property
    def live(self) -> bool:
        """True when every channel is live and subscribed."""
        return self.pool is not None and self.pool.live

    @property
    def failure(self) -> AuthenticationError | None:
        """What stopped the feed for good (refused credentials), once it has; else None.

        The readers raise it too; a supervisor that only watches (the CLI)
        reads it here, to stop and say why.
        """
        return self._failure

    def stats(self) -> dict[str, Any]:
        """Per-stream and per-channel counters, the memory's size and the dead-letter queue's.

        ``memory`` holds ``keys`` (keys remembered for de-duplication and
        ordering, one record each however many streams share it) and
        ``limit`` (the streams' bounds added up).
        """
        streams = {}
        for stream_id, state in self._streams.items():
            c = state.stream.counters
            lat = sorted(state.latencies)
            streams[stream_id] = StreamStats(
                stream_id=stream_id,
                priority=state.stream.priority,
                topics=len(state.topics),
                buffered=state.stream.events_buffered,
                received=c.received,
                delivered=c.delivered,
                filtered=c.filtered,
                duplicates=c.duplicates,
                stale=c.stale,
                overflowed=c.overflowed,
                dead_lettered=c.dead_lettered,
                gaps=c.gaps,
                latency_p50_s=lat[len(lat) // 2] if lat else None,
                latency_p99_s=lat[min(len(lat) - 1, (len(lat) * 99) // 100)] if lat else None,
                rejected_topics=tuple(sorted(t for t in self.rejections if t in state.topics)),
            )
        channels = self.pool.stats() if self.pool is not None else {}
        stats: dict[str, Any] = {"streams": streams, "channels": channels}
        memory = self._key_memory
        stats["memory"] = {"keys": len(memory), "limit": memory.limit}
        if isinstance(self._dlq, MemoryDeadLetterQueue):
            stats["dlq"] = {"held": len(self._dlq.letters), "dropped": self._dlq.dropped}
        elif isinstance(self._dlq, JsonlDeadLetterQueue):
            stats["dlq"] = {"bytes": self._dlq.size, "dropped": self._dlq.dropped}
        return stats

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """The dead letters held in memory (the default queue); empty for any other queue."""
        if isinstance(self._dlq, MemoryDeadLetterQueue):
            return self._dlq.letters
        return []


async def _call_each(
    callbacks: list[Callable[[Any], Awaitable[None] | None]], item: StreamEvent | Gap, kind: str
) -> str | None:
    """Call each of ``callbacks`` with ``item`` in turn, awaiting those that are async.

    One that raises is logged and the others still run: a user's bug must
    not stop the feed. Returns the first failure (``name: ExceptionType``),
    if any. The list is copied, as a callback may register more.
    """
    failed: str | None = None
    for callback in list(callbacks):
        try:
            result = callback(item)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.exception("%s callback failed", kind)
            if failed is None:
                name = getattr(callback, "__qualname__", type(callback).__qualname__)
                # The type only: an exception's text may hold anything.
                failed = f"{name}: {type(exc).__name__}"
    return failed


def _conversation_entity(topic: str) -> tuple[TopicFamily, str] | None:
    """(family, queue or user id) of a conversation topic, else None."""
    try:
        parsed = parse_topic(topic)
    except InvalidTopicError:
        return None
    if parsed.family in (TopicFamily.QUEUE_CONVERSATIONS, TopicFamily.USER_CONVERSATIONS):
        return parsed.family, parsed.entity_id
    return None
