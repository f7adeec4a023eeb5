"""``genesys-mux run`` with a NATS sink: a real process, the emulator, a real nats-server."""

from __future__ import annotations

import json
from pathlib import Path

from genesys_mux.emulator import Emulator
from genesys_mux.sinks.base import EventRecord, decode_record
from tests.cli.conftest import emulator, run_cli
from tests.sinks.conftest import NatsServer
from tests.sinks.test_nats import STREAM, stored

__all__ = ["emulator"]  # the CLI tests' emulator fixture

DEMO_CREDENTIALS = {
    "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
    "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
}

CONFIG = """\
[settings]
dlq_path = "dlq.jsonl"

[[streams]]
id = "calls"
filter = {{ channelType = "voice" }}

  [[streams.sinks]]
  type = "nats"
  servers = ["{url}"]
  stream = "{stream}"
  create_stream = true
  batch_size = 20
"""


async def test_run_publishes_a_stream_to_jetstream(
    emulator: Emulator, nats_server: NatsServer, tmp_path: Path
) -> None:
    (tmp_path / "mux.toml").write_text(CONFIG.format(url=nats_server.url, stream=STREAM))
    checked = await run_cli("validate", "-c", "mux.toml", cwd=tmp_path)
    assert checked.code == 0, checked.why()

    result = await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--duration", "3",
        env=DEMO_CREDENTIALS,
        cwd=tmp_path,
        timeout=60.0,
    )  # fmt: skip
    assert result.code == 0, result.why()

    messages = await stored(nats_server)
    records = [decode_record(payload) for _subject, _headers, payload in messages]
    events = [r for r in records if isinstance(r, EventRecord)]
    assert events, result.why()
    assert {subject for subject, _h, _p in messages} == {"genesys.calls"}
    sequences = [r.sequence for r in events]
    assert sequences == list(range(1, len(sequences) + 1))
    assert [h["Nats-Msg-Id"] for _s, h, _p in messages] == [r.idempotency_key for r in records]
    assert not (tmp_path / "dlq.jsonl").exists()


async def test_run_says_clearly_when_the_stream_is_missing_and_loses_nothing(
    emulator: Emulator, nats_server: NatsServer, tmp_path: Path
) -> None:
    config = CONFIG.format(url=nats_server.url, stream="NOPE").replace("create_stream = true", "")
    (tmp_path / "mux.toml").write_text(config)
    result = await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--duration", "2",
        env=DEMO_CREDENTIALS,
        cwd=tmp_path,
        timeout=60.0,
    )  # fmt: skip
    assert "the sinks of stream calls stopped" in result.stderr, result.why()
    assert "the JetStream stream 'NOPE' does not exist" in result.stderr, result.why()
    # Every event the stream produced is in the dead-letter queue.
    letters = (tmp_path / "dlq.jsonl").read_text().splitlines()
    assert letters, result.why()
    sequences = sorted(json.loads(line)["sequence"] for line in letters)
    assert sequences == list(range(1, len(sequences) + 1))
