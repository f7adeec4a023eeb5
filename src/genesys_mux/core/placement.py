"""Which instance of a cluster carries which stream, sans-I/O.

Theory of operation
-------------------
Every instance of a cluster sees the same members (their OAuth clients,
and the streams their configurations have) in Redis, and places the
streams any of them has: the same configuration, but for a rolling
deploy. Each computes :func:`place` from that shared view and the
current owners, and only acts on its own part of the answer: it asks
for the leases of the streams placed on it and hands over those placed
elsewhere. Redis's leases, not this function,
decide who actually owns a stream at any moment; the function only has to
be deterministic (same inputs, same answer on every instance) and stable
(an answer that moves nothing when nothing changed).

The rules, in order:

1. A stream keeps its current owner while that owner is a member and its
   OAuth client still has room for it.
2. Streams without an owner (new, or their owner left) go, largest first,
   to the least loaded member whose client has room; ties go to the member
   id that sorts first.
3. Then the load is evened out (and 2 is tried again for what did not fit,
   since evening out can make room, until nothing changes): the largest stream of the most loaded
   member moves to the least loaded one while that lowers the larger of
   the two loads, i.e. while the stream weighs at most half their
   difference. A member that joins takes its share this way; a balanced
   cluster moves nothing.

A stream goes only to a member whose configuration has it (members of a
rolling deploy may differ); one that no live member has is unplaced too.

A stream's weight is its topic count. A member's channels are its topics
divided by the platform's topics per channel, rounded up; the members
sharing an OAuth client share its channel budget, less one channel each
kept spare for make-before-break rotations. A stream that fits on no
member is *unplaced*, with the reason, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from genesys_mux.core.limits import PLATFORM

__all__ = ["Member", "Placement", "StreamDemand", "place"]


@dataclass(frozen=True, slots=True)
class Member:
    """A live instance of the cluster, and the OAuth client its channels count against.

    ``streams`` are the streams its configuration has: only those can be
    placed on it (None: not said, by an older release; taken as all).
    """

    id: str
    client: str
    streams: frozenset[str] | None = None

    def knows(self, stream_id: str) -> bool:
        """Whether the member can carry ``stream_id``: its configuration has the stream."""
        return self.streams is None or stream_id in self.streams


@dataclass(frozen=True, slots=True)
class StreamDemand:
    """A stream to be carried, and its weight: how many topics it subscribes."""

    stream_id: str
    topics: int


@dataclass(frozen=True, slots=True)
class Placement:
    """The answer: an owner per stream placed, and why the others could not be."""

    owners: dict[str, str] = field(default_factory=dict)
    unplaced: dict[str, str] = field(default_factory=dict)

    def streams_of(self, member: str) -> set[str]:
        """The streams placed on ``member``."""
        return {s for s, m in self.owners.items() if m == member}


@dataclass(slots=True)
class _Load:
    member: Member
    topics: int = 0
    streams: dict[str, int] = field(default_factory=dict)


def place(
    demands: Iterable[StreamDemand],
    members: Iterable[Member],
    current: Mapping[str, str],
    budgets: Mapping[str, int],
    *,
    topics_per_channel: int = PLATFORM.topics_per_channel,
    default_budget: int = PLATFORM.channels_per_client,
) -> Placement:
    """Place every stream on one member (see the module's rules).

    ``current`` maps stream ids to their owner now; ``budgets`` the OAuth
    clients' channel budgets (``default_budget`` for a client not listed).
    """
    loads = {m.id: _Load(m) for m in sorted(members, key=lambda m: m.id)}
    wanted = sorted(demands, key=lambda d: (-d.topics, d.stream_id))
    placement = Placement()
    if not loads:
        placement.unplaced.update((d.stream_id, "no live instance") for d in wanted)
        return placement

    def channels(topics: int) -> int:
        return -(-topics // topics_per_channel)

    def room(load: _Load, extra: int) -> bool:
        client = load.member.client
        usable = budgets.get(client, default_budget)
        sharing = [x for x in loads.values() if x.member.client == client]
        # Each member keeps one channel spare for its rotations.
        used = sum(channels(x.topics + (extra if x is load else 0)) + 1 for x in sharing)
        return used <= usable

    def fits(load: _Load, stream_id: str, topics: int) -> bool:
        return load.member.knows(stream_id) and room(load, topics)

    def put(load: _Load, demand: StreamDemand) -> None:
        load.topics += demand.topics
        load.streams[demand.stream_id] = demand.topics
        placement.owners[demand.stream_id] = load.member.id

    # 1. Current owners keep what still fits.
    homeless: list[StreamDemand] = []
    for demand in wanted:
        owner = loads.get(current.get(demand.stream_id, ""))
        if owner is not None and fits(owner, demand.stream_id, demand.topics):
            put(owner, demand)
        else:
            homeless.append(demand)
    # 2. The rest, largest first, on the least loaded member with room; then
    # 3. even out: move a stream while that lowers the larger of two loads.
    # Evening out can make room for a stream that fitted nowhere before, so
    # both run until neither changes anything: placing again from this
    # answer then moves nothing (the placement is stable).
    while True:
        still: list[StreamDemand] = []
        for demand in homeless:
            able = [x for x in loads.values() if fits(x, demand.stream_id, demand.topics)]
            if able:
                put(min(able, key=lambda x: (x.topics, x.member.id)), demand)
            else:
                still.append(demand)
        placed_some = len(still) < len(homeless)
        homeless = still
        moved = False
        while (move := _best_move(loads.values(), fits)) is not None:
            source, target, stream_id = move
            weight = source.streams.pop(stream_id)
            source.topics -= weight
            put(target, StreamDemand(stream_id, weight))
            moved = True
        if not homeless or not (placed_some or moved):
            break
    for demand in homeless:
        if not any(x.member.knows(demand.stream_id) for x in loads.values()):
            placement.unplaced[demand.stream_id] = (
                "no live instance has it in its configuration (a rolling deploy not "
                "finished?): start one whose configuration has it"
            )
            continue
        placement.unplaced[demand.stream_id] = (
            f"{demand.topics} topics fit on no instance: every OAuth client's "
            "channel budget is used"
        )
    return placement


def _best_move(
    loads: Iterable[_Load], fits: Callable[[_Load, str, int], bool]
) -> tuple[_Load, _Load, str] | None:
    """A stream to move from a more loaded member to a less loaded one, if any.

    The most loaded and least loaded members first; the largest stream that
    weighs at most half their difference, ties to the id that sorts first.
    """
    ordered = sorted(loads, key=lambda x: (x.topics, x.member.id))
    for target in ordered:
        for source in reversed(ordered):
            gap = source.topics - target.topics
            if gap <= 0:
                break
            movable = [
                (-w, s)
                for s, w in source.streams.items()
                if 0 < 2 * w <= gap and fits(target, s, w)
            ]
            if movable:
                return source, target, min(movable)[1]
    return None
