"""Placing streams on a cluster's members (core/placement.py): budgets, balance, stability."""

from __future__ import annotations

import random

import hypothesis.strategies as st
from hypothesis import given, settings

from genesys_mux.core.placement import Member, Placement, StreamDemand, place

MEMBERS = [Member("a", "client-1"), Member("b", "client-1"), Member("c", "client-2")]


def demands(*weights: int) -> list[StreamDemand]:
    return [StreamDemand(f"s{i}", w) for i, w in enumerate(weights)]


def loads(placement: Placement, wanted: list[StreamDemand]) -> dict[str, int]:
    weight = {d.stream_id: d.topics for d in wanted}
    found: dict[str, int] = {}
    for stream_id, member in placement.owners.items():
        found[member] = found.get(member, 0) + weight[stream_id]
    return found


def channels_used(
    placement: Placement, wanted: list[StreamDemand], members: list[Member]
) -> dict[str, int]:
    by_member = loads(placement, wanted)
    used: dict[str, int] = {}
    for member in members:
        used[member.client] = (
            used.get(member.client, 0) + -(-by_member.get(member.id, 0) // 1000) + 1
        )
    return used


def test_streams_spread_evenly_over_the_members() -> None:
    wanted = demands(*[100] * 9)
    placement = place(wanted, MEMBERS, {}, {})
    assert not placement.unplaced
    assert sorted(loads(placement, wanted).values()) == [300, 300, 300]


def test_nothing_moves_when_nothing_changed() -> None:
    wanted = demands(500, 300, 300, 200, 100, 100, 50)
    first = place(wanted, MEMBERS, {}, {})
    assert place(wanted, MEMBERS, first.owners, {}) == first


def test_a_member_that_joins_takes_its_share_from_the_others_only() -> None:
    wanted = demands(*[10] * 12)
    two = place(wanted, MEMBERS[:2], {}, {})
    three = place(wanted, MEMBERS, two.owners, {})
    moved = {s for s in two.owners if two.owners[s] != three.owners[s]}
    assert len(moved) == 4
    assert all(three.owners[s] == "c" for s in moved)


def test_a_member_that_leaves_hands_over_only_its_streams() -> None:
    wanted = demands(*[10] * 12)
    three = place(wanted, MEMBERS, {}, {})
    two = place(wanted, MEMBERS[:2], three.owners, {})
    moved = {s for s in three.owners if three.owners[s] != two.owners[s]}
    assert moved == three.streams_of("c")
    assert sorted(loads(two, wanted).values()) == [60, 60]


def test_a_small_budget_is_respected_and_what_fits_nowhere_is_reported() -> None:
    # client-2 may open 5 channels: 4 of 1000 topics plus the spare.
    wanted = demands(4000, 3500, 3000, 30_000)
    members = [Member("a", "client-1"), Member("c", "client-2")]
    placement = place(wanted, members, {}, {"client-1": 5, "client-2": 5})
    assert placement.owners == {"s0": "a", "s1": "c"}  # a tie goes to the first id
    assert set(placement.unplaced) == {"s2", "s3"}
    assert "channel budget" in placement.unplaced["s3"]
    assert channels_used(placement, wanted, members) == {"client-1": 5, "client-2": 5}


def test_no_member_no_placement() -> None:
    placement = place(demands(1), [], {}, {})
    assert placement.unplaced == {"s0": "no live instance"}


members_strategy = st.lists(
    st.builds(Member, st.sampled_from("abcdefg"), st.sampled_from(["x", "y", "z"])),
    max_size=5,
    unique_by=lambda m: m.id,
)
weights_strategy = st.lists(st.integers(0, 4000), max_size=25)


@settings(max_examples=300, deadline=None)
@given(
    members=members_strategy,
    weights=weights_strategy,
    budgets=st.dictionaries(st.sampled_from(["x", "y", "z"]), st.integers(0, 25)),
    seed=st.integers(0, 2**16),
    owners_seed=st.integers(0, 2**16),
)
def test_every_placement_is_whole_within_budget_deterministic_and_stable(
    members: list[Member],
    weights: list[int],
    budgets: dict[str, int],
    seed: int,
    owners_seed: int,
) -> None:
    wanted = demands(*weights)
    rng = random.Random(owners_seed)
    # Some streams already have an owner, possibly one that has gone.
    current = {
        d.stream_id: rng.choice([m.id for m in members] + ["gone"])
        for d in wanted
        if rng.random() < 0.5
    }
    placement = place(wanted, members, current, budgets)
    ids = {d.stream_id for d in wanted}
    # Every stream placed or reported, never both; owners are members.
    assert set(placement.owners) | set(placement.unplaced) == ids
    assert not set(placement.owners) & set(placement.unplaced)
    assert set(placement.owners.values()) <= {m.id for m in members}
    # No OAuth client opens more channels than its budget (a spare per member).
    for client, used in channels_used(placement, wanted, members).items():
        if any(placement.streams_of(m.id) for m in members if m.client == client):
            assert used <= budgets.get(client, 20), (client, used)
    # The same answer on every instance, whatever order they list things in.
    shuffled = random.Random(seed)
    again = place(
        shuffled.sample(wanted, len(wanted)),
        shuffled.sample(members, len(members)),
        current,
        budgets,
    )
    assert again == placement
    # Stable: given its own answer, nothing moves.
    assert place(wanted, members, placement.owners, budgets) == placement


@settings(max_examples=200, deadline=None)
@given(members=members_strategy, weights=weights_strategy)
def test_with_room_to_spare_no_stream_could_even_the_load_out_further(
    members: list[Member], weights: list[int]
) -> None:
    wanted = demands(*weights)
    placement = place(wanted, members, {}, {"x": 1000, "y": 1000, "z": 1000})
    if not members:
        return
    assert not placement.unplaced
    by_member = {m.id: 0 for m in members} | loads(placement, wanted)
    weight = {d.stream_id: d.topics for d in wanted}
    lightest = min(by_member.values())
    for member, load in by_member.items():
        for stream_id in placement.streams_of(member):
            assert not 0 < 2 * weight[stream_id] <= load - lightest, (member, stream_id)


def test_a_stream_goes_only_to_a_member_whose_configuration_has_it() -> None:
    """A rolling deploy: ``old`` lacks the streams the new configuration adds."""
    old = Member("a-old", "c1", frozenset({"s0"}))
    new = Member("b-new", "c1", frozenset({"s0", "s1", "s2"}))
    legacy = Member("c-legacy", "c2")  # an older release: says nothing, takes any
    demands = [StreamDemand(s, 10) for s in ("s0", "s1", "s2", "s3")]
    placed = place(demands, [old, new], {}, {})
    assert placed.owners["s1"] == placed.owners["s2"] == "b-new"
    # Evening out moves nothing to a member that cannot carry it.
    assert placed.owners["s0"] == "a-old"
    assert "no live instance has it in its configuration" in placed.unplaced["s3"]
    with_legacy = place(demands, [old, new, legacy], {}, {})
    assert with_legacy.owners["s3"] == "c-legacy"
    assert not with_legacy.unplaced
