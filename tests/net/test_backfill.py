"""Back-fill after a gap: the current snapshots of the conversations it may have hidden."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from genesys_mux import Gap, StreamStats
from genesys_mux.config import filter_topics, parse_stream
from genesys_mux.core.snapshot import conversation_facts, event_facts
from genesys_mux.net.multiplexer import _BACKFILL_MARGIN_S
from tests.net.conftest import eventually
from tests.net.test_multiplexer import Collector, harness, org_settings


async def test_a_gap_is_followed_by_backfilled_snapshots() -> None:
    async with harness(org_settings(rate=10.0), backfill=True) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 10)
        await h.control("faults", {"fault": "pause_heartbeats"})
        await eventually(lambda: any(e.backfilled for e in seen.events()), within=20)
        seen.stop()
        (gap,) = seen.gaps()
        queues = {t.split(".")[3] for t in gap.topics}
        backfilled = [e for e in seen.events() if e.backfilled]
        for event in backfilled:
            facts = event_facts(event.topic, event.raw).conversation
            assert facts is not None
            assert facts.queue_ids & queues
            assert event.correlation_id is None
            assert event.topic in gap.topics
        # The gap comes before the snapshots that fill it.
        first_backfilled = seen.items.index(backfilled[0])
        assert seen.items.index(gap) < first_backfilled
        # Back-filled snapshots obey the same rules: gap-free sequences, and
        # never an older snapshot of a conversation after a newer one.
        events = seen.events()
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        newest: dict[str, float] = {}
        for event in events:
            facts = event_facts(event.topic, event.raw).conversation
            assert facts is not None
            assert facts.version >= newest.get(facts.conversation_id, 0.0)
            newest[facts.conversation_id] = facts.version


async def test_backfill_is_off_by_default() -> None:
    async with harness(org_settings(rate=10.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 5)
        await h.control("faults", {"fault": "drop_socket"})
        await eventually(lambda: bool(seen.gaps()))
        await eventually(lambda: len(seen.events()) >= 15)
        seen.stop()
        assert not any(e.backfilled for e in seen.events())
        log = (await h.control("requests"))["requests"]
        assert not [r for r in log if "analytics" in r["path"] or "/conversations/" in r["path"]]


async def test_user_topics_are_backfilled_too() -> None:
    async with harness(org_settings(rate=10.0), backfill=True) as h:
        users = [u["id"] for u in (await h.control("org"))["users"]]
        topics = [f"v2.users.{u}.conversations" for u in users]
        await h.mux.add_stream({"id": "agents", "topics": topics})
        seen = Collector(h.mux.stream("agents"))
        await eventually(lambda: len(seen.events()) >= 10)
        await h.control("faults", {"fault": "pause_heartbeats"})
        await eventually(lambda: any(e.backfilled for e in seen.events()), within=20)
        seen.stop()
        for event in (e for e in seen.events() if e.backfilled):
            facts = event_facts(event.topic, event.raw).conversation
            assert facts is not None
            user = event.topic.split(".")[2]
            assert user in facts.user_ids


async def test_the_analytics_query_finds_a_users_conversations() -> None:
    async with harness(org_settings(rate=10.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 20)
        seen.stop()
        assert h.mux.rest is not None
        users = {
            u
            for e in seen.events()
            if (f := event_facts(e.topic, e.raw).conversation) is not None
            for u in f.user_ids
        }
        user = sorted(users)[0]
        start = min(e.received_at for e in seen.events()) - 1
        end = max(e.received_at for e in seen.events()) + 1
        ids = await h.mux.rest.conversations_between(start, end, user_ids=[user])
        assert ids
        for conversation_id in ids[:5]:
            body = await h.mux.rest.get_conversation(conversation_id)
            assert body is not None
            facts = conversation_facts(body)
            assert facts is not None
            assert user in facts.user_ids
        assert await h.mux.rest.get_conversation("no-such-conversation") is None


async def test_backfill_into_a_media_stream_drops_the_states_it_has() -> None:
    """REST answers in its own shape; a media-topic stream must still recognise its states.

    With traffic frozen and every frame read, the REST state of each
    conversation is the one the stream last received in the media shape:
    back-filling must deliver none of them again.
    """
    async with harness(org_settings(rate=10.0)) as h:
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
        seen = Collector(h.mux.stream("voice"))

        def queued_calls() -> set[str | None]:
            # Calls that reached their queue: the analytics query finds those
            # (one still in the IVR has no queue segment yet).
            return {
                e.conversation_id
                for e in seen.events()
                if (facts := event_facts(e.topic, e.raw).conversation) and facts.queue_ids
            }

        await eventually(lambda: len(queued_calls()) >= 5)
        await h.control("traffic", {"running": False})
        queues = [q["id"] for q in (await h.control("org"))["queues"]]
        topics = filter_topics(
            parse_stream({"id": "voice", "filter": {"channelType": "voice"}}), queues
        )

        async def drained() -> bool:
            first = await h.control("ledger")
            sent = sum(1 for e in first["entries"] if e["topic"] in topics)
            stats = h.mux.stats()["streams"]["voice"]
            assert isinstance(stats, StreamStats)
            again = await h.control("ledger")
            return (
                cast(int, again["next_seq"]) == cast(int, first["next_seq"])
                and stats.received == sent
                and stats.buffered == 0
                and len(seen.events()) == stats.delivered
            )

        await eventually(drained)
        live = seen.events()
        start = min(e.received_at for e in live) - 1
        end = max(e.received_at for e in live) + 1
        gap = Gap("voice", start, end, topics, "test", "test")
        before = h.mux.stats()["streams"]["voice"]
        offered = await h.mux.backfill(gap)
        stats = h.mux.stats()["streams"]["voice"]
        seen.stop()
        assert offered >= 5
        # Nothing delivered again: every back-filled call was a state the
        # stream already had; the queues' other media are filtered as ever.
        assert stats.delivered + stats.buffered == len(live)
        duplicates = stats.duplicates - before.duplicates
        filtered = stats.filtered - before.filtered
        assert duplicates >= len(queued_calls()) >= 5
        assert duplicates + filtered == offered
        assert stats.stale == before.stale


async def test_no_longer_subscribed_is_a_gap_and_is_backfilled() -> None:
    """Subscriptions gone while the socket stays up: the window is a Gap like any other."""
    async with harness(org_settings(rate=10.0), backfill=True) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 10)
        await h.control("faults", {"fault": "no_longer_subscribed"})
        await eventually(lambda: bool(seen.gaps()))
        seen.stop()
        (gap,) = seen.gaps()
        assert gap.reason == "no_longer_subscribed"
        assert gap.duration_s > 0

        async def backfilled() -> bool:
            log = (await h.control("requests"))["requests"]
            return any(r["path"].endswith("/details/query") for r in log) and any(
                "/api/v2/conversations/" in r["path"] for r in log
            )

        # The window is filled from REST like any gap (states the stream
        # already has are dropped as duplicates).
        await eventually(backfilled)


async def test_a_stream_removed_while_its_backfill_waits_on_rest_is_left_alone() -> None:
    """The back-fill offers nothing to a stream that left meanwhile, and the others go on."""
    async with harness(org_settings(rate=10.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        await h.mux.add_stream({"id": "calls", "filter": {"channelType": "voice"}})
        seen = Collector(h.mux.events())
        await eventually(lambda: len(seen.events("all")) >= 5)
        seen.stop()
        now = time.time()
        gap = Gap("all", now - 60, now, frozenset(h.mux._streams["all"].topics), "c", "test")
        # The first snapshot fetched is answered 429: the back-fill waits.
        path = "/api/v2/conversations/"
        await h.control(
            "faults", {"fault": "http_429", "retry_after_s": 1, "count": 1, "path": path}
        )
        backfill = asyncio.create_task(h.mux.backfill(gap))

        async def throttled() -> bool:
            log = (await h.control("requests"))["requests"]
            return any(r["status"] == 429 and r["path"].startswith(path) for r in log)

        await eventually(throttled)
        assert not backfill.done()
        await h.mux.remove_stream("all")
        assert await backfill == 0  # nothing offered to the stream that left
        # What only "all" remembered is gone; "calls" keeps its own.
        calls = h.mux._streams["calls"].stream
        assert all(r.streams == calls._bit for r in h.mux._key_memory.records())


async def test_the_backfill_query_reaches_past_each_side_of_the_gap() -> None:
    """A gap's ends are receive times here; the platform's timestamps are earlier.

    A call that ended just before the gap began, and whose end arrived
    inside it, is found only by a query that starts before the gap did.
    """
    async with harness(org_settings(rate=10.0), backfill=True) as h:
        assert h.mux.rest is not None
        asked: list[tuple[float, float]] = []
        query = h.mux.rest.conversations_between

        async def recorded(start: float, end: float, *args: Any, **kwargs: Any) -> list[str]:
            asked.append((start, end))
            return await query(start, end, *args, **kwargs)

        h.mux.rest.conversations_between = recorded  # type: ignore[method-assign]
        await h.mux.add_stream({"id": "all", "filter": {}})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 5)
        await h.control("faults", {"fault": "drop_socket"})
        await eventually(lambda: bool(asked), within=20)
        seen.stop()
    (gap,) = seen.gaps()
    ((start, end),) = asked
    assert start == gap.start - _BACKFILL_MARGIN_S
    assert end == gap.end + _BACKFILL_MARGIN_S
