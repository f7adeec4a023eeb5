"""The notification socket, frame by frame, against a real in-process emulator.

Every test talks to the emulator over real HTTP and WebSocket connections with
plain aiohttp (through :mod:`tests.emulator.genesys`), never through
genesys_mux's client code, and asserts only what a third-party client can
observe: frames, close codes, REST answers and the emulator's ledger.

Synchronisation is by frames, never by fixed sleeps. The emulator writes each
socket from one queue, so the pong for a ping is sent after every frame that
was queued before the ping arrived: "ping, then read until the pong"
(:func:`sync`) drains a socket up to a known point. Waiting for the *absence*
of something (paused heartbeats, stopped traffic) reads heartbeats or times
out a bounded :func:`asyncio.wait_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from genesys_mux.emulator import Emulator, PlatformLimits
from genesys_mux.emulator.sockets import envelope, rewritten
from tests.emulator.conftest import small_settings
from tests.emulator.genesys import DEADLINE_S, GenesysClient, is_heartbeat, is_notification

#: small_settings()'s heartbeat interval.
HEARTBEAT_S = 0.2
#: Queue conversation media suffixes the simulated org publishes.
MEDIA = ("calls", "chats", "emails", "messages", "callbacks")
#: A topic nothing but the blast publishes on.
BLAST_TOPIC = "v2.routing.queues.blast-queue.conversations"
_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)

Key = tuple[str, str]  # (topicName, CorrelationId)


# -- helpers ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def emulated(
    session: aiohttp.ClientSession, **overrides: object
) -> AsyncIterator[tuple[Emulator, GenesysClient]]:
    """An emulator with small_settings(**overrides) and a logged-in client."""
    async with Emulator(small_settings(**overrides)) as emu:
        api = GenesysClient(session, emu.base_url)
        await api.login("demo-client", "demo-secret")
        yield emu, api


@contextlib.asynccontextmanager
async def socket(
    api: GenesysClient, connect_uri: str
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """An open socket the emulator has registered (a ping got its pong)."""
    async with api.session.ws_connect(connect_uri, autoping=True) as ws:
        await sync(ws)
        yield ws


async def receive(ws: aiohttp.ClientWebSocketResponse, deadline: float) -> aiohttp.WSMessage:
    """The next message, failing the test once the loop clock passes ``deadline``."""
    remaining = deadline - asyncio.get_running_loop().time()
    return await asyncio.wait_for(ws.receive(), max(0.01, remaining))


def deadline_in(seconds: float = DEADLINE_S) -> float:
    return asyncio.get_running_loop().time() + seconds


async def read(ws: aiohttp.ClientWebSocketResponse, deadline: float) -> Any:
    """The next text frame, decoded; a close or the deadline fails the test."""
    msg = await receive(ws, deadline)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type} {msg.data!r}"
    return json.loads(msg.data)


async def read_until(
    ws: aiohttp.ClientWebSocketResponse,
    predicate: Callable[[Any], bool],
    within: float = DEADLINE_S,
) -> tuple[list[Any], Any]:
    """The frames before the first one matching ``predicate``, and that one."""
    deadline = deadline_in(within)
    before: list[Any] = []
    while True:
        frame = await read(ws, deadline)
        if predicate(frame):
            return before, frame
        before.append(frame)


def is_pong(frame: Any) -> bool:
    return (
        isinstance(frame, dict)
        and frame.get("topicName") == "channel.metadata"
        and frame["eventBody"].get("message") == "pong"
    )


async def sync(ws: aiohttp.ClientWebSocketResponse, within: float = DEADLINE_S) -> list[Any]:
    """Ping, and return every frame that arrives before the pong."""
    return [json.loads(text) for text in await sync_raw(ws, within)]


async def sync_raw(ws: aiohttp.ClientWebSocketResponse, within: float = DEADLINE_S) -> list[str]:
    """Ping, and return the text of every frame that arrives before the pong."""
    await ws.send_str('{"message":"ping"}')
    deadline = deadline_in(within)
    before: list[str] = []
    while True:
        msg = await receive(ws, deadline)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type}"
        if is_pong(json.loads(msg.data)):
            return before
        before.append(msg.data)


async def until_closed(
    ws: aiohttp.ClientWebSocketResponse, within: float = DEADLINE_S
) -> tuple[list[Any], aiohttp.WSMessage]:
    """The text frames before the socket ends, and the message that ended it."""
    deadline = deadline_in(within)
    frames: list[Any] = []
    while True:
        msg = await receive(ws, deadline)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return frames, msg
        frames.append(json.loads(msg.data))


async def heartbeats_only(ws: aiohttp.ClientWebSocketResponse, count: int) -> None:
    """Read ``count`` heartbeats and fail on anything else in between."""
    deadline = deadline_in(count * HEARTBEAT_S + DEADLINE_S)
    for _ in range(count):
        frame = await read(ws, deadline)
        assert is_heartbeat(frame), frame


async def heartbeats_only_or_notifications(ws: aiohttp.ClientWebSocketResponse, count: int) -> None:
    """Read until ``count`` heartbeats have arrived, whatever else comes."""
    deadline = deadline_in(count * HEARTBEAT_S + DEADLINE_S)
    seen = 0
    while seen < count:
        if is_heartbeat(await read(ws, deadline)):
            seen += 1


async def until_silent(
    ws: aiohttp.ClientWebSocketResponse, silence: float
) -> list[aiohttp.WSMessage]:
    """Read until nothing arrives for ``silence`` seconds; fail if that never happens."""
    deadline = deadline_in()
    got: list[aiohttp.WSMessage] = []
    while True:
        try:
            got.append(await asyncio.wait_for(ws.receive(), silence))
        except TimeoutError:
            return got
        assert asyncio.get_running_loop().time() < deadline, "the socket never fell silent"


async def notifications(
    ws: aiohttp.ClientWebSocketResponse, count: int, within: float = DEADLINE_S
) -> list[Any]:
    """Read until ``count`` notifications have arrived; return them."""
    deadline = deadline_in(within)
    found: list[Any] = []
    while len(found) < count:
        frame = await read(ws, deadline)
        if is_notification(frame):
            found.append(frame)
    return found


async def raw_notifications(
    ws: aiohttp.ClientWebSocketResponse, count: int, within: float = DEADLINE_S
) -> list[str]:
    """Read until ``count`` notifications have arrived; return their text as sent."""
    deadline = deadline_in(within)
    found: list[str] = []
    while len(found) < count:
        msg = await receive(ws, deadline)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type}"
        if is_notification(json.loads(msg.data)):
            found.append(msg.data)
    return found


def key(frame: Any) -> Key:
    return frame["topicName"], frame["metadata"]["CorrelationId"]


def keys(frames: list[Any]) -> list[Key]:
    return [key(f) for f in frames if is_notification(f)]


async def ledger(api: GenesysClient, channel_id: str, since: int = 0) -> list[dict[str, Any]]:
    data = await api.control(f"ledger?channel_id={channel_id}&since={since}")
    return data["entries"]  # type: ignore[no-any-return]


def ledger_keys(entries: list[dict[str, Any]]) -> list[Key]:
    return [(e["topic"], e["correlation_id"]) for e in entries]


async def fault(api: GenesysClient, name: str, **params: Any) -> list[str]:
    data = await api.control("faults", {"fault": name, **params})
    assert data["fault"] == name
    return data["applied"]  # type: ignore[no-any-return]


async def traffic(api: GenesysClient, **body: Any) -> dict[str, Any]:
    return await api.control("traffic", body)  # type: ignore[no-any-return]


async def queue_topics(api: GenesysClient) -> list[str]:
    org = await api.control("org")
    return [f"v2.routing.queues.{q['id']}.conversations" for q in org["queues"]]


async def subscribed_channel(api: GenesysClient, topics: list[str]) -> dict[str, Any]:
    channel = await api.create_channel()
    status, body, _ = await api.subscribe(channel["id"], topics)
    assert status == 200, body
    return channel


async def topics_of(api: GenesysClient, channel_id: str) -> list[str]:
    status, body, _ = await api.call(
        "GET", f"/api/v2/notifications/channels/{channel_id}/subscriptions"
    )
    assert status == 200, body
    return [e["id"] for e in body["entities"]]


async def head(api: GenesysClient, channel_id: str) -> int:
    status, _, _ = await api.call("HEAD", f"/api/v2/notifications/channels/{channel_id}")
    return status


def assert_dead_channel_frame(frame: Any) -> None:
    assert frame.keys() == {"result", "message"}, frame
    assert frame["result"] == "404"
    assert isinstance(frame["message"], str)
    assert frame["message"]


async def conversations_between(api: GenesysClient, start: float, end: float) -> list[Any]:
    found: list[Any] = []
    page = 1
    while True:
        status, body, _ = await api.call(
            "POST",
            "/api/v2/analytics/conversations/details/query",
            {
                "interval": f"{iso(start)}/{iso(end)}",
                "paging": {"pageSize": 100, "pageNumber": page},
            },
        )
        assert status == 200, body
        found += body.get("conversations", [])
        if len(found) >= body["totalHits"]:
            return found
        page += 1


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def from_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# -- heartbeats, ping, unknown text ---------------------------------------------


async def test_heartbeats_arrive_about_every_interval(client: GenesysClient) -> None:
    channel = await client.create_channel()
    async with socket(client, channel["connectUri"]) as ws:
        loop = asyncio.get_running_loop()
        started = loop.time()
        count = 6
        await heartbeats_only(ws, count)
        elapsed = loop.time() - started
        # About every interval: not a burst, and not much slower.
        assert count * HEARTBEAT_S * 0.6 <= elapsed <= count * HEARTBEAT_S + 2.0


async def test_ping_gets_pong(client: GenesysClient) -> None:
    channel = await client.create_channel()
    async with socket(client, channel["connectUri"]) as ws:
        for _ in range(3):
            await ws.send_str('{"message":"ping"}')
            before, pong = await read_until(ws, is_pong)
            assert pong == {"topicName": "channel.metadata", "eventBody": {"message": "pong"}}
            assert all(is_heartbeat(f) for f in before)


async def test_unknown_client_text_is_tolerated(client: GenesysClient) -> None:
    channel = await client.create_channel()
    async with socket(client, channel["connectUri"]) as ws:
        for text in ("hello", '{"foo":1}', "[1,2]", '{"message":"bogus"}', "null", '"ping"'):
            await ws.send_str(text)
        before = await sync(ws)
        assert all(is_heartbeat(f) for f in before), before
        assert not ws.closed
        assert await head(client, channel["id"]) == 200


# -- subscribe / unsubscribe over the socket -------------------------------------


def ack_for(correlation_id: str) -> Callable[[Any], bool]:
    return lambda f: isinstance(f, dict) and f.get("correlationId") == correlation_id


async def test_socket_subscribe_acks_and_starts_notifications(client: GenesysClient) -> None:
    topic = (await queue_topics(client))[0]
    org = await client.control("org")
    user = org["users"][0]["id"]
    channel = await client.create_channel()
    async with socket(client, channel["connectUri"]) as ws:
        await ws.send_json({"message": "subscribe", "topics": [topic], "correlationId": "c1"})
        _, ack = await read_until(ws, ack_for("c1"))
        assert ack == {"correlationId": "c1", "result": "200", "status": "subscribed"}
        assert await topics_of(client, channel["id"]) == [topic]

        note = await read_until(ws, is_notification)
        assert note[1]["topicName"] == topic

        # A combined topic subscribes its parts.
        combined = f"v2.users.{user}?presence&routingStatus"
        await ws.send_json({"message": "subscribe", "topics": [combined], "correlationId": "c2"})
        _, ack = await read_until(ws, ack_for("c2"))
        assert ack == {"correlationId": "c2", "result": "200", "status": "subscribed"}
        assert await topics_of(client, channel["id"]) == [
            topic,
            f"v2.users.{user}.presence",
            f"v2.users.{user}.routingStatus",
        ]


async def test_socket_subscribe_invalid_topic_gets_error_ack(client: GenesysClient) -> None:
    good = (await queue_topics(client))[0]
    channel = await client.create_channel()
    async with socket(client, channel["connectUri"]) as ws:
        for n, topics in enumerate(
            (
                ["v2.no.such.topic"],
                [good, "v2.routing.queues.x.nonsense"],
                ["v2.system.socket_closing"],
            )
        ):
            cid = f"bad{n}"
            await ws.send_json({"message": "subscribe", "topics": topics, "correlationId": cid})
            _, ack = await read_until(ws, ack_for(cid))
            assert ack.keys() == {"correlationId", "topics", "result", "status", "message"}, ack
            assert ack["result"] == "400"
            assert ack["status"] == "error"
            assert ack["topics"] == []
            assert isinstance(ack["message"], str)
            assert ack["message"]
        # One bad topic fails the whole request: the good one was not added.
        assert await topics_of(client, channel["id"]) == []
        await sync(ws)  # and the socket is still fine


async def test_socket_subscriptions_count_against_the_rate_limit(
    session: aiohttp.ClientSession,
) -> None:
    """Charged to the channel's token like REST calls; over budget the ack says 429."""
    async with Emulator(small_settings(limits=PlatformLimits(requests_per_minute=3))) as emu:
        api = GenesysClient(session, emu.base_url)
        await api.login("demo-client", "demo-secret")
        channel = await api.create_channel()  # the first of the token's 3
        topics = [f"v2.users.{uuid.UUID(int=n)}.presence" for n in range(1, 4)]
        async with socket(api, channel["connectUri"]) as ws:
            results = []
            for n, topic in enumerate(topics):
                cid = f"sub{n}"
                message = {"message": "subscribe", "topics": [topic], "correlationId": cid}
                await ws.send_json(message)
                _, ack = await read_until(ws, ack_for(cid))
                results.append(ack["result"])
            assert results == ["200", "200", "429"]
        path = f"/api/v2/notifications/channels/{channel['id']}/subscriptions"
        status, body, _ = await api.call("GET", path)
        assert status == 429, body


async def test_socket_unsubscribe_acks_and_removes_topic(client: GenesysClient) -> None:
    first, second = (await queue_topics(client))[:2]
    channel = await subscribed_channel(client, [first, second])
    async with socket(client, channel["connectUri"]) as ws:
        await ws.send_json({"message": "unsubscribe", "topics": [first], "correlationId": "c3"})
        _, ack = await read_until(ws, ack_for("c3"))
        assert ack == {"correlationId": "c3", "result": "200", "status": "unsubscribed"}
        assert await topics_of(client, channel["id"]) == [second]
        # Nothing more on the removed topic; the other one still flows.
        frames, _ = await read_until(ws, lambda f: is_notification(f) and f["topicName"] == second)
        assert first not in {f.get("topicName") for f in frames}
        await ws.send_json({"message": "unsubscribe", "topics": ["garbage"], "correlationId": "c4"})
        frames, ack = await read_until(ws, ack_for("c4"))
        assert ack["result"] == "400"
        assert ack["status"] == "error"
        assert first not in {f.get("topicName") for f in frames}


# -- dead channels: {"result":"404"} then a close -----------------------------------


async def test_unknown_channel_gets_404_then_close(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    # There is no connectUri for a channel that never existed, so build one
    # the way the emulator's own connectUris look.
    uri = emulator.base_url.replace("http", "ws", 1) + "/channels/streaming-0-" + "a" * 26
    async with session.ws_connect(uri) as ws:
        frames, end = await until_closed(ws)
        assert len(frames) == 1
        assert_dead_channel_frame(frames[0])
        assert end.type in _CLOSED


@pytest.mark.parametrize("name", ["expire_channel", "evict_channel"])
async def test_killed_channel_gets_404_then_close(client: GenesysClient, name: str) -> None:
    channel = await client.create_channel()
    other = await client.create_channel()
    async with (
        socket(client, channel["connectUri"]) as ws,
        socket(client, other["connectUri"]) as bystander,
    ):
        assert await fault(client, name, channel_id=channel["id"]) == [channel["id"]]
        frames, end = await until_closed(ws)
        assert all(is_heartbeat(f) for f in frames[:-1])
        assert_dead_channel_frame(frames[-1])
        assert end.type in _CLOSED
        assert await head(client, channel["id"]) == 404
        listed = {c["id"] for c in await client.control("channels")}
        assert channel["id"] not in listed
        # A reconnect to the dead channel is refused the same way.
        async with client.session.ws_connect(channel["connectUri"]) as again:
            frames, end = await until_closed(again)
            assert len(frames) == 1
            assert_dead_channel_frame(frames[0])
        # The other channel is untouched.
        await sync(bystander)
        assert await head(client, other["id"]) == 200


async def test_21st_channel_evicts_least_recently_used_open_socket(
    client: GenesysClient,
) -> None:
    channels = [await client.create_channel() for _ in range(20)]
    async with contextlib.AsyncExitStack() as stack:
        # Every channel has a socket, so the oldest connection goes first.
        sockets = [
            await stack.enter_async_context(socket(client, c["connectUri"])) for c in channels
        ]
        newest = await client.create_channel()
        frames, end = await until_closed(sockets[0])
        assert_dead_channel_frame(frames[-1])
        assert end.type in _CLOSED
        assert await head(client, channels[0]["id"]) == 404
        assert await head(client, newest["id"]) == 200
        status, body, _ = await client.call(
            "GET", "/api/v2/notifications/channels", includechannels="oauthclient"
        )
        assert status == 200, body
        assert {c["id"] for c in body["entities"]} == {c["id"] for c in channels[1:]} | {
            newest["id"]
        }
        # The other 19 sockets are still live.
        await asyncio.gather(*(sync(ws) for ws in sockets[1:]))


async def test_channel_dies_with_its_expired_token(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    admin = GenesysClient(session, emulator.base_url)
    await admin.control(
        "clients",
        {"client_id": "short-lived", "client_secret": "s3cret", "token_lifetime_s": 1},
    )
    api = GenesysClient(session, emulator.base_url)
    token = await api.login("short-lived", "s3cret")
    assert token["expires_in"] == 1
    issued = time.time()
    channel = await api.create_channel()
    async with session.ws_connect(channel["connectUri"]) as ws:
        frames, end = await until_closed(ws, within=5.0)
        died = time.time()
        assert all(is_heartbeat(f) for f in frames[:-1])
        assert_dead_channel_frame(frames[-1])
        assert end.type in _CLOSED
        assert died - issued >= 0.8
    status, body, _ = await api.call("GET", "/api/v2/notifications/channels")
    assert status == 401
    assert body["code"] == "credentials.expired"
    await api.login("short-lived", "s3cret")
    assert await head(api, channel["id"]) == 404


# -- one socket per channel ----------------------------------------------------------


async def test_second_socket_drops_the_first(client: GenesysClient) -> None:
    channel = await subscribed_channel(client, await queue_topics(client))
    async with (
        socket(client, channel["connectUri"]) as first,
        socket(client, channel["connectUri"]) as second,
    ):
        _, end = await until_closed(first)
        assert end.type in _CLOSED
        await notifications(second, 3)
        await sync(second)
        listed = {c["id"]: c for c in await client.control("channels")}
        assert listed[channel["id"]]["connected"] is True
        assert await head(client, channel["id"]) == 200


# -- socket faults ------------------------------------------------------------------


async def test_drop_socket_ends_without_close_frame(client: GenesysClient) -> None:
    channel = await client.create_channel()
    async with socket(client, channel["connectUri"]) as ws:
        assert await fault(client, "drop_socket", channel_id=channel["id"]) == [channel["id"]]
        frames, end = await until_closed(ws)
        assert all(is_heartbeat(f) for f in frames)
        # No close frame: the connection just ends.
        assert end.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), end
        assert ws.close_code in (1006, None)
    assert await head(client, channel["id"]) == 200
    async with socket(client, channel["connectUri"]) as again:
        await heartbeats_only(again, 1)
        listed = {c["id"]: c for c in await client.control("channels")}
        assert listed[channel["id"]]["connected"] is True


async def test_socket_closing_warns_then_closes_1001(client: GenesysClient) -> None:
    channel = await client.create_channel()
    delay = 0.5
    async with socket(client, channel["connectUri"]) as ws:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await fault(client, "socket_closing", channel_id=channel["id"], delay_s=delay) == [
            channel["id"]
        ]
        _, warning = await read_until(ws, lambda f: not is_heartbeat(f))
        assert warning["topicName"] == "v2.system.socket_closing"
        body = warning["eventBody"]
        assert {"channelId", "systemTopicType", "reason", "message", "data"} <= body.keys()
        assert body["channelId"] == channel["id"]
        frames, end = await until_closed(ws, within=delay + DEADLINE_S)
        closed = loop.time() - started
        assert all(is_heartbeat(f) for f in frames), frames
        assert end.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1001
        assert delay * 0.8 <= closed <= delay + 3.0
    # The channel survives a maintenance close.
    assert await head(client, channel["id"]) == 200
    async with socket(client, channel["connectUri"]):
        pass


@pytest.mark.parametrize("code", [1000, 1001])
async def test_close_socket_closes_cleanly_without_a_warning(
    client: GenesysClient, code: int
) -> None:
    """The warning is not guaranteed: a clean close may come with no socket_closing first."""
    channel = await client.create_channel()
    cid = channel["id"]
    async with socket(client, channel["connectUri"]) as ws:
        status, body, _ = await client.subscribe(cid, await queue_topics(client))
        assert status == 200, body
        frames = await notifications(ws, 5)
        assert await fault(client, "close_socket", channel_id=cid, code=code) == [cid]
        rest, end = await until_closed(ws)
        frames += rest
        # No warning and no other system frame: notifications and heartbeats, then the close.
        assert all(is_notification(f) or is_heartbeat(f) for f in frames), [
            f for f in frames if not (is_notification(f) or is_heartbeat(f))
        ]
        # A close frame with the code. (Like the emulator's other closes, it
        # then ends the connection without waiting for our reply, so aiohttp
        # may report ws.close_code as 1006 when its reply finds it gone.)
        assert end.type == aiohttp.WSMsgType.CLOSE
        assert end.data == code
        # What was sent before the close frame arrived, and nothing after it.
        assert ledger_keys(await ledger(client, cid)) == keys(frames)
    # The channel survives, subscriptions and all.
    assert await head(client, cid) == 200
    sent = len(await ledger(client, cid))
    async with socket(client, channel["connectUri"]) as again:
        await notifications(again, 1)
        listed = {c["id"]: c for c in await client.control("channels")}
        assert listed[cid]["connected"] is True
    assert len(await ledger(client, cid)) > sent


async def test_close_socket_without_a_channel_closes_every_connected_socket(
    client: GenesysClient,
) -> None:
    first, second, idle = [await client.create_channel() for _ in range(3)]
    async with (
        socket(client, first["connectUri"]) as a,
        socket(client, second["connectUri"]) as b,
    ):
        applied = await fault(client, "close_socket")
        assert set(applied) == {first["id"], second["id"]}
        for ws in (a, b):
            frames, end = await until_closed(ws)
            assert all(is_heartbeat(f) for f in frames), frames
            assert end.type == aiohttp.WSMsgType.CLOSE
            assert end.data == 1000
    assert [await head(client, c["id"]) for c in (first, second, idle)] == [200, 200, 200]


async def test_close_socket_next_closes_the_sockets_that_follow_before_their_first_frame(
    client: GenesysClient,
) -> None:
    channel = await subscribed_channel(client, await queue_topics(client))
    cid = channel["id"]
    async with socket(client, channel["connectUri"]) as ws:
        assert await fault(client, "close_socket", channel_id=cid, code=1001, next=2) == [cid]
        _, end = await until_closed(ws)
        assert end.type == aiohttp.WSMsgType.CLOSE
        assert end.data == 1001
    for _ in range(2):
        # Opened, then closed before anything else: no pong, no heartbeat,
        # no notification, although the channel is subscribed and busy.
        async with client.session.ws_connect(channel["connectUri"]) as again:
            await again.send_str('{"message":"ping"}')
            frames, end = await until_closed(again)
            assert frames == []
            assert end.type == aiohttp.WSMsgType.CLOSE
            assert end.data == 1001
    # The third socket after the fault is left alone.
    async with socket(client, channel["connectUri"]) as ok:
        await notifications(ok, 1)
    assert await head(client, cid) == 200


async def test_close_socket_leaves_a_half_open_socket_alone(client: GenesysClient) -> None:
    channel = await client.create_channel()
    # A dead link never answers our close frame either: give up on it at once.
    async with client.session.ws_connect(
        channel["connectUri"], timeout=aiohttp.ClientWSTimeout(ws_close=0.01)
    ) as ws:
        await sync(ws)
        assert await fault(client, "pause_heartbeats", channel_id=channel["id"]) == [channel["id"]]
        # Nothing travels on a dead link, a close frame no more than the rest.
        assert await fault(client, "close_socket", channel_id=channel["id"]) == []
        assert await fault(client, "close_socket") == []


@pytest.mark.parametrize("extra", [{"next": -1}, {"next": 1.5}, {"next": True}, {"next": 101}])
async def test_close_socket_next_takes_a_small_whole_number(
    client: GenesysClient, extra: dict[str, Any]
) -> None:
    channel = await client.create_channel()
    async with socket(client, channel["connectUri"]) as ws:
        async with client.session.post(
            f"{client.base}/__emulator__/faults",
            json={"fault": "close_socket", "channel_id": channel["id"], **extra},
        ) as resp:
            assert resp.status == 400
            assert "next must be" in await resp.text()
        await sync(ws)


@pytest.mark.parametrize("code", [1006, 4000, 999, "1000", True, None])
async def test_close_socket_takes_only_1000_or_1001(client: GenesysClient, code: Any) -> None:
    channel = await client.create_channel()
    async with socket(client, channel["connectUri"]) as ws:
        async with client.session.post(
            f"{client.base}/__emulator__/faults",
            json={"fault": "close_socket", "channel_id": channel["id"], "code": code},
        ) as resp:
            assert resp.status == 400
            assert "code must be 1000 or 1001" in await resp.text()
        # Nothing happened to the socket.
        await sync(ws)
        await heartbeats_only(ws, 1)


@pytest.mark.parametrize("warn", [True, False], ids=["warned", "silent"])
async def test_revoke_token_warns_then_kills_the_channel(client: GenesysClient, warn: bool) -> None:
    channel = await client.create_channel()
    async with socket(client, channel["connectUri"]) as ws:
        applied = await fault(client, "revoke_token", channel_id=channel["id"], warn=warn)
        assert applied == ["demo-client"]
        frames, end = await until_closed(ws)
        rest = [f for f in frames if not is_heartbeat(f)]
        assert len(rest) == 1 + warn, rest
        if warn:
            revoked = rest[0]
            assert revoked["topicName"] == f"v2.system.token_revoked.{channel['id']}"
            assert revoked["eventBody"]["reason"] == "user_tokens_revoked"
            assert revoked["eventBody"]["channelId"] == channel["id"]
        assert_dead_channel_frame(rest[-1])
        assert end.type in _CLOSED
    status, body, _ = await client.call("GET", "/api/v2/notifications/channels")
    assert status == 401
    assert body["code"] == "bad.credentials"
    await client.login("demo-client", "demo-secret")
    assert await head(client, channel["id"]) == 404


async def test_no_longer_subscribed_clears_subscriptions(client: GenesysClient) -> None:
    channel = await subscribed_channel(client, await queue_topics(client))
    async with socket(client, channel["connectUri"]) as ws:
        await notifications(ws, 1)
        await fault(client, "no_longer_subscribed", channel_id=channel["id"])
        _, notice = await read_until(ws, lambda f: f.get("topicName", "").startswith("v2.system."))
        assert notice["topicName"] == f"v2.system.no_longer_subscribed.{channel['id']}"
        assert notice["eventBody"]["channelId"] == channel["id"]
        assert await topics_of(client, channel["id"]) == []
        sent = len(await ledger(client, channel["id"]))
        assert keys(await sync(ws)) == []
        await heartbeats_only(ws, 3)
        assert len(await ledger(client, channel["id"])) == sent


async def test_subscription_updated_frames_only_when_asked(session: aiohttp.ClientSession) -> None:
    def is_updated(frame: Any) -> bool:
        return isinstance(frame, dict) and frame.get("topicName") == "v2.subscription.updated"

    for asked in (False, True):
        async with emulated(session, traffic=False, subscription_updated_frames=asked) as (_, api):
            channel = await subscribed_channel(api, [BLAST_TOPIC])
            async with socket(api, channel["connectUri"]) as ws:
                status, _, _ = await api.subscribe(channel["id"], [])
                assert status == 200
                updates = [f for f in await sync(ws) if is_updated(f)]
                if not asked:
                    assert updates == []
                    continue
                (update,) = updates
                assert update["eventBody"]["channelId"] == channel["id"]
                assert update["eventBody"]["systemTopicType"] == "subscription_updated"


async def test_exclusive_topics_move_to_the_channel_that_subscribed_last(
    session: aiohttp.ClientSession,
) -> None:
    """``exclusive_topics``: one channel per topic per client, the one displaced told so."""

    def displaced(frame: Any) -> bool:
        return isinstance(frame, dict) and frame.get("topicName", "").startswith(
            "v2.system.no_longer_subscribed."
        )

    other_topic = "v2.routing.queues.other-queue.conversations"
    for exclusive in (False, True):
        async with emulated(session, traffic=False, exclusive_topics=exclusive) as (_, api):
            first = await subscribed_channel(api, [BLAST_TOPIC, other_topic])
            async with socket(api, first["connectUri"]) as ws:
                second = await subscribed_channel(api, [BLAST_TOPIC])
                told = [f for f in await sync(ws) if displaced(f)]
                if not exclusive:
                    assert told == []
                    assert await topics_of(api, first["id"]) == [BLAST_TOPIC, other_topic]
                    continue
                (frame,) = told
                assert frame["topicName"].endswith(first["id"])
                assert frame["eventBody"]["reason"] == "another_channel_subscribed"
                assert await topics_of(api, first["id"]) == [other_topic]
                assert await topics_of(api, second["id"]) == [BLAST_TOPIC]
                # Subscribing it over the socket takes it back the same way.
                await ws.send_str(
                    json.dumps(
                        {"message": "subscribe", "topics": [BLAST_TOPIC], "correlationId": "c1"}
                    )
                )
                await read_until(
                    ws, lambda f: isinstance(f, dict) and f.get("correlationId") == "c1"
                )
                assert await topics_of(api, second["id"]) == []


async def test_pause_heartbeats_leaves_a_silent_open_socket(client: GenesysClient) -> None:
    quiet = await client.create_channel()
    busy = await subscribed_channel(client, await queue_topics(client))
    async with socket(client, quiet["connectUri"]) as ws, socket(client, busy["connectUri"]) as bws:
        await notifications(bws, 1)
        # Just after a heartbeat, so the next one is a whole interval away.
        await heartbeats_only(ws, 1)
        applied = await fault(client, "pause_heartbeats")
        assert set(applied) == {quiet["id"], busy["id"]}
        sent = len(await ledger(client, busy["id"]))
        silence = 4 * HEARTBEAT_S
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.receive(), silence)
        await ws.send_str('{"message":"ping"}')
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.receive(), silence)
        assert not ws.closed
        # The busy channel falls silent too: no more notifications are sent.
        assert len(await ledger(client, busy["id"])) == sent
        in_flight = await until_silent(bws, silence)
        assert all(m.type == aiohttp.WSMsgType.TEXT for m in in_flight)
        assert not bws.closed
        assert len(await ledger(client, busy["id"])) == sent


async def test_garbage_frame_then_the_socket_keeps_working(client: GenesysClient) -> None:
    channel = await client.create_channel()
    async with socket(client, channel["connectUri"]) as ws:
        for params in ({"data": "not json {{"}, {}):
            await fault(client, "garbage_frame", channel_id=channel["id"], **params)
            deadline = deadline_in()
            while True:
                msg = await receive(ws, deadline)
                assert msg.type == aiohttp.WSMsgType.TEXT
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    break
                assert is_heartbeat(frame)
            if params:
                assert msg.data == params["data"]
            await sync(ws)
            await heartbeats_only(ws, 1)


# -- duplicate and reorder ----------------------------------------------------------


async def test_duplicate_fault_sends_every_notification_twice(client: GenesysClient) -> None:
    channel = await client.create_channel()
    cid = channel["id"]
    async with socket(client, channel["connectUri"]) as ws:
        await fault(client, "duplicate", channel_id=cid, probability=1.0)
        status, body, _ = await client.subscribe(cid, await queue_topics(client))
        assert status == 200, body
        raw: list[str] = []
        deadline = deadline_in()
        while len(raw) < 20:
            msg = await receive(ws, deadline)
            if is_notification(json.loads(msg.data)):
                raw.append(msg.data)
        await traffic(client, running=False)
        raw += [r for r in await sync_raw(ws) if is_notification(json.loads(r))]
        received = [key(json.loads(r)) for r in raw]
        assert len(received) % 2 == 0
        for i in range(0, len(raw), 2):
            # Byte for byte the same frame, twice in a row.
            assert raw[i] == raw[i + 1]
        originals = received[::2]
        assert len(set(originals)) == len(originals)
        entries = await ledger(client, cid)
        assert ledger_keys(entries) == received
        assert [e["duplicate"] for e in entries] == [False, True] * (len(entries) // 2)

        # Probability 0 turns it off.
        await fault(client, "duplicate", channel_id=cid, probability=0)
        since = entries[-1]["seq"]
        await traffic(client, running=True)
        later = keys(await notifications(ws, 10))
        await traffic(client, running=False)
        later += keys(await sync(ws))
        assert len(set(later)) == len(later)
        entries = await ledger(client, cid, since)
        assert ledger_keys(entries) == later
        assert not any(e["duplicate"] for e in entries)


async def test_reserialised_duplicates_are_the_same_notification_written_anew(
    client: GenesysClient,
) -> None:
    channel = await client.create_channel()
    cid = channel["id"]
    async with socket(client, channel["connectUri"]) as ws:
        await fault(client, "duplicate", channel_id=cid, probability=1.0, reserialise=True)
        status, body, _ = await client.subscribe(cid, await queue_topics(client))
        assert status == 200, body
        raw: list[str] = []
        deadline = deadline_in()
        while len(raw) < 20:
            msg = await receive(ws, deadline)
            if is_notification(json.loads(msg.data)):
                raw.append(msg.data)
        await traffic(client, running=False)
        raw += [r for r in await sync_raw(ws) if is_notification(json.loads(r))]
        assert len(raw) % 2 == 0
        for original, copy in zip(raw[::2], raw[1::2], strict=True):
            first, second = json.loads(original), json.loads(copy)
            # Another spelling of the same notification, with a correlation id of its own.
            assert original != copy
            assert list(first["eventBody"]) != list(second["eventBody"])
            assert first["eventBody"] == second["eventBody"]
            assert first["topicName"] == second["topicName"]
            assert first["metadata"]["CorrelationId"] != second["metadata"]["CorrelationId"]
        entries = await ledger(client, cid)
        assert [e["duplicate"] for e in entries] == [False, True] * (len(entries) // 2)
        assert [e["correlation_id"] for e in entries] == [
            json.loads(r)["metadata"]["CorrelationId"] for r in raw
        ]


async def test_reserialise_fault_sends_the_same_notifications_in_other_bytes(
    session: aiohttp.ClientSession,
) -> None:
    async with emulated(session, traffic=False) as (_, api):
        topics = await queue_topics(api)
        # Two channels on the same topics: the control one shows each frame
        # as the platform lays it out.
        control = await subscribed_channel(api, topics)
        rewritten = await subscribed_channel(api, topics)
        async with (
            socket(api, control["connectUri"]) as cws,
            socket(api, rewritten["connectUri"]) as rws,
        ):
            assert await fault(api, "reserialise", channel_id=rewritten["id"], probability=1.0) == [
                rewritten["id"]
            ]
            await traffic(api, running=True)
            plain = await raw_notifications(cws, 30)
            await traffic(api, running=False)
            plain += [r for r in await sync_raw(cws) if is_notification(json.loads(r))]
            got = [r for r in await sync_raw(rws) if is_notification(json.loads(r))]
            assert [key(json.loads(r)) for r in got] == [key(json.loads(r)) for r in plain]
            slashes = 0
            spelt: Counter[str] = Counter()
            for original, copy in zip(plain, got, strict=True):
                # The same JSON value, other bytes: keys, whitespace, escapes.
                assert json.loads(copy) == json.loads(original)
                assert copy != original
                assert not copy.startswith('{"topicName":"'), copy[:40]
                assert "/" not in copy.replace("\\/", "")
                slashes += "/" in original
                if not original.isascii():  # names beyond ASCII: escaped, or kept
                    spelt["escaped" if copy.isascii() else "kept"] += 1
            assert slashes, "no frame had a '/' to escape"
            assert spelt["escaped"], spelt
            assert spelt["kept"], spelt
            # Recorded in the ledger as usual: same keys, not duplicates.
            entries = await ledger(api, rewritten["id"])
            assert ledger_keys(entries) == [key(json.loads(r)) for r in got]
            assert not any(e["duplicate"] for e in entries)

            # Probability 0 turns it off: the platform's layout again.
            await fault(api, "reserialise", channel_id=rewritten["id"], probability=0)
            await traffic(api, running=True)
            later = await raw_notifications(cws, 5)
            await traffic(api, running=False)
            later += [r for r in await sync_raw(cws) if is_notification(json.loads(r))]
            got_later = [r for r in await sync_raw(rws) if is_notification(json.loads(r))]
            assert got_later == later


def test_a_rewritten_frame_escapes_non_ascii_and_slashes_and_keeps_its_value() -> None:
    """Every kind of character beyond ASCII, escaped in half the rewrites, kept in the others."""
    frame = envelope(
        "v2.users.u-1.conversations",
        json.dumps(
            {"id": "c-1", "name": "Zoë Ångström 𝄞 中文", "uri": "/api/v2/x", "n": [1, 2.5, None]},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode(),
        "9f1c3a52-8a0e-4b1f-9d0d-2f6b1c7e8a90",
    )
    rng = random.Random(11)
    spellings = set()
    escaped = 0
    for _ in range(40):
        copy = rewritten(frame, rng)
        assert json.loads(copy) == json.loads(frame)
        assert copy != frame
        text = copy.decode()
        if copy.isascii():
            escaped += 1
            assert "\\ud834\\udd1e" in text.lower()  # the G clef, as a surrogate pair
            assert "\\u00eb" in text.lower()
        else:
            assert "Zoë Ångström 𝄞 中文" in text
        assert "/" not in text.replace("\\/", "")
        spellings.add(copy)
    assert 10 <= escaped <= 30, escaped
    assert len(spellings) > 20, "the rewrites hardly vary"


async def test_reorder_fault_delivers_frames_behind_the_next(
    session: aiohttp.ClientSession,
) -> None:
    async with emulated(session, traffic=False) as (_, api):
        topics = await queue_topics(api)
        # Two channels on the same topics: the control one shows the order in
        # which the frames were generated.
        control = await subscribed_channel(api, topics)
        shuffled = await subscribed_channel(api, topics)
        async with (
            socket(api, control["connectUri"]) as cws,
            socket(api, shuffled["connectUri"]) as sws,
        ):
            await fault(api, "reorder", channel_id=shuffled["id"], probability=1.0)
            await traffic(api, running=True)
            generated = keys(await notifications(cws, 20))
            await traffic(api, running=False)
            # Frozen: nothing new is generated, so both sockets drain.
            generated += keys(await sync(cws))
            got = keys(await sync(sws))
            # Held frames go out behind the next one: pairs swap places, and
            # an odd last frame stays held until another one comes.
            assert len(got) == len(generated) - len(generated) % 2
            for i in range(0, len(got), 2):
                assert got[i] == generated[i + 1]
                assert got[i + 1] == generated[i]
            assert got != generated[: len(got)]
            # The ledger records the send order, which is what arrived.
            assert ledger_keys(await ledger(api, shuffled["id"])) == got
            assert ledger_keys(await ledger(api, control["id"])) == generated
            held = generated[len(got) :]

            # Probability 0 turns it off; a held frame goes out behind the next one.
            await fault(api, "reorder", channel_id=shuffled["id"], probability=0)
            await traffic(api, running=True)
            later = keys(await notifications(cws, 10))
            await traffic(api, running=False)
            later += keys(await sync(cws))
            got_later = keys(await sync(sws))
            assert got_later == later[:1] + held + later[1:]


async def blast_all(api: GenesysClient, count: int) -> None:
    """Publish ``count`` notifications on BLAST_TOPIC at once; return when all are out."""
    state = await traffic(api, blast={"topic": BLAST_TOPIC, "rate": 0, "count": count})
    while state["blasting"]:
        state = await traffic(api)


async def close_first(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    """Send our close frame and read until the server's; the frames that came before it."""
    await ws.send_frame((1000).to_bytes(2, "big"), aiohttp.WSMsgType.CLOSE)
    frames, end = await until_closed(ws)
    assert end.type == aiohttp.WSMsgType.CLOSE
    return frames


async def test_delay_fault_lets_a_pong_overtake_notifications_and_a_close_waits_for_them(
    session: aiohttp.ClientSession,
) -> None:
    async with emulated(session, rate=0.0) as (_, api):
        channel = await subscribed_channel(api, [BLAST_TOPIC])
        async with api.session.ws_connect(channel["connectUri"], autoclose=False) as ws:
            await sync(ws)
            await fault(api, "delay", channel_id=channel["id"], delay_s=0.5)
            await blast_all(api, 30)
            # The notifications are on their way, but the pong does not wait.
            assert keys(await sync(ws)) == []
            assert await ledger(api, channel["id"]) == []
            # Closing first: what was sent this way still comes, then the close.
            frames = await close_first(ws)
            assert len([f for f in frames if is_notification(f)]) == 30
            assert len(await ledger(api, channel["id"])) == 30


async def test_a_frame_held_by_the_reorder_fault_goes_out_before_a_close(
    session: aiohttp.ClientSession,
) -> None:
    async with emulated(session, rate=0.0) as (_, api):
        channel = await subscribed_channel(api, [BLAST_TOPIC])
        async with api.session.ws_connect(channel["connectUri"], autoclose=False) as ws:
            await sync(ws)
            await fault(api, "reorder", channel_id=channel["id"], probability=1.0)
            await blast_all(api, 1)
            # One frame, held until another overtakes it: none ever will.
            assert keys(await sync(ws)) == []
            frames = await close_first(ws)
            assert len([f for f in frames if is_notification(f)]) == 1
            assert len(await ledger(api, channel["id"])) == 1


# -- the ledger ---------------------------------------------------------------------


async def test_ledger_equals_what_the_client_received(client: GenesysClient) -> None:
    started = time.time()
    channel = await subscribed_channel(client, await queue_topics(client))
    cid = channel["id"]
    async with socket(client, channel["connectUri"]) as ws:
        received = await notifications(ws, 30)
        await traffic(client, running=False)
        received += [f for f in await sync(ws) if is_notification(f)]
    entries = await ledger(client, cid)
    assert ledger_keys(entries) == keys(received)
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    for entry, frame in zip(entries, received, strict=True):
        assert entry.keys() >= {
            "seq",
            "time",
            "channel_id",
            "topic",
            "correlation_id",
            "conversation_id",
            "duplicate",
        }
        assert entry["channel_id"] == cid
        assert entry["conversation_id"] == frame["eventBody"]["id"]
        assert entry["duplicate"] is False
        assert started <= entry["time"] <= time.time()

    # since= returns the entries after a sequence number, for one channel or all.
    middle = len(entries) // 2
    since = entries[middle]["seq"]
    assert await ledger(client, cid, since) == entries[middle + 1 :]
    everything = await client.control(f"ledger?since={since}")
    assert all(e["seq"] > since for e in everything["entries"])
    assert [e for e in everything["entries"] if e["channel_id"] == cid] == entries[middle + 1 :]
    assert everything["next_seq"] > entries[-1]["seq"]


# -- traffic control ------------------------------------------------------------------


async def test_traffic_stopped_leaves_only_heartbeats(client: GenesysClient) -> None:
    channel = await subscribed_channel(client, await queue_topics(client))
    async with socket(client, channel["connectUri"]) as ws:
        await notifications(ws, 1)
        assert (await traffic(client, running=False))["running"] is False
        await sync(ws)
        sent = len(await ledger(client, channel["id"]))
        await heartbeats_only(ws, 4)
        assert len(await ledger(client, channel["id"])) == sent
        assert (await traffic(client, running=True))["running"] is True
        await notifications(ws, 1)


async def test_traffic_rate_starts_and_stops_new_conversations(
    session: aiohttp.ClientSession,
) -> None:
    async with emulated(session, rate=0.0) as (_, api):
        channel = await subscribed_channel(api, await queue_topics(api))
        async with socket(api, channel["connectUri"]) as ws:
            await heartbeats_only(ws, 3)  # rate 0: no conversations at all
            raised = time.time()
            await traffic(api, rate=20)
            await notifications(ws, 3)
            await traffic(api, rate=0)
            cut = time.time()
            await heartbeats_only_or_notifications(ws, 5)
        found = await conversations_between(api, raised - 1, time.time() + 60)
        starts = [from_iso(c["conversationStart"]) for c in found]
        assert starts, "rate 20 started no conversation"
        # Conversations under way go on; no new one starts after rate 0.
        late = [s for s in starts if s > cut + 0.005]
        assert late == []


async def test_blast_as_fast_as_possible_delivers_exactly_count(
    session: aiohttp.ClientSession,
) -> None:
    async with emulated(session, rate=0.0) as (_, api):
        channel = await subscribed_channel(api, [BLAST_TOPIC])
        async with socket(api, channel["connectUri"]) as ws:
            state = await traffic(
                api, blast={"topic": BLAST_TOPIC, "rate": 0, "count": 2000, "size": 1024}
            )
            assert state["blasting"] is True
            ids: list[str] = []
            deadline = deadline_in()
            while len(ids) < 2000:
                msg = await receive(ws, deadline)
                assert msg.type == aiohttp.WSMsgType.TEXT
                frame = json.loads(msg.data)
                if is_notification(frame):
                    assert frame["topicName"] == BLAST_TOPIC
                    assert len(msg.data) >= 1024
                    ids.append(frame["eventBody"]["id"])
            assert len(set(ids)) == 2000
            assert keys(await sync(ws)) == []  # and not one more
            assert len(await ledger(api, channel["id"])) == 2000


async def test_blast_at_a_fixed_rate_delivers_count_frames(
    session: aiohttp.ClientSession,
) -> None:
    async with emulated(session, rate=0.0) as (_, api):
        channel = await subscribed_channel(api, [BLAST_TOPIC])
        async with socket(api, channel["connectUri"]) as ws:
            loop = asyncio.get_running_loop()
            rate, count = 100, 40
            started = loop.time()
            await traffic(
                api, blast={"topic": BLAST_TOPIC, "rate": rate, "count": count, "size": 256}
            )
            arrivals = []
            for _ in range(count):
                await notifications(ws, 1)
                arrivals.append(loop.time())
            # Spread over about (count - 1) / rate seconds, not one burst.
            assert arrivals[-1] - started >= 0.7 * (count - 1) / rate
            assert arrivals[-1] - started <= (count - 1) / rate + 3.0
            assert keys(await sync(ws)) == []
            assert len(await ledger(api, channel["id"])) == count


async def test_blast_stop(session: aiohttp.ClientSession) -> None:
    async with emulated(session, rate=0.0) as (_, api):
        channel = await subscribed_channel(api, [BLAST_TOPIC])
        async with socket(api, channel["connectUri"]) as ws:
            await traffic(api, blast={"topic": BLAST_TOPIC, "rate": 200})
            await notifications(ws, 10)
            assert (await traffic(api, blast={"stop": True}))["blasting"] is False
            await sync(ws)
            sent = len(await ledger(api, channel["id"]))
            await heartbeats_only(ws, 3)
            assert len(await ledger(api, channel["id"])) == sent


# -- what the simulated org publishes ---------------------------------------------------


async def test_conversation_snapshot_fans_out_to_queue_and_user_topics(
    session: aiohttp.ClientSession,
) -> None:
    async with emulated(session, traffic=False) as (_, api):
        org = await api.control("org")
        queue = org["queues"][0]["id"]
        agents = [u["id"] for u in org["users"] if queue in u["queueIds"]]
        assert agents
        queue_base = f"v2.routing.queues.{queue}.conversations"
        user_bases = {f"v2.users.{a}.conversations": a for a in agents}
        topics = [queue_base, *(f"{queue_base}.{m}" for m in MEDIA)]
        for base in user_bases:
            topics += [base, *(f"{base}.{m}" for m in MEDIA)]
        channel = await subscribed_channel(api, topics)

        def form(topic: str) -> str:
            if topic == queue_base:
                return "queue"
            if topic.startswith(queue_base + "."):
                return "queue media"
            if topic in user_bases:
                return "user"
            return "user media"

        # One change goes out twice, each with a correlation id of its own:
        # the general shape on the plain topics, the media shape on the
        # media ones. Wait for both, each on its queue and a user topic.
        by_correlation: dict[str, dict[str, Any]] = {}
        shapes: dict[str, dict[str, str]] = {}  # conversation -> shape -> correlation
        async with socket(api, channel["connectUri"]) as ws:
            await traffic(api, running=True)
            deadline = deadline_in()
            while True:
                frame = await read(ws, deadline)
                if not is_notification(frame):
                    continue
                assert frame["topicName"] in topics
                correlation = frame["metadata"]["CorrelationId"]
                seen = by_correlation.setdefault(correlation, {})
                seen[frame["topicName"]] = frame["eventBody"]
                if {form(t) for t in seen} in ({"queue", "user"}, {"queue media", "user media"}):
                    shape = "media" if form(frame["topicName"]).endswith("media") else "general"
                    found = shapes.setdefault(frame["eventBody"]["id"], {})
                    found[shape] = correlation
                    if len(found) == 2:
                        break
        general = by_correlation[found["general"]]
        media_shaped = by_correlation[found["media"]]
        for group in (general, media_shaped):
            bodies = list(group.values())
            assert all(b == bodies[0] for b in bodies)
        for topic, body in general.items():
            assert form(topic) in ("queue", "user")
            assert any(p[m] for p in body["participants"] for m in MEDIA)
            if form(topic) == "user":
                assert user_bases[topic] in {p.get("userId") for p in body["participants"]}
        for topic, body in media_shaped.items():
            assert form(topic) in ("queue media", "user media")
            for p in body["participants"]:
                assert "state" in p
                assert not any(m in p for m in MEDIA if m != "messages")
            if form(topic) == "user media":
                user = user_bases[topic.rsplit(".", 1)[0]]
                assert user in {p.get("user", {}).get("id") for p in body["participants"]}


async def test_presence_and_routing_status_notifications(
    session: aiohttp.ClientSession,
) -> None:
    async with emulated(session, agents=100, traffic=False) as (_, api):
        org = await api.control("org")
        users = [u["id"] for u in org["users"]]
        channel = await subscribed_channel(
            api, [f"v2.users.{u}?presence&routingStatus" for u in users]
        )
        assert len(await topics_of(api, channel["id"])) == 2 * len(users)
        found: dict[str, Any] = {}
        async with socket(api, channel["connectUri"]) as ws:
            await traffic(api, running=True)
            deadline = deadline_in(15.0)
            while len(found) < 2:
                frame = await read(ws, deadline)
                if is_notification(frame):
                    kind = frame["topicName"].rsplit(".", 1)[1]
                    assert kind in ("presence", "routingStatus"), frame
                    found.setdefault(kind, frame)
        presence = found["presence"]
        user = presence["topicName"].split(".")[2]
        assert user in users
        body = presence["eventBody"]
        assert {"source", "presenceDefinition", "primary", "message", "modifiedDate"} <= body.keys()
        assert {"id", "systemPresence"} <= body["presenceDefinition"].keys()
        routing = found["routingStatus"]
        user = routing["topicName"].split(".")[2]
        assert routing["eventBody"]["id"] == user
        status = routing["eventBody"]["routingStatus"]
        assert status["status"] in {
            "OFF_QUEUE",
            "IDLE",
            "INTERACTING",
            "NOT_RESPONDING",
            "COMMUNICATING",
        }
        from_iso(status["startTime"])
