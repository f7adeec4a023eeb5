"""The public Multiplexer against the emulator, over real sockets.

Each test checks one promise of the stream layer: the seed's own example,
exactly-once delivery through rotations and duplicates, per-conversation
order under reordering, overflow accounting, state transitions, all-queues
streams that follow the org, gaps with the right window, config errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from genesys_mux import Gap, Multiplexer, StreamConfig, StreamEvent, StreamStats
from genesys_mux.core.snapshot import event_facts
from genesys_mux.emulator import Emulator, EmulatorSettings
from genesys_mux.errors import ConfigError, StreamConfigError
from genesys_mux.net.connection import PoolSettings
from genesys_mux.sinks.dlq import MemoryDeadLetterQueue
from tests.net.conftest import eventually

FAST_POOL = PoolSettings(
    heartbeat_timeout_s=1.0,
    pong_timeout_s=0.5,
    reconnect_base_s=0.05,
    reconnect_cap_s=0.5,
    rotation_overlap_s=0.5,
)


def demo_mux(emulator: Emulator, **pool: Any) -> Multiplexer:
    """A multiplexer of the emulator's demo client on FAST_POOL, its settings changed as given."""
    return Multiplexer(
        client_id="demo-client",
        client_secret="demo-secret",
        base_url=emulator.base_url,
        pool_settings=dataclasses.replace(FAST_POOL, **pool),
        dlq=MemoryDeadLetterQueue(),
    )


def org_settings(**overrides: Any) -> EmulatorSettings:
    values: dict[str, Any] = {
        "seed": 5,
        "queues": 3,
        "agents": 8,
        "rate": 15.0,
        "heartbeat_interval_s": 0.25,
        "tick_s": 0.02,
    }
    values.update(overrides)
    return EmulatorSettings(**values)


class Harness:
    """An emulator, a Multiplexer on it, and the emulator's control surface."""

    def __init__(self, emulator: Emulator, mux: Multiplexer, dlq: Any) -> None:
        self.emulator = emulator
        self.mux = mux
        self.dlq = dlq

    async def control(self, path: str, body: Any = None) -> Any:
        url = f"{self.emulator.base_url}/__emulator__/{path}"
        async with aiohttp.ClientSession() as session:
            if body is None:
                async with session.get(url) as resp:
                    return await resp.json()
            async with session.post(url, json=body) as resp:
                assert resp.status in (200, 201), await resp.text()
                return await resp.json()


@asynccontextmanager
async def harness(
    settings: EmulatorSettings | None = None, **kwargs: Any
) -> AsyncIterator[Harness]:
    async with Emulator(settings or org_settings()) as emulator:
        dlq = kwargs.pop("dlq", None) or MemoryDeadLetterQueue()
        kwargs.setdefault("pool_settings", FAST_POOL)
        mux = Multiplexer(
            client_id="demo-client",
            client_secret="demo-secret",
            base_url=emulator.base_url,
            dlq=dlq,
            **kwargs,
        )
        async with mux:
            yield Harness(emulator, mux, dlq)


class Collector:
    """Reads a source in the background, keeping everything it yields."""

    def __init__(self, source: AsyncIterator[StreamEvent | Gap]) -> None:
        self.items: list[StreamEvent | Gap] = []
        self._task = asyncio.create_task(self._run(source))

    async def _run(self, source: AsyncIterator[StreamEvent | Gap]) -> None:
        async for item in source:
            self.items.append(item)

    def events(self, stream_id: str | None = None) -> list[StreamEvent]:
        return [
            i for i in self.items if isinstance(i, StreamEvent) and stream_id in (None, i.stream_id)
        ]

    def gaps(self, stream_id: str | None = None) -> list[Gap]:
        return [i for i in self.items if isinstance(i, Gap) and stream_id in (None, i.stream_id)]

    def stop(self) -> None:
        self._task.cancel()


async def test_the_seed_example_end_to_end() -> None:
    # Agents enough that calls are answered (active) soon after they queue:
    # the events waited for below come in about 3 s rather than 8.
    async with harness(org_settings(agents=24)) as h:
        queue = (await h.control("org"))["queues"][0]["id"]
        await h.mux.add_stream(
            {
                "id": "voice-main",
                "filter": {"channelType": "voice", "state": "active"},
                "priority": 1,
            }
        )
        await h.mux.add_stream(
            StreamConfig(
                id="chat-support", filter={"channelType": "chat", "queueId": queue}, priority=2
            )
        )
        seen = Collector(h.mux.events())

        def enough() -> bool:
            # A call that ended among them too: both sides of the check of
            # `active` below are seen.
            voice = seen.events("voice-main")
            return (
                len(voice) >= 10
                and any(e.transition == "exit" for e in voice)
                and len(seen.events("chat-support")) >= 3
            )

        await eventually(enough, within=30)
        seen.stop()
        for stream_id in ("voice-main", "chat-support"):
            sequences = [e.sequence for e in seen.events(stream_id)]
            assert sequences == list(range(1, len(sequences) + 1))
        for event in seen.events():
            facts = event_facts(event.topic, event.raw).conversation
            assert facts is not None
            assert event.conversation_id == facts.conversation_id
            assert event.body["id"] == event.conversation_id
            assert event.latency_s is not None
            assert event.latency_s >= 0
            if event.stream_id == "voice-main":
                assert event.priority == 1
                assert "calls" in facts.media
                assert event.transition in ("enter", "update", "exit")
                assert facts.active == (event.transition != "exit")
            else:
                assert event.priority == 2
                assert event.transition is None
                assert "chats" in facts.media
                assert event.topic == f"v2.routing.queues.{queue}.conversations.chats"


async def test_every_matching_event_is_delivered_exactly_once() -> None:
    async with harness(org_settings(rate=20.0)) as h:
        await h.mux.add_stream({"id": "calls", "filter": {"channelType": "voice"}})
        await h.control("faults", {"fault": "duplicate", "probability": 0.3})
        seen = Collector(h.mux.stream("calls"))
        assert h.mux.pool is not None
        pool = h.mux.pool
        for _ in range(2):
            before = set(pool.channel_ids().values())
            await h.control("faults", {"fault": "socket_closing", "delay_s": 5})

            def rotated(before: set[str | None] = before) -> bool:
                return not before & set(pool.channel_ids().values())

            await eventually(rotated)
            await eventually(lambda: len(seen.events()) >= 20)
        await h.control("traffic", {"running": False})

        topics = {t for s in h.mux.streams() for t in h.mux._streams[s.id].topics}
        ledger = (await h.control("ledger"))["entries"]
        expected = {e["correlation_id"] for e in ledger if e["topic"] in topics}
        duplicated = Counter(e["correlation_id"] for e in ledger if e["topic"] in topics)
        assert any(n > 1 for n in duplicated.values()), "the faults produced no duplicates"

        stats = h.mux.stats()["streams"]["calls"]

        def accounted() -> bool:
            delivered = {e.correlation_id for e in seen.events()}
            missing = expected - delivered - {d.correlation_id for d in h.dlq.letters}
            now = h.mux.stats()["streams"]["calls"]
            assert isinstance(now, StreamStats)
            return len(missing) <= now.stale

        await eventually(accounted)
        seen.stop()
        counts = Counter(e.correlation_id for e in seen.events())
        assert all(n == 1 for n in counts.values()), "an event was delivered twice"
        assert set(counts) <= expected
        assert stats.duplicates > 0


async def test_reserialised_duplicates_are_delivered_once() -> None:
    """The same notification written anew (key order, whitespace, CorrelationId) is one event."""
    async with harness(org_settings(rate=20.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        await h.mux.add_stream({"id": "calls", "filter": {"channelType": "voice"}})
        await h.control("faults", {"fault": "duplicate", "probability": 0.5, "reserialise": True})
        seen = Collector(h.mux.events())
        topics = {s.id: h.mux._streams[s.id].topics for s in h.mux.streams()}

        async def copied() -> bool:
            entries = (await h.control("ledger"))["entries"]
            return sum(1 for e in entries if e["duplicate"] and e["topic"] in topics["calls"]) >= 10

        await eventually(copied, within=20)
        await h.control("traffic", {"running": False})
        ledger: list[dict[str, Any]] = []

        async def drained() -> bool:
            entries = (await h.control("ledger"))["entries"]
            stats = h.mux.stats()["streams"]
            for sid, wanted in topics.items():
                sent = sum(1 for e in entries if e["topic"] in wanted)
                if stats[sid].received != sent or stats[sid].buffered:
                    return False
            ledger[:] = entries
            return True

        await eventually(drained)
        seen.stop()
        originals = {e["correlation_id"] for e in ledger if not e["duplicate"]}
        for sid, wanted in topics.items():
            copies = [e for e in ledger if e["duplicate"] and e["topic"] in wanted]
            assert len(copies) >= 10, "the fault produced too few copies to say much"
            stats = h.mux.stats()["streams"][sid]
            # Every copy was recognised (fan-out repeats may add more).
            assert stats.duplicates >= len(copies)
            events = seen.events(sid)
            assert {e.correlation_id for e in events} <= originals
            states = Counter((e.conversation_id, event_facts(e.topic, e.raw).hash) for e in events)
            assert all(n == 1 for n in states.values()), "a state was delivered twice"
        # The originals carry names beyond ASCII as UTF-8 and the copies as
        # \u escapes: one state whichever spelling arrives first.
        assert any(not e.raw.isascii() for e in seen.events())


async def test_frames_split_unread_are_rechecked_when_their_body_is_not_json() -> None:
    """The pool splits the platform's frames without reading the bodies; a broken one is caught.

    Over a real socket: a frame in the platform's layout whose body is not
    JSON is a bad frame (counted on its channel, not delivered, not counted
    as a notification); a valid frame with a member the platform never sends
    reads as the full decoder reads it, and is delivered once.
    """
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        await h.control("traffic", {"running": False})
        seen = Collector(h.mux.stream("all"))
        topic = sorted(h.mux._streams["all"].topics)[0]
        pool = h.mux.pool
        assert pool is not None
        assert not pool.check_bodies

        def frame(body: str, tail: str = "") -> str:
            return (
                f'{{"topicName":"{topic}","version":"2","eventBody":{body}{tail},'
                '"metadata":{"CorrelationId":"9f1c3a52-8a0e-4b1f-9d0d-2f6b1c7e8a90"}}'
            )

        async def quiet() -> bool:
            stats = h.mux.stats()
            return not stats["streams"]["all"].buffered and not pool._inbound.qsize()

        await eventually(quiet)
        before = h.mux.stats()
        received: int = before["streams"]["all"].received
        bad: int = sum(c.bad_frames for c in before["channels"].values())
        notes: int = sum(c.notifications for c in before["channels"].values())
        good = '{"id":"0f6bd0a3-6d67-4c1e-8e38-3c0f0f7d6a11","participants":[]}'
        answer = await h.control(
            "faults", {"fault": "garbage_frame", "data": frame('{"id":"c-1",}')}
        )
        sockets = len(answer["applied"])
        assert sockets >= 1
        await h.control("faults", {"fault": "garbage_frame", "data": frame(good, ',"extra":1')})

        async def settled() -> bool:
            stats = h.mux.stats()
            stream: StreamStats = stats["streams"]["all"]
            bad_now: int = sum(c.bad_frames for c in stats["channels"].values())
            return stream.received == received + sockets and bad_now == bad + sockets

        await eventually(settled)
        after = h.mux.stats()
        assert sum(c.notifications for c in after["channels"].values()) == notes + sockets
        await eventually(lambda: len(seen.events("all")) >= 1)
        seen.stop()
        delivered = [e for e in seen.events("all") if e.raw == good.encode()]
        assert len(delivered) == 1
        assert delivered[0].topic == topic
        assert delivered[0].correlation_id == "9f1c3a52-8a0e-4b1f-9d0d-2f6b1c7e8a90"


async def test_no_older_snapshot_after_a_newer_one_under_reordering() -> None:
    async with harness(org_settings(rate=3.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        await h.control("faults", {"fault": "reorder", "probability": 1.0, "depth": 8})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: h.mux.stats()["streams"]["all"].stale >= 3, within=20)
        seen.stop()
        newest: dict[str, float] = {}
        for event in seen.events():
            facts = event_facts(event.topic, event.raw).conversation
            assert facts is not None
            assert facts.version >= newest.get(facts.conversation_id, 0.0)
            newest[facts.conversation_id] = facts.version


async def test_overflow_accounting_with_a_stalled_consumer() -> None:
    async with harness(org_settings(rate=20.0)) as h:
        await h.mux.add_stream({"id": "small", "filter": {}, "buffer_size": 5})
        # Nobody reads: the buffer fills and overflows into the DLQ.
        await eventually(lambda: h.mux.stats()["streams"]["small"].overflowed >= 30, within=20)
        assert h.mux.stats()["streams"]["small"].buffered <= 5
        await h.control("traffic", {"running": False})
        delivered = []
        async for item in h.mux.stream("small"):
            if isinstance(item, StreamEvent):
                delivered.append(item.sequence)
            if h.mux.stats()["streams"]["small"].buffered == 0:
                break
        total = h.mux.stats()["streams"]["small"].delivered + len(h.dlq.letters)
        dead = [d.sequence for d in h.dlq.letters]
        assert {d.reason for d in h.dlq.letters} == {"overflow_drop_oldest"}
        assert sorted(delivered + dead) == list(range(1, total + 1))
        assert len(delivered) <= 5


async def test_a_queued_stream_sees_enter_then_exit_when_an_agent_answers() -> None:
    async with harness(org_settings(rate=6.0)) as h:
        await h.mux.add_stream({"id": "waiting", "filter": {"state": "queued"}})
        seen = Collector(h.mux.stream("waiting"))

        def answered() -> bool:
            entered = {e.conversation_id for e in seen.events() if e.transition == "enter"}
            for event in seen.events():
                if event.transition == "exit" and event.conversation_id in entered:
                    facts = event_facts(event.topic, event.raw).conversation
                    if facts is not None and facts.active:
                        return True
            return False

        await eventually(answered, within=20)
        seen.stop()
        by_conversation: dict[str | None, list[str | None]] = defaultdict(list)
        for event in seen.events():
            by_conversation[event.conversation_id].append(event.transition)
            facts = event_facts(event.topic, event.raw).conversation
            assert facts is not None
            assert facts.queued == (event.transition != "exit")
        for transitions in by_conversation.values():
            assert transitions[0] == "enter"
            for previous, current in itertools.pairwise(transitions):
                assert (previous, current) != ("enter", "enter")


async def test_a_rescheduled_callback_is_delivered_not_counted_as_a_duplicate() -> None:
    """The emulator reschedules every callback once: only callbackScheduledTime moves."""
    async with harness() as h:
        await h.mux.add_stream({"id": "callbacks", "filter": {"channelType": "callback"}})
        seen = Collector(h.mux.stream("callbacks"))

        def appointments() -> dict[str | None, list[str]]:
            found: dict[str | None, list[str]] = defaultdict(list)
            for event in seen.events():
                for p in json.loads(event.raw)["participants"]:
                    if p.get("state") == "scheduled" and "callbackScheduledTime" in p:
                        found[event.conversation_id].append(p["callbackScheduledTime"])
            return found

        await eventually(lambda: any(len(set(t)) == 2 for t in appointments().values()))
        seen.stop()
        for times in appointments().values():
            assert times == sorted(set(times)), "each appointment once, the later one last"
        assert h.mux.stats()["streams"]["callbacks"].duplicates == 0


async def test_all_queues_stream_picks_up_a_new_queue() -> None:
    async with harness(queue_refresh_s=0.2) as h:
        await h.mux.add_stream({"id": "everything", "filter": {"channelType": "voice"}})
        queue = await h.control("queues", {"name": "Late Queue"})
        topic = f"v2.routing.queues.{queue['id']}.conversations.calls"
        await eventually(lambda: topic in h.mux._streams["everything"].topics)
        seen = Collector(h.mux.stream("everything"))
        await eventually(lambda: any(e.topic == topic for e in seen.events()), within=25)
        seen.stop()
        # A deleted queue is dropped again, and only its topic.
        before = h.mux._streams["everything"].topics
        async with aiohttp.ClientSession() as session:
            url = f"{h.emulator.base_url}/__emulator__/queues/{queue['id']}"
            async with session.delete(url) as resp:
                assert resp.status == 200
        await eventually(lambda: topic not in h.mux._streams["everything"].topics)
        assert h.mux._streams["everything"].topics == before - {topic}


async def test_a_lost_socket_becomes_a_gap_in_every_affected_stream() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
        await h.mux.add_stream({"id": "chat", "filter": {"channelType": "chat"}})
        voice, chat = Collector(h.mux.stream("voice")), Collector(h.mux.stream("chat"))
        await eventually(lambda: bool(voice.events() and chat.events()))
        faulted_at = time.time()
        await h.control("faults", {"fault": "pause_heartbeats"})
        await eventually(lambda: bool(voice.gaps() and chat.gaps()))
        voice.stop()
        chat.stop()
        for gap, stream_id in ((voice.gaps()[0], "voice"), (chat.gaps()[0], "chat")):
            assert gap.stream_id == stream_id
            assert gap.topics == h.mux._streams[stream_id].topics
            # It starts at the last frame read before the socket went quiet,
            # and lasts at least as long as the watchdog took to notice.
            assert faulted_at - 0.5 <= gap.start <= faulted_at + 0.1
            assert gap.duration_s >= FAST_POOL.heartbeat_timeout_s
        # Events flow again after the gap.
        assert h.mux.live


async def test_five_config_mistakes_are_all_reported_with_paths() -> None:
    async with harness(org_settings(rate=0.0)) as h:
        with pytest.raises(StreamConfigError) as caught:
            await h.mux.add_stream(
                {
                    "id": "bad id!",
                    "filter": {"channelType": "fax", "queueId": "a/b", "mood": "happy"},
                    "priority": 9,
                }
            )
        paths = sorted(path for path, _ in caught.value.errors)
        assert paths == ["filter.channelType", "filter.mood", "filter.queueId", "id", "priority"]
        for path in paths:
            assert path in str(caught.value)


async def test_max_streams_and_duplicate_ids_are_clear_errors() -> None:
    async with harness(org_settings(rate=0.0), max_streams=1) as h:
        await h.mux.add_stream({"id": "one", "filter": {"channelType": "voice"}})
        with pytest.raises(ConfigError, match="already exists"):
            await h.mux.add_stream({"id": "one", "filter": {"channelType": "chat"}})
        with pytest.raises(ConfigError, match="max_streams is 1"):
            await h.mux.add_stream({"id": "two", "filter": {"channelType": "chat"}})


async def test_streams_over_the_same_conversations_share_one_record_per_conversation() -> None:
    """Two streams over overlapping topics remember each conversation once; each leaves its own."""
    async with harness(org_settings(rate=20.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        await h.mux.add_stream({"id": "calls", "filter": {"channelType": "voice"}})
        seen = Collector(h.mux.events())
        topics = {s.id: h.mux._streams[s.id].topics for s in h.mux.streams()}
        await eventually(lambda: len(seen.events("calls")) >= 10, within=20)
        await h.control("traffic", {"running": False})

        async def drained() -> bool:
            entries = (await h.control("ledger"))["entries"]
            stats = h.mux.stats()["streams"]
            return all(
                stats[sid].received == sum(1 for e in entries if e["topic"] in wanted)
                and not stats[sid].buffered
                for sid, wanted in topics.items()
            )

        await eventually(drained)
        seen.stop()
        memory = h.mux._key_memory
        everything = {e.conversation_id for e in seen.events("all")}
        calls = {e.conversation_id for e in seen.events("calls")}
        assert calls
        assert calls <= everything
        # One record per conversation, whichever streams carry it.
        assert {r.key for r in memory.records()} == everything
        assert len(memory) == h.mux.stats()["memory"]["keys"] == len(everything)
        assert {r.key for r in memory.records() if r.streams.bit_count() == 2} == calls

        await h.mux.remove_stream("all")
        assert {r.key for r in memory.records()} == calls  # what only "all" had is gone
        assert all(r.streams.bit_count() == 1 for r in memory.records())
        await h.mux.remove_stream("calls")
        assert len(memory) == 0
