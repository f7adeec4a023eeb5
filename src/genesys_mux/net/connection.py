"""The channel pool: desired topics in, notifications out, channels that never silently die.

Theory of operation
-------------------
:class:`ChannelPool` owns every notification channel of one OAuth client.

* The :class:`~genesys_mux.core.planner.Planner` maps the desired topics onto
  *slots* (at most ``max_channels - reserved_channels`` of them). A slot is
  the stable identity of "the channel carrying these topics"; the channel
  behind it changes on every rotation.
* Each slot has one supervisor task. It establishes a channel (create or
  reuse, subscribe, connect, wait until live), then reacts to what the
  sans-I/O :class:`~genesys_mux.core.channel.ChannelLink` reports: rotate
  make-before-break, reconnect, or recreate. Subscription changes to a slot
  are made only by its supervisor, so they are serialised, and each change
  PUTs the *latest* desired list: a stale PUT can never overwrite a newer
  one.
* Make-before-break: on a :class:`Rotate`, the successor channel is created,
  subscribed, connected and proven live while the old socket keeps
  delivering; only then is the old socket closed. Rotations take a permit
  from a semaphore sized by ``reserved_channels``, because every rotating
  slot briefly needs a second channel and the platform evicts past 20.
* A slot whose socket is lost is *uncovered* from that moment until a
  replacement is live; that window is an :class:`Outage`, reported to
  whoever listens. Warned or silent, a loss is handled the same way.

Three sans-I/O machines make the decisions; this module performs them. Per
socket, :class:`~genesys_mux.core.channel.ChannelLink` says *that* something
happened (silence, a loss, a rotation request, a subscription check). Per
slot, :class:`~genesys_mux.core.slot.SlotMachine` says which socket serves,
which to open, drain or abandon, and which windows are outages, with the
times computed from those passed in. Retries follow
:class:`~genesys_mux.core.backoff.Retries`. What stays here is I/O and
waiting: establishing sockets, PUTs and GETs, the overlap and settle
timers, and draining.

Every notification from every socket goes, undecoded, into one queue read by
:meth:`ChannelPool.frames`. The queue is unbounded on purpose: back-pressure
here would stop the readers, and a reader that cannot read cannot see
heartbeats, so the watchdog would kill healthy sockets. Bounding belongs to
the per-stream buffers downstream, which have a dead-letter queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import aiohttp
import msgspec

from genesys_mux.core.backoff import Backoff, Retries
from genesys_mux.core.channel import (
    Action,
    BecameLive,
    ChannelLink,
    CheckSubscriptions,
    Outage,
    Reconnect,
    Recreate,
    Rotate,
    SendPing,
    WatchdogSettings,
)
from genesys_mux.core.events import (
    ChannelClosed,
    ChannelConnected,
    ChannelCreated,
    ChannelFailed,
    ChannelLost,
    ChannelRotated,
    ControlEvent,
    SubscriptionsLost,
)
from genesys_mux.core.frames import (
    PING,
    Frame,
    NoLongerSubscribed,
    Notification,
    Pong,
    UnknownFrame,
    decode_frame,
    join_notification,
)
from genesys_mux.core.frames import _split as _split_frame
from genesys_mux.core.limits import PLATFORM
from genesys_mux.core.planner import (
    CloseSlot,
    OpenSlot,
    Planner,
    PlannerLimits,
    Subscribe,
    Unsubscribe,
)
from genesys_mux.core.slot import (
    Abandon,
    Drain,
    OpenSocket,
    OutageWindow,
    Serve,
    SlotAction,
    SlotMachine,
    missing_subscriptions,
)
from genesys_mux.core.topics import combine_topics, expanded_topics
from genesys_mux.errors import (
    ApiError,
    AuthenticationError,
    FrameError,
    GenesysMuxError,
    TransportError,
    UnusableChannelError,
)
from genesys_mux.net.auth import TokenProvider
from genesys_mux.net.rest import ChannelInfo, Rejection, RestClient

__all__ = ["ChannelPool", "InboundNotification", "PoolSettings", "SlotStats"]

log = logging.getLogger("genesys_mux.connection")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Connection settings. The defaults are the platform's numbers."""

    heartbeat_timeout_s: float = 75.0
    pong_timeout_s: float = 10.0
    topics_per_channel: int = PLATFORM.topics_per_channel
    max_channels: int = PLATFORM.channels_per_client
    reserved_channels: int = 1
    #: Rotations at once: as many as there are channels free within
    #: ``max_channels`` beside one per slot (True), or ``reserved_channels``
    #: (False: a cluster member, whose share of the client's channels is
    #: counted with one spare). After a maintenance warning to every socket,
    #: each rotation waits up to ``rotation_overlap_s``, and taking turns
    #: with one spare, 19 channels need most of the platform's minute.
    parallel_rotations: bool = True
    rotation_lead_s: float = 300.0
    #: How often each channel's subscription list is read back and compared
    #: with what was put (None: only on ``v2.subscription.updated``).
    subscription_check_s: float | None = 300.0
    #: How long a new socket may take to open, and then to prove itself live,
    #: before we retry.
    live_timeout_s: float = 30.0
    #: During a rotation the old channel is kept until the new one has
    #: delivered its first notification (at most ``rotation_overlap_s``), and
    #: then ``rotation_settle_s`` longer. Subscriptions may take a moment to
    #: take effect on the platform; the overlap covers that, and the
    #: duplicates it causes are removed downstream. Keep both short: every
    #: rotating slot holds a spare channel, and after a maintenance warning
    #: all slots must rotate within about a minute.
    rotation_overlap_s: float = 2.0
    rotation_settle_s: float = 0.2
    #: How long a graceful close waits for the server's close frame. A socket
    #: given up as lost is closed in the background, never waited for: a dead
    #: link answers no close frame, and aiohttp would wait 10 s for one.
    close_timeout_s: float = 2.0
    reconnect_base_s: float = 1.0
    reconnect_cap_s: float = 60.0
    #: None: never give up (the default; a contact centre feed should not).
    max_reconnect_attempts: int | None = None
    #: Notifications read but not yet taken by the reader of ``frames()``, at
    #: most. Past it a socket sheds what it reads, until the queue is half as
    #: long again, and reports the window as an ``overload`` outage: memory
    #: stays bounded when the reader cannot keep up, and nothing shed is
    #: silent (the gap is back-filled like any other).
    inbound_limit: int = 10_000

    def watchdog(self) -> WatchdogSettings:
        """The timers each link runs with."""
        return WatchdogSettings(
            self.heartbeat_timeout_s,
            self.pong_timeout_s,
            self.rotation_lead_s,
            self.subscription_check_s,
        )

    def planner_limits(self) -> PlannerLimits:
        """The limits the planner packs topics within."""
        return PlannerLimits(self.topics_per_channel, self.max_channels, self.reserved_channels)


#: What a system frame's ``reason`` must look like to be quoted in a log line.
_REASON: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Channels made in a row whose answers could not be used, before a slot gives up.
_MOST_UNUSABLE_CHANNELS: Final = 3
#: A socket whose text frames are read as their UTF-8 bytes (``decode_text=False``).
_Bytes: TypeAlias = aiohttp.ClientWebSocketResponse[Literal[False]]


class InboundNotification(msgspec.Struct, frozen=True, gc=False):
    """One notification as it came off a socket.

    A msgspec struct rather than a dataclass: one is built per notification,
    and this is about ten times cheaper to construct.

    ``body`` is the raw ``eventBody`` JSON. ``received_at`` is Unix time,
    ``received_mono`` the monotonic clock at the same moment (for latency).

    ``version`` is the topic's schema version from the envelope.
    ``unchecked`` says the pool was told not to check bodies
    (``ChannelPool(check_bodies=False)``) and split the frame without
    reading its body: ``body`` may then not be JSON at all, and a consumer
    whose decode of it fails hands the note to :meth:`ChannelPool.recheck`.
    """

    topic: str
    body: bytes
    correlation_id: str | None
    channel_id: str
    slot: int
    received_at: float
    received_mono: float
    version: str | None = None
    unchecked: bool = False


@dataclass(slots=True)
class SlotStats:
    """Counters of one slot, for stats and metrics (labelled by slot index)."""

    channel_id: str | None = None
    state: str = "starting"
    topics: int = 0
    notifications: int = 0
    reconnects: int = 0
    rotations: int = 0
    bad_frames: int = 0
    #: JSON frames of no known shape (a notification without its body, a
    #: message the reference does not name): ignored, counted, said once a socket.
    unknown_frames: int = 0
    #: Notifications read after a drain's pong: the platform does not promise
    #: that a pong follows every notification sent before it. Delivered as usual.
    after_drain: int = 0
    #: Notifications read but shed: the reader was ``inbound_limit`` behind
    #: (each window reported as an ``overload`` outage).
    shed: int = 0
    #: Channels of the slot the platform ended (a 404: evicted past the
    #: client's channel budget, expired, or their token revoked), each
    #: recreated. A steady count means another user of the OAuth client
    #: keeps evicting ours.
    gone: int = 0
    connected_since: float | None = None
    #: A live socket serves the slot (also true while a rotation is under way).
    live: bool = False


class _Socket:
    """A connected channel socket with its reader and watchdog tasks."""

    def __init__(
        self,
        pool: ChannelPool,
        slot: _Slot,
        info: ChannelInfo,
        token_expires_at: float,
        ws: _Bytes,
    ) -> None:
        self.pool = pool
        self.slot = slot
        self.info = info
        self.ws = ws
        #: When the token that created the channel expires (monotonic): the channel dies then.
        self.token_expires_at = token_expires_at
        #: This socket's name for the slot's machine (a channel can have several sockets).
        self.key = next(_SOCKET_KEYS)
        now = time.monotonic()
        channel_expires = None
        if info.expires_at is not None:
            channel_expires = now + (info.expires_at - time.time())
        self.link = ChannelLink(
            info.id,
            opened_at=now,
            channel_expires_at=channel_expires,
            token_expires_at=token_expires_at,
            settings=pool.settings.watchdog(),
        )
        self.live = asyncio.Event()
        self.pong = asyncio.Event()
        self.delivering = asyncio.Event()
        self.signals: asyncio.Queue[Action] = asyncio.Queue()
        #: Unix time from which events may be missing, once the socket is lost.
        self.lost_at: float | None = None
        #: Set with ``lost_at``: a rotation waiting for a successor watches it.
        self.gone = asyncio.Event()
        #: Unix time of the first notification read on this socket.
        self.first_notification_at: float | None = None
        #: Set once a drain's pong has been read (or waited for in vain).
        self.drained = False
        #: The channel is gone but the socket works: read it to its close frame.
        self.read_on = False
        #: Receive time of the last notification queued for the reader.
        self.queued_at: float | None = None
        #: While shedding (see PoolSettings.inbound_limit): [from, to, count].
        self.shedding: list[float] | None = None
        #: The topics the channel should have (expanded, lower case), and the
        #: Unix time they were last known to be there (a PUT or a check).
        self.expected: frozenset[str] = frozenset()
        self.verified_at = time.time()
        self._wake = asyncio.Event()
        self._told_unknown = False
        self._tasks = [
            asyncio.create_task(self._read(), name=f"genesys-mux-read-{info.id}"),
            asyncio.create_task(self._watch(), name=f"genesys-mux-watchdog-{info.id}"),
        ]

    async def _read(self) -> None:
        pool, slot, link = self.pool, self.slot, self.link
        channel_id = self.info.id
        inbound = pool._inbound
        put, queued = inbound.put_nowait, inbound.items
        limit = pool.settings.inbound_limit
        resume = limit // 2
        delivering = False
        # The compiled split where it was built, without the public
        # function's extra call: this loop runs once per frame.
        split = None if pool.check_bodies else _split_frame
        data_types = (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
        # What ends `async for message in ws`, tested here instead: the
        # iterator's __anext__ is one more coroutine per frame (~0.4 µs).
        ends = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
        receive = self.ws.receive
        try:
            while True:
                message = await receive()
                kind = message.type
                if kind not in data_types:
                    if kind in ends:
                        break
                    continue
                mono = time.monotonic()
                data = message.data
                frame: Frame | None = None
                if split is not None:
                    frame = split(data)
                unchecked = frame is not None
                if frame is None:
                    try:
                        frame = decode_frame(data)
                    except FrameError as exc:
                        slot.stats.bad_frames += 1
                        log.warning(
                            "slot %d: ignored a frame that is not JSON: %s", slot.index, exc
                        )
                        continue
                if isinstance(frame, Notification):
                    received_at = time.time()
                    if not delivering:
                        self.first_notification_at = received_at
                        self.delivering.set()
                        delivering = True
                    link.notification_seen(mono)
                    slot.stats.notifications += 1
                    if self.drained:
                        slot.stats.after_drain += 1
                    if self.shedding is not None:
                        if len(queued) >= resume:
                            self._shed(received_at)
                            continue
                        self._end_shedding()
                    elif len(queued) >= limit:
                        self._shed(received_at)
                        continue
                    self.queued_at = received_at
                    put(
                        InboundNotification(
                            frame.topic,
                            frame.body,
                            frame.correlation_id,
                            channel_id,
                            slot.index,
                            received_at,
                            mono,
                            frame.version,
                            unchecked,
                        )
                    )
                else:
                    if isinstance(frame, Pong):
                        self.pong.set()
                    elif isinstance(frame, NoLongerSubscribed):
                        self._no_longer_subscribed(frame)
                    elif isinstance(frame, UnknownFrame):
                        self._unknown(frame)
                    self._act(link.receive(frame, mono))
        finally:
            self._end_shedding()
            self._act(link.socket_closed(time.monotonic()))
            if self.lost_at is None:
                self.lost_at = _wall(link.last_frame_at)
            self.gone.set()

    def _unknown(self, frame: UnknownFrame) -> None:
        """Count a frame of no known shape; say the first of this socket (not its text:
        it may hold a customer's details)."""
        stats = self.slot.stats
        stats.unknown_frames += 1
        if not self._told_unknown:
            self._told_unknown = True
            log.warning(
                "slot %d: ignored a JSON frame of no known shape (%d bytes) on channel %s; "
                "later ones of this socket are only counted (unknown_frames)",
                self.slot.index,
                len(frame.raw),
                self.info.id,
            )

    async def _watch(self) -> None:
        while True:
            deadline = self.link.next_deadline()
            if deadline is None:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._wake.wait()
            actions = self.link.poll(time.monotonic())
            if any(isinstance(a, SendPing) for a in actions):
                await self._ping()
            self._act(actions)

    def _no_longer_subscribed(self, frame: NoLongerSubscribed) -> None:
        """Say why, when the platform says: another channel of the client may have the topics."""
        # The platform's words, but only if they are a plain code: they go in a log line.
        given = frame.reason or ""
        reason = given if _REASON.fullmatch(given) else "no readable reason given"
        if self.link.rotation_requested:
            # This socket's successor subscribing, on a platform that gives a
            # topic to one channel of a client at a time: the hand-over itself.
            log.info(
                "slot %d: channel %s handed its topics on (%s)",
                self.slot.index,
                self.info.id,
                reason,
            )
            return
        hint = (
            ": another channel of this OAuth client subscribed them (another instance or "
            "application with the same client credentials? give each its own OAuth client)"
            if reason == "another_channel_subscribed"
            else ""
        )
        log.warning(
            "slot %d: channel %s is no longer subscribed (%s)%s; rotating it",
            self.slot.index,
            self.info.id,
            reason,
            hint,
        )

    def rotation_declined(self) -> None:
        """The pool did not act on this socket's last :class:`Rotate`: the link may ask again."""
        self.link.rotation_declined(time.monotonic())
        self._wake.set()  # the watchdog's next deadline moved

    def _act(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendPing):
                continue  # sent by the watchdog task, which owns the timers
            if isinstance(action, BecameLive):
                self.live.set()
            else:
                if isinstance(action, Recreate) and action.reason == "channel_gone":
                    self.read_on = True
                if isinstance(action, Reconnect | Recreate) and self.lost_at is None:
                    # The last frame read before the loss, whatever the
                    # loss was (see channel.py, "When events may have
                    # started to go missing"), not the moment we noticed.
                    since = self.link.lost_since
                    self.lost_at = _wall(since if since is not None else self.link.last_frame_at)
                    self.gone.set()
                self.signals.put_nowait(action)
        self._wake.set()

    def _shed(self, received_at: float) -> None:
        """Count a notification read but not queued (the reader is behind)."""
        shed = self.shedding
        if shed is None:
            # From the last notification queued: what was published after it
            # may be in what is shed.
            start = self.queued_at if self.queued_at is not None else received_at
            self.shedding = [start, received_at, 1]
            self.pool._shedding.add(self)
            log.warning(
                "slot %d: %d notifications wait for the reader; shedding what channel %s "
                "reads until they are half as many (the window is reported as a gap)",
                self.slot.index,
                self.pool._inbound.qsize(),
                self.info.id,
            )
        else:
            shed[1] = received_at
            shed[2] += 1
        self.slot.stats.shed += 1

    def _end_shedding(self) -> None:
        """Queue the shed window as an outage, behind what was queued before it."""
        shed, self.shedding = self.shedding, None
        if shed is None:
            return
        self.pool._shedding.discard(self)
        start, end, count = shed
        outage = Outage(
            slot=self.slot.index,
            channel_id=self.info.id,
            # Every topic of the slot: a superset of what was shed.
            topics=self.slot.desired_set,
            start=float(start),
            end=float(end),
            reason="overload",
        )
        log.warning(
            "slot %d: shed %d notifications of channel %s over %.3f s",
            self.slot.index,
            count,
            self.info.id,
            end - start,
        )
        shed_item = _Shed(outage)
        # Until the reader reaches it, other sockets' notifications queued
        # ahead of it must not carry a watermark past it (unreported_since).
        self.pool._sheds_queued.append(shed_item)
        self.pool._inbound.put_nowait(shed_item)

    @property
    def last_frame_wall(self) -> float:
        """Unix time of the last frame read on this socket."""
        return _wall(self.link.last_frame_at)

    @property
    def unsubscribed_at(self) -> float | None:
        """Unix time from which this live socket's subscriptions may be gone, if they are."""
        since = self.link.unsubscribed_since
        return None if since is None else _wall(since)

    @property
    def reader(self) -> asyncio.Task[None]:
        """The task reading the socket: done once the socket is closed or lost."""
        return self._tasks[0]

    async def _ping(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
            await self.ws.send_str(PING.decode())

    async def drain_and_close(
        self, rest: RestClient, timeout_s: float, unless: asyncio.Event | None = None
    ) -> bool:
        """Stop the channel's traffic, read what is already in flight, then close.

        We unsubscribe (nothing new is sent after the DELETE is answered),
        then ping and wait for the pong. The reference does not promise that
        the pong follows every notification sent before it, so the pong only
        says when to start closing: the reader keeps going through the close
        handshake, and every frame read before the platform's close frame is
        delivered (and counted in ``after_drain`` if it came after the pong).
        Returns whether both the pong and the close came in time: False means
        frames may have been left unread.

        The waits end early when this socket dies (nothing more to read), or
        when ``unless`` is set: a rotation's successor lost while its
        predecessor drains must not wait out these timeouts (with the
        rotation, the slot's reconnection waits on them), and its outage is
        reported from its own last frame.
        """
        drained = False
        if self.lost_at is None:
            stops = (self.gone,) if unless is None else (self.gone, unless)
            # Bounded: a platform that keeps answering 429 or 503 must not
            # hold a rotation (and the permit other slots wait for) for long.
            with contextlib.suppress(GenesysMuxError):
                await _within(rest.delete_subscriptions(self.info.id), timeout_s, stops)
            self.pong.clear()
            await self._ping()
            drained = await _within(self.pong.wait(), timeout_s, stops)
            self.drained = True
            if unless is not None and unless.is_set():
                await self.close()  # the slot needs its reconnection now
                return False
            drained = await self._close_reading() and drained
        await self.close()
        return drained

    async def _close_reading(self) -> bool:
        """Send our close frame and read on until the platform's; True if it came in time.

        aiohttp's ``close()`` would discard every frame until the peer's close
        frame, so the handshake is driven here and the reader runs through it
        (the socket is connected with ``autoclose=False`` so that the reader
        stops at the peer's close frame instead of answering it). The
        ``close()`` that follows then only releases the connection; the close
        frame it repeats is one the peer discards (RFC 6455 forbids only data
        frames after a close).
        """
        reader = self.reader
        try:
            await self.ws.send_frame(_NORMAL_CLOSURE, aiohttp.WSMsgType.CLOSE)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            return reader.done()
        try:
            async with asyncio.timeout(self.pool.settings.close_timeout_s):
                await asyncio.shield(reader)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Close the socket and stop its tasks."""
        with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
            await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def abandon(self) -> asyncio.Task[None]:
        """Give up on a lost socket at once; its close handshake runs in the background.

        A socket whose channel is gone (``{"result":"404"}``) still works: the
        platform writes what it had in flight before its close frame, so it
        is read on until then (within ``close_timeout_s``) and what comes is
        delivered. Any other lost socket is read no more: a dead link would
        only make us wait. The returned task closes the socket.
        """
        name = f"genesys-mux-close-{self.info.id}"
        if self.read_on:
            self._tasks[1].cancel()  # the watchdog: the link is done with
            return asyncio.create_task(self._read_on_then_close(), name=name)
        for task in self._tasks:
            task.cancel()
        return asyncio.create_task(self.close(), name=name)

    async def _read_on_then_close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.pool.settings.close_timeout_s):
                await asyncio.shield(self.reader)
        await self.close()


class _Inbound:
    """What the sockets' readers queue for :meth:`ChannelPool.frames`, in order.

    A deque, and the futures of the readers waiting for it to fill.
    asyncio.Queue would do, but it counts tasks and wakes putters on every
    item, for a ``join()`` and a bound this queue does not use (the readers
    shed instead, see ``PoolSettings.inbound_limit``): that measured about
    0.4 µs a notification. ``None`` queued is the end (see ``close``).
    """

    __slots__ = ("_waiters", "items")

    def __init__(self) -> None:
        self.items: deque[InboundNotification | _Marker | _Shed | None] = deque()
        self._waiters: list[asyncio.Future[None]] = []

    def qsize(self) -> int:
        """How many items are queued."""
        return len(self.items)

    def put_nowait(self, item: InboundNotification | _Marker | _Shed | None) -> None:
        """Queue ``item`` and wake every waiting reader (each checks for itself)."""
        self.items.append(item)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self) -> None:
        """Return once an item is queued: at once if one is."""
        if self.items:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            # Cancelled before an item came: no longer waiting.
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)


@dataclass(frozen=True, slots=True)
class _Marker:
    """Put behind the queued notifications; set once their reader has passed it."""

    reached: asyncio.Event


@dataclass(frozen=True, slots=True)
class _Shed:
    """A socket's shed window, queued behind the notifications read before it.

    Reported (``on_outage``) when the reader reaches it, so that the gap
    comes after the events that were read before it, as it happened.
    """

    outage: Outage


#: Socket keys, unique in the process.
_SOCKET_KEYS = itertools.count(1)
#: The platform's code for a subscription list with a topic it does not have.
_INVALID_TOPIC = "notification.invalid.topic"
#: The payload of a close frame with status 1000 (normal closure).
_NORMAL_CLOSURE = (1000).to_bytes(2, "big")


def _parts_among(topics: Iterable[str], sent: Iterable[str]) -> list[str]:
    """Those of ``topics`` (plain, as the caller spells them) in a combined topic of ``sent``.

    Compared in lower case: the platform may name topics otherwise.
    """
    by_name = {t.lower(): t for t in topics}
    parts = expanded_topics(name for name in sent if "?" in name)
    return [by_name[part] for part in parts if part in by_name]


def _drain_queue(queue: asyncio.Queue[Action]) -> list[Action]:
    """Everything waiting in ``queue``, taken out."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def _within(
    work: Coroutine[Any, Any, object], timeout_s: float, stops: Sequence[asyncio.Event]
) -> bool:
    """Await ``work`` for at most ``timeout_s``, or until one of ``stops`` is set; True if done."""
    done_work = asyncio.ensure_future(work)
    waits = [asyncio.ensure_future(stop.wait()) for stop in stops]
    try:
        first = asyncio.FIRST_COMPLETED
        await asyncio.wait([done_work, *waits], timeout=timeout_s, return_when=first)
    finally:
        for task in (done_work, *waits):
            task.cancel()
        await asyncio.gather(done_work, *waits, return_exceptions=True)
    if done_work.cancelled():
        return False
    error = done_work.exception()
    if error is not None:
        raise error
    return True


def _wall(monotonic: float) -> float:
    """The Unix time of a past ``time.monotonic()`` reading."""
    return time.time() - (time.monotonic() - monotonic)


@dataclass(slots=True)
class _Slot:
    index: int
    desired: list[str] = field(default_factory=list)
    #: The same topics as a set, the planner's: every outage of the slot
    #: names this one object rather than a copy each.
    desired_set: frozenset[str] = frozenset()
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    synced: asyncio.Condition = field(default_factory=asyncio.Condition)
    closing: bool = False
    failed: bool = False
    task: asyncio.Task[None] | None = None
    stats: SlotStats = field(default_factory=SlotStats)
    #: The socket serving the slot (the old one during a rotation).
    socket: _Socket | None = None
    #: Every socket of the slot not yet closed or given up, by key.
    sockets: dict[int, _Socket] = field(default_factory=dict)
    #: The channel of every socket the slot had, by key (outages name it).
    channels: dict[int, str] = field(default_factory=dict)
    machine: SlotMachine = field(init=False)
    #: The machine's last request for a socket (whether to reuse the channel).
    wanted: OpenSocket | None = None
    #: A channel created by a set-up attempt that then failed: the next
    #: attempt of the same set-up takes it up. Channels cannot be deleted and
    #: a client has 20, so one per failed attempt would soon get live
    #: channels evicted.
    unused_channel: ChannelInfo | None = None

    def __post_init__(self) -> None:
        self.machine = SlotMachine(self.index)


class ChannelPool:
    """Keeps every desired topic subscribed on a live channel, for as long as it runs.

    Use as an async context manager::

        async with ChannelPool(session, rest, tokens) as pool:
            rejected = await pool.set_topics(topics)
            async for note in pool.frames():
                ...

    ``outages`` keeps the most recent :class:`Outage` records; callbacks in
    ``on_outage`` and ``on_rejection`` are called as they happen.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        rest: RestClient,
        tokens: TokenProvider,
        settings: PoolSettings | None = None,
        *,
        backoff: Backoff | None = None,
        check_bodies: bool = True,
    ) -> None:
        self.settings = settings or PoolSettings()
        #: False: notifications in the platform's layout are split without
        #: reading their body (see :func:`~genesys_mux.core.frames.split_notification`),
        #: which saves a scan of every body for a consumer that decodes them
        #: all anyway; that consumer checks them (see :meth:`recheck`).
        self.check_bodies = check_bodies
        self._session = session
        self._rest = rest
        self._tokens = tokens
        self._planner = Planner(self.settings.planner_limits())
        self._slots: dict[int, _Slot] = {}
        # None is the end-of-stream marker put there by close().
        self._inbound = _Inbound()
        #: Sockets shedding what they read (the reader was behind).
        self._shedding: set[_Socket] = set()
        # Shed windows queued and not yet reached by the reader (so not reported).
        self._sheds_queued: list[_Shed] = []
        # Rotations under way, each borrowing a channel (see _rotation_turn).
        self._rotating = 0
        self._rotation_done = asyncio.Condition()
        self._backoff = backoff or Backoff(
            self.settings.reconnect_base_s, self.settings.reconnect_cap_s
        )
        self._plan_lock = asyncio.Lock()
        self._closed = False
        self._retiring: set[asyncio.Future[None]] = set()
        self.outages: deque[Outage] = deque(maxlen=1000)
        self.rejections: dict[str, Rejection] = {}
        # Topics the platform answered 400 notification.invalid.topic for:
        # left out of every later PUT (see _put).
        self._invalid_topics: dict[str, Rejection] = {}
        # Plain topics never sent combined again: a combined subscription
        # holding them was refused whole (see _put).
        self._apart: set[str] = set()
        # When the token each channel was created with expires (monotonic),
        # by channel id, for the channels a slot may still reuse.
        self._creator_expiry: dict[str, float] = {}
        self.on_outage: list[Callable[[Outage], None]] = []
        self.on_rejection: list[Callable[[Rejection], None]] = []
        self.on_control: list[Callable[[ControlEvent], None]] = []
        #: Called once with the error that stopped the pool for good (refused credentials).
        self.on_failure: list[Callable[[AuthenticationError], None]] = []
        #: That error, once it happened: :meth:`set_topics` and :meth:`frames` raise it.
        self.failure: AuthenticationError | None = None

    async def __aenter__(self) -> ChannelPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the public surface ---------------------------------------------------

    async def set_topics(self, topics: Iterable[str], *, wait: bool = True) -> list[Rejection]:
        """Make ``topics`` the desired set; returns the topics the platform refused.

        Raises :class:`~genesys_mux.errors.CapacityError` if they cannot fit,
        with nothing changed. With ``wait`` (the default) it returns once every
        changed slot has applied the new set on a live channel. Raises
        :class:`~genesys_mux.errors.AuthenticationError` once the platform has
        refused the credentials: no channel can be had until they are fixed.
        """
        async with self._plan_lock:
            diff = self._planner.plan(topics)
            touched: list[_Slot] = []
            for op in diff.ops:
                if isinstance(op, OpenSlot):
                    slot = _Slot(op.slot)
                    self._slots[op.slot] = slot
                    slot.task = asyncio.create_task(
                        self._supervise(slot), name=f"genesys-mux-slot-{op.slot}"
                    )
                elif isinstance(op, CloseSlot):
                    closing = self._slots.pop(op.slot, None)
                    if closing is not None:
                        closing.closing = True
                        closing.changed.set()
                        if closing.task is not None:
                            # It still has to empty and close its channel.
                            self._finishing(closing.task)
                elif isinstance(op, Subscribe | Unsubscribe):
                    touched.append(self._slots[op.slot])
                    if isinstance(op, Subscribe):
                        self._try_again(self._slots[op.slot])
            for slot in {id(s): s for s in touched}.values():
                slot.desired_set = self._planner.slots.get(slot.index, frozenset())
                slot.desired = sorted(slot.desired_set)
                slot.stats.topics = len(slot.desired)
                slot.machine.topics_changed()
                slot.changed.set()
        if wait:
            for slot in touched:
                await self._wait_synced(slot)
        if self.failure is not None:
            raise self.failure.with_traceback(None)  # one instance, raised again and again
        wanted = self._planner.topics
        return [r for t, r in self.rejections.items() if t in wanted]

    async def frames(self) -> AsyncIterator[InboundNotification]:
        """Every notification from every channel, in arrival order, until :meth:`close`.

        Raises :class:`~genesys_mux.errors.AuthenticationError` after the
        notifications already read, once the credentials were refused.
        """
        inbound = self._inbound
        next_frame = self.next_frame_nowait
        while True:
            note = next_frame()
            if note is not None:
                yield note
            elif inbound.items:  # the end is next: nothing else is left queued
                if self.failure is not None:
                    raise self.failure.with_traceback(None)  # one instance, raised again and again
                return
            else:
                await inbound.wait()

    def next_frame_nowait(self) -> InboundNotification | None:
        """A notification if one is waiting, else None (for batch consumers).

        None too once the pool is closed; :meth:`frames` then ends.
        """
        items = self._inbound.items
        while True:
            if not items:
                if not self._shedding:
                    return None
                self._caught_up()  # queues the shed windows, reported below
                continue
            note = items.popleft()
            if isinstance(note, InboundNotification):
                return note
            if note is None:
                items.appendleft(None)  # the end stays, for any other reader
                return None
            if isinstance(note, _Marker):
                note.reached.set()
            else:
                self._report_shed(note)

    def recheck(self, note: InboundNotification) -> InboundNotification | None:
        """Decode the whole frame of a note whose body did not decode; what it really holds.

        For a consumer of a pool with ``check_bodies=False`` (see
        :attr:`InboundNotification.unchecked`). The frame is either valid
        JSON laid out otherwise than the platform does (a member added, say),
        and this is the notification it holds, with its body checked; or it
        is broken, or not a notification after all, and it is counted as the
        socket's reader would have counted it (a bad frame, not a
        notification), logged, and None is returned.
        """
        if not note.unchecked:
            return note
        frame = join_notification(
            note.topic, note.version or "", note.body, note.correlation_id or ""
        )
        stats = self._slots[note.slot].stats if note.slot in self._slots else None
        try:
            decoded = decode_frame(frame)
        except FrameError as exc:
            if stats is not None:
                stats.notifications -= 1
                stats.bad_frames += 1
            log.warning("slot %d: ignored a frame that is not JSON: %s", note.slot, exc)
            return None
        if isinstance(decoded, Notification):
            return InboundNotification(
                decoded.topic,
                decoded.body,
                decoded.correlation_id,
                note.channel_id,
                note.slot,
                note.received_at,
                note.received_mono,
                decoded.version,
            )
        # Valid JSON in a notification's layout that is something else once
        # read whole (a repeated member overriding the topic): the link has
        # no use for such a frame either.
        if stats is not None:
            stats.notifications -= 1
        log.warning(
            "slot %d: ignored a frame that reads as a notification but is a %s",
            note.slot,
            type(decoded).__name__,
        )
        return None

    def _caught_up(self) -> None:
        """The reader took everything queued: sockets shedding stop, and say what they shed.

        A quiet channel may read nothing more for a long time; its shed
        window must not wait for that to be reported.
        """
        for socket in list(self._shedding):
            socket._end_shedding()

    async def flushed(self, timeout_s: float) -> bool:
        """Wait until the reader of :meth:`frames` has taken every notification queued so far.

        The reader handles each notification before asking for the next, so
        once it has passed a marker put behind them, they have all been
        handled. False if that did not happen within ``timeout_s``.
        """
        marker = _Marker(asyncio.Event())
        self._inbound.put_nowait(marker)
        try:
            async with asyncio.timeout(timeout_s):
                await marker.reached.wait()
        except TimeoutError:
            return False
        return True

    async def prove_live(self, timeout_s: float) -> bool:
        """Ping every serving socket and wait for the pongs, then for the reader to catch up.

        Afterwards :meth:`read_until` is no older than the pings: a quiet
        socket's last frame may otherwise be a heartbeat ago. (As with a
        drain, the pong proves the socket alive; the reference does not
        promise it follows every notification sent before it.) False if a
        socket did not answer within ``timeout_s``.
        """
        sockets = [s.socket for s in self._slots.values() if s.socket is not None]
        for socket in sockets:
            socket.pong.clear()
            await socket._ping()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(socket.pong.wait() for socket in sockets))
        except TimeoutError:
            return False
        return await self.flushed(timeout_s)

    async def drain(self, timeout_s: float) -> list[Outage]:
        """Stop every slot and read what its socket already has in flight, for a clean stop.

        Each live socket is unsubscribed, then pinged: once the pong is read,
        every notification the platform sent before it has been read too
        (and queued for :meth:`frames`), and the socket is closed. A socket
        that does not answer within ``timeout_s``, or that was already lost,
        may have left events unread: each such window is returned as an
        :class:`Outage` (reason ``stopped``) from the last frame read on it.
        Call :meth:`close` afterwards.
        """
        slots = list(self._slots.values())
        for slot in slots:
            slot.closing = True
            if slot.task is not None:
                slot.task.cancel()
        await asyncio.gather(*(s.task for s in slots if s.task is not None), return_exceptions=True)
        found = await asyncio.gather(*(self._drain_slot(s, timeout_s) for s in slots))
        return [outage for outages in found for outage in outages]

    async def _drain_slot(self, slot: _Slot, timeout_s: float) -> list[Outage]:
        machine = slot.machine
        for drain in self._perform(slot, machine.stop()):
            socket = slot.sockets.pop(drain.socket, None)
            if socket is None:
                continue
            try:
                # Bounded as a whole: the unsubscribe is a REST call, and a
                # platform that does not answer must not hold up a shutdown.
                async with asyncio.timeout(2 * timeout_s + 1.0):
                    ok = await socket.drain_and_close(self._rest, timeout_s)
            except TimeoutError:
                await socket.abandon()
                ok = False
            last = socket.lost_at if socket.lost_at is not None else socket.last_frame_wall
            machine.drained(drain.socket, ok, last)
        # Sockets caught between two states by the stop (a rotation's old
        # socket, a successor not yet serving): closed, not drained.
        for socket in list(slot.sockets.values()):
            await socket.abandon()
        slot.sockets.clear()
        slot.socket = None
        # Returned, not reported: the caller makes them its final gaps.
        return [
            self._outage_of(slot, window)
            for window in machine.closed(time.time())
            if isinstance(window, OutageWindow)
        ]

    @property
    def live(self) -> bool:
        """True when every slot has applied its topics on a live socket that still has them.

        A socket whose subscriptions went (``no_longer_subscribed``,
        ``token_revoked``) works but carries nothing: not live until a
        successor serves, or the subscriptions are back. Nor is one known
        lost that still serves its slot, until it is replaced.
        """
        return all(
            s.socket is not None
            and s.socket.live.is_set()
            and s.socket.lost_at is None
            and s.socket.unsubscribed_at is None
            and s.machine.window is None
            and s.machine.in_sync
            for s in self._slots.values()
        )

    def read_until(self) -> float | None:
        """The Unix time up to which every notification received is in :meth:`frames`' hands.

        The oldest last-frame time over the serving sockets (a socket reads
        in order: what was sent on it before a frame read was read before
        it), or None when a slot has no live, subscribed socket, or frames
        read are still queued. A caller that has taken everything queued
        has then seen every notification received before that time.
        """
        if self._inbound.qsize() or self._shedding or not self._slots or not self.live:
            return None
        return min(s.socket.last_frame_wall for s in self._slots.values() if s.socket is not None)

    def unreported_since(self, topics: frozenset[str]) -> float | None:
        """The earliest Unix time from which a notification on ``topics`` may be missing unreported.

        An outage is reported once it is over (when a successor delivers, or
        the reader reaches a shed window), and a socket that died silently
        is not known to be dead until its watchdog says so. Meanwhile other
        channels keep delivering. A checkpoint whose watermark passed the
        start of such a window would make a crash lose it: the next run's
        restart gap starts at the watermark. So for every slot carrying one
        of ``topics``: the start of its open window; for its serving socket,
        the last frame read (all it is known to have delivered), when it was
        lost (before its supervisor has opened the window), when its
        subscriptions went, and when it began to shed; and the start of
        every shed window queued but not yet reported. None when no slot
        carries them.
        """
        earliest: float | None = None
        for slot in self._slots.values():
            times: list[float] = []
            if slot.machine.window is not None:
                times.append(slot.machine.window.since)
            socket = slot.socket
            if socket is not None:
                times.append(socket.last_frame_wall)
                if socket.lost_at is not None:
                    # Lost (a 404 read, say) but the machine not told yet: the
                    # loss starts before that frame.
                    times.append(socket.lost_at)
                if socket.shedding is not None:
                    times.append(socket.shedding[0])
                unsubscribed = socket.unsubscribed_at
                if unsubscribed is not None:
                    times.append(unsubscribed)
            if not times:
                continue  # never connected: nothing of it was ever subscribed
            since = min(times)
            if earliest is not None and since >= earliest:
                continue
            if topics.isdisjoint(self._planner.slots.get(slot.index, ())):
                continue
            earliest = since
        for shed in self._sheds_queued:
            outage = shed.outage
            if (earliest is None or outage.start < earliest) and not topics.isdisjoint(
                outage.topics
            ):
                earliest = outage.start
        return earliest

    async def subscribed(self, topics: frozenset[str]) -> None:
        """Return once every slot carrying one of ``topics`` has its topics subscribed.

        :meth:`set_topics` waits for the slots it changed; a slot planned
        earlier may still be connecting (a set-up cut short by a cancelled
        caller, retried). A slot that failed or closes is not waited for.
        Raises the pool's failure, if it has one.
        """
        for slot in list(self._slots.values()):
            if not topics.isdisjoint(self._planner.slots.get(slot.index, ())):
                await self._wait_synced(slot)
        if self.failure is not None:
            raise self.failure.with_traceback(None)  # one instance, raised again and again

    def _report_shed(self, shed: _Shed) -> None:
        """Report a shed window the reader reached (queued behind what was read before it)."""
        with contextlib.suppress(ValueError):
            self._sheds_queued.remove(shed)
        self._report_outage(shed.outage)

    def stats(self) -> dict[int, SlotStats]:
        """Per-slot counters, keyed by slot index."""
        for slot in self._slots.values():
            slot.stats.live = slot.socket is not None and slot.socket.live.is_set()
        return {i: s.stats for i, s in sorted(self._slots.items())}

    @property
    def channels_in_use(self) -> int:
        """The channels this pool needs now: one per slot, two while a slot rotates.

        A slot whose socket is down needs one all the same (it is making
        another), so this is what the pool takes of its OAuth client's
        channels whether or not the platform lets it keep them. Channels
        left behind without a socket by a reconnect or a rotation are not
        counted: the platform evicts those first, so they cost nothing
        while the client has room.
        """
        return sum(max(1, len(s.sockets)) for s in self._slots.values())

    def channel_ids(self) -> dict[int, str | None]:
        """The channel currently serving each slot."""
        return {i: (s.socket.info.id if s.socket else None) for i, s in sorted(self._slots.items())}

    async def close(self) -> None:
        """Stop every supervisor and close every socket."""
        if self._closed:
            return
        self._closed = True
        self._inbound.put_nowait(None)
        slots = list(self._slots.values())
        self._slots.clear()
        retiring = list(self._retiring)
        for slot in slots:
            slot.closing = True
            if slot.task is not None:
                slot.task.cancel()
        await asyncio.gather(
            *(s.task for s in slots if s.task is not None), *retiring, return_exceptions=True
        )
        # And what the cancellation itself retired (a rotation's drain cut short).
        await asyncio.gather(*list(self._retiring), return_exceptions=True)
        for slot in slots:
            for socket in list(slot.sockets.values()):
                await socket.close()
            slot.sockets.clear()
            slot.socket = None

    # -- a slot's life ---------------------------------------------------------

    async def _wait_synced(self, slot: _Slot) -> None:
        async with slot.synced:
            await slot.synced.wait_for(lambda: slot.closing or slot.failed or slot.machine.in_sync)

    async def _mark_synced(self, slot: _Slot, version: int) -> None:
        async with slot.synced:
            slot.machine.put_answered(version)
            slot.synced.notify_all()

    def _try_again(self, slot: _Slot) -> None:
        """Start again a slot that gave up (a retry limit, channels it could not use).

        Topics placed on it would otherwise wait on no socket, with nothing
        said to the streams that want them: new topics are a new reason to
        try. Not after refused credentials, which stop the whole pool.
        """
        if not slot.failed or self.failure is not None:
            return
        if slot.task is not None and not slot.task.done():
            return
        log.info("slot %d: trying again for the topics placed on it", slot.index)
        slot.failed = False
        slot.stats.state = "connecting"
        name = f"genesys-mux-slot-{slot.index}"
        slot.task = asyncio.create_task(self._supervise(slot), name=name)

    async def _supervise(self, slot: _Slot) -> None:
        """Keep one slot's topics on a live channel until the slot closes."""
        try:
            await self._keep_alive(slot)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug must not make a slot go quiet without a word.
            log.exception("slot %d: supervisor failed", slot.index)
            slot.failed = True
            slot.stats.state = "failed"
            self._report(ChannelFailed(slot.index, "", type(exc).__name__))
            raise
        finally:
            async with slot.synced:
                slot.synced.notify_all()

    async def _keep_alive(self, slot: _Slot) -> None:
        # The machine decides which socket serves and which windows are
        # outages; this loop opens sockets when it asks (see core/slot.py).
        machine = slot.machine
        self._perform(slot, machine.start())
        reuse: ChannelInfo | None = None
        while True:
            socket = await self._establish_with_retry(slot, reuse)
            if socket is None:
                break  # the slot closed, or we were told to give up
            self._perform(slot, machine.connected(socket.key, time.time()))
            action = await self._serve(slot)
            if action is None:
                break
            if action.reason == "channel_gone":
                slot.stats.gone += 1
            socket = slot.socket
            if socket is not None:
                # Never wait on a lost socket: the reconnect starts now.
                since = socket.lost_at if socket.lost_at is not None else time.time()
                self._report(ChannelLost(slot.index, socket.info.id, action.reason))
                self._perform(
                    slot,
                    machine.lost(
                        socket.key, since, time.time(), reuse=isinstance(action, Reconnect)
                    ),
                )
            # The machine says whether the lost socket's channel may be reused.
            wanted = slot.wanted
            reuse = socket.info if socket is not None and wanted and wanted.reuse else None
            slot.stats.state = "reconnecting"
            slot.stats.reconnects += 1
        if slot.socket is not None:
            await self._retire(slot, slot.socket)
            slot.socket = None

    async def _serve(self, slot: _Slot) -> Reconnect | Recreate | None:
        """Run a slot on its socket until it is lost (or None: the slot closed).

        Handles rotations and subscription changes on the way.
        """
        machine = slot.machine
        changes = Retries(f"slot {slot.index}: subscription change", self._backoff, logger=log)
        while True:
            socket = slot.socket
            assert socket is not None
            if slot.closing:
                return None
            put = machine.put_due(time.time())
            if put is not None:
                try:
                    gone = await self._sync(slot, socket, put.version)
                    changes.succeeded()
                except GenesysMuxError as exc:
                    delay = changes.failed(exc)
                    assert delay is not None  # no attempt limit
                    machine.put_failed(time.time(), delay)
                    continue
                if gone is not None:
                    # At once: the change is still due, so going round the
                    # loop would PUT the dead channel again before any signal
                    # is read.
                    return gone
                continue
            wait_s = machine.put_wait(time.time())
            signal_wait = asyncio.ensure_future(socket.signals.get())
            change_wait = asyncio.ensure_future(slot.changed.wait())
            try:
                await asyncio.wait(
                    {signal_wait, change_wait},
                    timeout=wait_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                change_wait.cancel()
                if not signal_wait.done():
                    signal_wait.cancel()
            slot.changed.clear()
            if not signal_wait.done() or signal_wait.cancelled():
                continue
            action = signal_wait.result()
            if isinstance(action, Reconnect | Recreate):
                return action
            if isinstance(action, CheckSubscriptions):
                await self._check_subscriptions(slot, socket, action)
                continue
            if isinstance(action, Rotate):
                if socket.unsubscribed_at is not None:
                    slot.machine.unsubscribed(socket.key, socket.unsubscribed_at)
                if not await self._rotate(slot, socket, action):
                    # No successor could be made, and the old socket cannot
                    # serve on (lost, or without its subscriptions).
                    return Recreate(action.reason)

    async def _rotate(self, slot: _Slot, old: _Socket, action: Rotate) -> bool:
        """Make-before-break: a live successor first, then close the old socket.

        Returns False when no successor could be made and the old socket
        cannot serve on. The rotation permit is held until the old socket is
        closed, because that is when the spare channel it borrowed is given
        back: with two sockets per slot for longer, the platform would evict
        a live channel.
        """
        if action.reason == "token_expiring" and not await self._newer_token(old):
            log.warning(
                "slot %d: no newer OAuth token to move channel %s onto (see the token "
                "warnings); it serves on, and ends with its token in %.0f s unless one "
                "comes before",
                slot.index,
                old.info.id,
                max(0.0, old.token_expires_at - time.monotonic()),
            )
            # Not a rotation: the link asks again later, and acts on any
            # warning the platform sends meanwhile.
            old.rotation_declined()
            return True
        if not await self._turn_unless_gone(old):
            # Closed while waiting for a spare channel (a warning to every
            # socket, rotations taking turns): no successor is needed to
            # keep it serving now. Re-established at once, as any lost
            # socket is, instead of queueing on as the window grows.
            log.warning(
                "slot %d: channel %s closed while its rotation waited for a spare channel",
                slot.index,
                old.info.id,
            )
            return False
        log.info("slot %d: rotating channel %s (%s)", slot.index, old.info.id, action.reason)
        machine = slot.machine
        async with self._rotation_turn():
            machine.rotate(action.reason)
            current = self._tokens.current
            revoked_since = old.link.unsubscribed_since
            # Once per revocation, not once per slot: a token asked for
            # after the notice came is not one it revoked.
            if action.reauth and (
                current is None or revoked_since is None or current.issued_at <= revoked_since
            ):
                with contextlib.suppress(GenesysMuxError):
                    await self._tokens.refresh(stale=current)
            successor = await self._successor(slot, old)
            self._old_lost(slot, old)
            if successor is None:
                self._perform(slot, machine.rotation_failed())
                return slot.socket is not None
            slot.stats.rotations += 1
            drains = self._perform(slot, machine.connected(successor.key, time.time()))
            if not drains and slot.socket is old:
                # Both sockets deliver: the overlap lasts until the successor
                # has proved it delivers (or we stopped waiting for it to).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.rotation_overlap_s):
                        await successor.delivering.wait()
                self._old_lost(slot, old)
                if slot.socket is old:
                    end = successor.first_notification_at or time.time()
                    drains = self._perform(slot, machine.rotated(end))
                    await asyncio.sleep(self.settings.rotation_settle_s)
            self._report(ChannelRotated(slot.index, successor.info.id, old.info.id, action.reason))
            for drain in drains:
                # Cut short if the successor dies meanwhile: the slot must
                # reconnect now, not once the old socket's waits are over.
                await self._drain(slot, drain.socket, unless=successor.gone)
        return True

    async def _successor(self, slot: _Slot, old: _Socket) -> _Socket | None:
        """Make a rotation's successor, saying at once if the old socket dies meanwhile.

        Making it can take as long as the platform refuses to (channels
        answering 5xx, the login down). The old socket dying then is a
        channel lost like any other: the slot is down, its window open,
        ``/readyz`` must say so, and the audit log too, now rather than
        once a successor exists.
        """
        building = asyncio.ensure_future(self._establish_with_retry(slot, None))
        gone = asyncio.ensure_future(old.gone.wait())
        try:
            await asyncio.wait({building, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not building.done() and old.key in slot.sockets:
                reason = next(
                    (
                        a.reason
                        for a in _drain_queue(old.signals)
                        if isinstance(a, Reconnect | Recreate)
                    ),
                    "socket_closed",
                )
                log.warning(
                    "slot %d: channel %s lost while its successor was being made (%s)",
                    slot.index,
                    old.info.id,
                    reason,
                )
                self._report(ChannelLost(slot.index, old.info.id, reason))
                slot.stats.state = "reconnecting"
                self._old_lost(slot, old)
            return await building
        finally:
            gone.cancel()
            if not building.done():
                # Cancelled (the pool closing): the attempt goes with it.
                building.cancel()
                await asyncio.gather(building, return_exceptions=True)

    async def _newer_token(self, old: _Socket) -> bool:
        """Whether a token outliving the one that made ``old``'s channel can be had now.

        Without one (the login down or refusing, the current token kept
        until it expires), a successor would be made with the same token
        and die at the same moment: rotated again at half the time left,
        and again, each rotation a channel more, for nothing.
        """
        try:
            token = await self._tokens.token()
        except GenesysMuxError:
            return True  # the rotation's own attempt says what is wrong
        if token.expires_at > old.token_expires_at:
            return True
        # The cached token is still the creator, not yet due for renewal by
        # the provider's own margin: renew it for the successor now.
        return await self._tokens.outliving(old.token_expires_at) is not None

    def _spare_channels(self) -> int:
        """Channels a rotation may borrow now: beside one per slot, within the budget."""
        reserved = self.settings.reserved_channels or 1
        if not self.settings.parallel_rotations:
            return reserved
        return max(reserved, self.settings.max_channels - len(self._slots))

    async def _take_turn(self) -> None:
        async with self._rotation_done:
            await self._rotation_done.wait_for(lambda: self._rotating < self._spare_channels())
            self._rotating += 1

    async def _give_turn(self) -> None:
        async with self._rotation_done:
            self._rotating -= 1
            self._rotation_done.notify_all()

    async def _turn_unless_gone(self, old: _Socket) -> bool:
        """Take a rotation turn (True), or give up waiting once ``old`` is lost (False)."""
        taking = asyncio.ensure_future(self._take_turn())
        gone = asyncio.ensure_future(old.gone.wait())
        try:
            await asyncio.wait({taking, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._forgo_turn(taking)
            raise
        finally:
            gone.cancel()
        if taking.done():
            # Taken, even if the socket went at the same moment: the rotation
            # then finds it lost, as it would have a moment later.
            taking.result()
            return True
        self._forgo_turn(taking)
        return False

    def _finishing(self, task: asyncio.Future[None]) -> None:
        """Keep ``task`` (closing a socket, giving a turn back) until it ends: close() awaits it."""
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _forgo_turn(self, taking: asyncio.Future[None]) -> None:
        """Stop waiting for a turn; one taken meanwhile (it cannot be cancelled then) goes back."""

        def give_back(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._finishing(asyncio.ensure_future(self._give_turn()))

        taking.add_done_callback(give_back)
        taking.cancel()

    @contextlib.asynccontextmanager
    async def _rotation_turn(self) -> AsyncIterator[None]:
        """Hold a turn :meth:`_turn_unless_gone` took until the rotation gave its channel back.

        More sockets than the budget would make the platform evict a channel
        (those without a socket first, and then a live one).
        """
        try:
            yield
        finally:
            await self._give_turn()

    def _old_lost(self, slot: _Slot, old: _Socket) -> None:
        """Tell the machine if the old socket died during its rotation."""
        if old.lost_at is not None and old.key in slot.sockets:
            self._perform(slot, slot.machine.lost(old.key, old.lost_at, time.time()))

    def _perform(self, slot: _Slot, actions: list[SlotAction]) -> list[Drain]:
        """Carry out the slot machine's actions; returns the drains, for the caller to await."""
        drains: list[Drain] = []
        for action in actions:
            if isinstance(action, Serve):
                slot.socket = slot.sockets[action.socket]
            elif isinstance(action, Abandon):
                socket = slot.sockets.pop(action.socket, None)
                if slot.socket is socket:
                    slot.socket = None
                if socket is not None:
                    self._finishing(socket.abandon())
            elif isinstance(action, OutageWindow):
                self._outage(slot, action)
            elif isinstance(action, Drain):
                drains.append(action)
            else:
                # The supervisor's loop (or the rotation) opens it.
                slot.wanted = action
        # The channels of sockets nothing can name any more: a slot that
        # reconnects or rotates for weeks would otherwise keep them all.
        named = slot.machine.named_sockets()
        for key in [k for k in slot.channels if k not in named and k not in slot.sockets]:
            del slot.channels[key]
        return drains

    async def _drain(self, slot: _Slot, key: int, unless: asyncio.Event | None = None) -> bool:
        """Drain and close one socket of the slot, and tell the machine; False if frames may
        have been left unread. ``unless``: see :meth:`_Socket.drain_and_close`."""
        socket = slot.sockets.pop(key, None)
        if socket is None:
            slot.machine.drained(key, True, time.time())  # given up already: nothing to drain
            return True
        if slot.socket is socket:
            slot.socket = None
        try:
            ok = await socket.drain_and_close(self._rest, self.settings.pong_timeout_s, unless)
        except BaseException:
            # Cancelled (a stop) midway: taken out of the slot's sockets, it
            # would be closed by nobody and read on for ever. A rotation's
            # old socket: its successor had all it could still deliver.
            self._finishing(socket.abandon())
            slot.machine.drained(key, True, time.time())
            raise
        last = socket.lost_at if socket.lost_at is not None else socket.last_frame_wall
        slot.machine.drained(key, ok, last)
        return ok

    async def _retire(self, slot: _Slot, socket: _Socket) -> None:
        # There is no DELETE for channels: empty it so it stops costing
        # traffic, close the socket, and let the platform expire it.
        slot.sockets.pop(socket.key, None)
        await socket.drain_and_close(self._rest, self.settings.pong_timeout_s)
        self._report(ChannelClosed(slot.index, socket.info.id, "no_topics_left"))

    async def _establish_with_retry(self, slot: _Slot, reuse: ChannelInfo | None) -> _Socket | None:
        retries = Retries(
            f"slot {slot.index}: establishing a channel",
            self._backoff,
            max_attempts=self.settings.max_reconnect_attempts,
            logger=log,
        )
        # Only this call's attempts take up a channel one of them made: an
        # older one may belong to a token that is being replaced.
        slot.unused_channel = None
        unusable = 0  # channels made in a row whose answers could not be used
        while not slot.closing and not self._closed:
            try:
                return await self._establish(slot, reuse)
            except AuthenticationError as exc:
                # Refused credentials never heal by themselves: stop, loudly.
                self._give_up(slot, reuse, exc)
                return None
            except GenesysMuxError as exc:
                unusable = unusable + 1 if isinstance(exc, UnusableChannelError) else 0
                if unusable >= _MOST_UNUSABLE_CHANNELS:
                    # Each made a channel (there is no DELETE): going on would
                    # evict the client's other channels, another application's
                    # first, for an answer that will not change by itself.
                    advice = (
                        f"gave up after {unusable} such channels in a row (each one counts "
                        "against the client's 20 and may evict another's): check the base URL "
                        "or region, and any proxy that rewrites the platform's answers"
                    )
                    status = exc.status if isinstance(exc, ApiError) else 0
                    self._give_up(
                        slot, reuse, UnusableChannelError(f"{exc}; {advice}", status=status)
                    )
                    return None
                delay = retries.failed(exc)
                if delay is None:
                    self._give_up(slot, reuse, exc)
                    return None
                if isinstance(exc, ApiError) and exc.status == 404:
                    reuse = slot.unused_channel = None
                elif slot.unused_channel is not None:
                    reuse = slot.unused_channel
                await asyncio.sleep(delay)
        return None

    def _give_up(self, slot: _Slot, reuse: ChannelInfo | None, exc: GenesysMuxError) -> None:
        if isinstance(exc, AuthenticationError):
            # Raised to every reader and caller of the feed, which say it:
            # an ERROR line here would say it twice (a CLI's error: line).
            log.debug("slot %d: giving up on its channel: %s", slot.index, exc)
        else:
            log.error("slot %d: giving up on its channel: %s", slot.index, exc)
        slot.stats.state = "failed"
        slot.failed = True
        self._report(ChannelFailed(slot.index, reuse.id if reuse else "", str(exc)))
        # The window since the socket was lost is a gap now, not once a
        # socket serves again (if ever) or the pool stops.
        self._perform(slot, slot.machine.gave_up(time.time()))
        if isinstance(exc, AuthenticationError) and self.failure is None:
            # Refused credentials stop every slot, not just this one: say so
            # to whoever waits on the pool instead of going quiet.
            self.failure = exc
            self._inbound.put_nowait(None)
            for callback in self.on_failure:
                callback(exc)

    async def _establish(self, slot: _Slot, reuse: ChannelInfo | None) -> _Socket:
        """Create (or reuse) a channel, subscribe the slot's topics, connect, wait until live."""
        if slot.socket is None:
            # During a rotation the old socket still serves the slot.
            slot.stats.state = "connecting"
        token = await self._tokens.token()
        info: ChannelInfo | None = None
        ws: _Bytes | None = None
        if reuse is not None:
            ws = await self._reconnect(slot, reuse)
            if ws is not None:
                info = reuse
        if info is None:
            try:
                info = await self._rest.create_channel()
            except ApiError as exc:
                if exc.status == 403:
                    # Accepted credentials that may not use the notifications
                    # API: as lasting as a wrong secret, so as fatal.
                    raise AuthenticationError(
                        f"the platform refused to create a notification channel ({exc}); "
                        "the OAuth client needs the 'notifications' scope: grant it in "
                        "Genesys Cloud (Admin > Integrations > OAuth), then start again"
                    ) from exc
                if exc.status == 401:
                    # Refused even with a token just issued (the REST client
                    # renewed it once already): no later attempt has a better one.
                    raise AuthenticationError(
                        f"the platform refused a token it had just issued, to create a "
                        f"notification channel ({exc}); the login and API hosts may not be "
                        "the same region's (check the region or base URL), or the OAuth "
                        "client may have been disabled"
                    ) from exc
                raise
            self._report(ChannelCreated(slot.index, info.id))
            self._creator_expiry[info.id] = token.expires_at
        # A channel dies with the token that created it [O]: a reused one
        # goes with its creator's, which may be older than today's token.
        token_expires_at = self._creator_expiry.get(info.id, token.expires_at)
        # Until the socket is live; a HEAD before reuse still checks it exists.
        slot.unused_channel = info
        if ws is None:
            ws = await self._connect(info)
        socket = _Socket(self, slot, info, token_expires_at, ws)
        slot.sockets[socket.key] = socket
        slot.channels[socket.key] = info.id
        if not await self._until_live(socket):
            slot.sockets.pop(socket.key, None)
            slot.channels.pop(socket.key, None)  # never served: no report names it
            closed = socket.reader.done()  # (before close(), which ends the reader)
            await socket.close()
            if closed:
                raise TransportError(f"channel {info.id}: the socket closed before its first frame")
            raise TransportError(
                f"channel {info.id} did not answer within {self.settings.live_timeout_s:g} s"
            )
        # Subscribed only now that its socket is open: the platform may give
        # a topic to one channel of a client at a time (another_channel_subscribed,
        # reference section 5, when is not said), and a successor subscribed
        # before its socket opened would take the topics from the socket
        # still delivering them, with nothing reading them in between.
        version = slot.machine.desired_version
        try:
            socket.expected = await self._put(slot, info.id, slot.desired)
        except BaseException:
            slot.sockets.pop(socket.key, None)
            slot.channels.pop(socket.key, None)
            await socket.close()
            raise
        socket.verified_at = time.time()
        await self._mark_synced(slot, version)
        slot.unused_channel = None
        slot.stats.channel_id = info.id
        slot.stats.state = "live"
        slot.stats.connected_since = time.time()
        # A channel whose creator has expired is dead: nothing reuses it.
        now = time.monotonic()
        for channel_id in [c for c, end in self._creator_expiry.items() if end <= now]:
            del self._creator_expiry[channel_id]
        self._report(ChannelConnected(slot.index, info.id))
        return socket

    async def _until_live(self, socket: _Socket) -> bool:
        """Ping a new socket until its first frame comes; False if it closed or the time ran out.

        A pong may never come (the reference: then reconnect), so one ping
        is not all: the next follow at 1, 2, 4 s... (at most ``pong_timeout_s``
        apart) until ``live_timeout_s``, rather than leaving the socket to a
        heartbeat half a minute away. A socket the platform closes at once
        ends the wait at once: waiting out the time would only make the gap
        longer.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.live_timeout_s
        interval = min(1.0, self.settings.pong_timeout_s)
        while not socket.reader.done():
            await socket._ping()
            left = deadline - loop.time()
            if left <= 0:
                break
            live = asyncio.ensure_future(socket.live.wait())
            try:
                await asyncio.wait(
                    {live, socket.reader},
                    timeout=min(interval, left),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                live.cancel()
            if socket.live.is_set():
                return True
            interval = min(2 * interval, self.settings.pong_timeout_s)
        return socket.live.is_set()

    async def _reconnect(self, slot: _Slot, channel: ChannelInfo) -> _Bytes | None:
        """A new socket on ``channel``, or None when the channel is gone (HEAD: 404).

        The HEAD and the socket's upgrade go out together: a reconnection
        is a window in which nothing is read, and on a distant platform one
        round trip fewer shortens every gap it reports. The channel's word
        decides: a socket opened on a channel the HEAD says is gone is
        closed (the platform may take the upgrade of a dead channel and
        only then say 404), and one that would not open on a live channel
        fails the attempt as any other would.
        """
        exists = asyncio.ensure_future(self._rest.channel_exists(channel.id))
        try:
            ws = await self._connect(channel)
        except TransportError:
            if not await exists:
                return None  # that is why: a new channel, at once
            raise
        except BaseException:
            exists.cancel()
            await asyncio.gather(exists, return_exceptions=True)  # its outcome, retrieved
            raise
        try:
            alive = await exists
        except BaseException:
            self._let_go(ws)
            raise
        if alive:
            return ws
        log.info("slot %d: channel %s is gone; creating another", slot.index, channel.id)
        self._let_go(ws)
        return None

    def _let_go(self, ws: _Bytes) -> None:
        """Close a socket nobody reads, in the background: a dead channel's may never answer."""

        async def close() -> None:
            with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                await ws.close()

        self._finishing(asyncio.create_task(close(), name="genesys-mux-let-go"))

    async def _connect(self, channel: ChannelInfo) -> _Bytes:
        """Open the socket of ``channel``; a TransportError if it does not open in time."""
        try:
            # Bounded: a host that takes the connection and never answers
            # the upgrade would hold this slot for the session's default
            # timeout (five minutes) per attempt.
            async with asyncio.timeout(self.settings.live_timeout_s):
                return await self._session.ws_connect(
                    channel.connect_uri,
                    autoping=True,
                    # The reader must see the platform's close frame rather than
                    # have aiohttp answer it inside receive(): a drain reads
                    # through the close handshake (see _Socket._close_reading).
                    autoclose=False,
                    # Text frames as their UTF-8 bytes: msgspec reads bytes as
                    # fast as text, and aiohttp need not decode each frame into
                    # a str first (decode_frame checks the UTF-8 itself).
                    decode_text=False,
                    max_msg_size=0,
                    heartbeat=None,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.settings.close_timeout_s),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(
                f"cannot open the socket of channel {channel.id}: {type(exc).__name__}"
            ) from exc

    async def _sync(self, slot: _Slot, socket: _Socket, version: int) -> Recreate | None:
        """PUT the slot's topics on its socket's channel; a Recreate if the channel is gone.

        The platform's 404 frame is optional, so a PUT's 404 may be the first
        sign that the channel died (expired, evicted, its token revoked).
        Events may have gone missing since the last frame read on its socket.
        """
        try:
            socket.expected = await self._put(
                slot, socket.info.id, slot.desired, on_channel=socket.expected
            )
        except ApiError as exc:
            if exc.status == 404:
                if socket.lost_at is None:
                    socket.lost_at = socket.last_frame_wall
                return Recreate("channel_gone")
            raise
        socket.verified_at = time.time()
        await self._mark_synced(slot, version)
        return None

    async def _check_subscriptions(
        self, slot: _Slot, socket: _Socket, check: CheckSubscriptions
    ) -> None:
        """Read the channel's list back; put back what went, and report the window.

        A change of our own still pending is left to the sync, which puts the
        whole list anyway. The window runs from when the list was last known
        good (or, when the platform said it changed, from the last frame
        before it, if later) to when the PUT that restored it was answered.
        If the list cannot be restored the channel is given up and replaced,
        with the window reported from the same start.
        """
        if not slot.machine.check_due():
            return
        asked_at = time.time()
        try:
            found = await self._rest.get_subscriptions(socket.info.id)
        except ApiError as exc:
            if exc.status == 404:
                socket.lost_at = socket.verified_at
                socket.signals.put_nowait(Recreate("channel_gone"))
                return
            log.warning("slot %d: could not check subscriptions: %s", slot.index, exc)
            return
        except GenesysMuxError as exc:
            log.warning("slot %d: could not check subscriptions: %s", slot.index, exc)
            return
        told = None if check.since is None else _wall(check.since)
        lost = missing_subscriptions(
            socket.expected, found, slot.desired, verified_at=socket.verified_at, told_since=told
        )
        if lost is None:
            socket.verified_at = asked_at
            return
        missing, start = lost.missing, lost.start
        log.warning(
            "slot %d: channel %s lost %d of its topics (%s); subscribing them again",
            slot.index,
            socket.info.id,
            len(missing),
            check.reason,
        )
        self._report(SubscriptionsLost(slot.index, socket.info.id, len(missing), check.reason))
        try:
            socket.expected = await self._put(
                slot, socket.info.id, slot.desired, on_channel=expanded_topics(found)
            )
        except GenesysMuxError as exc:
            log.warning("slot %d: could not restore its subscriptions: %s", slot.index, exc)
            socket.lost_at = start
            socket.signals.put_nowait(Recreate("subscriptions_lost"))
            return
        socket.verified_at = time.time()
        self._perform(
            slot,
            slot.machine.subscriptions_restored(socket.key, start, socket.verified_at, lost.topics),
        )

    async def _put(
        self,
        slot: _Slot,
        channel_id: str,
        topics: list[str],
        on_channel: frozenset[str] = frozenset(),
    ) -> frozenset[str]:
        """PUT the slot's topics; returns those now on the channel (expanded, lower case).

        ``on_channel`` is what the channel carries now (expanded, lower case),
        for a channel whose socket delivers. A topic the platform does not
        have fails the whole PUT (400 ``notification.invalid.topic``): it is
        found (see :meth:`_find_invalid`), reported as rejected like a
        forbidden one, and left out, so the slot's other topics still flow.
        """
        invalid = self._invalid_topics
        wanted = [t for t in topics if t not in invalid]
        try:
            result = await self._rest.put_subscriptions(
                channel_id, self._subscription_list(wanted), ignore_errors=True
            )
        except ApiError as exc:
            if exc.code != _INVALID_TOPIC:
                raise
            found = await self._find_invalid(slot, channel_id, wanted, on_channel, exc)
            wanted = [t for t in wanted if t not in found]
            result = await self._rest.put_subscriptions(
                channel_id, self._subscription_list(wanted), ignore_errors=True
            )
        if self._keep_apart(wanted, result.rejected):
            # Refused whole for one part: each part again on its own, so
            # that those the client may read flow, and each refusal names
            # its own topic (for the streams that asked for it).
            result = await self._rest.put_subscriptions(
                channel_id, self._subscription_list(wanted), ignore_errors=True
            )
        refused = [invalid[t] for t in topics if t in invalid]
        for rejection in [*result.rejected, *refused]:
            if self.rejections.get(rejection.topic) != rejection:
                self.rejections[rejection.topic] = rejection
                log.warning(
                    "slot %d: topic %s rejected: %s %s",
                    slot.index,
                    rejection.topic,
                    rejection.reason,
                    list(rejection.missing_permissions),
                )
                for callback in self.on_rejection:
                    callback(rejection)
        return expanded_topics(wanted) - expanded_topics(r.topic for r in result.rejected)

    def _subscription_list(self, topics: list[str]) -> list[str]:
        """What to send for ``topics``: combined, but plain where a combination was refused."""
        apart = self._apart
        if not apart:
            return combine_topics(topics)
        return [
            *combine_topics([t for t in topics if t not in apart]),
            *[t for t in topics if t in apart],
        ]

    def _combined(self, topics: list[str]) -> list[str]:
        """Those of ``topics`` that :meth:`_subscription_list` sends inside a combined topic."""
        return _parts_among(topics, self._subscription_list(topics))

    def _keep_apart(self, wanted: list[str], rejected: Iterable[Rejection]) -> bool:
        """Note the parts of every refused combined topic, to send plain; True if any is new.

        The reference leaves open whether one forbidden part refuses the
        whole combined topic or just itself; when the whole, the parts the
        client may read would go with it, unsubscribed and unreported.
        """
        new = set(_parts_among(wanted, (r.topic for r in rejected))) - self._apart
        self._apart |= new
        return bool(new)

    async def _find_invalid(
        self,
        slot: _Slot,
        channel_id: str,
        topics: list[str],
        on_channel: frozenset[str],
        refusal: ApiError,
    ) -> set[str]:
        """Which of ``topics`` the platform does not have, after a PUT of them got 400.

        The answer need not name the topic, so the suspects (the topics not
        on the channel yet) are added in halves with POST, which never takes
        a topic away: about two requests per invalid topic per halving.
        First the channel is set to the wanted topics it already carries, so
        that the additions cannot take it past its limit, and nothing its
        socket delivers is taken away meanwhile. Raises ``refusal`` if no
        single topic is to blame.
        """
        carried = [t for t in topics if expanded_topics((t,)) <= on_channel]
        suspects = [t for t in topics if t not in set(carried)]
        log.warning(
            "slot %d: the platform refused the subscription list as invalid (%s); "
            "looking for the topic among %d new ones",
            slot.index,
            refusal,
            len(suspects),
        )
        await self._rest.put_subscriptions(
            channel_id, self._subscription_list(carried), ignore_errors=True
        )
        found = await self._invalid_among(channel_id, suspects)
        if not found:
            # Each alone is taken, together they are not: the platform does
            # not take their combination (the reference shows combined
            # topics of one shape only). Sent apart from now on: all of the
            # list's, as a new topic may combine with one already carried.
            combined = self._combined(topics)
            if not combined:
                raise refusal
            log.warning(
                "slot %d: the platform refused %d topics combined and takes them one by one; "
                "they are sent apart from now on",
                slot.index,
                len(combined),
            )
            self._apart.update(combined)
            return set()
        for topic in found:
            self._invalid_topics[topic] = Rejection(
                topic, f"not a topic the platform has (HTTP 400 {_INVALID_TOPIC})"
            )
        return set(found)

    async def _invalid_among(self, channel_id: str, suspects: list[str]) -> list[str]:
        if not suspects:
            return []
        try:
            await self._rest.post_subscriptions(
                channel_id, self._subscription_list(suspects), ignore_errors=True
            )
        except ApiError as exc:
            if exc.code != _INVALID_TOPIC:
                raise
            if len(suspects) == 1:
                return suspects
            half = len(suspects) // 2
            return [
                *await self._invalid_among(channel_id, suspects[:half]),
                *await self._invalid_among(channel_id, suspects[half:]),
            ]
        return []

    # -- reporting ------------------------------------------------------------

    def _outage_of(self, slot: _Slot, window: OutageWindow) -> Outage:
        return Outage(
            slot=slot.index,
            channel_id=slot.channels.get(window.socket, ""),
            topics=window.topics if window.topics is not None else slot.desired_set,
            start=window.start,
            end=window.end,
            reason=window.reason,
        )

    def _outage(self, slot: _Slot, window: OutageWindow) -> None:
        outage = self._outage_of(slot, window)
        log.warning(
            "slot %d: outage of %.3f s on channel %s (%d topics)",
            slot.index,
            outage.end - outage.start,
            outage.channel_id,
            len(outage.topics),
        )
        self._report_outage(outage)

    def _report_outage(self, outage: Outage) -> None:
        self.outages.append(outage)
        for callback in self.on_outage:
            callback(outage)

    def _report(self, event: ControlEvent) -> None:
        for callback in self.on_control:
            callback(event)
