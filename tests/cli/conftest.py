"""Helpers for running ``genesys-mux`` as a user does: a real process, real output.

:func:`run_cli` runs ``python -m genesys_mux ARGS`` to completion under a
deadline; :func:`run_cli_until` stops it (SIGTERM) once it has printed what
a test needs; :func:`start_cli` starts it for tests that talk to it while
it runs. Both start from a clean environment: no ``GENESYSCLOUD_*`` variables
leak in from the developer's shell, and no terminal-width or colour
overrides, so the output is what a pipe gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from genesys_mux.emulator import ClientApp, Emulator
from tests.net.test_multiplexer import org_settings
from tests.sinks.conftest import redis_server

__all__ = ["redis_server"]  # a real redis-server, for the state and cluster tests

#: An OAuth client the emulator accepts whose secret must never be printed.
CANARY_CLIENT = "canary-client"
CANARY_SECRET = "canary-oauth-secret-7c41e09b"

_SCRUBBED = {"COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent environment without GENESYSCLOUD_* and terminal overrides, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GENESYSCLOUD_") and key not in _SCRUBBED
    }
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Result:
    """A finished command."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def why(self) -> str:
        """Both outputs, for assertion messages."""
        return f"exit {self.code}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"


async def start_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: bool = False,
) -> asyncio.subprocess.Process:
    """Start ``genesys-mux ARGS`` with piped stdout and stderr."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "genesys_mux",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(env),
        cwd=cwd,
    )


async def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    timeout: float = 30.0,
) -> Result:
    """Run ``genesys-mux ARGS`` to completion; kill it if it outlives ``timeout``."""
    process = await start_cli(*args, env=env, cwd=cwd, stdin=input is not None)
    try:
        out, err = await asyncio.wait_for(process.communicate(input), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


async def run_cli_until(
    *args: str,
    until: Callable[[str], bool],
    sig: signal.Signals = signal.SIGTERM,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 30.0,
) -> Result:
    """Run ``genesys-mux ARGS``; send it ``sig`` once a line it printed satisfies ``until``.

    Returns once it has exited, with all it printed. A process that exits
    before printing such a line is returned as it ended, for the test's
    assertions to say what is missing; one that outlives ``timeout`` is killed.
    """
    process = await start_cli(*args, env=env, cwd=cwd)
    assert process.stdout is not None
    assert process.stderr is not None
    err = asyncio.ensure_future(process.stderr.read())
    out: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while raw := await process.stdout.readline():
                out.append(raw)
                if process.returncode is None and until(raw.decode()):
                    process.send_signal(sig)
                    out.append(await process.stdout.read())
                    break
            await process.wait()
            stderr = await err
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        err.cancel()
    assert process.returncode is not None
    return Result(process.returncode, b"".join(out).decode(), stderr.decode())


def prints_an_event(line: str) -> bool:
    """Whether a line of ``run``'s JSON output is an event (as :func:`run_cli_until` asks)."""
    return bool(line.strip()) and json.loads(line)["kind"] == "event"


@contextlib.asynccontextmanager
async def communicating(
    process: asyncio.subprocess.Process, timeout: float
) -> AsyncIterator[asyncio.Future[tuple[bytes, bytes]]]:
    """``process.communicate()`` as a future, for a test that talks to the process meanwhile.

    On leaving, the process is killed if it still runs, and its output is
    read to the end (within ``timeout``) so that no pipe is left open.
    """
    finished = asyncio.ensure_future(process.communicate())
    try:
        yield finished
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(asyncio.shield(finished), timeout)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """An in-process emulator with the demo client and a canary client."""
    settings = org_settings(
        rate=20.0,
        clients=[
            ClientApp("demo-client", "demo-secret"),
            ClientApp(CANARY_CLIENT, CANARY_SECRET),
        ],
    )
    async with Emulator(settings) as running:
        yield running
