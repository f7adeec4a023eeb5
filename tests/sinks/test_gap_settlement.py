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

from genesys_mux.emulator import Emulator
from genesys_mux.sinks.base import Batching
from genesys_mux.sinks.fanout import deliver_stream
from genesys_mux.sinks.jsonl import JsonlSink
from genesys_mux.sinks.webhook import WebhookSink
from tests.net.test_multiplexer import demo_mux, org_settings
from tests.sinks.conftest import SECRET, Receiver
from tests.waiting import eventually

#: One stream over the user topic of nobody in the org: no event ever comes.
QUIET = {"id": "quiet", "topics": ["v2.users.0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9.conversations"]}


async def drop_the_socket(emulator: Emulator) -> None:
    """Abort the stream's connection through the emulator's control surface (a reconnect gap)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{emulator.base_url}/__emulator__/faults", json={"fault": "drop_socket"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["applied"]


@pytest.mark.parametrize("groups", [1, 2], ids=["one-runner", "fan-out"])
async def test_a_gap_the_sinks_took_is_settled_and_the_stop_does_not_wait_for_it(
    tmp_path: Path, groups: int
) -> None:
    async with Emulator(org_settings(rate=0.0)) as emulator:
        mux = demo_mux(emulator)
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
            await drop_the_socket(emulator)
            files = [tmp_path / f"out{i}.jsonl" for i in range(2)]

            def written() -> list[list[str]]:
                return [
                    [json.loads(line)["kind"] for line in f.read_text().splitlines()]
                    if f.exists()
                    else []
                    for f in files
                ]

            await eventually(lambda: written() == [["gap"], ["gap"]])
            (gap_line,) = files[0].read_text().splitlines()
            gap_start = json.loads(gap_line)["start"]
            # Every sink has it (the runners settle once they all do): it no
            # longer holds the watermark back.
            await eventually(lambda: mux.watermark("quiet") > gap_start)
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


@pytest.mark.parametrize("how", ["refused", "cancelled"])
async def test_a_gap_no_sink_took_keeps_holding_the_watermark(how: str) -> None:
    """A gap cannot be dead-lettered: one the sinks did not take stays unsettled.

    Refused for good (a 400), it is only logged; in hand when the runner is
    cancelled, no sink has it. Either way the next run's restart gap must
    cover its window again, so the watermark stays at its start.
    """
    async with (
        Emulator(org_settings(rate=0.0)) as emulator,
        Receiver(status=400, hang=how == "cancelled") as receiver,
    ):
        mux = demo_mux(emulator)
        await mux.start()
        try:
            await mux.add_stream(QUIET)
            await eventually(lambda: mux.live)
            runner = deliver_stream(
                mux.stream("quiet", settle=False),
                [(WebhookSink(receiver.url, SECRET, timeout_s=30.0, name="hook"), Batching())],
                mux.dead_letter,
                name="quiet",
            )
            runner.on_settled.append(mux.settler("quiet"))
            runner.on_gap_settled.append(mux.gap_settler("quiet"))
            delivering = asyncio.create_task(runner.run())
            await drop_the_socket(emulator)
            await eventually(lambda: len(receiver.requests) >= 1)
            (sent,) = receiver.requests[0].items
            assert sent["kind"] == "gap"
            if how == "refused":
                await eventually(lambda: runner.failed_batches == 1)
                runner.stop()
            else:
                delivering.cancel()  # while the receiver holds the request
            async with asyncio.timeout(10):
                await asyncio.gather(delivering, return_exceptions=True)
            assert runner.failed_batches == 1
            # No sink has it: the watermark stays at its start.
            assert mux.watermark("quiet") == pytest.approx(sent["start"], abs=1e-3)
        finally:
            await mux.stop(drain=False)
