"""Control-plane facts as typed values: what the audit log and the metrics are told.

Theory of operation
-------------------
Everything the multiplexer does besides delivering events (a token
refreshed, a channel created, lost or rotated, a gap, a dead letter, a
refused topic, a failing sink...) is reported as one frozen dataclass of the
:data:`ControlEvent` union, through one hook (``Multiplexer.on_control``,
fed by the pool's ``ChannelPool.on_control``). Consumers match on the type,
so mypy sees every producer and consumer of a fact, and renaming one cannot
silently drop its audit line or its metric.

Each class names its ``kind`` (the audit log's event code in lower case and
the metrics' ``kind`` label) and its ``level`` (how loudly the audit log
writes it). Fields are plain values: ids and reasons as strings, counts as
ints, times as Unix seconds. None carries a token or a secret; free-text
fields (``error``, ``reason``) are still redacted by the audit log, because
they may quote a server.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

__all__ = [
    "Backfilled",
    "ChannelClosed",
    "ChannelConnected",
    "ChannelCreated",
    "ChannelFailed",
    "ChannelLost",
    "ChannelRotated",
    "ClusterUnreachable",
    "ControlEvent",
    "DeadLettered",
    "Fatal",
    "GapReported",
    "GapUndelivered",
    "LeaseAcquired",
    "LeaseLost",
    "LeaseReleased",
    "Level",
    "QueuesRefreshed",
    "SinkFailed",
    "StateStoreFailed",
    "StreamActivated",
    "StreamAdded",
    "StreamRemoved",
    "StreamStateReset",
    "StreamUnplaced",
    "SubscriptionsLost",
    "TokenRefreshed",
    "TopicRejected",
    "fields_of",
]

Level = Literal["INFO", "WARNING", "ERROR"]


@dataclass(frozen=True, slots=True)
class _Fact:
    kind: ClassVar[str]
    level: ClassVar[Level] = "INFO"


@dataclass(frozen=True, slots=True)
class TokenRefreshed(_Fact):
    """A new access token was obtained (its lifetime; never the token)."""

    kind: ClassVar[str] = "token_refreshed"
    expires_in_s: int


@dataclass(frozen=True, slots=True)
class ChannelCreated(_Fact):
    """A notification channel was created for a slot."""

    kind: ClassVar[str] = "channel_created"
    slot: int
    channel_id: str


@dataclass(frozen=True, slots=True)
class ChannelConnected(_Fact):
    """A slot's socket is open, subscribed and proven live."""

    kind: ClassVar[str] = "channel_connected"
    slot: int
    channel_id: str


@dataclass(frozen=True, slots=True)
class ChannelLost(_Fact):
    """A slot's socket is gone (closed, reset, silent, or its channel died)."""

    kind: ClassVar[str] = "channel_lost"
    level: ClassVar[Level] = "WARNING"
    slot: int
    channel_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelRotated(_Fact):
    """A slot moved make-before-break from ``old_channel_id`` to ``channel_id``."""

    kind: ClassVar[str] = "channel_rotated"
    slot: int
    channel_id: str
    old_channel_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelClosed(_Fact):
    """A slot was emptied and its socket closed on purpose."""

    kind: ClassVar[str] = "channel_closed"
    slot: int
    channel_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelFailed(_Fact):
    """A slot gave up (refused credentials, a retry limit, or a bug); ``channel_id`` may be ''."""

    kind: ClassVar[str] = "channel_failed"
    level: ClassVar[Level] = "ERROR"
    slot: int
    channel_id: str
    error: str


@dataclass(frozen=True, slots=True)
class SubscriptionsLost(_Fact):
    """A working socket's channel lost ``topics`` of its subscriptions; they are put back."""

    kind: ClassVar[str] = "subscriptions_lost"
    level: ClassVar[Level] = "WARNING"
    slot: int
    channel_id: str
    topics: int
    reason: str


@dataclass(frozen=True, slots=True)
class TopicRejected(_Fact):
    """The platform refused a topic (``streams`` are the streams that wanted it)."""

    kind: ClassVar[str] = "subscribe_rejected"
    level: ClassVar[Level] = "WARNING"
    topic: str
    reason: str
    missing_permissions: tuple[str, ...]
    streams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StreamAdded(_Fact):
    """A stream was added, with this many topics."""

    kind: ClassVar[str] = "stream_added"
    stream_id: str
    topics: int


@dataclass(frozen=True, slots=True)
class StreamActivated(_Fact):
    """A stream on standby started delivering, from its previous owner's checkpoint."""

    kind: ClassVar[str] = "stream_activated"
    stream_id: str
    #: Notifications received on standby, run through the pipeline at activation.
    kept: int
    #: ``failover`` (the previous owner vanished) or ``handover`` (it let go).
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseAcquired(_Fact):
    """This instance took a stream's lease: it carries the stream now (a cluster)."""

    kind: ClassVar[str] = "lease_acquired"
    stream_id: str
    #: The fencing token of this acquisition.
    token: int
    #: ``handover`` (its holder let go to us) or ``acquired`` (the lease was free).
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseReleased(_Fact):
    """This instance let a stream go (``handover``: to the next owner; ``released``: leaving)."""

    kind: ClassVar[str] = "lease_released"
    stream_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class LeaseLost(_Fact):
    """A stream's lease expired or was taken: it stopped here at once, with no checkpoint."""

    kind: ClassVar[str] = "lease_lost"
    level: ClassVar[Level] = "WARNING"
    stream_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class StreamUnplaced(_Fact):
    """A stream fits on no instance of the cluster (every OAuth client's budget is used)."""

    kind: ClassVar[str] = "stream_unplaced"
    level: ClassVar[Level] = "ERROR"
    stream_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ClusterUnreachable(_Fact):
    """The cluster's Redis failed; streams are carried while their leases may hold."""

    kind: ClassVar[str] = "cluster_unreachable"
    level: ClassVar[Level] = "WARNING"
    reason: str


@dataclass(frozen=True, slots=True)
class StreamRemoved(_Fact):
    """A stream was removed."""

    kind: ClassVar[str] = "stream_removed"
    stream_id: str


@dataclass(frozen=True, slots=True)
class QueuesRefreshed(_Fact):
    """The org's queue list was read again for the all-queues streams."""

    kind: ClassVar[str] = "queues_refreshed"
    queues: int


@dataclass(frozen=True, slots=True)
class _GapWindow(_Fact):
    """A stream's window of possible loss, as its :class:`~genesys_mux.core.streams.Gap` says."""

    stream_id: str
    channel_id: str
    start: float
    end: float
    topics: int
    reason: str


@dataclass(frozen=True, slots=True)
class GapReported(_GapWindow):
    """A window in which a stream's events may be missing was reported to it."""

    kind: ClassVar[str] = "gap"
    level: ClassVar[Level] = "WARNING"


@dataclass(frozen=True, slots=True)
class GapUndelivered(_GapWindow):
    """A gap handed to a stream's sinks did not reach them (``why``: the sinks and the reason).

    A gap has no body to dead-letter: this record, and the log line, are
    all that is left of it.
    """

    kind: ClassVar[str] = "gap_undelivered"
    level: ClassVar[Level] = "WARNING"
    why: str


@dataclass(frozen=True, slots=True)
class Backfilled(_Fact):
    """After gaps of ``streams``, the current snapshots of ``conversations`` were fetched."""

    kind: ClassVar[str] = "backfill"
    streams: tuple[str, ...]
    conversations: int


@dataclass(frozen=True, slots=True)
class DeadLettered(_Fact):
    """An event of a stream went to the dead-letter queue."""

    kind: ClassVar[str] = "dlq_write"
    level: ClassVar[Level] = "WARNING"
    stream_id: str
    sequence: int
    reason: str


@dataclass(frozen=True, slots=True)
class SinkFailed(_Fact):
    """An attempt of a stream's sink failed (retried or given up, as ``error`` says)."""

    kind: ClassVar[str] = "sink_failure"
    level: ClassVar[Level] = "WARNING"
    stream_id: str
    sink: str
    error: str


@dataclass(frozen=True, slots=True)
class StreamStateReset(_Fact):
    """A stream's saved state was not used (its configuration changed): it starts afresh."""

    kind: ClassVar[str] = "state_reset"
    level: ClassVar[Level] = "WARNING"
    stream_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class StateStoreFailed(_Fact):
    """A checkpoint could not be written; the feed goes on and it is tried again."""

    kind: ClassVar[str] = "state_failure"
    level: ClassVar[Level] = "WARNING"
    store: str
    error: str


@dataclass(frozen=True, slots=True)
class Fatal(_Fact):
    """The feed stopped for good (refused credentials)."""

    kind: ClassVar[str] = "fatal"
    level: ClassVar[Level] = "ERROR"
    error: str


ControlEvent = (
    TokenRefreshed
    | ChannelCreated
    | ChannelConnected
    | ChannelLost
    | ChannelRotated
    | ChannelClosed
    | ChannelFailed
    | SubscriptionsLost
    | TopicRejected
    | StreamAdded
    | StreamActivated
    | StreamRemoved
    | LeaseAcquired
    | LeaseReleased
    | LeaseLost
    | ClusterUnreachable
    | StreamUnplaced
    | QueuesRefreshed
    | GapReported
    | GapUndelivered
    | Backfilled
    | DeadLettered
    | SinkFailed
    | StreamStateReset
    | StateStoreFailed
    | Fatal
)


def fields_of(event: ControlEvent) -> dict[str, Any]:
    """The event's fields by name (shallow: tuples stay tuples)."""
    return {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
