"""``genesys-mux validate`` catches what ``run`` would reject, before the run.

Values the file cannot prove (credentials, variables set only where the
service runs) are warnings; what is wrong in the file itself (an unknown
region, a secrets file that is not there) is an error. Relative paths are
read from the configuration file's directory, as ``run`` reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import run_cli

STREAM = """
[[streams]]
id = "calls"
filter = { channelType = "voice" }
"""

WEBHOOK = """
  [[streams.sinks]]
  type = "webhook"
  url = "https://crm.example.com/hook"
  secret_env = "CRM_WEBHOOK_SECRET_FOR_THIS_TEST"
"""


async def test_a_valid_file_prints_its_streams_on_stdout(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text('[genesys]\nregion = "eu_west_1"\n' + STREAM)
    env = {"GENESYSCLOUD_OAUTHCLIENT_ID": "x", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "y"}
    result = await run_cli("validate", "-c", "mux.toml", cwd=tmp_path, env=env)
    assert result.code == 0, result.why()
    assert "calls" in result.stdout
    assert "valid" in result.stdout


async def test_what_may_be_set_only_at_run_time_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text('[genesys]\nregion = "eu_west_1"\n' + STREAM + WEBHOOK)
    result = await run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env={})
    assert result.code == 0, result.why()
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert report["problems"] == []
    warnings = " ".join(report["warnings"])
    assert "GENESYSCLOUD_OAUTHCLIENT_ID" in warnings
    assert "CRM_WEBHOOK_SECRET_FOR_THIS_TEST" in warnings
    assert [s["id"] for s in report["streams"]] == ["calls"]


async def test_an_unknown_region_and_a_missing_secrets_file_are_errors(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text(
        '[genesys]\nregion = "mars_north_1"\nsecrets_file = "client.toml"\n' + STREAM
    )
    result = await run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env={})
    assert result.code == 1, result.why()
    report = json.loads(result.stdout)
    assert report["valid"] is False
    where = {p["path"]: p["problem"] for p in report["problems"]}
    assert "mars_north_1" in where["genesys.region"]
    assert "client.toml" in where["genesys.secrets_file"]


async def test_relative_paths_are_read_from_the_config_files_directory(tmp_path: Path) -> None:
    """validate and run agree whatever the working directory."""
    conf = tmp_path / "conf"
    (conf / "out").mkdir(parents=True)
    (conf / "mux.toml").write_text(
        '[settings]\ndlq_path = "out/dlq.jsonl"\n'
        + STREAM
        + '\n  [[streams.sinks]]\n  type = "jsonl"\n  path = "out/calls.jsonl"\n'
    )
    env = {"GENESYSCLOUD_OAUTHCLIENT_ID": "x", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "y"}
    from_elsewhere = await run_cli("validate", "-c", "conf/mux.toml", cwd=tmp_path, env=env)
    assert from_elsewhere.code == 0, from_elsewhere.why()
