"""One instance's part in a cluster: join, take its streams, hand over, fail over.

Theory of operation
-------------------
Every ``heartbeat_s`` (faster while a handover is under way) a member:

1. renews its member key and its leases. A lease it lost (expired while it
   was frozen, or taken) stops the stream at once, without a checkpoint:
   another instance may be writing the stream's state already.
2. reads the members and the leases, and computes the placement
   (:func:`genesys_mux.core.placement.place`) from them, as every other
   member does.
3. for a stream placed on it:

   - whose lease is free: takes the lease and activates the stream. A
     previous owner that vanished left a checkpoint: the window it does
     not cover is a ``failover`` gap, back-filled like any other.
   - whose lease another member holds (a planned move): adds the stream on
     standby (subscribed, keeping what arrives) and says it is ready. The
     holder then hands the stream over and releases the lease; this member
     takes the lease and activates the stream (``handover``): make before
     break, with no gap and nothing delivered twice. Between the release
     and the take, the member standing by counts as the stream's owner for
     the placement (:func:`placement_owners`): placed afresh, the stream
     could go to a member that never subscribed it, which would take it
     only after a window without an owner.

4. for a stream it holds that is placed elsewhere: once the new owner said
   it is ready, promises it the stream (see
   :mod:`genesys_mux.cluster.leases`: a member promised a stream keeps its
   standby whatever placement it computes meanwhile), hands the stream
   over (final checkpoint) and releases the lease.

A round may take long: a handover waits (``handover_timeout_s``) for the
stream's readers to settle what they took, and a subscription for the
platform. Meanwhile :meth:`ClusterMember.run` keeps renewing the leases
held, every ``heartbeat_s``, so that a slow round never lets the member's
other streams expire. A lease found lost then is stopped by the next round.

If Redis cannot be reached, the member keeps carrying its streams while its
leases may still be valid (one lease TTL after the last renewal), then
stops them: it can no longer prove it owns them. It carries on trying, and
takes its streams again once Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from genesys_mux.cluster.leases import Lease, LeaseTable, MemberInfo
from genesys_mux.config import StreamConfig, filter_topics, needs_all_queues, raw_topics
from genesys_mux.core.events import (
    ClusterUnreachable,
    ControlEvent,
    LeaseAcquired,
    LeaseLost,
    LeaseReleased,
    StreamUnplaced,
)
from genesys_mux.core.limits import PLATFORM
from genesys_mux.core.placement import Member, Placement, StreamDemand, place
from genesys_mux.errors import ClusterError, ConfigError, GenesysMuxError, RedisPermissionError
from genesys_mux.net.multiplexer import Multiplexer

__all__ = [
    "ClusterMember",
    "MemberStatus",
    "cluster_members",
    "configured_weights",
    "known_streams",
    "placement_owners",
    "stream_weights",
]

log = logging.getLogger("genesys_mux.cluster")

#: Seconds between this host's clock and Redis's beyond which it is said.
_CLOCK_WARNING_S = 1.0
#: Round trip of a clock reading within which it is taken as exact enough.
_CLOCK_ROUND_TRIP_S = 0.1

#: Called when a stream starts (``lease`` given) or stops being carried here (None).
OwnershipHook = Callable[[str, Lease | None], Awaitable[None]]


@dataclass(slots=True)
class MemberStatus:
    """What a member knows, for ``/readyz``, metrics and ``cluster status``."""

    #: Streams carried here, with their leases.
    held: dict[str, Lease] = field(default_factory=dict)
    #: Streams on standby here, waiting for their holder to let go.
    standby: set[str] = field(default_factory=set)
    #: The last placement computed, and why some streams fit nowhere.
    placement: Placement = field(default_factory=Placement)
    #: Why the member cannot prove its leases now (Redis unreachable), if so.
    trouble: str | None = None
    #: Streams taken and let go, by how: acquired (a free lease), handover
    #: (taken from or given to another member), released (leaving), lost.
    changes: dict[str, int] = field(default_factory=dict)
    #: Channels the members sharing this one's OAuth client need (one per
    #: slot, two while a slot rotates), as they last said, and the client's
    #: budget: more than that, and the platform is evicting their channels.
    client_channels: int = 0
    channel_budget: int = PLATFORM.channels_per_client


def cluster_members(published: Iterable[MemberInfo]) -> list[Member]:
    """The placement's members: each with its OAuth client and the streams it has.

    A member of a release before ``MemberInfo.streams`` says nothing of its
    configuration: it is known to have only what it carries or stands by
    for, so a stream it may lack is never placed on it.
    """
    return [
        Member(m.id, m.client, frozenset(m.topics if m.streams is None else m.streams))
        for m in published
    ]


def known_streams(own: Iterable[str], published: Iterable[MemberInfo]) -> list[str]:
    """Every stream this member's or any member's configuration has, sorted."""
    known = set(own)
    for member in published:
        known.update(member.streams or ())
    return sorted(known)


def configured_weights(
    streams: Iterable[StreamConfig], members: Iterable[MemberInfo] = ()
) -> dict[str, int]:
    """Each stream's weight as its configuration says, at least 1.

    Its raw topics (a combined topic as its parts, as the planner counts
    them) and its filter's topic; a filter that names neither a queue nor a
    user subscribes every queue of the org, counted as the member that
    listed them last says (1 while none has). Each member publishes these
    for the streams it has (``MemberInfo.streams``).
    """
    listed = [m for m in members if m.queues is not None]
    latest = max(listed, key=lambda m: (m.queues_at, m.id), default=None)
    queues = 1 if latest is None or latest.queues is None else latest.queues
    weights = {}
    for stream in streams:
        named = raw_topics(stream) | filter_topics(stream)
        configured = len(named) + (queues if needs_all_queues(stream) else 0)
        weights[stream.id] = max(1, configured)
    return weights


def stream_weights(
    streams: Iterable[StreamConfig],
    members: Iterable[MemberInfo] = (),
    *,
    others: Iterable[str] = (),
) -> dict[str, int]:
    """Each stream's weight for the placement: how many plain topics it subscribes, at least 1.

    A member carrying a stream, or standing by for it, publishes how many
    topics it subscribes (:meth:`Multiplexer.topic_counts`): the largest
    count published is the weight. For a stream nobody publishes a count
    for, the largest weight a member publishes from its configuration
    (:func:`configured_weights`); only when none does, this one's own
    configuration's (``streams``), else 1 (``others``: streams another
    member's configuration has). Every member (and ``cluster status``)
    reads the same member records, so all compute the same weights, even
    while their configurations differ.
    """
    published = list(members)
    counted: dict[str, int] = {}
    said: dict[str, int] = {}
    for member in published:
        for stream_id, topics in member.topics.items():
            counted[stream_id] = max(counted.get(stream_id, 0), topics)
        for stream_id, weight in (member.streams or {}).items():
            said[stream_id] = max(said.get(stream_id, 0), weight)
    own = configured_weights(streams, published)
    weights = {}
    for stream_id in [*own, *others]:
        if stream_id in counted:
            weights[stream_id] = max(1, counted[stream_id])
        elif stream_id in said:
            weights[stream_id] = max(1, said[stream_id])
        else:
            weights[stream_id] = own.get(stream_id, 1)
    return weights


def placement_owners(
    leases: Mapping[str, Lease], ready: Mapping[str, str], members: Collection[str]
) -> dict[str, str]:
    """Each stream's current owner, as the placement should see it.

    A stream's lease holder; for a stream whose lease is free, the live
    member that stands by for it (``ready``): its holder let go to that
    member, which takes the lease at its next round. Every member (and
    ``cluster status``) must compute this the same way.
    """
    owners = {s: lease.holder for s, lease in leases.items()}
    for stream_id, member in ready.items():
        if stream_id not in owners and member in members:
            owners[stream_id] = member
    return owners


class ClusterMember:
    """Runs one instance's part of a cluster on a started :class:`Multiplexer`.

    ``streams`` are the configuration's streams (every member has the same);
    ``weights`` their topic counts for the placement, where known better
    than :func:`stream_weights` counts them (which it does by default).
    ``on_ownership`` is awaited when a stream starts being carried here
    (with its lease, whose fencing token the sinks should send) and when
    it stops (with None); if it raises, the error is logged and the stream
    stays carried (or stopped): the callback is not called again for that
    change.
    ``handover_timeout_s`` is how long a handover waits for the stream's
    readers to settle what they took (what they did not is left to the
    next owner, which delivers it again under the same idempotency keys).
    """

    def __init__(
        self,
        mux: Multiplexer,
        table: LeaseTable,
        streams: Sequence[StreamConfig],
        *,
        client: str,
        budgets: Mapping[str, int] | None = None,
        heartbeat_s: float | None = None,
        topics_per_channel: int = PLATFORM.topics_per_channel,
        weights: Mapping[str, int] | None = None,
        host: str = "",
        on_ownership: OwnershipHook | None = None,
        handover_timeout_s: float = 5.0,
    ) -> None:
        self.mux = mux
        self.table = table
        self.streams = {s.id: s for s in streams}
        self.client = client
        self.budgets = dict(budgets or {})
        self.topics_per_channel = topics_per_channel
        ttl_s = table.lease_ttl_ms / 1000
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else ttl_s / 3
        if not 0 < self.heartbeat_s < ttl_s:
            raise ConfigError(
                f"heartbeat_s ({self.heartbeat_s:g}) must be positive and shorter than "
                f"lease_ttl_s ({ttl_s:g}), or leases expire between renewals"
            )
        self.handover_timeout_s = handover_timeout_s
        # How often leases are renewed: every heartbeat, but at least twice a
        # lease, so that one renewal can be late by half a lease before the
        # watchdog (at nine tenths of it) stops the streams of a healthy member.
        self._renew_every = min(self.heartbeat_s, ttl_s / 2)
        self._given_weights = dict(weights or {})
        #: The weights of the last placement (see :func:`stream_weights`).
        self.weights = {**stream_weights(streams), **self._given_weights}
        # Whether the org's queue count is worth publishing: an all-queues
        # stream's weight rests on it before anyone carries the stream.
        self._count_queues = any(needs_all_queues(s) for s in streams)
        self._counting: asyncio.Task[int] | None = None
        # When to count the queues next (monotonic), and the back-off after failures.
        self._count_due = 0.0
        self._count_backoff = 0.0
        # Streams held here that fitted nowhere at the last round.
        self._unfit: set[str] = set()
        # The members as the last round read them.
        self._published: list[MemberInfo] = []
        # Whether the clock was last found more than a second off Redis's.
        self._clock_far = False
        # The round trip of the clock reading in use (its error is half of it),
        # and whether readings were all slow so far (said once).
        self._clock_round_trip = math.inf
        self._clock_slow = False
        # The members last said to have other streams than this one's configuration.
        self._differing: frozenset[str] = frozenset()
        self.info = MemberInfo(
            table.instance, client, time.time(), host, streams=configured_weights(streams)
        )
        self.status = MemberStatus()
        self._on_ownership = on_ownership
        #: Called with every control-plane fact of the member (the audit log, metrics).
        self.on_control: list[Callable[[ControlEvent], None]] = []
        self._renewed_at: float | None = None
        self._wake = asyncio.Event()
        # One round at a time; leave() waits for the round under way.
        self._round = asyncio.Lock()
        self._leaving = False
        # Why the last round failed on something other than Redis (a
        # defect); None once a round runs to its end.
        self._defect: str | None = None

    # -- the loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Take part until cancelled or :meth:`leave` is called.

        Raises :class:`~genesys_mux.errors.RedisPermissionError` (having
        stopped every stream carried here) when Redis refuses the user a
        command it needs: no retry can fix that.
        """
        renewing = asyncio.create_task(self._renew_during_rounds(), name="cluster-renew")
        watching = asyncio.create_task(self._stop_before_expiry(), name="cluster-expiry")
        task = asyncio.current_task()
        try:
            while not self._leaving:
                busy = await self.tick()
                if task is not None and task.cancelling():
                    # A library that swallowed the cancellation in the middle
                    # of its call (redis-py can): the cancel still wins.
                    raise asyncio.CancelledError
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    # While a handover is under way, look again soon: the next
                    # owner's standby buffer is bounded.
                    async with asyncio.timeout(0.1 if busy else self.heartbeat_s):
                        await self._wake.wait()
        finally:
            renewing.cancel()
            watching.cancel()
            counting, self._counting = self._counting, None
            if counting is not None:
                counting.cancel()
            await asyncio.gather(
                renewing,
                watching,
                *([counting] if counting is not None else []),
                return_exceptions=True,
            )

    async def _renew_during_rounds(self) -> None:
        """Renew the member key and the leases held whenever no round did for half a lease.

        A round runs long (a handover waits for its sinks), or rounds come
        only every ``heartbeat_s``, which may be most of a lease: the expiry
        watchdog would stop the streams of a healthy member.
        """
        while True:
            await asyncio.sleep(self._renew_every / 4)  # the renewal period, not synchronisation
            renewed = self._renewed_at
            if renewed is None or time.monotonic() - renewed < self._renew_every:
                continue  # a round renewed lately (or none has run yet)
            held = list(self.status.held.values())
            # From before the request: Redis may have renewed the leases as
            # soon as it got it, and a slow answer must not make them seem
            # to last longer here than they do there.
            asked_at = time.monotonic()
            try:
                if not self._leaving:
                    await self.table.heartbeat(self.info)
                    asked_at = time.monotonic()
                lost = await self.table.renew(held)
            except ClusterError:
                continue  # the round under way, or the next, reports it
            # Lost leases are stopped by the next round, which finds them
            # lost again: the round under way may be using those streams.
            self._renewed_at = asked_at
            if lost:
                log.warning("lost the leases of %s", ", ".join(x.stream_id for x in lost))

    async def _stop_before_expiry(self) -> None:
        """Stop the streams held here before their leases can expire unrenewed.

        A round notices a Redis that fails, but one that does not answer at
        all (a partition, a frozen server) holds its call for as long as the
        client's socket timeout, longer than a lease may last: meanwhile
        another instance takes the streams once their leases expire in
        Redis, and both would deliver. So a deadline of its own, whatever
        the rounds are waiting on: a tenth of the lease before it may end,
        counted from when the last renewal was asked for.
        """
        ttl_s = self.table.lease_ttl_ms / 1000
        while True:
            renewed = self._renewed_at
            if renewed is None or not self.status.held:
                await asyncio.sleep(self.heartbeat_s)  # nothing can expire yet
                continue
            left = renewed + 0.9 * ttl_s - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)  # until the deadline, then look again
                continue
            held = sorted(self.status.held)
            log.warning(
                "cluster: the leases of %s were not renewed for %.1f s (Redis does not "
                "answer); they stop here before they can expire and be taken",
                ", ".join(held),
                time.monotonic() - renewed,
            )
            for stream_id in held:
                if stream_id in self.status.held:
                    await self._stop_here(stream_id, "cannot be renewed")

    async def tick(self) -> bool:
        """One round; True when a handover is under way (look again soon)."""
        try:
            async with self._round:
                if self._leaving:
                    return False
                return await self._tick()
        except RedisPermissionError as exc:
            # No round can succeed until the Redis user may do what it must
            # (an ACL changed under a running cluster): say so, stop what is
            # carried here (its leases cannot be renewed), and end the loop
            # with the error, for the run to stop on. Retried, it would look
            # like an outage for ever.
            log.error("cluster: %s", exc)
            await self._stop_everything("permission refused")
            raise
        except ClusterError as exc:
            await self._cannot_prove(str(exc))
            return False
        except GenesysMuxError as exc:
            # A stream that cannot be taken or handed over now (its state
            # cannot be read or written): the next round tries again.
            log.warning("cluster: %s", exc)
            return False
        except Exception as exc:
            # A defect, not Redis: left to end the loop, it would leave the
            # streams held here delivering with nobody renewing their
            # leases or handing them over, and nothing said. Reported like
            # an outage instead (readiness fails, the streams stop once the
            # leases can no longer be proven) until a round succeeds.
            why = f"a round failed: {type(exc).__name__}: {exc}"
            if why != self._defect:
                log.exception("cluster: %s", why)  # with its traceback, once
            self._defect = why
            await self._cannot_prove(why)
            return False

    async def leave(self, timeout_s: float = 30.0) -> None:
        """Stop carrying anything: hand each stream over to the member placed on it.

        Leaves the membership first, so the others place the streams
        elsewhere and subscribe them on standby; hands each over once its
        next owner is ready (or at ``timeout_s``, or at once when no member
        is left, letting its lease go: the next owner then fails over from
        the checkpoint written here).
        """
        self._leaving = True
        self._wake.set()
        # The loop's watchdog ends with the loop: while the streams are
        # handed over, one of the leave's own stops them should Redis stop
        # answering (its calls would wait out the socket timeout).
        watching = asyncio.create_task(self._stop_before_expiry(), name="cluster-expiry-leave")
        try:
            async with self._round:
                await self._leave(timeout_s)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    async def _leave(self, timeout_s: float) -> None:
        with contextlib.suppress(ClusterError):
            await self.table.leave()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.status.held and loop.time() < deadline:
            try:
                # Renewed while waiting for the next owners: expired, a stream
                # would fail over (a gap) instead of being handed over.
                asked_at = time.monotonic()
                lost = await self.table.renew(list(self.status.held.values()))
                self._renewed_at = asked_at
                for lease in lost:
                    await self._stop_here(lease.stream_id, "expired or taken")
                if not await self.table.members():
                    # No one is left to stand by (the whole cluster stops):
                    # waiting would only delay the stop.
                    break
                ready = await self.table.ready_for(self.status.held)
            except ClusterError:
                break
            waiting = [s for s in self.status.held if ready.get(s, self.info.id) != self.info.id]
            for stream_id in waiting:
                with contextlib.suppress(ClusterError):
                    if await self._promise(stream_id, ready[stream_id]):
                        await self._leave_stream(stream_id)
            await asyncio.sleep(0.1)  # polling the others' readiness towards a deadline
        for stream_id in list(self.status.held):
            await self._leave_stream(stream_id)
        for stream_id in list(self.status.standby):
            with contextlib.suppress(ClusterError):
                await self._drop_standby(stream_id)

    async def _leave_stream(self, stream_id: str) -> None:
        """Hand one stream over as the member leaves; a failure costs that stream alone.

        (Its checkpoint could not be written, say: it is stopped all the
        same, and its next owner fails over from the last one written.)
        The others must still be handed over, not left running with
        nothing to renew their leases.
        """
        try:
            await self._let_go(stream_id, "released")
        except GenesysMuxError as exc:
            log.warning(
                "cluster: stream %s could not be handed over as this member left: %s",
                stream_id,
                exc,
            )

    # -- one round ---------------------------------------------------------------

    async def _describe(self) -> None:
        """Update what the member key says: each stream's topics here, the org's queues.

        The other members weigh streams by it (:func:`stream_weights`): the
        configuration alone cannot say how many queues an all-queues stream
        subscribes, and a placement that counted it as one topic would open
        more of the OAuth client's channels than it has, and the platform
        would evict the least recently used of them, another member's.
        """
        mux = self.mux
        if self._count_queues:
            await self._count_queues_when_due()
        info = msgspec.structs.replace(
            self.info,
            topics=mux.topic_counts(),
            queues=mux.queue_count,
            queues_at=mux.queues_listed_at or 0.0,
            channels=mux.channels_in_use,
        )
        # The weights its configuration gives its streams, with the latest
        # queue count known (its own, or another member's from the last
        # round): what every member weighs them by, those that lack them too.
        others = [m for m in self._published if m.id != info.id]
        self.info = msgspec.structs.replace(
            info, streams=configured_weights(self.streams.values(), [*others, info])
        )

    async def _measure_clock(self) -> None:
        """Measure this host's clock against Redis's, for the checkpoints; warn when far off.

        A failover's gap starts at the previous owner's watermark, a time
        on that owner's clock; the checkpoint says how far it was off, and
        the next owner converts it to its own. Beyond a second, say so: the
        hosts should keep time (NTP), and the offset moves as it is measured.
        """
        try:
            offset, round_trip = await self.table.clock_reading()
        except (ClusterError, RedisPermissionError) as exc:
            log.debug("cluster: cannot read Redis's clock: %s", exc)
            return
        # Right to within half the round trip: a quick reading replaces any
        # other; a slow one only a slower one (a Redis far away, a busy loop:
        # an approximate offset is better than none).
        if round_trip > _CLOCK_ROUND_TRIP_S and round_trip >= self._clock_round_trip:
            return
        self._clock_round_trip = max(round_trip, _CLOCK_ROUND_TRIP_S)
        if round_trip > _CLOCK_ROUND_TRIP_S and not self._clock_slow:
            self._clock_slow = True
            log.warning(
                "cluster: Redis answers slowly (%.2f s for TIME): this host's clock offset "
                "from it (%+.2f s) is known only to within half that",
                round_trip,
                offset,
            )
        self.mux.clock_offset = offset
        far = abs(offset) > _CLOCK_WARNING_S
        if far and not self._clock_far:
            log.warning(
                "cluster: this host's clock is %+.1f s from the Redis server's; keep the "
                "instances' clocks synchronised (NTP). Failover gaps are converted with the "
                "offset measured, which is only as good as its last measurement",
                offset,
            )
        elif self._clock_far and not far:
            log.info("cluster: this host's clock agrees with the Redis server's again")
        self._clock_far = far

    def _say_configurations_differ(self, published: Sequence[MemberInfo]) -> None:
        """Warn, once per change, when members have other streams than this one.

        Normal for the length of a rolling deploy; a stream goes only to a
        member that has it, so one that only some have may fit nowhere.
        """
        mine = set(self.streams)
        differing = frozenset(
            m.id for m in published if m.streams is not None and set(m.streams) != mine
        )
        if differing and differing != self._differing:
            others = sorted(differing)
            log.warning(
                "cluster: instance(s) %s have other streams in their configuration than this "
                "one (a rolling deploy?); a stream is carried only by an instance that has it",
                ", ".join(others),
            )
        elif not differing and self._differing:
            log.info("cluster: every instance has the same streams again")
        self._differing = differing

    def _count_channels(self, published: Sequence[MemberInfo]) -> None:
        """Add up the channels the members sharing this one's client need; say when too many.

        The placement keeps its estimate within the budget, but cannot see
        everything that takes channels: a member's plan that never compacts
        after streams left it, a handover's standby beside its holder. What
        they need, not the sockets they have open, is the fact to watch:
        the platform keeps the open ones within the budget by evicting.
        """
        status = self.status
        budget = self.budgets.get(self.client, PLATFORM.channels_per_client)
        used = sum(m.channels for m in published if m.client == self.client)
        over = used > budget
        if over and status.client_channels <= status.channel_budget:
            log.warning(
                "cluster: the members of OAuth client %s need %d channels, more than its "
                "%d: the platform evicts the least recently used of them (see cluster status)",
                self.client,
                used,
                budget,
            )
        status.client_channels, status.channel_budget = used, budget

    async def _count_queues_when_due(self) -> None:
        """Count the org's queues every ``queue_refresh_s``, in the background.

        Only the first count holds a round up (for at most a heartbeat), so
        that the first placement weighs all-queues streams right; a large
        org's listing takes many pages, and goes on for a later round to
        use. A failed count is retried after a back-off (a heartbeat,
        doubling up to ``queue_refresh_s``): every member lists, against
        the client's shared request budget.
        """
        mux, task = self.mux, self._counting
        if task is None:
            if time.monotonic() < self._count_due:
                return
            task = self._counting = asyncio.create_task(
                mux.count_queues(), name="cluster-count-queues"
            )
        if mux.queue_count is None:
            await asyncio.wait({task}, timeout=self.heartbeat_s)
        if not task.done():
            return
        self._counting = None
        error = "cancelled" if task.cancelled() else task.exception()
        if error is None:
            self._count_backoff = 0.0
            self._count_due = time.monotonic() + mux.queue_refresh_s
            return
        first = self._count_backoff == 0.0  # of the failures in a row: said once
        self._count_backoff = min(
            mux.queue_refresh_s, max(self.heartbeat_s, 2 * self._count_backoff)
        )
        self._count_due = time.monotonic() + self._count_backoff
        if first:
            log.warning(
                "cluster: cannot count the org's queues (an all-queues stream nobody "
                "carries weighs %s until it can; retrying with a back-off): %s",
                "the last count" if mux.queue_count is not None else "one topic",
                error,
            )

    async def _tick(self) -> bool:
        table, status = self.table, self.status
        await self._describe()
        await table.heartbeat(self.info)
        await self._measure_clock()
        asked_at = time.monotonic()  # before the renewal: see _renew_during_rounds
        lost = await table.renew(list(status.held.values()))
        self._renewed_at = asked_at
        if status.trouble is not None and self._defect is None:
            log.info("cluster: Redis answers again")
            status.trouble = None
        for lease in lost:
            log.warning("lost the lease of stream %s; it stops here", lease.stream_id)
            await self._stop_here(lease.stream_id, "expired or taken")
        published = await table.members()
        # The weights its configuration gives its streams, now that the
        # members' records (the org's queue count) are read: in the first
        # round, or when another member counted the queues since.
        fresh = configured_weights(
            self.streams.values(), [*(m for m in published if m.id != self.info.id), self.info]
        )
        if fresh != self.info.streams:
            self.info = msgspec.structs.replace(self.info, streams=fresh)
            await table.heartbeat(self.info)
        published = [m for m in published if m.id != self.info.id] + [self.info]
        self._published = published
        members = cluster_members(published)
        # Every stream any member has, this one's or not: all members then
        # place the same streams, each only where it is configured.
        known = known_streams(self.streams, published)
        self._say_configurations_differ(published)
        self.weights = {
            **stream_weights(self.streams.values(), published, others=known),
            **self._given_weights,
        }
        self._count_channels(published)
        leases = await table.leases(known)
        # A free lease with a member standing by: a handover under way.
        ready = await table.ready_for(s for s in known if s not in leases)
        current = placement_owners(leases, ready, {m.id for m in members})
        placement = place(
            (StreamDemand(s, self.weights[s]) for s in known),
            members,
            current,
            self.budgets,
            topics_per_channel=self.topics_per_channel,
        )
        for stream_id, why in placement.unplaced.items():
            # Said by the members that have the stream (all of them, if none does).
            if stream_id not in status.placement.unplaced and (
                stream_id in self.streams or not any(m.knows(stream_id) for m in members)
            ):
                log.warning("stream %s fits on no instance: %s", stream_id, why)
                self._report(StreamUnplaced(stream_id, why))
        status.placement = placement
        mine = placement.streams_of(self.info.id)
        # A free lease this member stands by for is its to take, whatever
        # the placement says now: its holder let go to it, nobody else may
        # take its place as the ready member, and a placement that moved the
        # stream on (evening out, after members joined) would otherwise
        # leave it without an owner for as long as that placement holds.
        # Taken, it is handed on next round like any other stream.
        mine |= {s for s, m in ready.items() if m == self.info.id and s in status.standby}
        busy = False
        for stream_id in sorted(mine):
            holder = current.get(stream_id)
            if stream_id in status.held:
                continue
            if holder is None or holder == self.info.id:
                await self._take(stream_id)
            else:
                await self._stand_by(stream_id)
                busy = True
        handing = [s for s in status.held if s not in mine and s in placement.owners]
        if handing:
            ready = await table.ready_for(handing)
            for stream_id in handing:
                owner = placement.owners[stream_id]
                if ready.get(stream_id) == owner and await self._promise(stream_id, owner):
                    await self._let_go(stream_id, "handover")
                else:
                    busy = True
        for stream_id in [s for s in status.standby if s not in mine]:
            await self._drop_standby(stream_id)
        # A stream held here that fits nowhere now: its weight grew (the org
        # added queues; a count that came late). Carried on, it would take
        # more of the client's channels than the client has, and the
        # platform would evict theirs, this member's and the others', over
        # and over. Let go with a checkpoint once two rounds agree (one
        # could have read a member key mid-change): it is reported as
        # unplaced, and whoever takes it when it fits again continues from
        # the checkpoint, the window between reported as a gap.
        unfit = {s for s in status.held if s in placement.unplaced}
        for stream_id in sorted(unfit & self._unfit):
            log.warning(
                "stream %s fits on no instance any more: letting it go (%s)",
                stream_id,
                placement.unplaced[stream_id],
            )
            await self._let_go(stream_id, "released")
        self._unfit = unfit - self._unfit
        if self._defect is not None:
            log.info("cluster: a round succeeds again")
            self._defect = status.trouble = None
        return busy

    async def _take(self, stream_id: str) -> None:
        lease = await self.table.acquire(stream_id)
        if lease is None:
            return  # taken meanwhile by another member: the next round sees it
        on_standby = stream_id in self.status.standby
        try:
            # Promised: its holder handed it over (the standby covers what
            # its checkpoint does not). Otherwise the holder vanished.
            handed = on_standby and await self.table.promised_here(stream_id)
            if not on_standby:
                await self.mux.add_stream(self.streams[stream_id], standby=True)
                # Known from here, so a failure below leaves nothing untracked:
                # a later round takes it again, or drops it if placed elsewhere.
                self.status.standby.add(stream_id)
            # With a handover, what was kept on standby covers everything
            # after the owner's checkpoint; a window it does not is a
            # failover's (the owner went without handing over). The lease's
            # token fences the stream's state off from its previous owners.
            reason = "handover" if handed else "failover"
            await self.mux.activate(stream_id, reason=reason, fence=lease.token)
        except GenesysMuxError:
            # It cannot be subscribed, or its state read or claimed: let the
            # lease go, someone (maybe us) tries again next round.
            with contextlib.suppress(ClusterError):
                await self.table.release(lease)
            raise
        self.status.standby.discard(stream_id)
        self.status.held[stream_id] = lease
        with contextlib.suppress(ClusterError):
            # Its readiness (or the promise made to it) is spent; left, it
            # would expire within a lease TTL.
            await self.table.clear_ready(stream_id)
        reason = "handover" if handed else "acquired"
        self._count(reason)
        self._report(LeaseAcquired(stream_id, lease.token, reason))
        log.info("carrying stream %s (fencing token %d, %s)", stream_id, lease.token, reason)
        await self._tell_ownership(stream_id, lease)

    async def _stand_by(self, stream_id: str) -> None:
        if stream_id not in self.status.standby:
            await self.mux.add_stream(self.streams[stream_id], standby=True)
            self.status.standby.add(stream_id)
        await self.table.signal_ready(stream_id)

    async def _promise(self, stream_id: str, successor: str) -> bool:
        """Promise a stream held here to the member ready for it (then hand it over).

        False for a stream no longer held (the expiry watchdog stopped it).
        """
        lease = self.status.held.get(stream_id)
        promised = lease is not None and await self.table.promise(lease, successor)
        # Stopped meanwhile: nothing to hand over (its lease expires).
        return promised and stream_id in self.status.held

    async def _let_go(self, stream_id: str, reason: str) -> None:
        """Hand a stream over: stop it here with a final checkpoint, then release its lease."""
        lease = self.status.held.pop(stream_id, None)
        if lease is None:
            return  # stopped meanwhile (the expiry watchdog): not ours to hand over
        await self._tell_ownership(stream_id, None)
        try:
            await self.mux.handover(stream_id, timeout_s=self.handover_timeout_s)
        finally:
            with contextlib.suppress(ClusterError):
                await self.table.release(lease)
        self._count(reason)
        self._report(LeaseReleased(stream_id, reason))
        log.info("handed stream %s over (%s)", stream_id, reason)

    async def _stop_here(self, stream_id: str, reason: str) -> None:
        """Stop a stream that is no longer ours: no checkpoint, the lease is not ours to give."""
        if self.status.held.pop(stream_id, None) is None:
            return  # stopped already (the watchdog, then a late answer saying so)
        await self._tell_ownership(stream_id, None)
        await self.mux.handover(stream_id, checkpoint=False)
        self._count("lost")
        self._report(LeaseLost(stream_id, reason))

    async def _drop_standby(self, stream_id: str) -> None:
        # First the signal: a holder must never hand over to a standby that is
        # gone. A stream promised here keeps its standby (unless this member
        # leaves): its holder is handing it over, and this member takes it.
        if not await self.table.withdraw_ready(stream_id) and not self._leaving:
            return
        self.status.standby.discard(stream_id)
        await self.mux.handover(stream_id, checkpoint=False)

    async def _stop_everything(self, reason: str) -> None:
        """Stop every stream held or on standby here, asking Redis nothing."""
        for stream_id in list(self.status.held):
            await self._stop_here(stream_id, reason)
        for stream_id in list(self.status.standby):
            self.status.standby.discard(stream_id)
            await self.mux.handover(stream_id, checkpoint=False)

    async def _cannot_prove(self, why: str) -> None:
        """Redis failed: keep the streams while the leases may hold, then stop them."""
        if self.status.trouble is None:
            # Once per outage: each round would say the same thing again.
            log.warning("cluster: %s", why)
            self._report(ClusterUnreachable(why))
        else:
            log.debug("cluster: %s", why)
        self.status.trouble = why
        renewed = self._renewed_at
        ttl_s = self.table.lease_ttl_ms / 1000
        if renewed is not None and time.monotonic() - renewed < ttl_s:
            return
        for stream_id in list(self.status.held):
            await self._stop_here(stream_id, "cannot be renewed")

    async def _tell_ownership(self, stream_id: str, lease: Lease | None) -> None:
        if self._on_ownership is None:
            return
        try:
            await self._on_ownership(stream_id, lease)
        except Exception:
            # The lease is taken (or given up) whatever the callback does:
            # failing the round here would leave the change half made.
            log.exception("on_ownership callback failed for stream %s", stream_id)

    def _report(self, event: ControlEvent) -> None:
        for callback in self.on_control:
            try:
                callback(event)
            except Exception:
                log.exception("on_control callback failed")

    def _count(self, reason: str) -> None:
        self.status.changes[reason] = self.status.changes.get(reason, 0) + 1
