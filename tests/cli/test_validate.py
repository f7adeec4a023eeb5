"""``genesys-mux validate`` catches what ``run`` would reject, before the run.

Values the file cannot prove (credentials, variables set only where the
service runs) are warnings; what is wrong in the file itself (an unknown
region, a secrets file that is not there) is an error. Relative paths are
read from the configuration file's directory, as ``run`` reads them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.cli.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]

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


async def test_a_webhook_in_clear_to_another_host_is_warned_about(tmp_path: Path) -> None:
    """The events carry customer data: plain http:// off this machine is said, not refused."""
    remote = WEBHOOK.replace("https://crm.example.com", "http://crm.example.com")
    local = WEBHOOK.replace("https://crm.example.com", "http://127.0.0.1:8080")
    (tmp_path / "mux.toml").write_text(
        '[genesys]\nregion = "eu_west_1"\n'
        + STREAM
        + remote
        + STREAM.replace('"calls"', '"local"')
        + local
    )
    result = await run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env={})
    assert result.code == 0, result.why()
    report = json.loads(result.stdout)
    clear = [w for w in report["warnings"] if "plain http://" in w]
    assert clear == [
        "streams[0].sinks[0].url: plain http:// to crm.example.com: the events (customer "
        "names, numbers, addresses) cross the network in clear; use https://"
    ]


async def test_ids_that_are_not_uuids_are_warned_about(tmp_path: Path) -> None:
    """Safe, so accepted; but a Genesys id is a UUID, and a wrong one's topic carries nothing."""
    good = "00000000-0000-0000-0000-000000000001"
    (tmp_path / "mux.toml").write_text(
        '[genesys]\nregion = "eu_west_1"\n[[streams]]\nid = "s"\n'
        'filter = { queueId = "sales-queue" }\n'
        f'topics = ["v2.users.bogus?presence&routingStatus", "v2.users.{good}.presence"]\n'
        f'[[streams]]\nid = "fine"\nfilter = {{ userId = "{good.upper()}" }}\n'
    )
    result = await run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env={})
    assert result.code == 0, result.why()
    said = [w for w in json.loads(result.stdout)["warnings"] if "is not a UUID" in w]
    advice = "check it (a topic for an id the org does not have may be subscribed all the "
    advice += "same, and carry nothing)"
    assert said == [
        f"streams[0].filter.queueId: 'sales-queue' is not a UUID, as Genesys ids are: {advice}",
        "streams[0].topics[0]: 'bogus' in 'v2.users.bogus?presence&routingStatus' is not a "
        f"UUID, as Genesys ids are: {advice}",
    ]


async def test_a_file_without_streams_is_warned_about(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text('[genesys]\nregion = "eu_west_1"\n')
    result = await run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env={})
    assert result.code == 0, result.why()
    warnings = json.loads(result.stdout)["warnings"]
    assert "no [[streams]]: nothing would be subscribed or delivered" in warnings


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


BAD_SECRET_ENV = {"CRM_WEBHOOK_SECRET_FOR_THIS_TEST": "plain-text-not-whsec"}


async def test_every_problem_of_every_phase_is_reported_in_one_round(tmp_path: Path) -> None:
    """A typo, a missing directory and a bad sink secret: one run of validate shows all three."""
    (tmp_path / "mux.toml").write_text(
        '[genesys]\nregion = "eu_west_1"\n'
        '[settings]\nmax_stream = 5\ndlq_path = "missing-dir/dlq.jsonl"\n' + STREAM + WEBHOOK
    )
    result = await run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env=BAD_SECRET_ENV)
    assert result.code == 1, result.why()
    report = json.loads(result.stdout)
    where = {p["path"]: p["problem"] for p in report["problems"]}
    assert sorted(where) == [
        "settings.dlq_path",
        "settings.max_stream",
        "streams[0].sinks[0].secret_env",
    ], where
    assert "missing-dir" in where["settings.dlq_path"]
    assert "whsec_" in where["streams[0].sinks[0].secret_env"]
    assert "plain-text-not-whsec" not in result.output
    assert report["not_checked"] == []


async def test_a_sink_with_a_bad_key_still_has_its_secret_checked(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text(STREAM + WEBHOOK + "  timeout_s = -1\n  colour = 1\n")
    result = await run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env=BAD_SECRET_ENV)
    assert result.code == 1, result.why()
    where = [p["path"] for p in json.loads(result.stdout)["problems"]]
    assert where == [
        "streams[0].sinks[0].timeout_s",
        "streams[0].sinks[0].colour",
        "streams[0].sinks[0].secret_env",
    ]


async def test_what_cannot_be_checked_until_a_section_is_fixed_is_said(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text(
        '[genesys]\nregion = "eu_west_1"\nbase_url = "http://127.0.0.1:1"\n'
        + STREAM
        + '\n  [[streams.sinks]]\n  type = "redis"\n'
    )
    # Two readers of the file: run side by side.
    result, as_json = await asyncio.gather(
        run_cli("validate", "-c", "mux.toml", cwd=tmp_path, env={}),
        run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env={}),
    )
    assert result.code == 1, result.why()
    assert "give region or base_url, not both" in result.stdout
    assert "Value error" not in result.output
    assert "not checked yet: [genesys]: the region, the secrets file and the credentials" in (
        result.stderr
    )
    assert "not checked yet: streams[0].sinks[0]:" in result.stderr
    report = json.loads(as_json.stdout)
    assert len(report["not_checked"]) == 2
    assert "streams[0].sinks[0]" in {p["path"] for p in report["problems"]}


async def test_the_region_from_the_environment_is_checked(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text(STREAM)
    # Two readers of the file, each with its own environment: run side by side.
    result, good = await asyncio.gather(
        run_cli(
            "validate",
            "-c",
            "mux.toml",
            "--json",
            cwd=tmp_path,
            env={"GENESYSCLOUD_REGION": "nowhere"},
        ),
        run_cli(
            "validate", "-c", "mux.toml", cwd=tmp_path, env={"GENESYSCLOUD_REGION": "eu-west-1"}
        ),
    )
    assert result.code == 1, result.why()
    ((problem,),) = [json.loads(result.stdout)["problems"]]
    assert problem["path"] == "GENESYSCLOUD_REGION"
    assert problem["problem"].startswith(
        "GENESYSCLOUD_REGION in the environment: unknown Genesys Cloud region 'nowhere'; use one of"
    )
    assert good.code == 0, good.why()


async def test_a_bad_region_in_the_file_is_to_be_fixed_in_the_file(tmp_path: Path) -> None:
    """The file wins over GENESYSCLOUD_REGION, so the advice names the file's key, in both."""
    (tmp_path / "mux.toml").write_text('[genesys]\nregion = "mypurecloud.cm"\n' + STREAM)
    env = {"GENESYSCLOUD_OAUTHCLIENT_ID": "x", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "y"}
    # Both stop at the file's region: run side by side.
    checked, ran = await asyncio.gather(
        run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env=env),
        run_cli("run", "-c", "mux.toml", "--duration", "5", cwd=tmp_path, env=env),
    )
    assert checked.code == 1, checked.why()
    ((problem,),) = [json.loads(checked.stdout)["problems"]]
    expected = "[genesys] region in mux.toml: unknown Genesys Cloud region 'mypurecloud.cm'; use"
    assert (problem["path"], problem["problem"][: len(expected)]) == ("genesys.region", expected)
    assert "GENESYSCLOUD_REGION" not in problem["problem"]
    assert ran.code == 2, ran.why()
    assert ran.stderr.startswith(f"error: {expected}"), ran.why()
    assert "set GENESYSCLOUD_REGION" not in ran.output


async def test_a_base_url_run_would_refuse_is_a_problem_quoted_without_its_password(
    tmp_path: Path,
) -> None:
    """validate checks [genesys] base_url as run does: no user info, no plain http abroad."""
    (tmp_path / "userinfo.toml").write_text(
        '[genesys]\nbase_url = "https://admin:BaseUrlPw99@emu.example.com/"\n' + STREAM
    )
    (tmp_path / "cleartext.toml").write_text(
        '[genesys]\nbase_url = "http://10.1.2.3:8080"\n' + STREAM
    )
    (tmp_path / "valid.toml").write_text(STREAM)
    env = {"GENESYSCLOUD_OAUTHCLIENT_ID": "x", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "y"}
    userinfo, cleartext, ran, flag = await asyncio.gather(
        run_cli("validate", "-c", "userinfo.toml", "--json", cwd=tmp_path, env=env),
        run_cli("validate", "-c", "cleartext.toml", "--json", cwd=tmp_path, env=env),
        run_cli("run", "-c", "userinfo.toml", "--duration", "5", cwd=tmp_path, env=env),
        run_cli(
            "run", "-c", "valid.toml", "--base-url", "http://admin:BaseUrlPw99@127.0.0.1:1",
            "--duration", "5", cwd=tmp_path, env=env,
        ),
    )  # fmt: skip
    assert userinfo.code == 1, userinfo.why()
    report = json.loads(userinfo.stdout)
    ((problem,),) = [report["problems"]]
    assert problem["path"] == "genesys.base_url"
    assert problem["problem"].startswith(
        "base URL 'https://emu.example.com/' must not hold a user name or password"
    )
    # The base_url is there, refused: not a missing region.
    assert not any("no region" in w for w in report["warnings"])
    assert cleartext.code == 1, cleartext.why()
    ((problem,),) = [json.loads(cleartext.stdout)["problems"]]
    assert problem["path"] == "genesys.base_url"
    assert "is plain http to 10.1.2.3, not a loopback host" in problem["problem"]
    # run refuses the file's base_url with the same report, and --base-url with one line.
    assert ran.code == 2, ran.why()
    assert "genesys.base_url" in ran.stdout
    assert flag.code == 2, flag.why()
    assert flag.stderr.startswith("error: base URL 'http://127.0.0.1:1' must not hold"), flag.why()
    for result in (userinfo, cleartext, ran, flag):
        assert "BaseUrlPw99" not in result.output
        assert "Traceback" not in result.output


async def test_a_redis_url_env_that_holds_no_redis_url_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text(
        '[genesys]\nregion = "eu_west_1"\n'
        + STREAM
        + '\n  [[streams.sinks]]\n  type = "redis"\n  url_env = "EVENTS_REDIS_FOR_THIS_TEST"\n'
        '\n[state]\nurl_env = "STATE_REDIS_FOR_THIS_TEST"\n'
    )
    password = "canary-redis-password-5d1e"
    env = {
        "EVENTS_REDIS_FOR_THIS_TEST": f"http://:{password}@127.0.0.1:6391/0",
        "STATE_REDIS_FOR_THIS_TEST": f"{password}",
    }
    good_env = dict.fromkeys(env, "redis://127.0.0.1:6391/0")
    # Two readers of the file, each with its own environment: run side by side.
    result, good = await asyncio.gather(
        run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env=env),
        run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env=good_env),
    )
    assert result.code == 1, result.why()
    where = {p["path"]: p["problem"] for p in json.loads(result.stdout)["problems"]}
    assert sorted(where) == ["state.url_env", "streams[0].sinks[0].url_env"]
    sink_problem = where["streams[0].sinks[0].url_env"]
    assert "EVENTS_REDIS_FOR_THIS_TEST: the url is a http:// URL" in sink_problem
    assert "redis://" in where["state.url_env"]
    assert password not in result.output
    assert json.loads(good.stdout)["problems"] == [], good.why()


async def test_a_webhook_url_env_is_checked_where_it_is_set_and_never_quoted(
    tmp_path: Path,
) -> None:
    """A capability URL (its token in the path) kept out of the file."""
    (tmp_path / "mux.toml").write_text(
        '[genesys]\nregion = "eu_west_1"\n'
        + STREAM
        + '\n  [[streams.sinks]]\n  type = "webhook"\n  url_env = "HOOK_URL_FOR_THIS_TEST"\n'
        '  secret_env = "HOOK_SECRET_FOR_THIS_TEST"\n'
    )
    token = "tok-canary-8c41e2"
    secret = {"HOOK_SECRET_FOR_THIS_TEST": "whsec_" + "QUJD" * 8}
    bad, good, unset = await asyncio.gather(
        run_cli(
            "validate", "-c", "mux.toml", "--json", cwd=tmp_path,
            env={**secret, "HOOK_URL_FOR_THIS_TEST": f"hooks.example.com/{token}"},
        ),
        run_cli(
            "validate", "-c", "mux.toml", "--json", cwd=tmp_path,
            env={**secret, "HOOK_URL_FOR_THIS_TEST": f"https://hooks.example.com/{token}"},
        ),
        run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env=secret),
    )  # fmt: skip
    assert bad.code == 1, bad.why()
    (problem,) = json.loads(bad.stdout)["problems"]
    assert problem["path"] == "streams[0].sinks[0].url_env"
    assert "HOOK_URL_FOR_THIS_TEST: the url is not an http:// or https:// URL" in problem["problem"]
    assert json.loads(good.stdout)["problems"] == [], good.why()
    assert any(
        w.startswith("streams[0].sinks[0].url_env: HOOK_URL_FOR_THIS_TEST is not set here")
        for w in json.loads(unset.stdout)["warnings"]
    ), unset.why()
    for result in (bad, good, unset):
        assert token not in result.output


async def test_a_missing_absolute_directory_is_a_warning_for_where_it_runs(
    tmp_path: Path,
) -> None:
    """A deployment's file names directories of the machine it runs on, not of this one.

    A relative path is read from the file's own directory, here, so its
    missing directory stays a problem.
    """
    elsewhere = tmp_path / "not-here" / "dlq.jsonl"
    (tmp_path / "mux.toml").write_text(
        f'[genesys]\nregion = "eu_west_1"\n[settings]\ndlq_path = "{elsewhere}"\n' + STREAM
    )
    # Two readers of the file: run side by side (the run below comes after them).
    result, here = await asyncio.gather(
        run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env={}),
        run_cli("validate", "-c", "mux.toml", "--here", "--json", cwd=tmp_path, env={}),
    )
    assert result.code == 0, result.why()
    report = json.loads(result.stdout)
    assert report["valid"] is True
    (warning,) = [w for w in report["warnings"] if w.startswith("settings.dlq_path")]
    assert str(elsewhere.parent) in warning
    assert warning.endswith("it must exist where it runs")
    # On the machine it runs on, --here makes it a problem, as run finds it.
    assert here.code == 1, here.why()
    assert [p["path"] for p in json.loads(here.stdout)["problems"]] == ["settings.dlq_path"]
    env = {"GENESYSCLOUD_OAUTHCLIENT_ID": "x", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "y"}
    ran = await run_cli("run", "-c", "mux.toml", "--duration", "5", cwd=tmp_path, env=env)
    assert ran.code == 2, ran.why()
    assert "settings.dlq_path" in ran.stdout
    assert "valid" not in ran.stdout
    (tmp_path / "mux.toml").write_text(
        '[genesys]\nregion = "eu_west_1"\n[settings]\ndlq_path = "not-here/dlq.jsonl"\n' + STREAM
    )
    relative = await run_cli("validate", "-c", "mux.toml", "--json", cwd=tmp_path, env={})
    assert relative.code == 1, relative.why()


async def test_the_deployment_files_validate_on_a_build_machine() -> None:
    """As docs/operations/deployment.md says to, before shipping them."""
    result = await run_cli(
        "validate", "-c", str(REPO / "deploy/compose/genesys-mux.toml"), "--json", env={}
    )
    assert result.code == 0, result.why()
    assert any("REDIS_URL is not set" in w for w in json.loads(result.stdout)["warnings"])
