"""``genesys-mux emulator`` as a user runs it: a real process, real HTTP, Ctrl-C to stop."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import aiohttp

from tests.emulator.genesys import basic_auth


async def test_emulator_command_serves_and_stops_cleanly_on_ctrl_c() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genesys_mux",
        "emulator",
        "--port",
        "0",
        "--queues",
        "2",
        "--agents",
        "3",
        "--log-json",
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert process.stderr is not None
    try:
        base_url = None
        while base_url is None:
            line = await asyncio.wait_for(process.stderr.readline(), 20)
            assert line, "the emulator exited before it announced its address"
            if line.startswith(b"{"):
                record = json.loads(line)
                base_url = record.get("base_url")
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{base_url}/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"Authorization": basic_auth("demo-client", "demo-secret")},
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["token_type"] == "bearer"
            async with session.get(f"{base_url}/__emulator__/org") as resp:
                org = await resp.json()
                assert len(org["queues"]) == 2
                assert len(org["users"]) == 3
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_bad_option_values_are_refused_with_a_clear_message() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genesys_mux",
        "emulator",
        "--port",
        "70000",
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 2
    assert b"port 70000" in err
