"""The configuration file is strict: every doubtful value is a clear error with its path.

TOML has types, so a value of the wrong type is a mistake, not something to
coerce: ``true`` is not a port, ``inf`` is not a timeout. Bounds are the
ones a production run can live with, and a file the run will write must
have a directory to go in, found by ``validate`` rather than by a crash.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from genesys_mux.configfile import load_config, load_credentials, parse_config
from genesys_mux.errors import ConfigError, ConfigFileError

STREAM = {"streams": [{"id": "s", "filter": {}}]}


def problems(data: dict[str, object]) -> tuple[tuple[str, str], ...]:
    with pytest.raises(ConfigFileError) as caught:
        parse_config({**STREAM, **data})
    return caught.value.errors


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"admin_port": True}, "settings.admin_port"),
        ({"max_streams": "5"}, "settings.max_streams"),
        ({"heartbeat_timeout": float("inf")}, "settings.heartbeat_timeout"),
        ({"pong_timeout": float("nan")}, "settings.pong_timeout"),
        ({"queue_refresh_s": 1e-7}, "settings.queue_refresh_s"),
        ({"metric_interval_s": 0.001}, "settings.metric_interval_s"),
        ({"heartbeat_timeout": 1e9}, "settings.heartbeat_timeout"),
        ({"dlq_path": "dead\x00letters.jsonl"}, "settings.dlq_path"),
        ({"audit_path": "  "}, "settings.audit_path"),
        ({"backfill": 1}, "settings.backfill"),
    ],
)
def test_doubtful_settings_are_errors_with_their_path(
    settings: dict[str, object], path: str
) -> None:
    assert [where for where, _ in problems({"settings": settings})] == [path]


def test_a_sink_path_with_a_nul_is_an_error() -> None:
    data = {
        "streams": [
            {"id": "s", "filter": {}, "sinks": [{"type": "jsonl", "path": "out\x00.jsonl"}]}
        ]
    }
    with pytest.raises(ConfigFileError) as caught:
        parse_config(data)
    ((where, message),) = caught.value.errors
    assert where.startswith("streams[0].sinks[0]")
    assert "NUL" in message


def test_files_in_missing_directories_are_found_by_validate(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    data = {
        "settings": {"audit_path": str(missing / "audit.jsonl"), "dlq_path": str(missing / "d")},
        "streams": [
            {
                "id": "s",
                "filter": {},
                "sinks": [{"type": "jsonl", "path": str(missing / "s.jsonl")}],
            }
        ],
    }
    with pytest.raises(ConfigFileError) as caught:
        parse_config(data)
    where = [w for w, _ in caught.value.errors]
    assert where == ["settings.dlq_path", "settings.audit_path", "streams[0].sinks[0].path"]
    assert all("does not exist" in m for _, m in caught.value.errors)
    (missing).mkdir()
    assert parse_config(data).settings.audit_path.endswith("audit.jsonl")


def test_deeply_nested_toml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigFileError) as caught:
        load_config(path)
    ((where, message),) = caught.value.errors
    assert where == "(file)"
    assert "nested too deeply" in message or "not valid TOML" in message


def test_sane_values_still_pass() -> None:
    config = parse_config(
        {
            **STREAM,
            "settings": {
                "heartbeat_timeout": 30,  # an int where a float is expected is fine
                "pong_timeout": 2.5,
                "queue_refresh_s": 60,
                "admin_port": 9464,
                "backfill": True,
            },
        }
    )
    assert config.settings.heartbeat_timeout == 30
    assert config.settings.admin_port == 9464


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ({}, "give the cluster's Redis"),
        ({"url": "redis://h:6379/0", "url_env": "X"}, "not both"),
        ({"url": "redis://:pw@h:6379/0"}, "holds credentials"),
        ({"url": "http://h"}, "the url is a http:// URL; give a redis://, rediss://"),
        ({"url": "rediss://h/0?ssl_cert_reqs=none"}, "TLS certificate verification off"),
        ({"url": "redis://h", "lease_ttl_s": 5, "heartbeat_s": 5}, "shorter than lease_ttl_s"),
        ({"url": "redis://h", "lease_ttl_s": 0.5}, "greater than or equal to 1"),
        ({"url": "redis://h", "name": "a|b"}, "should match pattern"),
        ({"url": "redis://h", "instance_id": "{x}"}, "should match pattern"),
    ],
)
def test_a_doubtful_cluster_section_is_an_error(cluster: dict[str, object], expected: str) -> None:
    found = problems({"cluster": cluster})
    assert any(path.startswith("cluster") and expected in text for path, text in found), found


def test_a_cluster_keeps_its_state_in_its_redis_and_refuses_a_file() -> None:
    config = parse_config({**STREAM, "cluster": {"url_env": "MUX_REDIS", "name": "prod"}})
    assert config.cluster is not None
    assert config.state.target({"MUX_REDIS": "redis://h:1/0"}) == "redis://h:1/0"
    assert config.cluster.redis_url("cluster", {"MUX_REDIS": "redis://h:1/0"}) == "redis://h:1/0"
    assert config.cluster.member_id().endswith(f"-{os.getpid()}")
    found = problems({"cluster": {"url": "redis://h"}, "state": {"path": "mine.db"}})
    assert found == (("state.path", found[0][1]),)
    assert "a cluster shares its streams' state" in found[0][1]


def test_each_instance_reads_the_oauth_client_it_is_told_to_use() -> None:
    clients: list[dict[str, object]] = [
        {"name": "a", "id_env": "A_ID", "secret_env": "A_SECRET", "channels": 6},
        {"name": "b", "id_env": "B_ID", "secret_env": "B_SECRET"},
    ]
    config = parse_config({**STREAM, "genesys": {"clients": clients}})
    env = {"A_ID": "id-a", "A_SECRET": "secret-a", "B_ID": "id-b", "B_SECRET": "secret-b"}
    credentials, _ = load_credentials(config.genesys, env, client="b")
    assert (credentials.client_id, credentials.client_secret) == ("id-b", "secret-b")
    with pytest.raises(ConfigError, match=r"'c' is not in \[\[genesys.clients\]\] \(a, b\)"):
        load_credentials(config.genesys, env, client="c")
    with pytest.raises(ConfigError, match="set A_ID and A_SECRET"):
        load_credentials(config.genesys, {}, client="a")
    found = problems({"genesys": {"clients": [clients[0], clients[0]]}})
    assert any("client names must be unique" in text for _, text in found)
    found = problems({"genesys": {"clients": [{**clients[0], "channels": 21}]}})
    assert any(path == "genesys.clients[0].channels" for path, _ in found)


def test_credentials_say_where_each_half_came_from(tmp_path: Path) -> None:
    """For the error that says they were refused: check what was used, not what was not."""
    secrets = tmp_path / "client.toml"
    secrets.write_text('client_id = "file-id"\nclient_secret = "file-secret"\n')
    secrets.chmod(0o600)
    config = parse_config({**STREAM, "genesys": {"secrets_file": str(secrets)}})
    id_env, secret_env = "GENESYSCLOUD_OAUTHCLIENT_ID", "GENESYSCLOUD_OAUTHCLIENT_SECRET"

    from_env, warnings = load_credentials(config.genesys, {id_env: "i", secret_env: "s"})
    assert from_env.source == f"{id_env} and {secret_env}"
    assert warnings == []

    from_file, warnings = load_credentials(config.genesys, {})
    assert (from_file.client_id, from_file.client_secret) == ("file-id", "file-secret")
    assert from_file.source == f"client_id and client_secret in the secrets file {secrets}"
    assert warnings == []

    # A stale variable beside the file: mixed, field by field, and said so.
    mixed, warnings = load_credentials(config.genesys, {secret_env: "stale"})
    assert (mixed.client_id, mixed.client_secret) == ("file-id", "stale")
    assert mixed.source == f"client_id in the secrets file {secrets} and {secret_env}"
    (warning,) = warnings
    assert warning == (
        f"the OAuth client id is client_id in the secrets file {secrets} and its secret "
        f"{secret_env}: make sure they belong to the same client (the environment wins over "
        "the file)"
    )


def test_a_secrets_file_that_is_not_toml_is_said_where_but_not_what(tmp_path: Path) -> None:
    """The TOML error's text may quote the secret: its line and column only."""
    secrets = tmp_path / "client.toml"
    # A character TOML refuses inside the secret: its error text quotes it.
    secrets.write_text('client_id = "demo-client"\nclient_secret = "s3cr\x07t"\n')
    secrets.chmod(0o600)
    config = parse_config({**STREAM, "genesys": {"secrets_file": str(secrets)}})
    with pytest.raises(ConfigError) as caught:
        load_credentials(config.genesys, {})
    assert str(caught.value) == (
        f"cannot read the secrets file {secrets}: TOMLDecodeError at line 2, column 22; "
        "it must be TOML with client_id and client_secret"
    )


def test_our_own_messages_come_without_pydantics_prefix() -> None:
    found = problems({"streams": [{"id": "s", "filter": {}, "sinks": [{"type": "redis"}]}]})
    assert found == (("streams[0].sinks[0]", "give exactly one of url or url_env"),)


def test_a_redis_sink_url_must_be_a_redis_url() -> None:
    found = problems(
        {"streams": [{"id": "s", "filter": {}, "sinks": [{"type": "redis", "url": "http://h"}]}]}
    )
    assert len(found) == 1
    assert found[0][0] == "streams[0].sinks[0]"
    assert found[0][1].startswith("the url is a http:// URL; give a redis://, rediss:// (TLS)")


def test_a_url_env_that_holds_no_redis_url_is_refused_without_quoting_it() -> None:
    config = parse_config({**STREAM, "state": {"url_env": "MUX_STATE"}})
    with pytest.raises(ConfigError) as caught:
        config.state.target({"MUX_STATE": "http://:pw-canary@h:1/0"})
    assert "[state] url_env: MUX_STATE: the url is a http:// URL" in str(caught.value)
    assert "pw-canary" not in str(caught.value)
    # Not a SQLite file named like a URL, as it was before the check.
    assert config.state.target({"MUX_STATE": "unix:///run/redis.sock"}).startswith("unix://")


def test_building_a_file_model_directly_raises_our_error() -> None:
    from genesys_mux.configfile import ClusterSection, RedisSinkSpec, Settings

    with pytest.raises(ConfigFileError) as caught:
        Settings(max_streams=0, colour="red")
    assert [where for where, _ in caught.value.errors] == ["max_streams", "colour"]
    assert str(caught.value).startswith("2 errors in Settings:")
    with pytest.raises(ConfigFileError, match="give exactly one of url or url_env"):
        RedisSinkSpec(type="redis")
    with pytest.raises(ConfigFileError, match="give the cluster's Redis"):
        ClusterSection.model_validate({})
    assert Settings(max_streams=3).max_streams == 3


def test_a_section_that_cannot_be_read_stops_only_its_own_checks(tmp_path: Path) -> None:
    from genesys_mux.configfile import check_config

    path = tmp_path / "mux.toml"
    path.write_text(
        'settings = 5\n[genesys]\nregion = "eu_west_1"\n[[streams]]\nid = "s"\nfilter = {}\n'
        '  [[streams.sinks]]\n  type = "jsonl"\n  path = "no-dir/s.jsonl"\n  fsync = "often"\n'
    )
    report = check_config(path, {})
    assert [where for where, _ in report.problems] == [
        "settings",
        "streams[0].sinks[0].fsync",
        "streams[0].sinks[0].path",
    ]
    assert report.problems[2][1].endswith("does not exist; create it first")
    assert report.not_checked == (
        "[settings]: the directories of dlq_path and audit_path are checked once its problems "
        "are fixed",
    )
    assert report.config is None


def test_an_unknown_key_is_answered_with_the_key_meant_wherever_it_is() -> None:
    """Sections, sinks and clients say what they allow, as a stream's keys do."""
    with pytest.raises(ConfigFileError) as bad:
        parse_config(
            {
                "genesys": {"regoin": "mypurecloud.com"},
                "settings": {"admin_prot": 9464},
                "streams": [
                    {
                        "id": "voice",
                        "filter": {"channelType": "voice"},
                        "sinks": [{"type": "jsonl", "path": "voice.jsonl", "linger": 1}],
                    }
                ],
            }
        )
    errors = dict(bad.value.errors)
    assert errors["genesys.regoin"].startswith("unknown key; did you mean 'region'? allowed keys")
    assert errors["settings.admin_prot"].startswith("unknown key; did you mean 'admin_port'?")
    linger = errors["streams[0].sinks[0].linger"]
    assert linger.startswith("unknown key; did you mean 'linger_s'? allowed keys are ")
    assert "path" in linger
    assert len(errors) == 3


@pytest.mark.parametrize(
    "urls",
    [{}, {"url": "https://crm.example.com/hook", "url_env": "HOOK_URL"}],
    ids=["neither", "both"],
)
def test_a_webhook_sink_takes_its_url_from_the_file_or_the_environment(
    urls: dict[str, str],
) -> None:
    sink = {"type": "webhook", "secret_env": "HOOK_SECRET", **urls}
    found = problems({"streams": [{"id": "s", "filter": {}, "sinks": [sink]}]})
    assert found == (("streams[0].sinks[0]", "give exactly one of url or url_env"),)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("hooks.example.com/tok-canary-31", "is not an http:// or https:// URL"),
        ("ftp://hooks.example.com/tok-canary-31", "is not an http:// or https:// URL"),
        ("http://[::1/hook/tok-canary-31", "the url's host or port cannot be read"),
        ("http://127.0.0.1:99999/tok-canary-31", "the url's host or port cannot be read"),
        ("https://u:p/w-canary@hooks.example.com/x", "percent-encode"),
        ("http://hooks.example.com/tok-canary-31", "plain http:// URL to hooks.example.com"),
    ],
    ids=["no-scheme", "ftp", "bad-ipv6", "bad-port", "raw-userinfo", "plain-http-away"],
)
def test_a_webhook_url_env_holding_what_the_sink_cannot_use_is_named_not_quoted(
    url: str, problem: str
) -> None:
    from genesys_mux.configfile import WebhookSinkSpec

    spec = WebhookSinkSpec(type="webhook", url_env="HOOK_URL", secret_env="HOOK_SECRET")
    found = spec.url_problem(url)
    assert found is not None
    assert found.startswith("HOOK_URL")
    assert problem in found
    assert "canary" not in found
    for usable in ("https://hooks.example.com/tok-canary-31", "http://127.0.0.1:8080/tok"):
        assert spec.url_problem(usable) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example.com:99999/hook", "the url's host or port cannot be read"),
        ("https://[::1/hook", "the url's host or port cannot be read"),
        ("https://u:p/w-canary@hooks.example.com/hook", "percent-encode"),
        ("https://alice:pw-canary@hooks.example.com/hook", "(user info); put the whole URL"),
        ("https://hooks.example.com/hook?token=tk-canary", "query parameter 'token'"),
        ("https://fn.example.net/api/x?code=canary-77", "query parameter 'code'"),
        ("https://hooks.example.com/h?src=g&X-Api-Key=canary", "query parameter 'X-Api-Key'"),
        ("https://acct.example.net/q?sv=2024&sig=canary%2B", "query parameter 'sig'"),
    ],
    ids=["bad-port", "bad-ipv6", "raw-userinfo", "userinfo", "token", "code", "api-key", "sig"],
)
def test_a_webhook_url_in_the_file_that_the_sink_would_refuse_is_refused_at_its_key(
    url: str, problem: str
) -> None:
    sink = {"type": "webhook", "secret_env": "HOOK_SECRET", "url": url}
    ((path, found),) = problems({"streams": [{"id": "s", "filter": {}, "sinks": [sink]}]})
    assert path == "streams[0].sinks[0]"
    assert problem in found
    assert "canary" not in found


def test_a_webhook_url_in_the_file_may_carry_a_plain_query() -> None:
    for url in ("https://hooks.example.com/hook?source=genesys&v=2", "https://h.example.com/k"):
        sink = {"type": "webhook", "secret_env": "HOOK_SECRET", "url": url}
        config = parse_config({**STREAM, "streams": [{"id": "s", "filter": {}, "sinks": [sink]}]})
        assert config.sinks["s"][0].url == url  # type: ignore[union-attr]


def test_a_sink_without_a_type_is_told_which_types_there_are() -> None:
    sink = {"url": "https://hooks.example.com/hook", "secret_env": "HOOK_SECRET"}
    found = problems({"streams": [{"id": "s", "filter": {}, "sinks": [sink]}]})
    assert found == (
        (
            "streams[0].sinks[0].type",
            "missing: every sink names its type, one of jsonl, nats, redis, stdout, webhook",
        ),
    )


def test_a_sink_variable_set_but_empty_is_told_from_one_not_set() -> None:
    from genesys_mux.configfile import check_environment

    sink = {"type": "webhook", "url": "https://hooks.example.com/h", "secret_env": "HOOK_SECRET"}
    config = parse_config({**STREAM, "streams": [{"id": "s", "filter": {}, "sinks": [sink]}]})
    base = {"GENESYSCLOUD_OAUTHCLIENT_ID": "x", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "y"}
    for env, state in (({}, "is not set"), ({"HOOK_SECRET": ""}, "is set but empty")):
        _, warnings = check_environment(config, {**base, **env})
        assert (
            f"streams[0].sinks[0].secret_env: HOOK_SECRET {state} here (sink webhook of stream "
            "s); it must hold the sink's value where genesys-mux runs"
        ) in warnings, warnings


def test_a_value_of_the_wrong_type_is_echoed_as_read() -> None:
    """TOML's quotes make "9464" a string; the message shows what was read."""
    assert problems({"settings": {"admin_port": "9464"}}) == (
        ("settings.admin_port", "Input should be a valid integer (got '9464')"),
    )
    ((where, message),) = problems({"settings": {"backfill": "yes please"}})
    assert where == "settings.backfill"
    assert message.endswith("(got 'yes please')")
