"""The life of one socket on one notification channel, as a sans-I/O state machine.

Theory of operation
-------------------
A :class:`ChannelLink` is fed everything that happens to one WebSocket —
decoded frames, the socket closing, the passing of time — and answers with
:data:`Action` values telling the shell what to do. It never reads a clock,
never sleeps and never touches a socket: ``now`` is always passed in
(monotonic seconds), and :meth:`ChannelLink.next_deadline` says when the
shell must call :meth:`ChannelLink.poll` again.

States::

    AWAITING_LIVE --heartbeat / pong / ack--> LIVE
    AWAITING_LIVE, LIVE --socket closed / pong timeout / 404--> DEAD

``LIVE`` means the platform has proven the socket works (the shell sends a
ping right after connecting, so the pong usually arrives at once).

What the platform can tell us, and what we do about it:

==================================  =================================================
event                               action
==================================  =================================================
no frame for ``heartbeat_timeout``  :class:`SendPing` (once per silence)
no frame within ``pong_timeout``    :class:`Reconnect` (``heartbeat_timeout``): dead
socket closed, any code             :class:`Reconnect` (``socket_closed``)
``{"result":"404"}``                :class:`Recreate` (``channel_gone``)
``v2.system.socket_closing``        :class:`Rotate` (``socket_closing``)
``v2.system.no_longer_subscribed``  :class:`Rotate` (``no_longer_subscribed``)
``v2.system.token_revoked``         :class:`Rotate` (``token_revoked``, re-auth first)
channel ``expires`` approaching     :class:`Rotate` (``channel_expiring``)
creating token's expiry approaching :class:`Rotate` (``token_expiring``)
``v2.subscription.updated``         :class:`CheckSubscriptions` (``subscription_updated``)
every ``subscription_check_s``      :class:`CheckSubscriptions` (``periodic``)
==================================  =================================================

Subscriptions can also change under a socket that keeps working, with no
system topic at all: whoever holds the channel id (another instance of the
same OAuth client, say) may ``PUT`` another list. When the platform says so
(``v2.subscription.updated``; when it is sent is not documented) and every
``subscription_check_s`` regardless, :class:`CheckSubscriptions` asks the
shell to compare the channel's list with what it put, put back what is
missing, and report the window since the list was last known good.

:class:`Rotate` asks for make-before-break: the shell builds a successor
channel while this socket keeps delivering, and closes this one only once the
successor is live. :class:`Reconnect` and :class:`Recreate` report a socket
that is already gone: the shell records an outage and re-establishes, reusing
the channel after a HEAD check (``Reconnect``) or creating a new one
(``Recreate``). Each kind of request is emitted at most once per link,
but a :class:`Rotate` the shell declines (no newer token to move onto yet,
see :meth:`ChannelLink.rotation_declined`) may be asked for again.

When events may have started to go missing
..........................................
Whatever ends a socket, nothing tells us when the platform stopped sending on
it: a half-open link goes quiet long before the watchdog's verdict, a socket
may be silent and then reset, and a ``404`` or a ``no_longer_subscribed``
says the channel or its subscriptions are gone *already*. So the window is
always taken to start at the last frame read before the news:
:attr:`ChannelLink.lost_since` once the socket is lost, and
:attr:`ChannelLink.unsubscribed_since` when a socket that still works has lost
its subscriptions (``no_longer_subscribed``, ``token_revoked``); the shell
reports the window up to the successor's first notification.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from genesys_mux.core.frames import (
    ChannelFailure,
    Frame,
    Heartbeat,
    NoLongerSubscribed,
    Pong,
    SocketClosing,
    SubscriptionAck,
    SubscriptionUpdated,
    TokenRevoked,
)

__all__ = [
    "MIN_ROTATION_RETRY_S",
    "Action",
    "BecameLive",
    "ChannelLink",
    "CheckSubscriptions",
    "LinkState",
    "Outage",
    "Reconnect",
    "Recreate",
    "Rotate",
    "SendPing",
    "WatchdogSettings",
]


#: A declined rotation is asked for again half-way to the channel's end,
#: unless that is closer to the end than this: a successor takes a channel
#: request, a connection and a subscription to make.
MIN_ROTATION_RETRY_S = 5.0


class LinkState(Enum):
    """Where a socket is in its life."""

    AWAITING_LIVE = "awaiting_live"
    LIVE = "live"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send ``{"message":"ping"}``: the socket has been silent too long."""


@dataclass(frozen=True, slots=True)
class BecameLive:
    """The platform answered on this socket: it is proven to work."""


@dataclass(frozen=True, slots=True)
class Rotate:
    """Replace the channel make-before-break; this socket still works for now."""

    reason: str
    #: Get a new token before creating the successor (the old one was revoked).
    reauth: bool = False


@dataclass(frozen=True, slots=True)
class Reconnect:
    """The socket is gone; the channel may still exist (check with HEAD)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Recreate:
    """The socket is gone and so is the channel; create a new one."""

    reason: str


@dataclass(frozen=True, slots=True)
class CheckSubscriptions:
    """Ask the platform whether the channel still has its topics; the socket still works."""

    reason: str
    #: When the platform said the list changed: the last frame read before
    #: it (monotonic). None for a periodic check, which knows nothing.
    since: float | None = None


Action = SendPing | BecameLive | Rotate | Reconnect | Recreate | CheckSubscriptions


@dataclass(frozen=True, slots=True)
class WatchdogSettings:
    """Timers of one link, in seconds."""

    heartbeat_timeout_s: float = 75.0
    pong_timeout_s: float = 10.0
    #: Start rotating this long before the channel or its token expires.
    rotation_lead_s: float = 300.0
    #: Check the channel's subscriptions this often (None: only when told).
    subscription_check_s: float | None = 300.0


@dataclass(frozen=True, slots=True)
class Outage:
    """A window during which a slot's topics had no live, subscribed socket.

    Events published in ``[start, end]`` on ``topics`` may have been lost at
    the source. Times are Unix seconds.
    """

    slot: int
    channel_id: str
    topics: frozenset[str]
    start: float
    end: float
    reason: str


class ChannelLink:
    """One socket on one channel: liveness, watchdog and rotation triggers.

    ``channel_expires_at`` and ``token_expires_at`` are monotonic times
    (None when unknown); rotation is requested ``rotation_lead_s`` before
    the earlier one, but never earlier than half-way through the remaining
    life, so a short-lived test channel is not rotated the moment it opens.
    """

    def __init__(
        self,
        channel_id: str,
        *,
        opened_at: float,
        channel_expires_at: float | None = None,
        token_expires_at: float | None = None,
        settings: WatchdogSettings | None = None,
    ) -> None:
        self.channel_id = channel_id
        self.settings = settings or WatchdogSettings()
        self.state = LinkState.AWAITING_LIVE
        self.opened_at = opened_at
        self.last_frame_at = opened_at
        self.ping_sent_at: float | None = None
        #: When this socket is lost: the last frame read before the loss
        #: (monotonic). Events after it may be missing.
        self.lost_since: float | None = None
        #: When this socket's subscriptions may have gone while it still
        #: works: the last frame read before ``no_longer_subscribed`` or
        #: ``token_revoked`` (monotonic).
        self.unsubscribed_since: float | None = None
        ends = [t for t in (channel_expires_at, token_expires_at) if t is not None]
        #: When the channel or its creating token ends, whichever is first.
        self._ends_at = min(ends) if ends else None
        self._rotation_at = self._rotation_deadline(opened_at)
        self._rotation_reason = (
            "token_expiring"
            if token_expires_at is not None
            and (channel_expires_at is None or token_expires_at <= channel_expires_at)
            else "channel_expiring"
        )
        self._rotation_requested = False
        every = self.settings.subscription_check_s
        self._check_at = None if every is None else opened_at + every

    def _rotation_deadline(self, now: float) -> float | None:
        end = self._ends_at
        if end is None:
            return None
        lead = min(self.settings.rotation_lead_s, max(0.0, (end - now) / 2))
        return end - lead

    # -- inputs --------------------------------------------------------------

    def notification_seen(self, now: float) -> None:
        """A notification arrived: the socket is alive. (The hot path: no actions.)"""
        self.last_frame_at = now
        self.ping_sent_at = None

    def receive(self, frame: Frame, now: float) -> list[Action]:
        """Account for any non-notification frame; returns what to do about it."""
        if self.state is LinkState.DEAD:
            return []
        # Any frame proves the socket alive, as a notification does (see
        # notification_seen): it ends the silence, and any wait for a pong.
        # The frame before this one is when bad news may have begun.
        previous = self.last_frame_at
        self.last_frame_at = now
        self.ping_sent_at = None
        actions: list[Action] = []
        if isinstance(frame, Heartbeat | Pong | SubscriptionAck):
            if self.state is LinkState.AWAITING_LIVE:
                self.state = LinkState.LIVE
                actions.append(BecameLive())
        elif isinstance(frame, ChannelFailure):
            self.state = LinkState.DEAD
            self.lost_since = previous
            actions.append(Recreate("channel_gone"))
        elif isinstance(frame, SocketClosing):
            actions.extend(self._rotate("socket_closing"))
        elif isinstance(frame, NoLongerSubscribed):
            self._unsubscribed(previous)
            actions.extend(self._rotate("no_longer_subscribed"))
        elif isinstance(frame, TokenRevoked):
            self._unsubscribed(previous)
            actions.extend(self._rotate("token_revoked", reauth=True))
        elif isinstance(frame, SubscriptionUpdated):
            actions.append(CheckSubscriptions("subscription_updated", since=previous))
        return actions

    def _unsubscribed(self, since: float) -> None:
        if self.unsubscribed_since is None:
            self.unsubscribed_since = since

    def socket_closed(self, now: float) -> list[Action]:
        """The socket ended, with or without a close frame, warned or not."""
        if self.state is LinkState.DEAD:
            return []
        self.state = LinkState.DEAD
        # A socket may fall silent long before it is closed or reset: the
        # loss starts at the last frame read, not at the close.
        self.lost_since = self.last_frame_at
        return [Reconnect("socket_closed")]

    def poll(self, now: float) -> list[Action]:
        """Fire whichever timers are due at ``now``."""
        if self.state is LinkState.DEAD:
            return []
        # Deadlines are compared in exactly the form next_deadline() computes
        # them (``start + timeout``, not ``now - start``): the two differ in
        # the last bit of a float, and a poll at the announced deadline must fire.
        s = self.settings
        actions: list[Action] = []
        if self.ping_sent_at is not None:
            if now >= self.ping_sent_at + s.pong_timeout_s:
                self.state = LinkState.DEAD
                self.lost_since = self.last_frame_at
                return [Reconnect("heartbeat_timeout")]
        elif now >= self.last_frame_at + s.heartbeat_timeout_s:
            self.ping_sent_at = now
            actions.append(SendPing())
        if self._rotation_at is not None and now >= self._rotation_at:
            actions.extend(self._rotate(self._rotation_reason))
        if self._check_at is not None and now >= self._check_at:
            every = self.settings.subscription_check_s
            assert every is not None
            self._check_at = now + every
            actions.append(CheckSubscriptions("periodic"))
        return actions

    def next_deadline(self) -> float | None:
        """The monotonic time :meth:`poll` must next be called, or None."""
        if self.state is LinkState.DEAD:
            return None
        s = self.settings
        if self.ping_sent_at is not None:
            watchdog = self.ping_sent_at + s.pong_timeout_s
        else:
            watchdog = self.last_frame_at + s.heartbeat_timeout_s
        deadline = watchdog
        if self._rotation_at is not None and not self._rotation_requested:
            deadline = min(deadline, self._rotation_at)
        if self._check_at is not None:
            deadline = min(deadline, self._check_at)
        return deadline

    @property
    def rotation_requested(self) -> bool:
        """True once a :class:`Rotate` has been emitted."""
        return self._rotation_requested

    def rotation_declined(self, now: float) -> None:
        """The shell did not act on the last :class:`Rotate` (no newer token to move onto).

        The link may ask again: at once for a frame that calls for it
        (``socket_closing``, ``no_longer_subscribed``, ``token_revoked``),
        which would otherwise be ignored as asked already, and for the
        approaching end half-way through the time left, so that a login
        back by then still saves the channel. Not within the last
        :data:`MIN_ROTATION_RETRY_S`: a successor could not be made in time.
        """
        self._rotation_requested = False
        end = self._ends_at
        # Past the lead already, so the deadline from now is half-way to the end.
        too_late = end is None or (end - now) / 2 < MIN_ROTATION_RETRY_S
        self._rotation_at = None if too_late else self._rotation_deadline(now)

    def _rotate(self, reason: str, *, reauth: bool = False) -> list[Action]:
        if self._rotation_requested:
            return []
        self._rotation_requested = True
        return [Rotate(reason, reauth=reauth)]
