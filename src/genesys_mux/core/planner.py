"""Placement of the desired topics onto channel slots, as minimal diffs.

Theory of operation
-------------------
The platform carries at most 1000 topics on one channel and allows 20
channels per OAuth client (reference §3 and §4). The planner decides which
channel carries which topic, without knowing anything about live channels: it
works on *slots*, small stable integers. The connection layer maps each slot
to whatever live channel currently serves it. That mapping changes on every
rotation, while the slot does not, which is why metrics label channels by
slot and never by channel id (an id is also a capability, see §5).

The caller always hands :meth:`Planner.plan` the *whole* desired set, plain
or combined topics in any order, and gets back a :class:`PlanDiff`: the
operations that turn the current plan into the new one. The new plan is
committed before the diff is returned. One call works in five steps:

1. **Expand and validate.** Combined topics (``v2.users.U?presence&routingStatus``)
   are expanded into their parts. The platform may count a combined topic
   once or as its parts (§4 leaves it open), so the planner counts parts and
   works on plain topics only. Duplicates collapse onto their first
   appearance. An invalid topic raises
   :class:`~genesys_mux.errors.InvalidTopicError` before anything changes.
2. **Check capacity.** ``limits.capacity`` plain topics fit:
   ``(max_channels - reserved_channels) * topics_per_channel``. More raises
   :class:`~genesys_mux.errors.CapacityError`, naming the topics left out,
   and the plan stays as it was.
3. **Remove** every placed topic that is no longer desired.
4. **Place** each new topic, in the order given. Placed topics never move:
   moving one means unsubscribing it on one channel and subscribing it on
   another, and events in between are lost or duplicated. A new topic goes to

   a. the lowest slot that already holds a topic with the same entity
      prefix (``v2.users.{id}``) and has room, so the channel layer can
      subscribe them as one combined topic;
   b. else the lowest open slot with room for *all* of this call's new
      topics with that prefix, so a new user's topics arrive together;
   c. else the lowest open slot with any room;
   d. else a new slot, at the lowest free index.

   A slot emptied in step 3 is still open during step 4: reusing its live
   channel is cheaper than abandoning it and creating another. A new slot
   opens only when every open slot is full, so the plan never uses more
   channels than it must.
5. **Close** every slot that ends up empty.

Step 4 can use *any* slot with room, so stability never causes a spurious
:class:`~genesys_mux.errors.CapacityError`: however fragmented the plan,
every topic fits as long as the total count is within ``limits.capacity``.

Slots and the reserved channels
-------------------------------
A new slot takes the lowest free index and at most
``limits.usable_channels`` slots are open at once, so slot indices are
always below ``usable_channels``. ``reserved_channels`` is a *count* of
channels, not a slot: the connection layer spends it on make-before-break
rotation, opening the replacement channel for a slot before dropping the old.

The shape of a diff
-------------------
Operations come in four phases, each in ascending slot order:

* :class:`Unsubscribe`: removals go first, so a full channel never briefly
  holds 1001 topics (the platform answers 400
  ``notification.subscription.too.many.subscriptions``);
* :class:`CloseSlot`: before any open, so the client never briefly holds 21
  channels (the 21st silently evicts another, §3);
* :class:`OpenSlot`;
* :class:`Subscribe`.

A slot gets at most one operation of each kind, and a slot whose topics did
not change gets none. Within one diff a slot is never both closed and
opened: an emptied slot is reused rather than closed while another opens.

A :class:`CloseSlot` implies the removal of every topic of its slot, so no
:class:`Unsubscribe` is emitted for a closing slot. A channel cannot be
deleted (§3): the connection layer just stops using it and lets it expire,
and an unsubscribe first would spend a rate-limited REST call (§8) on a
channel that is going away. :func:`apply` follows the same rule, and also
accepts an explicit :class:`Unsubscribe` before a :class:`CloseSlot`.

Subscribed topics are listed in the order they were asked for; unsubscribed
topics, which have no order the caller gave, are sorted. Nothing depends on
the iteration order of a set, which changes between processes with string
hash randomisation, so the same plan and the same desired sequence always
give the same diff.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeAlias

from genesys_mux.core.limits import PLATFORM
from genesys_mux.core.topics import expand_topic, parse_topic
from genesys_mux.errors import CapacityError, ConfigError

__all__ = [
    "CloseSlot",
    "OpenSlot",
    "PlanDiff",
    "Planner",
    "PlannerLimits",
    "SlotOp",
    "Subscribe",
    "Unsubscribe",
    "apply",
]

# How many topics an error message lists before "and N more".
_SHOWN_TOPICS = 10


@dataclass(frozen=True, slots=True)
class PlannerLimits:
    """How many topics and channels the planner may use.

    The defaults are the platform's limits (reference §3, §4) with one channel
    kept free for make-before-break rotation, so 19 x 1000 = 19,000 topics
    fit. Raises :class:`~genesys_mux.errors.ConfigError` for a value that
    cannot work.
    """

    topics_per_channel: int = PLATFORM.topics_per_channel
    max_channels: int = PLATFORM.channels_per_client
    reserved_channels: int = 1

    def __post_init__(self) -> None:
        # ``type(...) is int`` rather than isinstance: True is an int, and a
        # limit of True is a mistake worth reporting.
        for name in ("topics_per_channel", "max_channels"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"PlannerLimits.{name} must be a positive integer, got {value!r}")
        reserved = self.reserved_channels
        if type(reserved) is not int or reserved < 0:
            raise ConfigError(
                f"PlannerLimits.reserved_channels must be an integer of 0 or more, got {reserved!r}"
            )
        if reserved >= self.max_channels:
            raise ConfigError(
                f"PlannerLimits.reserved_channels ({reserved}) must be less than max_channels "
                f"({self.max_channels}): at least one channel has to carry topics"
            )

    @property
    def usable_channels(self) -> int:
        """Channels that may carry topics: ``max_channels - reserved_channels``."""
        return self.max_channels - self.reserved_channels

    @property
    def capacity(self) -> int:
        """The most plain topics that fit: ``usable_channels * topics_per_channel``."""
        return self.usable_channels * self.topics_per_channel


@dataclass(frozen=True, slots=True)
class OpenSlot:
    """Start using ``slot``: the connection layer creates a channel for it."""

    slot: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Add ``topics`` (plain, none already on the slot) to ``slot``."""

    slot: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Remove ``topics`` (plain, all currently on the slot) from ``slot``."""

    slot: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CloseSlot:
    """Stop using ``slot``; every topic still on it is dropped with it."""

    slot: int


#: One operation of a :class:`PlanDiff`.
SlotOp: TypeAlias = OpenSlot | Subscribe | Unsubscribe | CloseSlot


@dataclass(frozen=True, slots=True)
class PlanDiff:
    """The operations that turn one plan into the next, in the order to run them."""

    ops: tuple[SlotOp, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when the plan did not change."""
        return not self.ops

    @property
    def touched_slots(self) -> tuple[int, ...]:
        """The slots some operation names, in ascending order."""
        return tuple(sorted({op.slot for op in self.ops}))


def apply(slots: Mapping[int, frozenset[str]], diff: PlanDiff) -> dict[int, frozenset[str]]:
    """Return the plan ``slots`` becomes after ``diff``; ``slots`` is not modified.

    Raises :class:`~genesys_mux.errors.ConfigError` when the diff does not fit
    the plan: opening an open slot, touching a slot that is not open,
    subscribing a topic the slot already holds or unsubscribing one it does
    not. Such a diff was computed from another plan, and replaying it would
    only hide the mistake.
    """
    result = dict(slots)
    for op in diff.ops:
        match op:
            case OpenSlot(slot=slot):
                if slot in result:
                    raise ConfigError(f"cannot open slot {slot}: it is already open")
                result[slot] = frozenset()
            case Subscribe(slot=slot, topics=topics):
                current = _open_slot(result, op)
                present = sorted(current.intersection(topics))
                if present:
                    raise ConfigError(f"slot {slot} already holds {_listing(present)}")
                result[slot] = current.union(topics)
            case Unsubscribe(slot=slot, topics=topics):
                current = _open_slot(result, op)
                missing = sorted(set(topics).difference(current))
                if missing:
                    raise ConfigError(f"slot {slot} does not hold {_listing(missing)}")
                result[slot] = current.difference(topics)
            case CloseSlot(slot=slot):
                _open_slot(result, op)
                del result[slot]
    return result


def _open_slot(slots: Mapping[int, frozenset[str]], op: SlotOp) -> frozenset[str]:
    topics = slots.get(op.slot)
    if topics is None:
        raise ConfigError(f"cannot apply {op!r}: slot {op.slot} is not open")
    return topics


def _count(n: int) -> str:
    return f"{n:,} topic" if n == 1 else f"{n:,} topics"


def _listing(topics: list[str]) -> str:
    shown = ", ".join(topics[:_SHOWN_TOPICS])
    more = len(topics) - _SHOWN_TOPICS
    return f"{shown} and {more:,} more" if more > 0 else shown


class Planner:
    """The current placement of topics onto slots, and the rules that change it.

    Start empty; call :meth:`plan` with the whole desired set each time it
    changes. See the module docstring for the rules.
    """

    def __init__(self, limits: PlannerLimits | None = None) -> None:
        self._limits = limits if limits is not None else PlannerLimits()
        self._slots: dict[int, frozenset[str]] = {}
        # Indexes over _slots, so a plan that changes little costs little:
        # the slot of each placed topic, and its entity prefix (kept rather
        # than parsed again on every plan).
        self._slot_of: dict[str, int] = {}
        self._prefix_of: dict[str, str] = {}

    @property
    def limits(self) -> PlannerLimits:
        """The limits this planner enforces."""
        return self._limits

    @property
    def slots(self) -> Mapping[int, frozenset[str]]:
        """A read-only snapshot of the plan: open slot -> its topics, by slot index.

        Later calls to :meth:`plan` do not change a snapshot already taken.
        """
        return MappingProxyType({slot: self._slots[slot] for slot in sorted(self._slots)})

    @property
    def topics(self) -> frozenset[str]:
        """Every plain topic the plan holds, whatever its slot."""
        return frozenset(self._slot_of)

    @property
    def topic_count(self) -> int:
        """How many plain topics the plan holds."""
        return len(self._slot_of)

    def slot_of(self, topic: str) -> int | None:
        """The slot carrying the plain ``topic``, or None if it is not placed."""
        return self._slot_of.get(topic)

    def reset(self) -> None:
        """Forget the whole plan, for a full resubscribe.

        Use it when every channel is gone (a revoked token, for instance):
        the next :meth:`plan` then opens and subscribes everything afresh.
        """
        self._slots.clear()
        self._slot_of.clear()
        self._prefix_of.clear()

    def describe(self) -> str:
        """A one-line summary of slot sizes, for logs and the dashboard."""
        sizes = " ".join(f"{slot}:{len(self._slots[slot])}" for slot in sorted(self._slots))
        return (
            f"{len(self._slots)} slots, {self.topic_count:,}/{self._limits.capacity:,} topics"
            + (f" [{sizes}]" if sizes else "")
        )

    def __repr__(self) -> str:
        return f"<Planner {self.describe()}>"

    def plan(self, desired: Iterable[str]) -> PlanDiff:
        """Make ``desired`` the plan and return the diff from the previous one.

        ``desired`` is the whole set of wanted topics, plain or combined, in
        the order new topics should be placed. Raises
        :class:`~genesys_mux.errors.InvalidTopicError` for an invalid topic
        and :class:`~genesys_mux.errors.CapacityError` when the topics do not
        fit; in both cases the plan is left unchanged.
        """
        if isinstance(desired, str):
            # A lone string iterates as characters, each "invalid"; say what
            # actually went wrong instead.
            raise TypeError("desired must be an iterable of topic names, not a single str")
        wanted = self._expand(desired)
        new = [topic for topic in wanted if topic not in self._slot_of]
        if len(wanted) > self._limits.capacity:
            raise self._capacity_error(len(wanted), new)

        # Step 3, and the starting point of step 4: how full each open slot
        # is once the unwanted topics are gone, and where the prefixes of
        # the new topics already live.
        sizes = {slot: len(topics) for slot, topics in self._slots.items()}
        removed: dict[int, list[str]] = {}
        pending = Counter(wanted[topic] for topic in new)
        near: dict[str, set[int]] = {}
        for topic, slot in self._slot_of.items():
            if topic not in wanted:
                removed.setdefault(slot, []).append(topic)
                sizes[slot] -= 1
            elif self._prefix_of[topic] in pending:
                near.setdefault(self._prefix_of[topic], set()).add(slot)

        # Step 4. Slots only fill up from here on, so once a slot is full it
        # stays full for the rest of this call.
        open_slots = sorted(sizes)
        added: dict[int, list[str]] = {}
        for topic in new:
            prefix = wanted[topic]
            slot = self._choose_slot(sizes, open_slots, near.get(prefix, set()), pending[prefix])
            if slot not in sizes:
                sizes[slot] = 0
                open_slots = sorted(sizes)
            sizes[slot] += 1
            added.setdefault(slot, []).append(topic)
            near.setdefault(prefix, set()).add(slot)
            pending[prefix] -= 1

        # Step 5: a slot can only end empty by losing topics in step 3.
        closing = {slot for slot in removed if sizes[slot] == 0}
        ops: list[SlotOp] = []
        ops.extend(
            Unsubscribe(slot, tuple(sorted(removed[slot])))
            for slot in sorted(removed)
            if slot not in closing
        )
        ops.extend(CloseSlot(slot) for slot in sorted(closing))
        ops.extend(OpenSlot(slot) for slot in sorted(added) if slot not in self._slots)
        ops.extend(Subscribe(slot, tuple(added[slot])) for slot in sorted(added))

        self._commit(wanted, removed, added, closing)
        return PlanDiff(tuple(ops))

    def _expand(self, desired: Iterable[str]) -> dict[str, str]:
        """Step 1: the wanted plain topics, in first-appearance order, with their prefixes."""
        wanted: dict[str, str] = {}
        for name in desired:
            if name in wanted:
                continue
            known = self._prefix_of.get(name)
            if known is not None:
                # Already placed, hence already validated: skip the grammar,
                # so re-planning a large, mostly unchanged set stays cheap.
                wanted[name] = known
            elif "?" in name:
                # expand_topic checks that the text before "?" is the entity
                # prefix of every part, so it is the prefix of each of them.
                prefix = name.partition("?")[0]
                for part in expand_topic(name):
                    wanted.setdefault(part, prefix)
            else:
                wanted[name] = parse_topic(name).prefix
        return wanted

    def _choose_slot(
        self,
        sizes: Mapping[int, int],
        open_slots: list[int],
        near: set[int],
        group: int,
    ) -> int:
        """Step 4 for one new topic: rules a to d of the module docstring.

        ``near`` holds the slots that already carry the topic's prefix and
        ``group`` counts this call's new topics with that prefix still to place.
        """
        per_slot = self._limits.topics_per_channel
        beside = [slot for slot in near if sizes[slot] < per_slot]
        if beside:
            return min(beside)
        for slot in open_slots:
            if per_slot - sizes[slot] >= group:
                return slot
        for slot in open_slots:
            if sizes[slot] < per_slot:
                return slot
        for slot in range(self._limits.usable_channels):
            if slot not in sizes:
                return slot
        # Every usable slot is open and full, which means the total exceeds
        # the capacity; plan() checked that before placing anything.
        raise AssertionError("no room for a topic although the capacity check passed")

    def _commit(
        self,
        wanted: Mapping[str, str],
        removed: Mapping[int, list[str]],
        added: Mapping[int, list[str]],
        closing: set[int],
    ) -> None:
        for topics in removed.values():
            for topic in topics:
                del self._slot_of[topic]
                del self._prefix_of[topic]
        for slot, topics in added.items():
            for topic in topics:
                self._slot_of[topic] = slot
                self._prefix_of[topic] = wanted[topic]
        for slot in closing:
            del self._slots[slot]
        for slot in (removed.keys() | added.keys()) - closing:
            current = self._slots.get(slot, frozenset())
            self._slots[slot] = current.difference(removed.get(slot, ())).union(added.get(slot, ()))

    def _capacity_error(self, desired_count: int, new: list[str]) -> CapacityError:
        limits = self._limits
        # The plan in force always fits, so the overflow is all new topics.
        # Placement would fill every free place in order, so the ones left
        # out are the last new topics asked for.
        overflow = desired_count - limits.capacity
        unplaced = tuple(new[len(new) - overflow :])
        return CapacityError(
            f"{desired_count:,} topics are desired (combined topics count as their parts) "
            f"but only {limits.capacity:,} fit: {limits.usable_channels} channels x "
            f"{limits.topics_per_channel:,} topics per channel, with "
            f"{limits.reserved_channels} of the {limits.max_channels} channels allowed kept "
            f"free for make-before-break rotation. {_count(len(unplaced))} did not fit: "
            f"{_listing(list(unplaced))}. Ask for fewer topics (fewer queues, users or "
            "media types); the current plan is unchanged",
            unplaced=unplaced,
        )
