"""A platform that gives a topic to one channel of a client at a time.

The reference names ``v2.system.no_longer_subscribed`` with the reason
``another_channel_subscribed`` but not when it is sent [?]. If subscribing
a topic on one channel takes it from the client's others, make-before-break
hangs on one thing: the successor's socket must be open when its
subscription lands, or the topics leave the socket delivering them for one
nobody reads yet. This holds the pool to that against a witness: a second
OAuth client subscribed to the same topics, which no channel of ours can
displace, sees every notification published; ours must have too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import pytest

from genesys_mux.emulator import ClientApp
from tests.emulator.genesys import GenesysClient
from tests.net.conftest import eventually, fast_settings
from tests.net.test_pool_recovery import start


async def test_a_rotation_onto_a_slow_socket_loses_nothing_when_topics_move(
    make_stack: Any,
) -> None:
    clients = [ClientApp("demo-client", "demo-secret"), ClientApp("witness", "witness-secret")]
    async with (
        make_stack(fast_settings(exclusive_topics=True, clients=clients, rate=20.0)) as stack,
        aiohttp.ClientSession() as session,
    ):
        topics, old = await start(stack)
        witness = GenesysClient(session, stack.emulator.base_url)
        await witness.login("witness", "witness-secret")
        seen = await witness.create_channel()
        status, body, _ = await witness.subscribe(seen["id"], topics)
        assert status == 200, body
        async with await witness.connect(seen["connectUri"]) as ws:
            await ws.send_str('{"message":"ping"}')
            await ws.receive()  # registered: the ledger now records what it is sent
            began = time.time()
            # The successor's socket opens a second late, while traffic flows.
            await stack.fault("slow_accept", delay_s=1.0)
            await stack.fault("socket_closing", channel_id=old, delay_s=30)
            await eventually(lambda: stack.pool.channel_ids()[0] not in (None, old), within=10)
            new = stack.pool.channel_ids()[0]
            ended = time.time()

            async def sent_since_on_both() -> bool:
                entries = (await stack.control("ledger"))["entries"]
                return {e["channel_id"] for e in entries if e["time"] > ended} >= {new, seen["id"]}

            # Both have been sent what was published after the rotation, so
            # the ledger holds all that was sent them before.
            await eventually(sent_since_on_both, within=5)
            ledger = (await stack.control("ledger"))["entries"]
        published = {
            e["correlation_id"]
            for e in ledger
            if e["channel_id"] == seen["id"] and began <= e["time"] <= ended
        }
        ours = {e["correlation_id"] for e in ledger if e["channel_id"] in (old, new)}
        assert len(published) > 10, "traffic flowed through the rotation"
        assert published <= ours, f"{len(published - ours)} notifications reached no socket of ours"
        assert stack.pool.stats()[0].rotations == 1
        assert list(stack.pool.outages) == []


async def test_topics_taken_by_another_channel_of_the_client_are_taken_back_and_said(
    make_stack: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Another instance or application with our client credentials subscribes our topics.

    Each subscription then takes them from the other. The pool rotates,
    which takes them back, and says what is going on: the reason alone
    ("no longer subscribed") would leave an operator guessing.
    """
    async with (
        make_stack(fast_settings(exclusive_topics=True)) as stack,
        aiohttp.ClientSession() as session,
    ):
        topics, old = await start(stack)
        intruder = GenesysClient(session, stack.emulator.base_url)
        await intruder.login("demo-client", "demo-secret")
        theirs = await intruder.create_channel()
        with caplog.at_level(logging.WARNING, logger="genesys_mux.connection"):
            status, body, _ = await intruder.subscribe(theirs["id"], topics[:1])
            assert status == 200, body
            await eventually(lambda: stack.pool.channel_ids()[0] not in (None, old), within=10)
        (said,) = [
            r.getMessage() for r in caplog.records if "no longer subscribed" in r.getMessage()
        ]
        assert "another_channel_subscribed" in said
        assert "give each its own OAuth client" in said
        assert stack.pool.stats()[0].rotations == 1
        channels = {c["id"]: c for c in await stack.control("channels")}
        assert channels[theirs["id"]]["topic_count"] == 0, "taken back"
