"""The command line's event loop: uvloop when installed, unless told otherwise."""

from __future__ import annotations

import pytest

from genesys_mux.cli import loop


async def _name() -> str:
    return loop.loop_name()


def test_the_command_line_runs_on_uvloop_when_it_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv("GENESYS_MUX_LOOP", raising=False)
    assert loop.run(_name()) == "uvloop"


def test_genesys_mux_loop_asyncio_keeps_the_default_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENESYS_MUX_LOOP", "asyncio")
    assert loop.run(_name()) == "asyncio"
