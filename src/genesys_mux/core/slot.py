"""One channel slot's life, sans-I/O: which socket serves it, and when none did.

Theory of operation
-------------------
A *slot* is the pool's stable identity for "the channel carrying these
topics". Over its life it is served by a sequence of sockets: one at a time,
except during a make-before-break rotation, when the old socket keeps
serving while its successor is built. A :class:`SlotMachine` is told what
happens to those sockets, each input with the (Unix) time it happened, and
answers with :data:`SlotAction` values: which socket to open, serve, drain or
abandon, and which windows to report as outages. It never reads a clock or
touches a socket; the pool (``net/connection.py``) is the shell that performs
the actions, and :class:`~genesys_mux.core.channel.ChannelLink` decides, per
socket, *that* something happened (a loss, a rotation request).

States and transitions (``*`` marks an outage report)::

    CONNECTING   --connected-->            LIVE
    LIVE         --lost-->                 RECONNECTING   (window opens at the loss)
    RECONNECTING --connected-->            LIVE *         (reason: reconnect)
    LIVE         --rotate-->               ROTATING       (the old socket still serves)
    ROTATING     --lost (old)-->           ROTATING       (window opens; no socket serves)
    OVERLAP      --lost (old)-->           LIVE *         (only if a window was open: the
                                                           successor carries the topics)
    ROTATING     --connected (successor)-> LIVE *         (only if the old one was lost)
    ROTATING     --connected (successor)-> OVERLAP        (both sockets deliver)
    ROTATING     --rotation failed-->      LIVE, or RECONNECTING if the old one was lost
                                           or had lost its subscriptions
    any          --gave up-->              the same *  (only if a window was open: reason
                                                           channel_failed; a new one opens)
    OVERLAP      --rotated-->              LIVE *         (only if the old one had lost
                                                           its subscriptions); drain it
    LIVE         --subscriptions restored-> LIVE *        (reason: subscriptions_replaced)
    any          --stop-->                 CLOSING        (drain the serving sockets)
    CLOSING      --drained-->              CLOSED *       (only if a drain failed, or a
                                                           window was open: reason stopped)

Invariants, checked by the tests over every sequence of inputs: at most one
socket serves outside OVERLAP; a window opened by a loss (or a lost
subscription) is reported exactly once; reported windows never overlap (a
window that would start before the end of the previous report starts at its
end instead: those events were already reported missing).

Alongside, the machine keeps the slot's *subscription version*: every
change of its topic set adds one (``topics_changed``), and a PUT that the
platform answered applies the version it carried (``put_answered``; the PUT
of a socket being established counts too). While the serving socket is LIVE
and a change is pending, ``put_due`` says when to PUT; a failed PUT
(``put_failed``) is tried again after the delay the shell's retry policy
gives, and the socket serves on with the topics it has meanwhile. A check of
the channel's list against what was put (``check_due``) only means
something when no change of ours is pending: the next PUT puts the whole
list anyway.

When a window starts: at the last frame read before the news (the socket's
``lost_since`` or ``unsubscribed_since``, see :mod:`genesys_mux.core.channel`).
When it ends: when a socket subscribed to the topics is live again (a
reconnect), when the successor delivered its first notification (a rotation
away from a socket that had lost its subscriptions), when the subscriptions
were put back, or at the stop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from genesys_mux.core.topics import expanded_topics

__all__ = [
    "Abandon",
    "Drain",
    "MissingSubscriptions",
    "OpenSocket",
    "OutageWindow",
    "PutTopics",
    "Serve",
    "SlotAction",
    "SlotMachine",
    "SlotState",
    "missing_subscriptions",
]

log = logging.getLogger("genesys_mux.core.slot")


class SlotState(Enum):
    """Where a slot is in its life."""

    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    ROTATING = "rotating"
    OVERLAP = "overlap"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class OpenSocket:
    """Establish a socket for the slot; ``reuse``: try the lost socket's channel first."""

    reuse: bool = False


@dataclass(frozen=True, slots=True)
class Serve:
    """``socket`` now serves the slot."""

    socket: int


@dataclass(frozen=True, slots=True)
class Drain:
    """Close ``socket`` gracefully: unsubscribe, read what is in flight, close."""

    socket: int


@dataclass(frozen=True, slots=True)
class Abandon:
    """``socket`` is lost: stop reading it and close it in the background."""

    socket: int


@dataclass(frozen=True, slots=True)
class OutageWindow:
    """Report ``[start, end]`` as a window in which ``topics`` (None: all) had no socket."""

    socket: int
    start: float
    end: float
    reason: str
    topics: frozenset[str] | None = None


SlotAction = OpenSocket | Serve | Drain | Abandon | OutageWindow


@dataclass(frozen=True, slots=True)
class PutTopics:
    """PUT the slot's topic set, as of ``version``, on the serving socket's channel."""

    version: int


@dataclass(slots=True)
class _Window:
    """An open window: from ``since``, on ``socket``, to be reported as ``reason``."""

    socket: int
    since: float
    reason: str


@dataclass(slots=True)
class SlotMachine:
    """The life of one slot. Feed it inputs; perform the actions it returns, in order."""

    index: int
    state: SlotState = SlotState.CONNECTING
    #: The socket serving the slot (the old one during a rotation).
    serving: int | None = None
    #: The successor being built or overlapping, during a rotation.
    successor: int | None = None
    #: Why the current rotation started.
    rotation_reason: str | None = None
    #: The window open now, if any (a loss, or a socket that lost its subscriptions).
    window: _Window | None = None
    #: The end of the last reported window: later ones never start before it.
    reported_until: float = float("-inf")
    #: The version of the slot's topic set: every change adds one.
    desired_version: int = 0
    #: The newest version a PUT the platform answered has applied.
    applied_version: int = -1
    #: A failed subscription change is not tried again before this time.
    put_retry_at: float = float("-inf")
    _draining: set[int] = field(default_factory=set)
    _drain_failed: list[tuple[int, float]] = field(default_factory=list)

    # -- inputs ----------------------------------------------------------------

    def start(self) -> list[SlotAction]:
        """The slot has topics: get it a socket."""
        return [OpenSocket()]

    def connected(self, socket: int, at: float) -> list[SlotAction]:
        """``socket`` is open, subscribed and proven live."""
        state = self.state
        if state in (SlotState.CONNECTING, SlotState.RECONNECTING):
            actions: list[SlotAction] = [Serve(socket)]
            actions += self._report(at, self.window.reason if self.window else "reconnect")
            self.serving = socket
            return self._to(SlotState.LIVE, actions)
        if state is SlotState.ROTATING:
            self.successor = socket
            window = self.window
            if window is not None and window.reason == "reconnect":
                # The old socket died while the successor was built: no
                # overlap to wait for, the window ends now.
                return self._finish_rotation(at, lost=True)
            return self._to(SlotState.OVERLAP, [])
        # A socket that is no longer wanted (a stop came meanwhile).
        return [Drain(socket)]

    def lost(
        self, socket: int, since: float, at: float, *, reuse: bool = False
    ) -> list[SlotAction]:
        """``socket`` is gone; events may be missing from ``since`` (the last frame read)."""
        if socket in self._draining or self.state in (SlotState.CLOSING, SlotState.CLOSED):
            return []
        if socket == self.successor:
            # The successor died in the overlap: the old socket still serves.
            self.successor = None
            if self.state is SlotState.OVERLAP:
                return self._to(SlotState.ROTATING, [Abandon(socket), OpenSocket()])
            return [Abandon(socket)]
        if socket != self.serving:
            return []
        if self.state is SlotState.OVERLAP:
            # The successor is live and subscribed: it carries the topics
            # already, so this loss hides nothing that was not hidden before.
            return [Abandon(socket), *self._finish_rotation(at, lost=True)]
        self._open(socket, since, "reconnect")
        self.serving = None
        if self.state is SlotState.ROTATING:
            return [Abandon(socket)]  # the successor being built closes the window
        return self._to(SlotState.RECONNECTING, [Abandon(socket), OpenSocket(reuse=reuse)])

    def unsubscribed(self, socket: int, since: float) -> list[SlotAction]:
        """``socket`` still works but its subscriptions went at ``since``; a rotation follows."""
        if socket == self.serving and self.state not in (SlotState.CLOSING, SlotState.CLOSED):
            self._open(socket, since, "unsubscribed")
        return []

    def rotate(self, reason: str) -> list[SlotAction]:
        """Replace the serving socket make-before-break."""
        if self.state is not SlotState.LIVE:
            return []
        self.rotation_reason = reason
        return self._to(SlotState.ROTATING, [OpenSocket()])

    def rotation_failed(self) -> list[SlotAction]:
        """No successor could be built; the old socket serves on if it still can.

        One that was lost, or that lost its subscriptions, cannot: the slot
        reconnects, and its window stays open until it does.
        """
        if self.state is not SlotState.ROTATING:
            return []
        self.rotation_reason = None
        if self.window is None:
            return self._to(SlotState.LIVE, [])
        old, self.serving = self.serving, None
        self.window.reason = "reconnect"
        actions: list[SlotAction] = [] if old is None else [Abandon(old)]
        return self._to(SlotState.RECONNECTING, [*actions, OpenSocket()])

    def rotated(self, at: float) -> list[SlotAction]:
        """The overlap is over at ``at`` (the successor delivered, or we stopped waiting)."""
        if self.state is not SlotState.OVERLAP:
            return []
        return self._finish_rotation(at, lost=False)

    def gave_up(self, at: float) -> list[SlotAction]:
        """The shell stopped trying to get the slot a socket, at ``at`` (a retry limit).

        An open window is reported now, ending at ``at`` (reason
        ``channel_failed``), rather than when a socket serves again (new
        topics make the shell try again) or at the stop, which may be hours
        away: the streams must hear of the loss while it lasts. The time
        after ``at`` is a window too, reported when it ends.
        """
        window = self.window
        if window is None or self.state in (SlotState.CLOSING, SlotState.CLOSED):
            return []
        actions = self._report(at, "channel_failed")
        self.window = _Window(window.socket, at, window.reason)
        return actions

    def subscriptions_restored(
        self, socket: int, start: float, end: float, topics: frozenset[str]
    ) -> list[SlotAction]:
        """``topics`` were missing from ``socket``'s channel from ``start``; back at ``end``."""
        if socket != self.serving:
            return []
        start = max(start, self.reported_until)
        if end <= start:
            return []
        self.reported_until = end
        return [OutageWindow(socket, start, end, "subscriptions_replaced", topics)]

    def stop(self) -> list[SlotAction]:
        """Stop: drain every socket that serves, and report what cannot be."""
        if self.state in (SlotState.CLOSING, SlotState.CLOSED):
            return []
        sockets = [s for s in (self.serving, self.successor) if s is not None]
        self._draining.update(sockets)
        self.successor = None
        return self._to(SlotState.CLOSING, [Drain(s) for s in sockets])

    def drained(self, socket: int, ok: bool, last_frame_at: float) -> None:
        """The drain of ``socket`` ended; not ``ok``: frames after ``last_frame_at`` may be lost.

        Only a stop's drains can lose anything: a rotation drains the old
        socket once its successor has carried the topics through the
        overlap, so whatever the old one still had, the successor had too.
        """
        self._draining.discard(socket)
        if not ok and self.state is SlotState.CLOSING:
            self._drain_failed.append((socket, last_frame_at))

    def closed(self, at: float) -> list[SlotAction]:
        """Every drain has ended: report what a stop could not account for."""
        if self.state is SlotState.CLOSED:
            return []
        actions: list[SlotAction] = []
        if self.window is not None:
            actions += self._report(at, "stopped")
        for socket, since in self._drain_failed:
            self.window = _Window(socket, since, "stopped")
            actions += self._report(at, "stopped")
        self._drain_failed.clear()
        self.serving = None
        return self._to(SlotState.CLOSED, actions)

    def named_sockets(self) -> set[int]:
        """The sockets a report may still name: serving, successor, the open window's, drains."""
        named = {socket for socket, _ in self._drain_failed} | self._draining
        for socket in (self.serving, self.successor):
            if socket is not None:
                named.add(socket)
        if self.window is not None:
            named.add(self.window.socket)
        return named

    # -- the topic set ------------------------------------------------------------

    @property
    def in_sync(self) -> bool:
        """True when the newest topic set has been put on a channel."""
        return self.applied_version >= self.desired_version

    def topics_changed(self) -> int:
        """The slot's topic set changed; returns its new version (a PUT carries it)."""
        # A retry already scheduled stays: a new change does not cut a backoff short.
        self.desired_version += 1
        return self.desired_version

    def put_due(self, at: float) -> PutTopics | None:
        """The subscription change to make now on the serving socket, if one is due at ``at``."""
        if self.in_sync or self.state is not SlotState.LIVE or at < self.put_retry_at:
            return None
        return PutTopics(self.desired_version)

    def put_wait(self, at: float) -> float | None:
        """Seconds from ``at`` until a pending change is due (0: now).

        None when there is nothing to wait for: no change is pending, or there
        is no live socket to put it on (the next one is established with it).
        """
        if self.in_sync or self.state is not SlotState.LIVE:
            return None
        due = self.put_retry_at
        wait = max(0.0, due - at)
        # In floats `at + (due - at)` may round to just below `due`: a
        # caller that waits this long must find the change due, not wake
        # for nothing and wait one rounding error more.
        while at + wait < due:
            wait = math.nextafter(wait, math.inf)
        return wait

    def put_answered(self, version: int) -> None:
        """The platform answered a PUT of the topic set as of ``version``."""
        self.applied_version = max(self.applied_version, version)
        self.put_retry_at = float("-inf")

    def put_failed(self, at: float, retry_in: float) -> None:
        """A PUT failed at ``at``: the change is tried again ``retry_in`` s later.

        The socket is not given up for it: it still delivers the topics it has.
        """
        self.put_retry_at = at + retry_in

    def check_due(self) -> bool:
        """True when a check of the channel's list against what was put means something."""
        return self.in_sync

    # -- internals ---------------------------------------------------------------

    def _finish_rotation(self, at: float, *, lost: bool) -> list[SlotAction]:
        old, new = self.serving, self.successor
        assert new is not None
        reason = self.rotation_reason or "rotation"
        actions: list[SlotAction] = []
        if self.window is not None:
            actions += self._report(at, reason)
        if not lost and old is not None:
            actions.append(Drain(old))
            self._draining.add(old)
        actions.append(Serve(new))
        self.serving, self.successor, self.rotation_reason = new, None, None
        return self._to(SlotState.LIVE, actions)

    def _open(self, socket: int, since: float, reason: str) -> None:
        if self.window is None:
            self.window = _Window(socket, since, reason)
        elif reason == "reconnect":
            # A socket that lost its subscriptions and then died: one
            # window, from the earlier news, ended as a loss.
            self.window.reason = reason

    def _report(self, end: float, reason: str) -> list[SlotAction]:
        window, self.window = self.window, None
        if window is None:
            return []
        start = max(window.since, self.reported_until)
        end = max(end, start)
        self.reported_until = end
        return [OutageWindow(window.socket, start, end, reason)]

    def _to(self, state: SlotState, actions: list[SlotAction]) -> list[SlotAction]:
        if state is not self.state:
            log.debug("slot %d: %s -> %s %s", self.index, self.state.value, state.value, actions)
        self.state = state
        return actions


@dataclass(frozen=True, slots=True)
class MissingSubscriptions:
    """What a subscription check found missing, and since when events may be lost."""

    #: The missing subscriptions, expanded and in lower case.
    missing: frozenset[str]
    #: The slot's topics that lost a subscription (as the streams know them).
    topics: frozenset[str]
    #: The start of the window: when the list was last known whole, or the
    #: last frame before the platform said it changed, whichever is later.
    start: float


def missing_subscriptions(
    expected: frozenset[str],
    found: Iterable[str],
    topics: Iterable[str],
    *,
    verified_at: float,
    told_since: float | None = None,
) -> MissingSubscriptions | None:
    """Compare a channel's subscription list with what was put; None when nothing is missing.

    ``expected`` is what the last PUT left on the channel (expanded, lower
    case, refused topics left out), ``found`` what the platform lists now,
    ``topics`` the slot's topics, ``verified_at`` when the list was last
    known whole, ``told_since`` the last frame before a
    ``v2.subscription.updated`` (None for a periodic check).
    """
    missing = expected - expanded_topics(found)
    if not missing:
        return None
    affected = frozenset(t for t in topics if not expanded_topics([t]).isdisjoint(missing))
    start = verified_at if told_since is None else max(verified_at, told_since)
    return MissingSubscriptions(missing, affected, start)
