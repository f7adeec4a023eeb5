"""A gap the sinks took is settled like an event: it neither holds a stop nor the watermark.

A gap handed to a sink runner used to be done with only once an event
after it was settled. On a quiet stream, or with the stop's final gap,
none comes: the stop then waited out its whole deadline for an
acknowledgement that could not come, and the gap held the watermark (so
the next run's restart gap began at its start) for as long as the stream
stayed quiet.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from genesys_mux import Multiplexer
from genesys_mux.emulator import Emulator
from genesys_mux.sinks.base import Batching
from genesys_mux.sinks.dlq import MemoryDeadLetterQueue
from genesys_mux.sinks.fanout import deliver_stream
from genesys_mux.sinks.jsonl import JsonlSink
from tests.net.test_multiplexer import FAST_POOL, org_settings
from tests.waiting import eventually

#: One stream over the user topic of nobody in the org: no event ever comes.
QUIET = {"id": "quiet", "topics": ["v2.users.0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9.conversations"]}


@pytest.mark.parametrize("groups", [1, 2], ids=["one-runner", "fan-out"])
async def test_a_gap_the_sinks_took_is_settled_and_the_stop_does_not_wait_for_it(
    tmp_path: Path, groups: int
) -> None:
    async with Emulator(org_settings(rate=0.0)) as emulator:
        mux = Multiplexer(
            client_id="demo-client",
            client_secret="demo-secret",
            base_url=emulator.base_url,
            pool_settings=FAST_POOL,
            dlq=MemoryDeadLetterQueue(),
        )
        await mux.start()
        stopped = False
        try:
            await mux.add_stream(QUIET)
            await eventually(lambda: mux.live)
            # Two sinks; batched differently, each gets a runner of its own.
            sinks = [
                (JsonlSink(tmp_path / f"out{i}.jsonl", name=f"out{i}"), Batching(linger_s=0.01 * i))
                for i in range(2)
            ]
            if groups == 1:
                sinks = [(sink, Batching()) for sink, _ in sinks]
            runner = deliver_stream(
                mux.stream("quiet", settle=False), sinks, mux.dead_letter, name="quiet"
            )
            runner.on_settled.append(mux.settler("quiet"))
            runner.on_gap_settled.append(mux.gap_settler("quiet"))
            delivering = asyncio.create_task(runner.run())
            # The connection drops: a reconnect gap, and nothing after it.
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{emulator.base_url}/__emulator__/faults", json={"fault": "drop_socket"}
                ) as resp,
            ):
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["applied"]
            files = [tmp_path / f"out{i}.jsonl" for i in range(2)]

            def written() -> list[list[str]]:
                return [
                    [json.loads(line)["kind"] for line in f.read_text().splitlines()]
                    if f.exists()
                    else []
                    for f in files
                ]

            await eventually(lambda: written() == [["gap"], ["gap"]])
            # Every sink has it: it no longer holds the watermark back.
            await eventually(lambda: mux.watermark("quiet") > 0)
            (gap_line,) = files[0].read_text().splitlines()
            gap_start = json.loads(gap_line)["start"]
            assert mux.watermark("quiet") > gap_start
            # Nor the stop: it returns without waiting out its deadline for consumers.
            async with asyncio.timeout(10):
                await mux.stop(drain=True, timeout_s=60.0)
            stopped = True
            runner.stop()
            async with asyncio.timeout(10):
                await delivering
        finally:
            if not stopped:
                await mux.stop(drain=False)
    assert written() == [["gap"], ["gap"]]
