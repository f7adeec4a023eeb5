"""The first thing a new user does: token, channel, subscribe, connect, listen.

Done with plain aiohttp against the emulator, as the reference describes the
real platform.
"""

from __future__ import annotations

import re

import aiohttp

from genesys_mux.emulator import Emulator
from tests.emulator.genesys import (
    GenesysClient,
    frame_where,
    is_heartbeat,
    is_notification,
    next_frame,
)


async def test_token_channel_subscribe_connect_and_receive(
    emulator: Emulator, session: aiohttp.ClientSession
) -> None:
    api = GenesysClient(session, emulator.base_url)

    # 1. a token
    token = await api.login("demo-client", "demo-secret")
    assert token["token_type"] == "bearer"
    assert token["expires_in"] > 0

    # 2. a channel, whose connectUri points back at the emulator
    channel = await api.create_channel()
    assert re.fullmatch(r"streaming-0-[a-z0-9]{26}", channel["id"])
    assert (
        channel["connectUri"]
        == emulator.base_url.replace("http", "ws") + f"/channels/{channel['id']}"
    )
    assert channel["expires"].endswith("Z")

    # 3. a queue conversation topic
    org = await api.control("org")
    queue_ids = [q["id"] for q in org["queues"]]
    topics = [f"v2.routing.queues.{q}.conversations" for q in queue_ids]
    status, body, _ = await api.subscribe(channel["id"], topics)
    assert status == 200, body
    assert {e["id"] for e in body["entities"]} == set(topics)
    assert {e["state"] for e in body["entities"]} == {"Permitted"}

    # 4. connect, with no token
    ws = await session.ws_connect(channel["connectUri"])
    try:
        # 5. conversation notifications in the real envelope shape
        note = await frame_where(ws, is_notification)
        assert note["topicName"] in topics
        assert note["version"] == "2"
        assert re.fullmatch(r"[0-9a-f-]{36}", note["metadata"]["CorrelationId"])
        body = note["eventBody"]
        assert {"id", "participants"} <= body.keys()
        purposes = {p["purpose"] for p in body["participants"]}
        assert "customer" in purposes

        # 6. heartbeats
        heartbeat = await frame_where(ws, is_heartbeat)
        assert heartbeat == {
            "topicName": "channel.metadata",
            "eventBody": {"message": "WebSocket Heartbeat"},
        }

        # 7. a pong for a ping
        await ws.send_str('{"message":"ping"}')
        pong = await frame_where(
            ws,
            lambda f: (
                f.get("topicName") == "channel.metadata" and f["eventBody"]["message"] == "pong"
            ),
        )
        assert pong["eventBody"] == {"message": "pong"}
    finally:
        await ws.close()


async def test_first_frame_is_readable_without_subscriptions(client: GenesysClient) -> None:
    """A channel with no topics still carries heartbeats, and only heartbeats."""
    channel = await client.create_channel()
    ws = await client.connect(channel["connectUri"])
    try:
        assert is_heartbeat(await next_frame(ws))
    finally:
        await ws.close()
