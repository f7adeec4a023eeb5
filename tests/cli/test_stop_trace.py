"""A run that stops cleanly says so: why, and what it delivered, in the log and the audit log.

Without it an operator reading the audit file cannot tell a deploy's
SIGTERM from a crash, nor when the instance stopped.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from genesys_mux.emulator import Emulator
from tests.cli.conftest import run_cli, run_cli_until

DEMO_CREDENTIALS = {
    "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
    "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
}

CONFIG = """\
[settings]
audit_path = "audit.jsonl"

[[streams]]
id = "all"
filter = {}
"""


def _stopped(directory: Path) -> dict[str, Any]:
    text = (directory / "audit.jsonl").read_text()
    lines: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines()]
    (stopped,) = [line for line in lines if line["event"] == "RUN_STOPPED"]
    assert lines[-1] is stopped, "the last fact of the run"
    return stopped


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signalled_stop_names_its_signal(
    emulator: Emulator, tmp_path: Path, sig: signal.Signals
) -> None:
    (tmp_path / "mux.toml").write_text(CONFIG)
    ran = await run_cli_until(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url,
        until=lambda line: '"sequence"' in line,
        sig=sig, cwd=tmp_path, env=DEMO_CREDENTIALS,
    )  # fmt: skip
    assert ran.code == 0, ran.why()
    printed = ran.stdout.count('"sequence"')
    assert f"stopping ({sig.name}): draining" in ran.stderr, ran.why()
    said = re.search(
        rf"stopped \({sig.name}\): (\d+) events delivered and 0 dead-lettered", ran.stderr
    )
    assert said is not None, ran.why()
    assert int(said.group(1)) == printed
    stopped = _stopped(tmp_path)
    assert stopped["reason"] == sig.name
    assert stopped["delivered"] == printed
    assert stopped["dead_lettered"] == 0
    assert stopped["streams"] == 1


async def test_a_stop_at_the_end_of_its_duration_says_so(
    emulator: Emulator, tmp_path: Path
) -> None:
    (tmp_path / "mux.toml").write_text(CONFIG)
    ran = await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--duration", "1",
        cwd=tmp_path, env=DEMO_CREDENTIALS,
    )  # fmt: skip
    assert ran.code == 0, ran.why()
    assert "stopped (--duration 1 s reached)" in ran.stderr, ran.why()
    assert _stopped(tmp_path)["reason"] == "--duration 1 s reached"
