"""Tests for genesys_mux.core.planner: placement, stability, diffs and capacity."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesys_mux.core.planner import (
    CloseSlot,
    OpenSlot,
    PlanDiff,
    Planner,
    PlannerLimits,
    SlotOp,
    Subscribe,
    Unsubscribe,
    apply,
)
from genesys_mux.core.topics import expand_topic
from genesys_mux.errors import CapacityError, ConfigError, InvalidTopicError

Plan = Mapping[int, frozenset[str]]


def user(i: int) -> str:
    """A uuid-ish user id, distinct per ``i``."""
    return f"{i:08x}-5b4a-4392-8170-6f5e4d3c2b1a"


def queue_topics(n: int) -> list[str]:
    """``n`` distinct plain queue topics."""
    return [f"v2.routing.queues.q{i:05d}.conversations" for i in range(n)]


def expanded(desired: Sequence[str]) -> list[str]:
    """What the planner should hold for ``desired``: parts, deduplicated, in order."""
    return list(dict.fromkeys(part for name in desired for part in expand_topic(name)))


def sizes(plan: Plan) -> dict[int, int]:
    return {slot: len(topics) for slot, topics in plan.items()}


# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------

USERS = [user(i) for i in range(5)]
QUEUES = [f"queue-{i}" for i in range(4)]
USER_SUFFIXES = ("presence", "routingStatus", "conversations.calls")
PLAIN_POOL = [
    *(f"v2.users.{u}.{s}" for u in USERS for s in USER_SUFFIXES),
    *(f"v2.routing.queues.{q}.conversations" for q in QUEUES),
]
COMBINED_POOL = [
    *(f"v2.users.{u}?presence&routingStatus" for u in USERS[:3]),
    *(f"v2.users.{u}?routingStatus&conversations.calls" for u in USERS[2:]),
]
DESIRED = st.lists(st.sampled_from(PLAIN_POOL + COMBINED_POOL), max_size=24)


@st.composite
def small_limits(draw: st.DrawFn) -> PlannerLimits:
    """Limits small enough that the pool of topics often overflows them."""
    max_channels = draw(st.integers(2, 6))
    return PlannerLimits(
        topics_per_channel=draw(st.integers(3, 10)),
        max_channels=max_channels,
        reserved_channels=draw(st.integers(0, max_channels - 1)),
    )


# --------------------------------------------------------------------------
# Checks shared by the properties and the examples
# --------------------------------------------------------------------------

PHASES: dict[type, int] = {Unsubscribe: 0, CloseSlot: 1, OpenSlot: 2, Subscribe: 3}


def check_plan(planner: Planner, want: Sequence[str]) -> None:
    """The plan holds exactly ``want``, within the limits, with consistent indexes."""
    plan = planner.slots
    limits = planner.limits
    placed = [topic for topics in plan.values() for topic in topics]
    assert sorted(placed) == sorted(want), "every desired topic exactly once, none extra"
    assert planner.topic_count == len(want)
    assert planner.topics == frozenset(want)
    assert len(plan) <= limits.usable_channels, "the reserved channels stay free"
    for slot, topics in plan.items():
        assert 0 < len(topics) <= limits.topics_per_channel, "no empty or overfull slot"
        assert 0 <= slot < limits.usable_channels
        for topic in topics:
            assert planner.slot_of(topic) == slot


def check_diff(old: Plan, new: Plan, diff: PlanDiff) -> None:
    """``diff`` turns ``old`` into ``new``, minimally and in the documented order."""
    assert apply(old, diff) == new
    changed = tuple(sorted(s for s in old.keys() | new.keys() if old.get(s) != new.get(s)))
    assert diff.touched_slots == changed, "nothing emitted for an unchanged slot"
    assert diff.is_empty == (not changed)
    per_kind = Counter((type(op), op.slot) for op in diff.ops)
    assert max(per_kind.values(), default=1) == 1, "one op of each kind per slot"
    keys = [(PHASES[type(op)], op.slot) for op in diff.ops]
    assert keys == sorted(keys), "phases in order, slots ascending within a phase"
    closed = {op.slot for op in diff.ops if isinstance(op, CloseSlot)}
    opened = {op.slot for op in diff.ops if isinstance(op, OpenSlot)}
    assert not closed & opened
    for op in diff.ops:
        if isinstance(op, Unsubscribe):
            assert op.slot not in closed, "CloseSlot implies the unsubscribe"
            assert op.topics
            assert list(op.topics) == sorted(op.topics)
        if isinstance(op, Subscribe):
            assert op.topics


def outcomes(limits: PlannerLimits, history: Sequence[Sequence[str]]) -> list[object]:
    """Each step's diff, or the unplaced topics of its CapacityError."""
    planner = Planner(limits)
    result: list[object] = []
    for desired in history:
        try:
            result.append(planner.plan(desired))
        except CapacityError as exc:
            result.append(exc.unplaced)
    return result


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(limits=small_limits(), history=st.lists(DESIRED, min_size=1, max_size=8))
def test_plan_properties(limits: PlannerLimits, history: list[list[str]]) -> None:
    planner = Planner(limits)
    for desired in history:
        old = dict(planner.slots)
        placed_before = {topic for topics in old.values() for topic in topics}
        want = expanded(desired)
        try:
            diff = planner.plan(desired)
        except CapacityError as exc:
            error: CapacityError | None = exc
        else:
            error = None
        if error is not None:
            assert len(want) > limits.capacity, "the only failure is too many topics"
            assert dict(planner.slots) == old, "a failed plan changes nothing"
            assert error.unplaced
            assert len(error.unplaced) == len(want) - limits.capacity
            assert set(error.unplaced) <= set(want) - placed_before
            continue
        assert len(want) <= limits.capacity
        new = dict(planner.slots)
        check_plan(planner, want)
        check_diff(old, new, diff)
        for slot, topics in old.items():
            for topic in topics & set(want):
                assert planner.slot_of(topic) == slot, "a kept topic never moves"
        opened = {op.slot for op in diff.ops if isinstance(op, OpenSlot)}
        if opened:
            for slot, topics in new.items():
                if slot not in opened:
                    assert len(topics) == limits.topics_per_channel, "open only when all full"


@settings(max_examples=100, deadline=None)
@given(limits=small_limits(), history=st.lists(DESIRED, min_size=1, max_size=6))
def test_plan_is_deterministic(limits: PlannerLimits, history: list[list[str]]) -> None:
    assert outcomes(limits, history) == outcomes(limits, history)


# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------


def test_default_limits_are_the_platform_limits_less_one_channel() -> None:
    limits = PlannerLimits()
    assert (limits.topics_per_channel, limits.max_channels, limits.reserved_channels) == (
        1000,
        20,
        1,
    )
    assert limits.usable_channels == 19
    assert limits.capacity == 19_000
    assert Planner().limits == limits


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topics_per_channel": 0}, "topics_per_channel must be a positive integer"),
        ({"topics_per_channel": -5}, "topics_per_channel must be a positive integer"),
        ({"topics_per_channel": 2.5}, "topics_per_channel must be a positive integer"),
        ({"topics_per_channel": True}, "topics_per_channel must be a positive integer"),
        ({"max_channels": 0}, "max_channels must be a positive integer"),
        ({"reserved_channels": -1}, "reserved_channels must be an integer of 0 or more"),
        ({"max_channels": 3, "reserved_channels": 3}, r"reserved_channels \(3\) must be less"),
        ({"max_channels": 1}, r"reserved_channels \(1\) must be less than max_channels \(1\)"),
    ],
)
def test_limits_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PlannerLimits(**kwargs)  # type: ignore[arg-type]


def test_no_reserved_channel_is_allowed() -> None:
    limits = PlannerLimits(topics_per_channel=2, max_channels=1, reserved_channels=0)
    planner = Planner(limits)
    planner.plan(queue_topics(2))
    assert sizes(planner.slots) == {0: 2}


# --------------------------------------------------------------------------
# Examples at the platform's scale
# --------------------------------------------------------------------------


def test_2500_topics_take_three_slots() -> None:
    planner = Planner()
    topics = queue_topics(2500)
    diff = planner.plan(topics)
    assert sizes(planner.slots) == {0: 1000, 1: 1000, 2: 500}
    assert [type(op) for op in diff.ops] == [OpenSlot] * 3 + [Subscribe] * 3
    subscribed = [t for op in diff.ops if isinstance(op, Subscribe) for t in op.topics]
    assert subscribed == topics, "subscribed in the order asked for"
    check_diff({}, planner.slots, diff)


def test_19000_topics_take_nineteen_slots() -> None:
    planner = Planner()
    planner.plan(queue_topics(19_000))
    assert sizes(planner.slots) == dict.fromkeys(range(19), 1000)


def test_19001_topics_do_not_fit() -> None:
    planner = Planner()
    topics = queue_topics(19_001)
    with pytest.raises(CapacityError) as info:
        planner.plan(topics)
    message = str(info.value)
    for needle in ("19,001", "19,000", "19 channels x 1,000", "1 of the 20", topics[-1]):
        assert needle in message
    assert info.value.unplaced == (topics[-1],)
    assert isinstance(info.value, ConfigError)
    assert planner.slots == {}
    assert planner.topic_count == 0


def test_overflow_from_a_full_plan_leaves_it_unchanged() -> None:
    planner = Planner()
    topics = queue_topics(19_000)
    planner.plan(topics)
    before = dict(planner.slots)
    extra = ["v2.users.late.presence", "v2.users.late.routingStatus"]
    with pytest.raises(CapacityError) as info:
        planner.plan([*topics[1:], *extra])
    assert info.value.unplaced == (extra[1],), "the last new topics are the ones left out"
    assert dict(planner.slots) == before


def test_capacity_error_lists_ten_topics_and_counts_the_rest() -> None:
    planner = Planner(PlannerLimits(topics_per_channel=3, max_channels=2, reserved_channels=1))
    topics = queue_topics(20)
    with pytest.raises(CapacityError) as info:
        planner.plan(topics)
    assert info.value.unplaced == tuple(topics[3:])
    message = str(info.value)
    assert "17 topics did not fit" in message
    assert ", ".join(topics[3:13]) + " and 7 more" in message
    assert topics[13] not in message


def test_removing_a_topic_emits_only_its_unsubscribe() -> None:
    planner = Planner()
    topics = queue_topics(2500)
    planner.plan(topics)
    gone = topics[1234]
    diff = planner.plan([t for t in topics if t != gone])
    assert diff.ops == (Unsubscribe(1, (gone,)),)
    assert planner.slot_of(gone) is None
    assert sizes(planner.slots) == {0: 1000, 1: 999, 2: 500}


def test_replanning_the_same_set_is_empty() -> None:
    planner = Planner()
    topics = queue_topics(2500)
    planner.plan(topics)
    diff = planner.plan(reversed(topics))
    assert diff.is_empty
    assert diff.touched_slots == ()


# --------------------------------------------------------------------------
# Placement rules
# --------------------------------------------------------------------------

SMALL = PlannerLimits(topics_per_channel=3, max_channels=4, reserved_channels=1)
U = user(7)


def test_new_topics_of_one_user_land_together() -> None:
    planner = Planner(PlannerLimits(topics_per_channel=4, max_channels=4, reserved_channels=1))
    q = queue_topics(5)
    planner.plan(q)
    assert sizes(planner.slots) == {0: 4, 1: 1}
    mine = [f"v2.users.{U}.presence", f"v2.users.{U}.routingStatus", f"v2.users.{U}.conversations"]
    # Slot 0 has room for one topic after q[3] goes, slot 1 for three: first-fit
    # alone would split the user, the group rule keeps it on one channel.
    diff = planner.plan([q[0], q[1], q[2], q[4], *mine])
    assert diff.ops == (Unsubscribe(0, (q[3],)), Subscribe(1, tuple(mine)))


def test_a_new_topic_joins_its_prefix() -> None:
    planner = Planner(SMALL)
    q = queue_topics(3)
    planner.plan([*q, f"v2.users.{U}.presence"])
    assert sizes(planner.slots) == {0: 3, 1: 1}
    diff = planner.plan([q[0], q[1], f"v2.users.{U}.presence", f"v2.users.{U}.routingStatus"])
    assert diff.ops == (Unsubscribe(0, (q[2],)), Subscribe(1, (f"v2.users.{U}.routingStatus",)))


def test_a_group_too_big_for_any_slot_fills_the_open_slots_first() -> None:
    planner = Planner(SMALL)
    q = queue_topics(2)
    planner.plan(q)
    mine = [f"v2.users.{U}.presence", f"v2.users.{U}.routingStatus", f"v2.users.{U}.conversations"]
    diff = planner.plan([*q, *mine])
    assert diff.ops == (OpenSlot(1), Subscribe(0, (mine[0],)), Subscribe(1, tuple(mine[1:])))


def test_a_slot_that_empties_is_closed_without_an_unsubscribe() -> None:
    planner = Planner(SMALL)
    q = queue_topics(5)
    planner.plan(q)
    assert sizes(planner.slots) == {0: 3, 1: 2}
    diff = planner.plan(q[:3])
    assert diff.ops == (CloseSlot(1),)
    assert planner.slots == {0: frozenset(q[:3])}


def test_an_emptied_slot_is_reused_rather_than_closed_and_reopened() -> None:
    planner = Planner(SMALL)
    q = queue_topics(6)
    planner.plan(q[:4])
    diff = planner.plan([*q[:3], q[5]])
    assert diff.ops == (Unsubscribe(1, (q[3],)), Subscribe(1, (q[5],)))


def test_a_new_slot_takes_the_lowest_free_index() -> None:
    planner = Planner(SMALL)
    q = queue_topics(9)
    planner.plan(q[:7])
    assert sizes(planner.slots) == {0: 3, 1: 3, 2: 1}
    assert planner.plan([*q[:3], q[6]]).ops == (CloseSlot(1),)
    planner.plan([*q[:3], q[6], q[7], q[8]])
    assert sizes(planner.slots) == {0: 3, 2: 3}
    diff = planner.plan([*q[:3], q[6], q[7], q[8], q[3]])
    assert diff.ops == (OpenSlot(1), Subscribe(1, (q[3],)))


def test_combined_topics_count_as_their_parts() -> None:
    planner = Planner(SMALL)
    diff = planner.plan([f"v2.users.{U}?presence&routingStatus"])
    parts = (f"v2.users.{U}.presence", f"v2.users.{U}.routingStatus")
    assert diff.ops == (OpenSlot(0), Subscribe(0, parts))
    assert planner.topic_count == 2
    assert planner.slot_of(f"v2.users.{U}?presence&routingStatus") is None

    tiny = Planner(PlannerLimits(topics_per_channel=3, max_channels=2, reserved_channels=1))
    with pytest.raises(CapacityError, match="4 topics are desired") as info:
        tiny.plan([f"v2.users.{U}?presence&routingStatus&conversations&conversations.calls"])
    assert info.value.unplaced == (f"v2.users.{U}.conversations.calls",)


def test_duplicates_and_overlapping_combined_topics_collapse() -> None:
    planner = Planner(SMALL)
    presence = f"v2.users.{U}.presence"
    diff = planner.plan([presence, f"v2.users.{U}?presence&routingStatus", presence])
    assert diff.ops == (OpenSlot(0), Subscribe(0, (presence, f"v2.users.{U}.routingStatus")))


def test_invalid_topic_leaves_the_plan_unchanged() -> None:
    planner = Planner(SMALL)
    q = queue_topics(4)
    planner.plan(q[:2])
    before = dict(planner.slots)
    with pytest.raises(InvalidTopicError):
        planner.plan([q[2], "v2.users.x.conversations.faxes", q[3]])
    with pytest.raises(InvalidTopicError):
        planner.plan([q[2], "v2.users.x?presence&non/sense"])
    with pytest.raises(InvalidTopicError):
        planner.plan(["v2.system.socket_closing"])
    assert dict(planner.slots) == before
    assert planner.topic_count == 2


def test_a_single_string_is_refused() -> None:
    with pytest.raises(TypeError, match="not a single str"):
        Planner().plan("v2.users.x.presence")


# --------------------------------------------------------------------------
# The view, reset and describe
# --------------------------------------------------------------------------


def test_slots_is_a_read_only_snapshot() -> None:
    planner = Planner(SMALL)
    planner.plan(queue_topics(1))
    snapshot = planner.slots
    planner.plan(queue_topics(4))
    assert sizes(snapshot) == {0: 1}
    with pytest.raises(TypeError):
        snapshot[5] = frozenset()  # type: ignore[index]


def test_reset_forgets_everything() -> None:
    planner = Planner(SMALL)
    q = queue_topics(4)
    planner.plan(q)
    planner.reset()
    assert planner.slots == {}
    assert planner.topic_count == 0
    assert planner.slot_of(q[0]) is None
    diff = planner.plan(q)
    assert diff.ops == (OpenSlot(0), OpenSlot(1), Subscribe(0, tuple(q[:3])), Subscribe(1, (q[3],)))


def test_describe_shows_slot_sizes() -> None:
    planner = Planner(SMALL)
    assert planner.describe() == "0 slots, 0/9 topics"
    planner.plan(queue_topics(4))
    assert planner.describe() == "2 slots, 4/9 topics [0:3 1:1]"
    assert repr(planner) == "<Planner 2 slots, 4/9 topics [0:3 1:1]>"


# --------------------------------------------------------------------------
# apply
# --------------------------------------------------------------------------


def test_apply_is_pure_and_honours_close_with_or_without_unsubscribe() -> None:
    plan = {0: frozenset({"a", "b"}), 1: frozenset({"c"})}
    implicit = PlanDiff((CloseSlot(1),))
    explicit = PlanDiff((Unsubscribe(1, ("c",)), CloseSlot(1)))
    assert apply(plan, implicit) == apply(plan, explicit) == {0: frozenset({"a", "b"})}
    assert plan == {0: frozenset({"a", "b"}), 1: frozenset({"c"})}
    assert apply(plan, PlanDiff()) == plan


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (OpenSlot(0), "slot 0: it is already open"),
        (Subscribe(2, ("d",)), "slot 2 is not open"),
        (Subscribe(0, ("d", "a")), "slot 0 already holds a"),
        (Unsubscribe(0, ("c",)), "slot 0 does not hold c"),
        (Unsubscribe(3, ("a",)), "slot 3 is not open"),
        (CloseSlot(2), "slot 2 is not open"),
    ],
)
def test_apply_refuses_a_diff_from_another_plan(op: SlotOp, message: str) -> None:
    plan = {0: frozenset({"a", "b"}), 1: frozenset({"c"})}
    with pytest.raises(ConfigError, match=message):
        apply(plan, PlanDiff((op,)))
