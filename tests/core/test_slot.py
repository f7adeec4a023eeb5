"""The slot machine (core/slot.py): its transitions one by one, then every input in every state.

The Hypothesis state machine plays the shell: it performs the actions the
slot asks for (opening sockets, serving, draining, abandoning), and feeds it
every input in every state at increasing times. Whatever the order, at most
one socket serves outside a rotation's overlap, every window opened by a
loss or lost subscriptions is reported exactly once, and reported windows
never overlap.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from genesys_mux.core.slot import (
    Abandon,
    Drain,
    OpenSocket,
    OutageWindow,
    PutTopics,
    Serve,
    SlotAction,
    SlotMachine,
    SlotState,
    missing_subscriptions,
)
from genesys_mux.core.topics import expanded_topics

TOPICS = frozenset({"v2.users.u1.conversations"})


def state(slot: SlotMachine) -> SlotState:
    """The slot's state (a call, so the type checker does not narrow it across inputs)."""
    return slot.state


def outages(actions: list[SlotAction]) -> list[OutageWindow]:
    return [a for a in actions if isinstance(a, OutageWindow)]


def live_slot() -> SlotMachine:
    slot = SlotMachine(0)
    assert slot.start() == [OpenSocket()]
    assert slot.connected(1, 10.0) == [Serve(1)]
    assert state(slot) is SlotState.LIVE
    return slot


def test_a_first_socket_serves_without_a_gap() -> None:
    slot = live_slot()
    assert slot.serving == 1
    assert slot.window is None


def test_a_loss_is_a_window_from_the_last_frame_to_the_next_live_socket() -> None:
    slot = live_slot()
    assert slot.lost(1, since=20.0, at=25.0, reuse=True) == [Abandon(1), OpenSocket(reuse=True)]
    assert state(slot) is SlotState.RECONNECTING
    actions = slot.connected(2, 27.0)
    assert actions == [Serve(2), OutageWindow(1, 20.0, 27.0, "reconnect")]
    assert state(slot) is SlotState.LIVE


def test_a_rotation_overlaps_and_then_drains_the_old_socket_without_a_gap() -> None:
    slot = live_slot()
    assert slot.rotate("socket_closing") == [OpenSocket()]
    assert state(slot) is SlotState.ROTATING
    assert slot.connected(2, 30.0) == []
    assert state(slot) is SlotState.OVERLAP
    assert slot.rotated(31.0) == [Drain(1), Serve(2)]
    assert slot.serving == 2
    assert state(slot) is SlotState.LIVE


def test_lost_subscriptions_are_a_window_until_the_rotation_ends() -> None:
    slot = live_slot()
    slot.unsubscribed(1, since=40.0)
    slot.rotate("no_longer_subscribed")
    slot.connected(2, 41.0)
    actions = slot.rotated(41.5)  # the successor's first notification
    assert outages(actions) == [OutageWindow(1, 40.0, 41.5, "no_longer_subscribed")]
    assert actions[-1] == Serve(2)


def test_the_old_socket_dying_while_the_successor_is_built_is_a_window() -> None:
    slot = live_slot()
    slot.rotate("socket_closing")
    assert slot.lost(1, since=50.0, at=51.0) == [Abandon(1)]
    actions = slot.connected(2, 53.0)
    assert outages(actions) == [OutageWindow(1, 50.0, 53.0, "socket_closing")]
    assert slot.serving == 2


def test_the_old_socket_dying_in_the_overlap_hides_nothing() -> None:
    slot = live_slot()
    slot.rotate("channel_expiring")
    slot.connected(2, 60.0)
    actions = slot.lost(1, since=61.0, at=62.0)
    assert actions == [Abandon(1), Serve(2)]
    assert state(slot) is SlotState.LIVE


def test_a_failed_rotation_off_a_lost_socket_reconnects_and_keeps_the_window() -> None:
    slot = live_slot()
    slot.unsubscribed(1, since=70.0)
    slot.rotate("token_revoked")
    assert slot.rotation_failed() == [Abandon(1), OpenSocket()]
    assert state(slot) is SlotState.RECONNECTING
    assert outages(slot.connected(2, 75.0)) == [OutageWindow(1, 70.0, 75.0, "reconnect")]


def test_restored_subscriptions_are_reported_with_their_topics() -> None:
    slot = live_slot()
    actions = slot.subscriptions_restored(1, 80.0, 81.0, TOPICS)
    assert actions == [OutageWindow(1, 80.0, 81.0, "subscriptions_replaced", TOPICS)]
    assert slot.subscriptions_restored(2, 80.0, 81.0, TOPICS) == []  # not the serving socket


def test_a_stop_drains_and_reports_what_a_drain_could_not_read() -> None:
    slot = live_slot()
    assert slot.stop() == [Drain(1)]
    slot.drained(1, ok=False, last_frame_at=90.0)
    assert slot.closed(92.0) == [OutageWindow(1, 90.0, 92.0, "stopped")]
    assert state(slot) is SlotState.CLOSED


def test_a_rotation_s_old_socket_drained_badly_hides_nothing_and_is_forgotten() -> None:
    slot = live_slot()
    slot.rotate("channel_expiring")
    slot.connected(2, 30.0)
    assert slot.rotated(31.0) == [Drain(1), Serve(2)]
    assert slot.named_sockets() == {1, 2}  # the drain may yet fail
    # The successor carried the topics through the overlap: whatever the
    # old socket's drain left unread, the successor had.
    slot.drained(1, ok=False, last_frame_at=30.5)
    assert slot.named_sockets() == {2}
    slot.stop()
    slot.drained(2, ok=True, last_frame_at=40.0)
    assert slot.closed(41.0) == []


def test_a_stop_while_reconnecting_reports_the_open_window() -> None:
    slot = live_slot()
    slot.lost(1, since=100.0, at=101.0)
    assert slot.stop() == []
    assert slot.closed(105.0) == [OutageWindow(1, 100.0, 105.0, "stopped")]


def test_giving_up_reports_the_open_window_now_and_opens_the_next() -> None:
    """Not once a socket serves again, or at the stop: the streams hear of it while it lasts."""
    slot = live_slot()
    slot.lost(1, since=20.0, at=21.0)
    assert slot.gave_up(30.0) == [OutageWindow(1, 20.0, 30.0, "channel_failed")]
    assert state(slot) is SlotState.RECONNECTING
    # Giving up again reports only the time since.
    assert slot.gave_up(35.0) == [OutageWindow(1, 30.0, 35.0, "channel_failed")]
    # New topics make the shell try again; the rest is reported when it serves.
    assert outages(slot.connected(2, 40.0)) == [OutageWindow(1, 35.0, 40.0, "reconnect")]
    # Nothing open, nothing to say: a slot that never had a socket, or serves.
    assert slot.gave_up(41.0) == []
    assert SlotMachine(1).gave_up(1.0) == []


def test_a_stop_after_giving_up_reports_the_rest() -> None:
    slot = live_slot()
    slot.lost(1, since=20.0, at=21.0)
    slot.gave_up(30.0)
    assert slot.stop() == []
    assert slot.closed(50.0) == [OutageWindow(1, 30.0, 50.0, "stopped")]
    assert slot.gave_up(51.0) == []


def test_windows_never_overlap_reports() -> None:
    slot = live_slot()
    slot.subscriptions_restored(1, 10.0, 20.0, TOPICS)
    slot.lost(1, since=15.0, at=21.0)
    (window,) = outages(slot.connected(2, 22.0))
    assert (window.start, window.end) == (20.0, 22.0)


def test_a_failed_topic_change_is_tried_again_after_the_backoff() -> None:
    slot = live_slot()
    slot.put_answered(0)
    assert slot.in_sync
    assert slot.put_due(50.0) is None
    assert slot.topics_changed() == 1
    assert slot.put_due(50.0) == PutTopics(1)
    assert not slot.check_due()  # a check would find our own change missing
    slot.put_failed(50.0, retry_in=2.0)
    assert slot.put_due(51.0) is None
    assert slot.put_wait(51.0) == 1.0
    slot.topics_changed()  # a new change does not cut the backoff short
    assert slot.put_due(51.5) is None
    assert slot.put_due(52.0) == PutTopics(2)
    slot.put_answered(2)
    assert slot.in_sync
    assert slot.put_wait(52.0) is None
    assert slot.check_due()


def test_waiting_as_long_as_put_wait_says_finds_the_change_due_despite_rounding() -> None:
    """Found by Hypothesis: ``now + (retry_at - now)`` can round to just below ``retry_at``."""
    slot = live_slot()
    slot.put_answered(0)
    slot.topics_changed()
    slot.put_failed(1.796003785559234, retry_in=9.0)
    now = 2.036678871477389
    wait = slot.put_wait(now)
    assert wait is not None
    assert (slot.put_retry_at - now) + now < slot.put_retry_at  # the case at hand
    assert slot.put_due(now + wait) == PutTopics(1)
    assert wait - (slot.put_retry_at - now) < 1e-14  # a rounding error later, no more


def test_a_change_waits_for_a_live_socket() -> None:
    slot = live_slot()
    slot.lost(1, since=20.0, at=21.0)
    slot.topics_changed()
    # No socket to put it on: the next one is established with the new set.
    assert slot.put_due(22.0) is None
    assert slot.put_wait(22.0) is None
    slot.put_answered(1)
    slot.connected(2, 23.0)
    assert slot.in_sync
    assert slot.put_due(23.0) is None


class SlotLife(RuleBasedStateMachine):
    """The shell, performing the slot's actions; inputs come in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.slot = SlotMachine(0)
        self.now = 0.0
        self.next_id = 1
        self.opens = 0  # OpenSocket actions not yet answered
        self.live: set[int] = set()  # connected, neither drained nor abandoned
        self.serving: int | None = None
        self.windows: set[int] = set()  # sockets with a window opened and not yet reported
        self.reports: list[OutageWindow] = []
        self.desired = 0  # the topic set's version, as the shell counts changes
        self.applied = -1  # the newest version a PUT that was answered carried
        self.stopping = False  # the stop drains by itself (it_stops)
        self.perform(self.slot.start())

    def tick(self, dt: float) -> float:
        self.now += dt
        return self.now

    def perform(self, actions: list[SlotAction]) -> None:
        for action in actions:
            if isinstance(action, OpenSocket):
                self.opens += 1
            elif isinstance(action, Serve):
                assert action.socket in self.live
                self.serving = action.socket
            elif isinstance(action, Drain | Abandon):
                self.live.discard(action.socket)
                if self.serving == action.socket:
                    self.serving = None
                if isinstance(action, Drain) and not self.stopping:
                    # A rotation's old socket, drained at once; even a
                    # drain that failed hides nothing its successor lacked.
                    self.slot.drained(action.socket, False, self.now)
            else:
                self.reports.append(action)
                # A window reported because the shell gave up goes on.
                if action.reason not in ("subscriptions_replaced", "channel_failed"):
                    self.windows.discard(action.socket)

    @precondition(lambda self: self.opens > 0)
    @rule(dt=st.floats(0.0, 5.0))
    def a_socket_connects(self, dt: float) -> None:
        # Establishing puts the topic set as it was when the PUT went out.
        self.slot.put_answered(self.desired)
        self.applied = max(self.applied, self.desired)
        self.opens -= 1
        socket, self.next_id = self.next_id, self.next_id + 1
        self.live.add(socket)
        self.perform(self.slot.connected(socket, self.tick(dt)))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), dt=st.floats(0.0, 5.0), reuse=st.booleans())
    def a_socket_is_lost(self, data: st.DataObject, dt: float, reuse: bool) -> None:
        socket = data.draw(st.sampled_from(sorted(self.live)))
        since = self.now
        serving_before = self.slot.serving
        state_before = self.slot.state
        actions = self.slot.lost(socket, since, self.tick(dt), reuse=reuse)
        if (
            socket == serving_before
            and state_before in (SlotState.LIVE, SlotState.ROTATING)
            and self.slot.window is not None
        ):
            self.windows.add(socket)
        self.perform(actions)
        self.live.discard(socket)

    @precondition(lambda self: self.serving is not None)
    @rule()
    def subscriptions_go(self) -> None:
        assert self.serving is not None
        before = self.slot.window
        self.perform(self.slot.unsubscribed(self.serving, self.now))
        if before is None and self.slot.window is not None:
            self.windows.add(self.serving)

    @rule(reason=st.sampled_from(["socket_closing", "no_longer_subscribed", "token_expiring"]))
    def a_rotation_is_asked(self, reason: str) -> None:
        self.perform(self.slot.rotate(reason))

    @rule()
    def the_successor_cannot_be_built(self) -> None:
        if self.slot.state is SlotState.ROTATING and self.opens:
            self.opens -= 1
            self.perform(self.slot.rotation_failed())

    @rule(dt=st.floats(0.0, 5.0))
    def the_overlap_ends(self, dt: float) -> None:
        self.perform(self.slot.rotated(self.tick(dt)))

    @precondition(lambda self: self.serving is not None)
    @rule(start_back=st.floats(0.0, 30.0), dt=st.floats(0.0, 5.0))
    def subscriptions_are_put_back(self, start_back: float, dt: float) -> None:
        assert self.serving is not None
        start = self.now - start_back
        self.perform(self.slot.subscriptions_restored(self.serving, start, self.tick(dt), TOPICS))

    @precondition(lambda self: self.slot.state is not SlotState.CLOSED)
    @rule(ok=st.booleans(), dt=st.floats(0.0, 5.0))
    def it_stops(self, ok: bool, dt: float) -> None:
        self.stopping = True
        draining = [a.socket for a in self.slot.stop() if isinstance(a, Drain)]
        self.perform([Drain(s) for s in draining])
        for socket in draining:
            self.slot.drained(socket, ok, self.now)
            if not ok:
                self.windows.add(socket)
        self.perform(self.slot.closed(self.tick(dt)))
        assert self.slot.state is SlotState.CLOSED
        assert not self.windows, f"windows never reported: {self.windows}"

    @rule(dt=st.floats(0.0, 5.0))
    def the_shell_gives_up(self, dt: float) -> None:
        window = self.slot.window
        closing = self.slot.state in (SlotState.CLOSING, SlotState.CLOSED)
        at = self.tick(dt)
        actions = self.slot.gave_up(at)
        self.perform(actions)
        if window is None or closing:
            assert actions == []
            return
        (report,) = outages(actions)
        assert (report.reason, report.end) == ("channel_failed", at)
        assert self.slot.window is not None
        assert (self.slot.window.socket, self.slot.window.since) == (window.socket, at)

    @rule()
    def the_topics_change(self) -> None:
        self.desired += 1
        assert self.slot.topics_changed() == self.desired

    @rule(answered=st.booleans(), retry_in=st.floats(0.0, 10.0), dt=st.floats(0.0, 5.0))
    def a_due_change_is_put(self, answered: bool, retry_in: float, dt: float) -> None:
        put = self.slot.put_due(self.now)
        wait = self.slot.put_wait(self.now)
        if put is None:
            assert wait is None or wait > 0 or self.slot.in_sync
            return
        assert wait == 0.0
        assert put == PutTopics(self.desired)
        if answered:
            self.slot.put_answered(put.version)
            self.applied = max(self.applied, put.version)
            assert self.slot.in_sync
        else:
            at = self.tick(dt)
            self.slot.put_failed(at, retry_in)
            if at + retry_in > at:
                assert self.slot.put_due(at) is None  # the backoff is honoured
            assert self.slot.put_due(at + retry_in) is not None  # and then it is due

    @invariant()
    def the_topic_set_is_in_sync_only_once_a_put_carried_it(self) -> None:
        assert self.slot.in_sync == (self.applied >= self.desired)
        assert self.slot.check_due() == self.slot.in_sync
        if not self.slot.in_sync and self.slot.state is SlotState.LIVE:
            # A pending change is never forgotten while a socket serves.
            wait = self.slot.put_wait(self.now)
            assert wait is not None
            assert self.slot.put_due(self.now + wait) == PutTopics(self.desired)

    @invariant()
    def one_socket_serves_outside_an_overlap(self) -> None:
        if self.slot.state is not SlotState.OVERLAP:
            assert self.slot.successor is None
        assert self.serving == self.slot.serving or self.slot.state is SlotState.CLOSED

    @invariant()
    def the_slot_names_only_sockets_a_report_may_still_name(self) -> None:
        # The shell forgets the channel of every other socket (a slot that
        # reconnects or rotates for weeks must not keep them all).
        assert self.slot.named_sockets() <= self.live | self.windows, (
            self.slot.named_sockets(),
            self.live,
            self.windows,
        )

    @invariant()
    def reported_windows_never_overlap(self) -> None:
        for earlier, later in zip(self.reports, self.reports[1:], strict=False):
            assert earlier.start <= earlier.end
            assert later.start >= earlier.end, (earlier, later)

    @invariant()
    def each_window_is_reported_once(self) -> None:
        lost_reports = [
            r.socket
            for r in self.reports
            if r.reason not in ("subscriptions_replaced", "channel_failed")
        ]
        stopped = {r.socket for r in self.reports if r.reason == "stopped"}
        duplicates = {s for s in lost_reports if lost_reports.count(s) > 1} - stopped
        assert not duplicates, self.reports


TestSlotLife = SlotLife.TestCase
TestSlotLife.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_a_check_finds_what_went_in_either_listing_form() -> None:
    expected = expanded_topics(["v2.users.U1?presence&routingStatus", "v2.users.U2.presence"])
    # The platform may list a combined subscription as its parts, in any case.
    assert (
        missing_subscriptions(
            expected,
            ["v2.users.u1.presence", "V2.USERS.U1.ROUTINGSTATUS", "v2.users.u2.presence"],
            ["v2.users.U1.presence", "v2.users.U1.routingStatus", "v2.users.U2.presence"],
            verified_at=10.0,
        )
        is None
    )
    found = missing_subscriptions(
        expected,
        ["v2.users.U1?presence&routingStatus"],
        ["v2.users.U1.presence", "v2.users.U1.routingStatus", "v2.users.U2.presence"],
        verified_at=10.0,
    )
    assert found is not None
    assert found.missing == {"v2.users.u2.presence"}
    assert found.topics == {"v2.users.U2.presence"}
    assert found.start == 10.0  # a periodic check: since the list was last seen whole


def test_a_check_the_platform_asked_for_dates_from_its_news() -> None:
    expected = expanded_topics(["v2.users.U2.presence"])
    found = missing_subscriptions(
        expected, [], ["v2.users.U2.presence"], verified_at=10.0, told_since=50.0
    )
    assert found is not None
    assert found.start == 50.0
    earlier = missing_subscriptions(
        expected, [], ["v2.users.U2.presence"], verified_at=60.0, told_since=50.0
    )
    assert earlier is not None
    assert earlier.start == 60.0  # known whole after the news: the later time wins
