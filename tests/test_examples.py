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


# Pages written and tested elsewhere (their examples may be fragments of a file).
_PAGES_TESTED_ELSEWHERE = frozenset(
    {
        "operations/dashboards-and-alerts.md",
        "operations/deployment.md",
        "sinks/webhook.md",
        "sinks/nats.md",
        "sinks/plugins.md",
    }
)


def _documents() -> list[Path]:
    docs = EXAMPLES.parent / "docs"
    pages = [
        page
        for page in sorted(docs.rglob("*.md"))
        if page.relative_to(docs).as_posix() not in _PAGES_TESTED_ELSEWHERE
    ]
    return [EXAMPLES.parent / "README.md", *pages]


def test_the_configuration_examples_of_the_readme_and_the_docs_are_valid() -> None:
    checked = 0
    for document in _documents():
        text = document.read_text(encoding="utf-8")
        for block in re.findall(r"```toml\n(.*?)```", text, re.DOTALL):
            try:
                config = parse_config(tomllib.loads(block), source=document.name)
            except Exception as exc:
                raise AssertionError(f"a TOML example of {document} is not valid: {exc}") from exc
            assert config.streams, f"a TOML example of {document} has no stream"
            checked += 1
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    assert "```toml\n" in readme, "the README lost its configuration example"
    # The README's, the annotated file's, the first file's, the sinks' and the cluster's.
    assert checked >= 5
