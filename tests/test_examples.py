"""The examples in the repository run as documented."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tomllib
from pathlib import Path

from genesys_mux.configfile import load_config, parse_config
from genesys_mux.emulator import Emulator, EmulatorSettings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_the_example_configuration_is_valid() -> None:
    config = load_config(EXAMPLES / "genesys-mux.toml")
    assert [s.id for s in config.streams] == [
        "voice-main",
        "chat-support",
        "waiting-calls",
        "team-presence",
    ]


async def test_the_library_quickstart_runs_against_the_emulator(tmp_path: Path) -> None:
    settings = EmulatorSettings(seed=2, queues=3, agents=8, rate=10.0, heartbeat_interval_s=1.0)
    async with Emulator(settings) as emulator:
        env = {
            **os.environ,
            "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
            "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / "quickstart.py"),
            "--base-url",
            emulator.base_url,
            "--events",
            "8",
            env=env,
            cwd=tmp_path,  # where a dead-letter file would go
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    lines = out.decode().splitlines()
    assert len(lines) == 8
    assert all(line.split()[0] in ("voice-main", "chat-support") for line in lines)


def test_the_readme_configuration_example_is_valid() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.DOTALL)
    assert blocks, "the README lost its configuration example"
    for block in blocks:
        config = parse_config(tomllib.loads(block))
        assert config.streams
