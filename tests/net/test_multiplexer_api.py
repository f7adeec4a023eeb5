"""The rest of the public surface: removing streams, callbacks, stop and drain, credentials."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from genesys_mux import Gap, Multiplexer, StreamEvent
from genesys_mux.core.events import TopicRejected
from genesys_mux.emulator import Emulator
from genesys_mux.errors import ConfigError, InvalidStateError
from genesys_mux.sinks.dlq import MemoryDeadLetterQueue, read_dead_letters
from tests.net.conftest import eventually
from tests.net.test_multiplexer import FAST_POOL, Collector, harness, org_settings


async def test_remove_stream_unsubscribes_only_what_no_other_stream_needs() -> None:
    async with harness() as h:
        queue = (await h.control("org"))["queues"][0]["id"]
        await h.mux.add_stream(
            {"id": "calls", "filter": {"channelType": "voice", "queueId": queue}}
        )
        await h.mux.add_stream(
            {"id": "also-calls", "filter": {"channelType": "voice", "queueId": queue}}
        )
        await h.mux.add_stream({"id": "chats", "filter": {"channelType": "chat", "queueId": queue}})
        assert h.mux.pool is not None
        (channel_id,) = h.mux.pool.channel_ids().values()

        async def subscribed() -> int:
            """How many topics the channel has (the emulator's JSON count)."""
            channels = await h.control("channels")
            return cast(int, {c["id"]: c for c in channels}[channel_id]["topic_count"])

        assert await subscribed() == 2
        await h.mux.remove_stream("calls")
        assert await subscribed() == 2  # "also-calls" still needs the calls topic
        await h.mux.remove_stream("chats")
        assert await subscribed() == 1
        assert [s.id for s in h.mux.streams()] == ["also-calls"]
        with pytest.raises(ConfigError, match="no stream with id 'calls'"):
            await h.mux.remove_stream("calls")


async def test_a_stream_naming_a_queue_the_org_does_not_have_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The platform may take such a topic and never send on it: said, not left to guess."""
    caplog.set_level(logging.WARNING, logger="genesys_mux")
    async with harness() as h:
        queues = (await h.control("org"))["queues"]
        queue, missing = queues[0]["id"], str(uuid.uuid4())
        await h.mux.add_stream({"id": "known", "filter": {"queueId": queue.upper()}})
        await h.mux.add_stream({"id": "typo", "filter": {"queueId": missing}})

        def checked() -> bool:
            return not any(t.get_name() == "genesys-mux-queue-check" for t in h.mux._tasks)

        await eventually(checked)
        warned = [r.getMessage() for r in caplog.records if "is not one of the org's" in r.message]
        assert warned == [
            f"stream typo names queue {missing}, which is not one of the org's "
            f"{len(queues)} queues (GET /api/v2/routing/queues): nothing will arrive for it "
            "unless it is created; check the queueId in its filter"
        ]
        # A queue created since the list was read is looked for again, not warned of.
        made = await h.control("queues", {"name": "Brand new"})
        await h.mux.add_stream({"id": "new", "filter": {"queueId": made["id"]}})
        await eventually(checked)
        assert len([r for r in caplog.records if "is not one of the org's" in r.message]) == 1

        async def listings() -> int:
            served = (await h.control("requests"))["requests"]
            return sum(r["path"] == "/api/v2/routing/queues" for r in served)

        # A queue on the list read last is not listed for again (a cluster
        # adding many queue streams would spend its request budget on it).
        before = await listings()
        assert before >= 2  # the first check's, and the new queue's
        await h.mux.add_stream({"id": "again", "filter": {"queueId": queue}})
        await eventually(checked)
        assert await listings() == before


async def test_callbacks_receive_events_and_gaps() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        events: list[StreamEvent] = []
        gaps: list[Gap] = []

        async def on_gap(gap: Gap) -> None:
            gaps.append(gap)

        h.mux.on_event(events.append)
        h.mux.on_gap(on_gap)
        await eventually(lambda: len(events) >= 5)
        await h.control("faults", {"fault": "drop_socket"})
        await eventually(lambda: len(gaps) == 1)
        assert gaps[0].stream_id == "all"
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_stop_with_drain_hands_over_what_is_buffered() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        await eventually(lambda: h.mux.stats()["streams"]["all"].buffered >= 10)
        seen = Collector(h.mux.stream("all"))
        await h.mux.stop(drain=True, timeout_s=5)
        delivered = h.mux.stats()["streams"]["all"].delivered
        assert len(seen.events()) == delivered
        assert delivered >= 10
        assert h.dlq.letters == []


async def test_stop_without_drain_dead_letters_the_rest(tmp_path: Path) -> None:
    dlq_path = tmp_path / "dlq.jsonl"
    async with harness(org_settings(), dlq=dlq_path) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        await eventually(lambda: h.mux.stats()["streams"]["all"].buffered >= 10)
        await h.mux.stop(drain=False)
        letters = list(read_dead_letters(dlq_path))
        # Nobody read anything: every accepted event is in the file, in order.
        assert h.mux.stats()["streams"]["all"].delivered == 0
        assert len(letters) >= 10
        assert {d.reason for d in letters} == {"stopped"}
        assert [d.sequence for d in letters] == list(range(1, len(letters) + 1))


async def test_credentials_and_region_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_ID", "demo-client")
    monkeypatch.setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "demo-secret")
    async with harness() as h:
        mux = Multiplexer(base_url=h.emulator.base_url, pool_settings=FAST_POOL, dlq=h.dlq)
        async with mux:
            await mux.add_stream({"id": "all", "filter": {}})
            assert mux.live
        monkeypatch.setenv("GENESYSCLOUD_REGION", "eu_west_1")
        regional = Multiplexer(dlq=h.dlq)
        assert "api.mypurecloud.ie" in repr(regional)
        assert "demo-secret" not in repr(regional)


def test_missing_credentials_say_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "GENESYSCLOUD_OAUTHCLIENT_ID",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET",
        "GENESYSCLOUD_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="GENESYSCLOUD_OAUTHCLIENT_ID"):
        Multiplexer(region="mypurecloud.com")
    with pytest.raises(ConfigError, match="GENESYSCLOUD_REGION"):
        Multiplexer(client_id="x", client_secret="y")


async def test_events_are_merged_by_priority() -> None:
    async with harness(org_settings(rate=20.0)) as h:
        await h.mux.add_stream({"id": "high", "filter": {}, "priority": 1})
        await h.mux.add_stream({"id": "low", "filter": {}, "priority": 5})
        # Let both buffers fill, then read a burst: the high stream gets
        # sixteen turns for each of the low stream's, but the low one is served.
        await eventually(
            lambda: all(s.buffered >= 40 for s in h.mux.stats()["streams"].values()), within=20
        )
        await h.control("traffic", {"running": False})
        taken: list[str] = []
        async for item in h.mux.events():
            if isinstance(item, StreamEvent):
                taken.append(item.stream_id)
            if len(taken) == 34:
                break
        assert taken.count("low") == 2
        assert taken.count("high") == 32
        await asyncio.sleep(0)


async def test_the_library_writes_no_file_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dead letters stay in memory by default, readable through the API."""
    monkeypatch.chdir(tmp_path)
    async with (
        Emulator(org_settings(rate=20.0)) as emulator,
        Multiplexer(
            client_id="demo-client",
            client_secret="demo-secret",
            base_url=emulator.base_url,
            pool_settings=FAST_POOL,
        ) as mux,
    ):
        await mux.add_stream({"id": "small", "filter": {}, "buffer_size": 2})
        # Nobody reads: the buffer overflows into the dead-letter queue.
        await eventually(lambda: mux.stats()["streams"]["small"].dead_lettered >= 5)
        counted = mux.stats()["streams"]["small"].dead_lettered
        assert len(mux.dead_letters) >= 5
        assert mux.stats()["dlq"] == {"held": len(mux.dead_letters), "dropped": 0}
        assert {d.stream_id for d in mux.dead_letters} == {"small"}
        assert counted >= 5
    assert os.listdir(tmp_path) == []


async def test_stop_reads_what_the_sockets_still_hold() -> None:
    """Frames already sent when stop() is called are delivered or dead-lettered, never lost.

    A blast fills the socket as fast as it drains; stop() comes in the middle
    of it. Every frame the emulator's ledger says it wrote to our channel
    must have reached the stream (and then the consumer or the dead-letter
    queue), or be inside a final gap.
    """
    topic = f"v2.users.{uuid.uuid4()}.conversations"
    dlq = MemoryDeadLetterQueue()
    async with Emulator(org_settings(rate=0.0)) as emulator:
        mux = Multiplexer(
            client_id="demo-client",
            client_secret="demo-secret",
            base_url=emulator.base_url,
            pool_settings=FAST_POOL,
            dlq=dlq,
        )
        await mux.start()
        await mux.add_stream({"id": "b", "topics": [topic], "buffer_size": 1_000_000})
        async with aiohttp.ClientSession() as session:
            control = f"{emulator.base_url}/__emulator__"
            blast = {"blast": {"topic": topic, "rate": 0, "count": 300_000}}
            async with session.post(f"{control}/traffic", json=blast) as resp:
                assert resp.status == 200
            await eventually(lambda: mux.stats()["streams"]["b"].received >= 3000)
            await mux.stop(drain=False)
            async with session.post(f"{control}/traffic", json={"blast": {"stop": True}}):
                pass
            async with session.get(f"{control}/ledger") as resp:
                entries = (await resp.json())["entries"]
    sent = sum(1 for e in entries if e["topic"] == topic and not e["duplicate"])
    stats = mux.stats()["streams"]["b"]
    assert sent >= 3000
    assert sent < 300_000, "the stop came after the blast had ended: nothing was in flight"
    assert stats.received == sent, "frames sent before the stop were neither read nor reported"
    assert stats.delivered + stats.dead_lettered == stats.received
    assert len(dlq.letters) == stats.dead_lettered


async def test_frames_that_follow_the_drain_pong_are_delivered() -> None:
    """The pong of a drain does not promise every earlier notification came before it.

    Under the emulator's ``delay`` fault, notifications reach the socket a
    second late while the pong goes at once. Everything the platform writes
    before its close frame must still be read and delivered: a client that
    closes at the pong (aiohttp discards frames during its close handshake)
    loses them with no gap.
    """
    topic = f"v2.users.{uuid.uuid4()}.conversations"
    async with Emulator(org_settings(rate=0.0)) as emulator:
        mux = Multiplexer(
            client_id="demo-client",
            client_secret="demo-secret",
            base_url=emulator.base_url,
            pool_settings=FAST_POOL,
            dlq=MemoryDeadLetterQueue(),
        )
        await mux.start()
        await mux.add_stream({"id": "late", "topics": [topic]})
        seen = Collector(mux.stream("late"))
        assert mux.pool is not None
        (slot,) = mux.pool.stats().values()
        async with aiohttp.ClientSession() as session:
            control = f"{emulator.base_url}/__emulator__"

            async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
                async with session.post(f"{control}/{path}", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    result: dict[str, Any] = await resp.json()
                    return result

            await post("faults", {"fault": "delay", "delay_s": 1.0})
            await post("traffic", {"blast": {"topic": topic, "rate": 0, "count": 40}})
            blasting = True
            while blasting:
                blasting = (await post("traffic", {}))["blasting"]
            await mux.stop(drain=True, timeout_s=5.0)
            async with session.get(f"{control}/ledger") as resp:
                entries = (await resp.json())["entries"]
        await eventually(lambda: seen._task.done())
    sent = [e for e in entries if e["topic"] == topic]
    assert len(sent) == 40, "the emulator wrote fewer frames than it was sent"
    assert seen.gaps() == []
    assert len(seen.events()) == 40
    assert slot.after_drain == 40


async def test_a_socket_that_cannot_be_drained_at_stop_leaves_a_final_gap() -> None:
    async with harness(org_settings(rate=10.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 3)
        # A half-open link answers no ping: what it held cannot be read.
        await h.control("faults", {"fault": "pause_heartbeats"})
        silenced = time.time()
        await h.mux.stop(drain=True, timeout_s=5.0)
        await eventually(lambda: seen._task.done())
        (gap,) = seen.gaps()
        assert gap.reason == "stopped"
        assert gap.start <= silenced <= gap.end


async def test_stop_is_bounded_when_the_platform_does_not_answer_the_unsubscribe() -> None:
    async with harness(org_settings(rate=10.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 3)
        await h.control(
            "faults",
            {"fault": "http_5xx", "path": "/subscriptions", "method": "DELETE", "count": 1000},
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(h.mux.stop(drain=True, timeout_s=1.0), 10)
        # pong_timeout (0.5 s) bounds the unsubscribe; the ping, the pong and
        # the close handshake then go as usual.
        assert loop.time() - started < 4.0
        await eventually(lambda: seen._task.done())
        # Still subscribed, but read to the platform's close frame: nothing
        # it sent was left unread, so there is no final gap.
        assert seen.gaps() == []


async def test_a_stop_while_still_reconnecting_reports_the_open_window() -> None:
    async with harness(org_settings(rate=10.0)) as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        seen = Collector(h.mux.stream("all"))
        await eventually(lambda: len(seen.events()) >= 3)
        # The channel goes, and no new one can be had: the slot keeps retrying.
        await h.control(
            "faults",
            {"fault": "http_5xx", "path": "/notifications/channels", "count": 1000},
        )
        await h.control("faults", {"fault": "expire_channel"})
        assert h.mux.pool is not None
        pool = h.mux.pool
        await eventually(lambda: pool.stats()[0].state in ("reconnecting", "connecting"))
        await h.mux.stop(drain=True, timeout_s=2.0)
        await eventually(lambda: seen._task.done())
        (gap,) = seen.gaps()
        assert gap.reason == "stopped"
        assert gap.duration_s > 0


async def test_calls_before_start_say_what_to_do() -> None:
    mux = Multiplexer(client_id="x", client_secret="y", base_url="http://127.0.0.1:9")
    gap = Gap("s", 1.0, 2.0, frozenset({"v2.users.u.conversations"}), "streaming-0-x", "reconnect")
    with pytest.raises(InvalidStateError, match=r"await mux.start\(\)"):
        await mux.add_stream({"id": "all", "filter": {}})
    with pytest.raises(InvalidStateError, match="not started"):
        await mux.backfill(gap)
    assert mux.streams() == []


@pytest.mark.parametrize(
    "typo",
    [
        f"v2.detail.events.conversation.{uuid.UUID(int=5)}.acdStart",
        f"v2.users.{uuid.UUID(int=6)}.mood",  # of the platform's shape, not one it has
    ],
)
async def test_a_raw_topic_the_platform_does_not_have_is_reported_and_the_stream_flows(
    typo: str,
) -> None:
    """A mistyped detail-event name is in the grammar, so only the platform can refuse it.

    So is a topic of no family genesys-mux knows: the platform has more
    than those, and only it can say which.
    """
    async with harness() as h:
        reported: list[object] = []
        h.mux.on_control.append(reported.append)
        queue = (await h.control("org"))["queues"][0]["id"]
        config = {
            "id": "calls",
            "filter": {"channelType": "voice", "queueId": queue},
            "topics": [typo],
        }
        rejected = await asyncio.wait_for(h.mux.add_stream(config), 20)
        assert [r.topic for r in rejected] == [typo]
        (event,) = [e for e in reported if isinstance(e, TopicRejected)]
        assert event.topic == typo
        assert event.streams == ("calls",)
        seen = Collector(h.mux.stream("calls"))
        await eventually(lambda: len(seen.events()) >= 1)


async def test_a_stream_added_again_numbers_on_and_ignores_the_earlier_readers_acks() -> None:
    """The stream went away and came back in the same run: its (epoch, sequence) never repeat.

    It used to number from 1 again under the same epoch: a consumer that
    keeps the last sequence it had (or the dead-letter queue, which names
    an event by them) took the new events for the old. Added back with
    another filter, it numbers on too. An acknowledgement from the earlier
    reader, written late, is still not for it.
    """
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        old_reader, old_settle = h.mux.stream("all", settle=False), h.mux.settler("all")
        taken = [await anext(old_reader) for _ in range(5)]
        numbered = h.mux._streams["all"].stream.next_sequence

        await h.mux.remove_stream("all")
        await h.mux.add_stream({"id": "all", "filter": {}})
        new_reader = h.mux.stream("all", settle=False)
        mine = [await anext(new_reader) for _ in range(3)]
        first = next(i.sequence for i in mine if isinstance(i, StreamEvent))
        assert first == numbered
        assert {i.epoch for i in taken + mine if isinstance(i, StreamEvent)} == {h.mux.epoch}
        state = h.mux._streams["all"].stream
        held = h.mux.watermark("all")
        assert state.unacknowledged == 3

        old_settle(first + 10)  # the earlier runner's ack, however late and whatever it says
        assert state.unacknowledged == 3
        assert h.mux.watermark("all") == held
        h.mux.settler("all")(first + 2)  # this activation's own acknowledgement
        assert state.unacknowledged == 0

        # Back with another filter: a new memory, the numbering goes on all the same.
        again = state.next_sequence
        await h.mux.remove_stream("all")
        await h.mux.add_stream({"id": "all", "filter": {"channelType": "voice"}})
        async for item in h.mux.stream("all"):
            if isinstance(item, StreamEvent):
                break
        assert isinstance(item, StreamEvent)
        assert item.sequence >= again
        with pytest.raises(ConfigError, match="no stream with id 'gone'"):
            h.mux.settler("gone")


async def test_an_add_cancelled_after_it_numbered_events_is_retried_numbering_on() -> None:
    """Cancelled while it subscribes (a deadline around add_stream), the stream already
    numbered events on topics it shares with a running stream, and a merged reader had them."""
    async with harness() as h:
        await h.mux.add_stream({"id": "a", "filter": {}})
        seen = Collector(h.mux.events())
        await eventually(lambda: len(seen.events("a")) >= 3)
        # Its own new topic waits on a PUT answered 429: the add waits with it.
        await h.control(
            "faults",
            {"fault": "http_429", "method": "PUT", "path": "subscriptions", "count": 1000},
        )
        extra = f"v2.users.{uuid.uuid4()}.conversations"
        add = asyncio.create_task(h.mux.add_stream({"id": "b", "filter": {}, "topics": [extra]}))
        try:
            await eventually(lambda: len(seen.events("b")) >= 3)
        finally:
            add.cancel()
        await asyncio.gather(add, return_exceptions=True)
        first = [e.sequence for e in seen.events("b")]
        h.emulator.http_faults.clear()
        await h.mux.add_stream({"id": "b", "filter": {}})
        await eventually(lambda: len(seen.events("b")) >= len(first) + 3)
        again = [e.sequence for e in seen.events("b")[len(first) :]]
        seen.stop()
    assert min(again) > max(first), (first, again)


async def test_a_reader_is_bound_to_the_stream_it_was_made_for() -> None:
    """Made, then the stream removed and added again before it was read: it reads nothing.

    Bound only when first read, it would take the new stream's items from
    under the reader made for that one (as a sink runner whose sinks were
    slow to start would, after its lease was lost and won back).
    """
    async with harness() as h:
        await h.mux.add_stream({"id": "all", "filter": {}})
        early = h.mux.stream("all", settle=False)
        await h.mux.remove_stream("all")
        await h.mux.add_stream({"id": "all", "filter": {}})
        late = Collector(h.mux.stream("all"))
        await eventually(lambda: len(late.events()) >= 3)
        leftovers = await asyncio.wait_for(alist(early), 5)
        assert leftovers == []
        with pytest.raises(ConfigError, match="no stream with id 'nope'"):
            h.mux.stream("nope")  # at once, not at the first read


async def alist(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]
