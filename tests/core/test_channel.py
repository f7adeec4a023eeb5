"""Tests for genesys_mux.core.channel: the sans-I/O life of one socket.

Every row of the transition table in the module docstring has a test of its
own; a Hypothesis property then drives links with random frames at random,
increasing times and checks the invariants that hold whatever happens:
``poll`` fires exactly when ``next_deadline`` said it would, each kind of
request is emitted at most once, one ping per silence, nothing after DEAD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genesys_mux.core.channel import (
    MIN_ROTATION_RETRY_S,
    Action,
    BecameLive,
    ChannelLink,
    CheckSubscriptions,
    LinkState,
    Outage,
    Reconnect,
    Recreate,
    Rotate,
    SendPing,
    WatchdogSettings,
)
from genesys_mux.core.frames import (
    ChannelFailure,
    Frame,
    Heartbeat,
    NoLongerSubscribed,
    Notification,
    Pong,
    SocketClosing,
    SubscriptionAck,
    SubscriptionUpdated,
    SystemMessage,
    TokenRevoked,
    UnknownFrame,
    decode_frame,
)

CHANNEL_ID = "streaming-7-4c2bb8ef"
HB = 75.0
PONG = 10.0
LEAD = 300.0
#: No periodic subscription checks: the tests of those set them.
SETTINGS = WatchdogSettings(
    heartbeat_timeout_s=HB, pong_timeout_s=PONG, rotation_lead_s=LEAD, subscription_check_s=None
)
#: Watchdog timers far away, for tests that look only at rotation.
NO_WATCHDOG = WatchdogSettings(
    heartbeat_timeout_s=1e9, pong_timeout_s=1e9, rotation_lead_s=LEAD, subscription_check_s=None
)

HEARTBEAT = Heartbeat()
PONG_FRAME = Pong()
ACK = SubscriptionAck(correlation_id="c-1", result="200", status="subscribed")
FAILED_ACK = SubscriptionAck(correlation_id="c-2", result="400", status="error", message="bad")
FAILURE = ChannelFailure(result="404", message="channel expired")
CLOSING = SocketClosing(topic="v2.system.socket_closing")
NO_LONGER = NoLongerSubscribed(
    topic=f"v2.system.no_longer_subscribed.{CHANNEL_ID}",
    channel_id=CHANNEL_ID,
    reason="another_channel_subscribed",
)
REVOKED = TokenRevoked(
    topic=f"v2.system.token_revoked.{CHANNEL_ID}",
    channel_id=CHANNEL_ID,
    reason="user_tokens_revoked",
)
UPDATED = SubscriptionUpdated(topic="v2.subscription.updated", channel_id=CHANNEL_ID)
SYSTEM = SystemMessage(topic="v2.system.something_new")
UNKNOWN = UnknownFrame(raw=b"[1,2,3]")
NOTIFICATION = Notification(topic="v2.users.u1.presence", version="2", body=b"{}")

LIVE_FRAMES: list[Frame] = [HEARTBEAT, PONG_FRAME, ACK, FAILED_ACK]
ROTATE_FRAMES: list[tuple[Frame, Rotate]] = [
    (CLOSING, Rotate("socket_closing")),
    (NO_LONGER, Rotate("no_longer_subscribed")),
    (REVOKED, Rotate("token_revoked", reauth=True)),
]
#: Frames that change nothing but the time of the last frame.
QUIET_FRAMES: list[Frame] = [SYSTEM, UNKNOWN, NOTIFICATION]
ALL_FRAMES: list[Frame] = [
    *LIVE_FRAMES,
    FAILURE,
    *(frame for frame, _ in ROTATE_FRAMES),
    UPDATED,
    *QUIET_FRAMES,
]


def link(
    opened_at: float = 0.0,
    *,
    channel_expires_at: float | None = None,
    token_expires_at: float | None = None,
    watchdog: WatchdogSettings = SETTINGS,
) -> ChannelLink:
    return ChannelLink(
        CHANNEL_ID,
        opened_at=opened_at,
        channel_expires_at=channel_expires_at,
        token_expires_at=token_expires_at,
        settings=watchdog,
    )


def live_link(
    opened_at: float = 0.0,
    *,
    channel_expires_at: float | None = None,
    token_expires_at: float | None = None,
    watchdog: WatchdogSettings = SETTINGS,
) -> ChannelLink:
    """A link already proven live by a heartbeat at ``opened_at``."""
    lk = link(
        opened_at,
        channel_expires_at=channel_expires_at,
        token_expires_at=token_expires_at,
        watchdog=watchdog,
    )
    assert lk.receive(HEARTBEAT, opened_at) == [BecameLive()]
    return lk


def dead_links() -> list[tuple[str, ChannelLink]]:
    """One link killed each way a link can die."""
    closed = live_link()
    closed.socket_closed(1.0)
    failed = live_link()
    failed.receive(FAILURE, 1.0)
    timed_out = live_link()
    assert timed_out.poll(HB) == [SendPing()]
    assert timed_out.poll(HB + PONG) == [Reconnect("heartbeat_timeout")]
    never_live = link()
    never_live.socket_closed(0.5)
    return [
        ("socket_closed", closed),
        ("channel_failure", failed),
        ("pong_timeout", timed_out),
        ("closed_before_live", never_live),
    ]


# --------------------------------------------------------------------------
# Construction and small value types
# --------------------------------------------------------------------------


def test_a_new_link_awaits_proof_of_life() -> None:
    lk = link(12.5)
    assert lk.state is LinkState.AWAITING_LIVE
    assert lk.channel_id == CHANNEL_ID
    assert lk.opened_at == lk.last_frame_at == 12.5
    assert lk.ping_sent_at is None
    assert not lk.rotation_requested
    assert lk.next_deadline() == 12.5 + HB


def test_default_settings_are_used_when_none_are_given() -> None:
    lk = ChannelLink(CHANNEL_ID, opened_at=0.0)
    assert lk.settings == WatchdogSettings()
    assert lk.next_deadline() == WatchdogSettings().heartbeat_timeout_s


def test_actions_are_values() -> None:
    assert Rotate("x") == Rotate("x", reauth=False) != Rotate("x", reauth=True)
    assert Reconnect("a") != Recreate("a")  # type: ignore[comparison-overlap]
    assert SendPing() == SendPing()
    assert BecameLive() == BecameLive()
    with pytest.raises(AttributeError):
        Rotate("x").reason = "y"  # type: ignore[misc]


def test_outage_carries_its_window() -> None:
    outage = Outage(1, CHANNEL_ID, frozenset({"t"}), 10.0, 12.5, "socket_closed")
    assert outage.end - outage.start == 2.5
    assert outage == Outage(1, CHANNEL_ID, frozenset({"t"}), 10.0, 12.5, "socket_closed")


# --------------------------------------------------------------------------
# heartbeat / pong / ack → BecameLive, once
# --------------------------------------------------------------------------


@pytest.mark.parametrize("frame", LIVE_FRAMES, ids=type)
def test_a_platform_answer_makes_the_link_live_once(frame: Frame) -> None:
    lk = link()
    assert lk.receive(frame, 1.0) == [BecameLive()]
    assert lk.state is LinkState.LIVE
    for other in LIVE_FRAMES:
        assert lk.receive(other, 2.0) == []
    assert lk.state is LinkState.LIVE


@pytest.mark.parametrize(
    "text",
    [
        '{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}',
        '{"topicName":"channel.metadata","eventBody":{"message":"pong"}}',
        '{"correlationId":"c","result":"200","status":"subscribed"}',
    ],
)
def test_decoded_wire_frames_make_the_link_live(text: str) -> None:
    lk = link()
    assert lk.receive(decode_frame(text), 1.0) == [BecameLive()]


@pytest.mark.parametrize("frame", QUIET_FRAMES, ids=type)
def test_other_frames_do_not_prove_the_link(frame: Frame) -> None:
    lk = link()
    assert lk.receive(frame, 1.0) == []
    assert lk.state is LinkState.AWAITING_LIVE


def test_notification_seen_returns_nothing() -> None:
    lk = link()
    lk.notification_seen(1.0)
    assert lk.last_frame_at == 1.0
    assert lk.next_deadline() == 1.0 + HB


# --------------------------------------------------------------------------
# silence → SendPing once; no pong → Reconnect("heartbeat_timeout"), DEAD
# --------------------------------------------------------------------------


def test_silence_sends_one_ping() -> None:
    lk = live_link()
    assert lk.poll(HB - 0.001) == []
    assert lk.poll(HB) == [SendPing()]
    assert lk.ping_sent_at == HB
    # Still the same silence: no second ping, however often we poll.
    for t in (HB, HB + 1, HB + PONG / 2, HB + PONG - 0.001):
        assert lk.poll(t) == []
    assert lk.state is LinkState.LIVE


def test_silence_pings_also_before_the_link_is_live() -> None:
    lk = link(5.0)
    assert lk.poll(5.0 + HB) == [SendPing()]
    assert lk.receive(PONG_FRAME, 5.0 + HB + 1) == [BecameLive()]


def test_late_poll_pings_once_and_starts_the_pong_timer_then() -> None:
    lk = live_link()
    assert lk.poll(HB + 1000.0) == [SendPing()]
    assert lk.next_deadline() == HB + 1000.0 + PONG


def test_no_pong_means_reconnect_and_death() -> None:
    lk = live_link()
    assert lk.poll(HB) == [SendPing()]
    assert lk.next_deadline() == HB + PONG
    assert lk.poll(HB + PONG) == [Reconnect("heartbeat_timeout")]
    assert lk.state is LinkState.DEAD
    assert lk.next_deadline() is None
    assert lk.poll(HB + PONG + 1) == []


def test_no_pong_before_ever_going_live_is_a_timeout_too() -> None:
    lk = link()
    assert lk.poll(HB) == [SendPing()]
    assert lk.poll(HB + PONG) == [Reconnect("heartbeat_timeout")]
    assert lk.state is LinkState.DEAD


def test_a_pong_ends_the_silence_and_the_next_one_pings_again() -> None:
    lk = live_link()
    assert lk.poll(HB) == [SendPing()]
    assert lk.receive(PONG_FRAME, HB + 2) == []
    assert lk.ping_sent_at is None
    assert lk.next_deadline() == HB + 2 + HB
    assert lk.poll(HB + PONG) == []
    assert lk.poll(2 * HB + 2) == [SendPing()]
    assert lk.poll(2 * HB + 2 + PONG) == [Reconnect("heartbeat_timeout")]


@pytest.mark.parametrize("frame", [f for f in ALL_FRAMES if f is not FAILURE], ids=type)
def test_any_frame_resets_the_silence(frame: Frame) -> None:
    lk = live_link()
    actions = lk.receive(frame, 50.0)
    assert all(isinstance(a, Rotate | CheckSubscriptions) for a in actions)
    assert lk.next_deadline() == 50.0 + HB
    assert lk.poll(HB) == []
    assert lk.poll(50.0 + HB) == [SendPing()]


@pytest.mark.parametrize("frame", [f for f in ALL_FRAMES if f is not FAILURE], ids=type)
def test_any_frame_during_the_pong_wait_proves_the_socket(frame: Frame) -> None:
    lk = live_link()
    assert lk.poll(HB) == [SendPing()]
    lk.receive(frame, HB + 1)
    assert lk.ping_sent_at is None
    assert lk.next_deadline() == HB + 1 + HB
    assert lk.poll(HB + PONG) == []
    assert lk.state is LinkState.LIVE
    assert lk.poll(2 * HB + 1) == [SendPing()]


def test_notification_seen_resets_the_silence() -> None:
    lk = live_link()
    lk.notification_seen(60.0)
    assert lk.poll(HB) == []
    assert lk.next_deadline() == 60.0 + HB
    assert lk.poll(60.0 + HB) == [SendPing()]


def test_notification_seen_during_the_pong_wait_proves_the_socket() -> None:
    lk = live_link()
    assert lk.poll(HB) == [SendPing()]
    lk.notification_seen(HB + 3)
    assert lk.ping_sent_at is None
    assert lk.poll(HB + PONG) == []
    assert lk.state is LinkState.LIVE
    assert lk.next_deadline() == 2 * HB + 3


def test_steady_heartbeats_never_ping() -> None:
    lk = live_link()
    for i in range(1, 200):
        t = 30.0 * i
        assert lk.poll(t) == []
        assert lk.receive(HEARTBEAT, t) == []
        assert lk.next_deadline() == t + HB


# --------------------------------------------------------------------------
# socket closed → Reconnect once; 404 → Recreate
# --------------------------------------------------------------------------


@pytest.mark.parametrize("live", [False, True], ids=["awaiting", "live"])
def test_socket_closed_reconnects_once(live: bool) -> None:
    lk = live_link() if live else link()
    assert lk.socket_closed(3.0) == [Reconnect("socket_closed")]
    assert lk.state is LinkState.DEAD
    assert lk.socket_closed(4.0) == []


def test_socket_closed_during_the_pong_wait_is_a_close_not_a_timeout() -> None:
    lk = live_link()
    assert lk.poll(HB) == [SendPing()]
    assert lk.socket_closed(HB + 1) == [Reconnect("socket_closed")]
    assert lk.poll(HB + PONG) == []


def test_socket_closed_after_a_rotation_still_reconnects() -> None:
    lk = live_link()
    assert lk.receive(CLOSING, 1.0) == [Rotate("socket_closing")]
    assert lk.socket_closed(60.0) == [Reconnect("socket_closed")]


@pytest.mark.parametrize("live", [False, True], ids=["awaiting", "live"])
def test_channel_failure_recreates(live: bool) -> None:
    lk = live_link() if live else link()
    assert lk.receive(FAILURE, 2.0) == [Recreate("channel_gone")]
    assert lk.state is LinkState.DEAD
    assert lk.receive(FAILURE, 3.0) == []
    assert lk.socket_closed(3.0) == []


def test_a_loss_dates_from_the_last_frame_read_before_it() -> None:
    """Whatever ends a socket, events may be missing from the last frame read."""
    closed = live_link()
    closed.notification_seen(5.0)
    assert closed.socket_closed(40.0) == [Reconnect("socket_closed")]
    assert closed.lost_since == 5.0  # silent from 5 s to the reset at 40 s

    failed = live_link()
    failed.receive(HEARTBEAT, 7.0)
    assert failed.receive(FAILURE, 9.0) == [Recreate("channel_gone")]
    assert failed.lost_since == 7.0  # the channel was gone before the 404 was sent

    timed_out = live_link()
    timed_out.notification_seen(2.0)
    assert timed_out.poll(2.0 + HB) == [SendPing()]
    assert timed_out.poll(2.0 + HB + PONG) == [Reconnect("heartbeat_timeout")]
    assert timed_out.lost_since == 2.0


@pytest.mark.parametrize("frame", [NO_LONGER, REVOKED])
def test_lost_subscriptions_date_from_the_frame_before_the_news(frame: Frame) -> None:
    lk = live_link()
    lk.notification_seen(3.0)
    assert lk.unsubscribed_since is None
    assert len(lk.receive(frame, 4.0)) == 1
    assert lk.unsubscribed_since == 3.0
    assert lk.lost_since is None  # the socket itself still works
    lk.receive(frame, 6.0)
    assert lk.unsubscribed_since == 3.0  # the first news counts


def test_decoded_404_recreates() -> None:
    frame = decode_frame('{"result":"404","message":"channel not found"}')
    assert isinstance(frame, ChannelFailure)
    assert live_link().receive(frame, 1.0) == [Recreate("channel_gone")]


# --------------------------------------------------------------------------
# system topics → Rotate, at most once per link
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("frame", "expected"), ROTATE_FRAMES, ids=lambda v: type(v).__name__)
def test_system_topics_rotate(frame: Frame, expected: Rotate) -> None:
    lk = live_link()
    assert lk.receive(frame, 1.0) == [expected]
    assert lk.rotation_requested
    # A rotation is make-before-break: this socket keeps working.
    assert lk.state is LinkState.LIVE
    assert lk.receive(frame, 2.0) == []
    for other, _ in ROTATE_FRAMES:
        assert lk.receive(other, 3.0) == []


@pytest.mark.parametrize(("frame", "expected"), ROTATE_FRAMES, ids=lambda v: type(v).__name__)
def test_system_topics_rotate_before_live(frame: Frame, expected: Rotate) -> None:
    lk = link()
    assert lk.receive(frame, 1.0) == [expected]
    assert lk.state is LinkState.AWAITING_LIVE
    assert lk.receive(HEARTBEAT, 2.0) == [BecameLive()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"topicName":"v2.system.socket_closing","eventBody":{"message":"bye"}}',
            Rotate("socket_closing"),
        ),
        (
            '{"topicName":"v2.system.no_longer_subscribed.abc",'
            '"eventBody":{"reason":"another_channel_subscribed"}}',
            Rotate("no_longer_subscribed"),
        ),
        (
            '{"topicName":"v2.system.token_revoked.abc",'
            '"eventBody":{"reason":"user_tokens_revoked"}}',
            Rotate("token_revoked", reauth=True),
        ),
    ],
)
def test_decoded_system_topics_rotate(text: str, expected: Rotate) -> None:
    assert live_link().receive(decode_frame(text), 1.0) == [expected]


def test_a_link_keeps_its_watchdog_after_rotating() -> None:
    lk = live_link()
    assert lk.receive(NO_LONGER, 1.0) == [Rotate("no_longer_subscribed")]
    assert lk.poll(1.0 + HB) == [SendPing()]
    assert lk.poll(1.0 + HB + PONG) == [Reconnect("heartbeat_timeout")]


def test_a_system_rotation_suppresses_the_timed_one() -> None:
    lk = live_link(channel_expires_at=3600.0, watchdog=NO_WATCHDOG)
    assert lk.next_deadline() == 3600.0 - LEAD
    assert lk.receive(CLOSING, 10.0) == [Rotate("socket_closing")]
    assert lk.next_deadline() == 10.0 + NO_WATCHDOG.heartbeat_timeout_s
    assert lk.poll(3600.0) == []


# --------------------------------------------------------------------------
# Rotation deadlines: channel and token expiry
# --------------------------------------------------------------------------


def test_no_expiry_means_no_rotation() -> None:
    lk = live_link(watchdog=NO_WATCHDOG)
    assert lk.next_deadline() == NO_WATCHDOG.heartbeat_timeout_s
    assert lk.poll(1e8) == []


def test_channel_expiry_rotates_lead_seconds_early() -> None:
    lk = live_link(channel_expires_at=3600.0, watchdog=NO_WATCHDOG)
    assert lk.next_deadline() == 3300.0
    assert lk.poll(3299.999) == []
    assert lk.poll(3300.0) == [Rotate("channel_expiring")]
    assert lk.rotation_requested
    assert lk.poll(3300.0) == []
    assert lk.poll(3600.0) == []
    assert lk.next_deadline() == NO_WATCHDOG.heartbeat_timeout_s


def test_token_expiry_rotates_lead_seconds_early() -> None:
    lk = live_link(token_expires_at=1800.0, watchdog=NO_WATCHDOG)
    assert lk.next_deadline() == 1500.0
    assert lk.poll(1500.0) == [Rotate("token_expiring")]


def test_a_declined_rotation_is_asked_again_half_way_and_by_any_warning() -> None:
    """The shell had no newer token to move onto: the link is not spent.

    It used to be: every later warning on that socket (a maintenance
    close, lost subscriptions) went unanswered.
    """
    lk = live_link(token_expires_at=1800.0, watchdog=NO_WATCHDOG)
    assert lk.poll(1500.0) == [Rotate("token_expiring")]
    lk.rotation_declined(1500.0)
    assert not lk.rotation_requested
    assert lk.next_deadline() == 1650.0  # half-way through the 300 s left
    assert lk.poll(1649.0) == []
    assert lk.poll(1650.0) == [Rotate("token_expiring")]
    lk.rotation_declined(1650.0)
    # A warning is acted on at once, and only once, as before.
    assert lk.receive(CLOSING, 1660.0) == [Rotate("socket_closing")]
    assert lk.receive(NO_LONGER, 1661.0) == []
    assert lk.poll(1725.0) == []


def test_a_declined_rotation_is_not_asked_again_too_close_to_the_end() -> None:
    lk = live_link(token_expires_at=1800.0, watchdog=NO_WATCHDOG)
    assert lk.poll(1500.0) == [Rotate("token_expiring")]
    lk.rotation_declined(1800.0 - 2 * MIN_ROTATION_RETRY_S + 0.5)
    assert lk.next_deadline() == NO_WATCHDOG.heartbeat_timeout_s
    assert lk.poll(1799.0) == []
    assert lk.receive(NO_LONGER, 1799.0) == [Rotate("no_longer_subscribed")]


@pytest.mark.parametrize(
    ("channel_at", "token_at", "deadline", "reason"),
    [
        (3600.0, 1800.0, 1500.0, "token_expiring"),
        (1800.0, 3600.0, 1500.0, "channel_expiring"),
        (86400.0, 86399.0, 86099.0, "token_expiring"),
        (86399.0, 86400.0, 86099.0, "channel_expiring"),
    ],
)
def test_the_earlier_expiry_decides_deadline_and_reason(
    channel_at: float, token_at: float, deadline: float, reason: str
) -> None:
    lk = live_link(channel_expires_at=channel_at, token_expires_at=token_at, watchdog=NO_WATCHDOG)
    assert lk.next_deadline() == deadline
    assert lk.poll(deadline) == [Rotate(reason)]


def test_equal_expiries_rotate_once_for_either_reason() -> None:
    lk = live_link(channel_expires_at=1000.0, token_expires_at=1000.0, watchdog=NO_WATCHDOG)
    assert lk.next_deadline() == 700.0
    actions = lk.poll(700.0)
    assert actions in ([Rotate("token_expiring")], [Rotate("channel_expiring")])


@pytest.mark.parametrize(
    ("opened", "channel_at", "token_at", "deadline", "reason"),
    [
        # Lead capped at half the remaining life.
        (0.0, 100.0, None, 50.0, "channel_expiring"),
        (0.0, None, 100.0, 50.0, "token_expiring"),
        (1000.0, 1400.0, None, 1200.0, "channel_expiring"),
        (0.0, 100.0, 40.0, 20.0, "token_expiring"),
        (0.0, 40.0, 100.0, 20.0, "channel_expiring"),
        # Exactly twice the lead: both rules agree.
        (0.0, 2 * LEAD, None, LEAD, "channel_expiring"),
        # Already expired when opened: rotate at once (no negative lead).
        (500.0, 400.0, None, 400.0, "channel_expiring"),
        (500.0, None, 500.0, 500.0, "token_expiring"),
    ],
)
def test_short_lives_rotate_half_way(
    opened: float, channel_at: float | None, token_at: float | None, deadline: float, reason: str
) -> None:
    lk = live_link(
        opened, channel_expires_at=channel_at, token_expires_at=token_at, watchdog=NO_WATCHDOG
    )
    assert lk.next_deadline() == deadline
    assert lk.poll(max(opened, deadline)) == [Rotate(reason)]


def test_rotation_fires_during_the_pong_wait() -> None:
    lk = live_link(channel_expires_at=2 * (HB + 5))
    assert lk.poll(HB) == [SendPing()]
    assert lk.next_deadline() == HB + 5
    assert lk.poll(HB + 5) == [Rotate("channel_expiring")]
    assert lk.state is LinkState.LIVE
    assert lk.next_deadline() == HB + PONG
    assert lk.poll(HB + PONG) == [Reconnect("heartbeat_timeout")]


def test_poll_fires_every_timer_that_is_due() -> None:
    # Silence and rotation are both overdue: one poll answers both.
    lk = live_link(channel_expires_at=20.0)
    assert lk.next_deadline() == 10.0
    actions = lk.poll(HB)
    assert sorted(map(repr, actions)) == sorted(map(repr, [SendPing(), Rotate("channel_expiring")]))
    assert lk.next_deadline() == HB + PONG


def test_the_platform_saying_the_list_changed_asks_for_a_check_dated_before_it() -> None:
    lk = live_link()
    lk.receive(HEARTBEAT, 40.0)
    assert lk.receive(UPDATED, 50.0) == [CheckSubscriptions("subscription_updated", since=40.0)]
    # Every such frame asks again (unlike a rotation): each may be a new change.
    assert lk.receive(UPDATED, 51.0) == [CheckSubscriptions("subscription_updated", since=50.0)]
    assert lk.state is LinkState.LIVE


def test_subscriptions_are_checked_periodically() -> None:
    every = WatchdogSettings(
        heartbeat_timeout_s=1e9, pong_timeout_s=1e9, rotation_lead_s=LEAD, subscription_check_s=60
    )
    lk = link(10.0, watchdog=every)
    assert lk.next_deadline() == 70.0
    assert lk.poll(69.9) == []
    assert lk.poll(70.0) == [CheckSubscriptions("periodic")]
    assert lk.next_deadline() == 130.0
    # A late poll checks once, and the next check is a full interval later.
    assert lk.poll(200.0) == [CheckSubscriptions("periodic")]
    assert lk.next_deadline() == 260.0
    lk.socket_closed(201.0)
    assert lk.next_deadline() is None
    assert lk.poll(300.0) == []


def test_no_periodic_check_when_switched_off() -> None:
    lk = link(0.0, watchdog=NO_WATCHDOG)
    assert lk.next_deadline() == 1e9
    assert all(not isinstance(a, CheckSubscriptions) for a in lk.poll(1e6))


@given(
    opened=st.floats(0.0, 1e7),
    channel_life=st.none() | st.floats(-1e4, 1e6),
    token_life=st.none() | st.floats(-1e4, 1e6),
    lead=st.floats(0.0, 1e4),
)
def test_rotation_deadline_property(
    opened: float, channel_life: float | None, token_life: float | None, lead: float
) -> None:
    channel_at = None if channel_life is None else opened + channel_life
    token_at = None if token_life is None else opened + token_life
    watchdog = WatchdogSettings(
        heartbeat_timeout_s=1e12,
        pong_timeout_s=1.0,
        rotation_lead_s=lead,
        subscription_check_s=None,
    )
    lk = link(opened, channel_expires_at=channel_at, token_expires_at=token_at, watchdog=watchdog)
    deadline = lk.next_deadline()
    assert deadline is not None
    ends = [t for t in (channel_at, token_at) if t is not None]
    if not ends:
        assert deadline == opened + 1e12
        return
    end = min(ends)
    tol = 1e-9 * max(1.0, abs(end), abs(opened))
    # Never after the expiry, never more than ``lead`` before it, and never
    # in the first half of the remaining life.
    assert deadline <= end + tol
    assert deadline >= end - lead - tol
    assert deadline >= min(end, opened + (end - opened) / 2) - tol
    # One of the two limits is the one that applies.
    assert math.isclose(deadline, end - lead, abs_tol=tol) or math.isclose(
        deadline, end - max(0.0, end - opened) / 2, abs_tol=tol
    )
    expected = (
        "token_expiring"
        if token_at is not None and (channel_at is None or token_at < channel_at)
        else "channel_expiring"
    )
    actions = lk.poll(deadline)
    assert len(actions) == 1
    assert isinstance(actions[0], Rotate)
    if channel_at != token_at:
        assert actions[0] == Rotate(expected)


# --------------------------------------------------------------------------
# Nothing after DEAD
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how", ["socket_closed", "channel_failure", "pong_timeout", "closed_before_live"]
)
def test_nothing_after_death(how: str) -> None:
    lk = dict(dead_links())[how]
    assert lk.state is LinkState.DEAD
    assert lk.next_deadline() is None
    for t in (1e3, 1e6, 1e9):
        assert lk.poll(t) == []
    for frame in ALL_FRAMES:
        assert lk.receive(frame, 2e9) == []
    lk.notification_seen(2e9)
    assert lk.socket_closed(3e9) == []
    assert lk.state is LinkState.DEAD
    assert lk.next_deadline() is None


# --------------------------------------------------------------------------
# next_deadline and poll agree, to the last bit of a float
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opened",
    # Monotonic clock readings where fl(opened + 75) - opened < 75: a poll
    # at exactly the announced deadline must still fire.
    [32699.727816593168, 16358.487465844833, 0.1, 1e6 + 0.3],
)
def test_poll_at_the_exact_deadline_fires(opened: float) -> None:
    lk = link(opened, watchdog=WatchdogSettings())
    deadline = lk.next_deadline()
    assert deadline is not None
    assert lk.poll(math.nextafter(deadline, -math.inf)) == []
    assert lk.poll(deadline) == [SendPing()]
    deadline = lk.next_deadline()
    assert deadline is not None
    assert lk.poll(math.nextafter(deadline, -math.inf)) == []
    assert lk.poll(deadline) == [Reconnect("heartbeat_timeout")]


def test_poll_at_the_exact_pong_deadline_fires_after_odd_ping_times() -> None:
    lk = link(185906.2658947177 - HB)
    assert lk.poll(185906.2658947177) == [SendPing()]
    deadline = lk.next_deadline()
    assert deadline is not None
    assert lk.poll(deadline) == [Reconnect("heartbeat_timeout")]


# --------------------------------------------------------------------------
# The sequence property
# --------------------------------------------------------------------------

Event = tuple[str, float, Frame | None]

_STEP = st.floats(min_value=0.0, max_value=120.0, allow_nan=False)
_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("frame"), _STEP, st.sampled_from(ALL_FRAMES)),
        st.tuples(st.just("notification"), _STEP, st.none()),
        st.tuples(st.just("poll"), _STEP, st.none()),
        st.tuples(st.just("poll_at_deadline"), st.just(0.0), st.none()),
        st.tuples(st.just("closed"), _STEP, st.none()),
    ),
    max_size=60,
)
_WATCHDOGS = st.builds(
    WatchdogSettings,
    heartbeat_timeout_s=st.floats(0.01, 100.0),
    pong_timeout_s=st.floats(0.01, 30.0),
    rotation_lead_s=st.floats(0.0, 500.0),
)


@dataclass
class Ledger:
    """What the property test has seen a link do."""

    counts: dict[type, int] = field(default_factory=dict)
    dead: bool = False
    #: True while a ping has gone out and no frame has arrived since.
    pinged: bool = False
    last_reset: float = 0.0

    def record(self, actions: list[Action]) -> None:
        assert not self.dead, f"{actions} after DEAD"
        for action in actions:
            self.counts[type(action)] = self.counts.get(type(action), 0) + 1
            if isinstance(action, Reconnect | Recreate):
                self.dead = True
        for kind in (BecameLive, Rotate):
            assert self.counts.get(kind, 0) <= 1, f"{kind.__name__} twice"
        assert self.counts.get(Reconnect, 0) + self.counts.get(Recreate, 0) <= 1


@settings(max_examples=300, deadline=None)
@given(
    watchdog=_WATCHDOGS,
    opened=st.floats(0.0, 1e7),
    channel_life=st.none() | st.floats(-100.0, 5000.0),
    token_life=st.none() | st.floats(-100.0, 5000.0),
    events=_EVENTS,
)
def test_random_sequences_keep_every_promise(
    watchdog: WatchdogSettings,
    opened: float,
    channel_life: float | None,
    token_life: float | None,
    events: list[Event],
) -> None:
    lk = link(
        opened,
        channel_expires_at=None if channel_life is None else opened + channel_life,
        token_expires_at=None if token_life is None else opened + token_life,
        watchdog=watchdog,
    )
    seen = Ledger(last_reset=opened)
    now = opened
    # The last frame read, and when the subscriptions went (both as the link must say).
    last_read = opened
    unsubscribed: float | None = None
    for kind, step, frame in events:
        now += step
        before = lk.next_deadline()
        assert (before is None) == (lk.state is LinkState.DEAD)
        if kind == "poll_at_deadline":
            if before is None or before < now:
                continue
            now = before
        if kind in ("poll", "poll_at_deadline"):
            actions = lk.poll(now)
            due = before is not None and now >= before
            # Fires exactly when announced: never early, never silent when due.
            assert bool(actions) == due, (before, now, actions)
            if any(isinstance(a, SendPing) for a in actions):
                assert not seen.pinged, "second ping in one silence"
                assert now >= seen.last_reset + watchdog.heartbeat_timeout_s
                seen.pinged = True
            if Reconnect("heartbeat_timeout") in actions:
                assert seen.pinged
                assert lk.state is LinkState.DEAD
                assert lk.lost_since == last_read
            if actions:
                seen.record(actions)
        elif kind == "frame":
            assert frame is not None
            was_dead = lk.state is LinkState.DEAD
            actions = lk.receive(frame, now)
            if was_dead:
                assert actions == []
                continue
            seen.record(actions)
            seen.pinged, seen.last_reset = False, now
            if isinstance(frame, NoLongerSubscribed | TokenRevoked) and unsubscribed is None:
                unsubscribed = last_read
            assert lk.unsubscribed_since == unsubscribed
            if isinstance(frame, ChannelFailure):
                assert actions == [Recreate("channel_gone")]
                assert lk.lost_since == last_read
            last_read = now
            if isinstance(frame, Heartbeat | Pong | SubscriptionAck):
                assert lk.state is LinkState.LIVE
            for a in actions:
                assert not isinstance(a, SendPing | Reconnect)
        elif kind == "notification":
            lk.notification_seen(now)
            if lk.state is not LinkState.DEAD:
                seen.pinged, seen.last_reset = False, now
                last_read = now
        else:
            was_dead = lk.state is LinkState.DEAD
            actions = lk.socket_closed(now)
            if was_dead:
                assert actions == []
            else:
                assert actions == [Reconnect("socket_closed")]
                assert lk.lost_since == last_read
                seen.record(actions)
        assert (lk.state is LinkState.DEAD) == seen.dead
        if lk.state is LinkState.DEAD:
            assert lk.next_deadline() is None
        else:
            after = lk.next_deadline()
            assert after is not None
            # A deadline is never in the past once poll has run at ``now``.
            if kind in ("poll", "poll_at_deadline"):
                assert after > now
