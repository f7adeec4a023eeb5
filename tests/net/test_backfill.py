"""Back-fill after a gap: the current snapshots of the conversations it may have hidden."""

from __future__ import annotations

from genesys_mux.core.snapshot import conversation_facts
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
            facts = conversation_facts(event.raw)
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
            facts = conversation_facts(event.raw)
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
            facts = conversation_facts(event.raw)
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
            if (f := conversation_facts(e.raw)) is not None
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
