"""A sink's variable that is missing or refused stops ``run`` before it connects anywhere.

Every such problem is said at once, each with its key in the file as
``validate`` names it, and the run exits 2 without creating a channel or
dead-lettering anything.
"""

from __future__ import annotations

from pathlib import Path

from genesys_mux.emulator import Emulator
from tests.cli.conftest import run_cli

DEMO_CREDENTIALS = {
    "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
    "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
}

CONFIG = """\
[settings]
dlq_path = "dlq.jsonl"
audit_path = "audit.jsonl"

[[streams]]
id = "calls"
filter = { channelType = "voice" }

  [[streams.sinks]]
  type = "jsonl"
  path = "calls.jsonl"

  [[streams.sinks]]
  type = "webhook"
  url = "http://127.0.0.1:9/hook"
  secret_env = "CALLS_HOOK_SECRET"

[[streams]]
id = "chats"
filter = { channelType = "chat" }

  [[streams.sinks]]
  type = "webhook"
  url = "http://127.0.0.1:9/hook"
  secret_env = "CHATS_HOOK_SECRET"

  [[streams.sinks]]
  type = "redis"
  url_env = "CHATS_REDIS_URL"
"""


async def test_every_sink_variable_problem_is_said_before_a_channel_is_made(
    emulator: Emulator, tmp_path: Path
) -> None:
    (tmp_path / "mux.toml").write_text(CONFIG)
    env = {**DEMO_CREDENTIALS, "CHATS_HOOK_SECRET": "not-a-whsec-secret"}
    ran = await run_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, "--duration", "5",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert ran.code == 2, ran.why()
    errors = [line for line in ran.output.splitlines() if line.startswith("error:")]
    keys = [line.removeprefix("error: ").split(": ")[0] for line in errors]
    assert keys == [
        "streams[0].sinks[1].secret_env",
        "streams[1].sinks[0].secret_env",
        "streams[1].sinks[1].url_env",
    ], ran.why()
    assert "CALLS_HOOK_SECRET is not set" in errors[0]
    assert "stream calls" in errors[0]
    assert "CHATS_REDIS_URL is not set" in errors[2]
    assert "not-a-whsec-secret" not in ran.output  # a secret is never quoted
    assert "Traceback" not in ran.output
    # Nothing started: no channel on the platform, no letter, no audit fact.
    assert not emulator.platform.channels
    assert not (tmp_path / "dlq.jsonl").exists()
    assert not (tmp_path / "audit.jsonl").exists()
