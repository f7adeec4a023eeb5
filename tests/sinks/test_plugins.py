"""Sink plugins found through real package metadata (``*.dist-info``), never a patched importlib.

Each test lays out installed packages the way pip does (a module and a
``name-version.dist-info`` directory with ``METADATA`` and
``entry_points.txt``) in a temporary directory, and puts that directory on
the path: ``sys.path`` for the loader's tests, ``PYTHONPATH`` for a real
``genesys-mux run`` against the emulator. The plugin that runs is the
complete example of ``docs/sinks/plugins.md``, taken from the page itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from genesys_mux.cli.runtime import build_sink
from genesys_mux.configfile import JsonlSinkSpec, PluginSinkSpec, parse_config
from genesys_mux.core.streams import DeadLetter
from genesys_mux.emulator import Emulator
from genesys_mux.errors import ConfigError, ConfigFileError
from genesys_mux.sinks.base import EventRecord, Sink, decode_record
from genesys_mux.sinks.plugins import ENTRY_POINT_GROUP
from genesys_mux.sinks.runner import SinkRunner
from tests.cli.conftest import Result, communicating, emulator, run_cli, start_cli
from tests.sinks.conftest import real_events, source
from tests.waiting import eventually

__all__ = ["emulator"]  # the CLI tests' emulator fixture, for the run below

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "sinks" / "plugins.md"
DEMO_CREDENTIALS = {
    "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
    "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
}


def guide_example() -> str:
    """The example plugin's module, exactly as the guide shows it."""
    text = GUIDE.read_text(encoding="utf-8")
    found = re.search(r"`genesys_mux_lines\.py`:\n\n```python\n(.*?)```", text, re.DOTALL)
    assert found, "docs/sinks/plugins.md lost its example plugin"
    return found.group(1)


@dataclass
class Site:
    """A directory of installed packages, as a site-packages directory holds them."""

    root: Path

    def install(self, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        """Install ``dist`` 1.0: its modules, and its entry points in our group."""
        for module, code in modules.items():
            (self.root / f"{module}.py").write_text(code, encoding="utf-8")
        info = self.root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n", encoding="utf-8"
        )
        lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{n} = {v}" for n, v in entry_points.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    """An empty package directory on ``sys.path``; its modules are forgotten afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    yield Site(root)
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]


def config_with(*sinks: dict[str, Any], stream_id: str = "calls") -> dict[str, Any]:
    return {
        "streams": [{"id": stream_id, "topics": ["v2.users.u1.presence"], "sinks": list(sinks)}]
    }


#: A plugin module that proves whether it was imported, by failing if it is.
EXPLODES_ON_IMPORT = 'raise RuntimeError("this plugin must not be imported")\n'


def test_a_configured_plugin_is_loaded_and_its_options_validated(site: Site) -> None:
    site.install("genesys-mux-lines", {"lines": "genesys_mux_lines"}, {
        "genesys_mux_lines": guide_example()
    })  # fmt: skip
    config = parse_config(config_with({"type": "lines", "path": "/tmp/x.jsonl", "batch_size": 7}))
    (spec,) = config.sinks["calls"]
    assert isinstance(spec, PluginSinkSpec)
    assert spec.type == "lines"
    assert spec.batching.batch_size == 7
    assert getattr(spec.options, "path") == "/tmp/x.jsonl"  # noqa: B009 - the plugin's own model
    sink = build_sink(spec, {}, stream_id="calls")
    assert isinstance(sink, Sink)
    assert sink.name == "lines"
    assert str(getattr(sink, "path")) == "/tmp/x.jsonl"  # noqa: B009


def test_every_mistake_in_a_plugin_sink_has_its_path(site: Site) -> None:
    site.install("genesys-mux-lines", {"lines": "genesys_mux_lines"}, {
        "genesys_mux_lines": guide_example()
    })  # fmt: skip
    with pytest.raises(ConfigFileError) as bad:
        parse_config(
            config_with(
                {"type": "jsonl", "path": "/tmp/ok.jsonl"},
                # The example's model does not forbid unknown keys; genesys-mux does.
                {"type": "lines", "paht": "typo.jsonl", "batch_size": 0, "linger_s": "soon"},
            )
        )
    errors = dict(bad.value.errors)
    # Named against the plugin's own options, with the likeliest key.
    assert errors["streams[0].sinks[1].paht"].startswith("unknown key; did you mean 'path'?")
    assert errors["streams[0].sinks[1].path"] == "Field required"
    assert "greater than or equal to 1" in errors["streams[0].sinks[1].batch_size"]
    assert "valid number" in errors["streams[0].sinks[1].linger_s"]
    assert len(errors) == 4


def test_an_unknown_type_lists_the_built_in_and_installed_types(site: Site) -> None:
    site.install("genesys-mux-lines", {"lines": "genesys_mux_lines"}, {
        "genesys_mux_lines": EXPLODES_ON_IMPORT
    })  # fmt: skip
    with pytest.raises(ConfigFileError) as bad:
        parse_config(config_with({"type": "kafka", "brokers": ["k:9092"]}))
    (path, message), *_ = bad.value.errors
    assert path == "streams[0].sinks[0].type"
    assert "unknown sink type 'kafka'" in message
    assert "the built-in types are jsonl, nats, redis, stdout, webhook" in message
    assert "installed plugins: lines" in message
    # Listing the types read metadata only: the plugin was not imported.
    assert "genesys_mux_lines" not in sys.modules


def test_plugins_are_imported_only_when_a_sink_names_them(site: Site) -> None:
    site.install("genesys-mux-broken", {"broken": "genesys_mux_broken:plugin"}, {
        "genesys_mux_broken": EXPLODES_ON_IMPORT
    })  # fmt: skip
    config = parse_config(config_with({"type": "stdout"}))
    assert [s.type for s in config.sinks["calls"]] == ["stdout"]
    assert "genesys_mux_broken" not in sys.modules

    with pytest.raises(ConfigFileError) as bad:
        parse_config(config_with({"type": "broken"}))
    (path, message), *_ = bad.value.errors
    assert path == "streams[0].sinks[0].type"
    assert "sink plugin 'broken'" in message
    assert "genesys_mux_broken:plugin from genesys-mux-broken 1.0" in message
    assert "could not be loaded: RuntimeError: this plugin must not be imported" in message


def test_a_built_in_type_wins_over_a_plugin_of_the_same_name(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    site.install("genesys-mux-shadow", {"jsonl": "genesys_mux_shadow:plugin"}, {
        "genesys_mux_shadow": EXPLODES_ON_IMPORT
    })  # fmt: skip
    config = parse_config(config_with({"type": "jsonl", "path": "/tmp/a.jsonl"}))
    assert isinstance(config.sinks["calls"][0], JsonlSinkSpec)
    assert "genesys_mux_shadow" not in sys.modules

    caplog.set_level(logging.WARNING)
    with pytest.raises(ConfigFileError) as bad:
        parse_config(config_with({"type": "nope"}))
    assert "installed plugins: none" in str(bad.value)
    assert "'jsonl' is a built-in sink type" in caplog.text


def test_two_packages_claiming_one_type_are_refused(site: Site) -> None:
    example = guide_example()
    site.install("lines-a", {"lines": "lines_a"}, {"lines_a": example})
    site.install("lines-b", {"lines": "lines_b"}, {"lines_b": example})
    with pytest.raises(ConfigFileError) as bad:
        parse_config(config_with({"type": "lines", "path": "x"}))
    message = dict(bad.value.errors)["streams[0].sinks[0].type"]
    assert "provided by 2 installed packages" in message
    assert "lines_a from lines-a 1.0" in message
    assert "lines_b from lines-b 1.0" in message
    assert "uninstall all but one" in message


def test_an_object_that_is_not_a_plugin_is_refused_clearly(site: Site) -> None:
    site.install("half-done", {"half": "half_done:plugin"}, {"half_done": "plugin = object()\n"})
    with pytest.raises(ConfigFileError) as bad:
        parse_config(config_with({"type": "half"}))
    message = dict(bad.value.errors)["streams[0].sinks[0].type"]
    assert "is not a genesys-mux sink plugin" in message
    assert "`options` pydantic model class and a `build(options, context)`" in message


NOT_A_SINK = """
from pydantic import BaseModel

class Options(BaseModel):
    pass

options = Options

def build(options, context):
    if context.environ.get("BREAK") == "config":
        from genesys_mux.errors import ConfigError
        raise ConfigError("plugin: BREAK asks for a ConfigError")
    if context.environ.get("BREAK") == "bug":
        raise KeyError("oops")
    return "a string is not a sink"
"""


def test_what_build_returns_and_raises_is_checked(site: Site) -> None:
    site.install("bad-build", {"bad": "bad_build"}, {"bad_build": NOT_A_SINK})
    (spec,) = parse_config(config_with({"type": "bad"})).sinks["calls"]
    with pytest.raises(ConfigError, match="returned str, which is not a sink"):
        build_sink(spec, {}, stream_id="calls")
    with pytest.raises(ConfigError, match="BREAK asks for a ConfigError"):
        build_sink(spec, {"BREAK": "config"}, stream_id="calls")
    with pytest.raises(ConfigError, match="failed to build the sink of stream calls: KeyError"):
        build_sink(spec, {"BREAK": "bug"}, stream_id="calls")


async def test_the_example_plugin_takes_a_batch_through_a_real_runner(
    site: Site, tmp_path: Path
) -> None:
    site.install("genesys-mux-lines", {"lines": "genesys_mux_lines"}, {
        "genesys_mux_lines": guide_example()
    })  # fmt: skip
    target = tmp_path / "{stream}.jsonl"
    (spec,) = parse_config(config_with({"type": "lines", "path": str(target)})).sinks["calls"]
    sink = build_sink(spec, {}, stream_id="calls")
    events = real_events(9, stream_id="calls")
    dead: list[DeadLetter] = []
    await SinkRunner(source(events), [sink], dead.append, batch_size=4, linger_s=0).run()
    records = [decode_record(line) for line in (tmp_path / "calls.jsonl").read_bytes().splitlines()]
    assert [r.idempotency_key for r in records] == [e.idempotency_key for e in events]
    assert dead == []

    # A directory that does not exist is not retryable: straight to the DLQ.
    (spec,) = parse_config(
        config_with({"type": "lines", "path": str(tmp_path / "gone" / "x.jsonl")})
    ).sinks["calls"]
    sink = build_sink(spec, {}, stream_id="calls")
    await SinkRunner(source(events), [sink], dead.append, batch_size=4, linger_s=0).run()
    assert [d.sequence for d in dead] == [e.sequence for e in events]
    assert all(d.reason.startswith("sink_failed:lines: cannot append to") for d in dead)


RUN_CONFIG = """\
[settings]
dlq_path = "dlq.jsonl"

[[streams]]
id = "calls"
filter = { channelType = "voice" }

  [[streams.sinks]]
  type = "lines"
  path = "out/{stream}.jsonl"
  batch_size = 5
"""


async def test_genesys_mux_run_feeds_an_installed_plugin(
    emulator: Emulator, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    Site(site).install("genesys-mux-lines", {"lines": "genesys_mux_lines"}, {
        "genesys_mux_lines": guide_example()
    })  # fmt: skip
    (tmp_path / "out").mkdir()
    (tmp_path / "mux.toml").write_text(RUN_CONFIG)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)

    checked = await run_cli("validate", "-c", "mux.toml", env={"PYTHONPATH": path}, cwd=tmp_path)
    assert checked.code == 0, checked.why()

    out = tmp_path / "out" / "calls.jsonl"
    process = await start_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url,
        env={**DEMO_CREDENTIALS, "PYTHONPATH": path},
        cwd=tmp_path,
    )  # fmt: skip
    async with communicating(process, 30.0) as finished:
        # Stopped (SIGTERM) once the plugin has written a whole line: a clean
        # stop drains, so what the run had read is written too.
        await eventually(
            lambda: finished.done() or (out.exists() and b"\n" in out.read_bytes()),
            within=30.0,
            interval=0.1,
        )
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(asyncio.shield(finished), 30.0)
    result = Result(process.returncode or 0, stdout.decode(), stderr.decode())
    assert result.code == 0, result.why()
    lines = out.read_bytes().splitlines()
    records = [decode_record(line) for line in lines]
    events = [r for r in records if isinstance(r, EventRecord)]
    assert events, result.why()
    assert {r.stream_id for r in events} == {"calls"}
    sequences = [r.sequence for r in events]
    assert sequences == list(range(1, len(sequences) + 1))
    assert not (tmp_path / "dlq.jsonl").exists()


async def test_run_stops_with_the_plugins_own_config_error(
    emulator: Emulator, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    Site(site).install("bad-build", {"bad": "bad_build"}, {"bad_build": NOT_A_SINK})
    (tmp_path / "mux.toml").write_text(
        RUN_CONFIG.replace('type = "lines"', 'type = "bad"').replace(
            'path = "out/{stream}.jsonl"\n', ""
        )
    )
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    result = await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--duration", "3",
        env={**DEMO_CREDENTIALS, "PYTHONPATH": path, "BREAK": "config"},
        cwd=tmp_path,
        timeout=60.0,
    )  # fmt: skip
    assert result.code == 2, result.why()
    # Built, offline, before the run connects: said with the sink's key, nothing started.
    assert result.stderr.startswith(
        "error: streams[0].sinks[0]: plugin: BREAK asks for a ConfigError"
    ), result.why()
    assert not emulator.platform.channels
    assert not (tmp_path / "dlq.jsonl").exists()
