"""What genesys-mux asks of a Redis server: one URL policy for the state, a cluster and the sink.

Every URL here carries a canary password: no message may show any piece of
it, whichever role refuses the URL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from genesys_mux.configfile import check_config, parse_config
from genesys_mux.errors import ConfigError
from genesys_mux.sinks.redis_streams import RedisStreamsSink
from genesys_mux.state import RedisStateStore
from genesys_mux.state.redis import redis_name as redis_name_of_the_store
from genesys_mux.state.redis_server import connect, redis_name, redis_url_problem
from tests.cli.conftest import run_cli

PASSWORD = "Secr3t#Wq8zX"
#: The pieces a URL with the password not percent-encoded may be cut into.
PIECES = ("Secr3t", "Wq8zX")

#: URLs every role refuses, and words the refusal says.
REFUSED = {
    "password not percent-encoded": (
        f"redis://mux:{PASSWORD}@127.0.0.1:16390/3",
        "percent-encode",
    ),
    "password with a slash": ("redis://mux:Secr3t/Wq8zX@127.0.0.1:16390/3", "percent-encode"),
    "port not a number": ("redis://mux:Secr3tWq8zX@127.0.0.1:63x9/0", "port is not a number"),
    "port too large": ("redis://mux:Secr3tWq8zX@127.0.0.1:99999/0", "port is not a number"),
    "not redis": ("http://mux:Secr3tWq8zX@127.0.0.1:6379/0", "the url is a http:// URL"),
    "sentinel": (
        "redis+sentinel://mux:Secr3tWq8zX@127.0.0.1:26379/mymaster",
        "does not support Sentinel",
    ),
    "TLS verification off": (
        "rediss://mux:Secr3tWq8zX@127.0.0.1:6380/0?ssl_cert_reqs=none",
        "TLS certificate verification off",
    ),
    "TLS verification optional": (
        "rediss://mux:Secr3tWq8zX@127.0.0.1:6380/0?ssl_cert_reqs=optional",
        "TLS certificate verification off",
    ),
    "host name check off": (
        "rediss://mux:Secr3tWq8zX@127.0.0.1:6380/0?ssl_check_hostname=false",
        "host name check off",
    ),
    "verify flags weakened": (
        "rediss://mux:Secr3tWq8zX@127.0.0.1:6380/0?ssl_exclude_verify_flags=VERIFY_X509_STRICT",
        "weakens TLS certificate verification",
    ),
    "TLS option without TLS": (
        "redis://mux:Secr3tWq8zX@127.0.0.1:6379/0?ssl_ca_certs=/etc/ca.pem",
        "TLS needs rediss://",
    ),
    "unknown option": (
        "redis://mux:Secr3tWq8zX@127.0.0.1:6379/0?decode_responses=true",
        "the query option decode_responses, which genesys-mux does not pass",
    ),
    "database not a number": (
        "redis://mux:Secr3tWq8zX@127.0.0.1:6379/zero",
        "not a database number",
    ),
}


def assert_no_password(text: str) -> None:
    for piece in ("Secr3tWq8zX", *PIECES):
        assert piece not in text, text


@pytest.mark.parametrize(("url", "words"), list(REFUSED.values()), ids=list(REFUSED))
def test_every_role_refuses_the_same_urls_with_the_same_words(url: str, words: str) -> None:
    problem = redis_url_problem(url)
    assert problem is not None
    assert words in problem
    assert_no_password(problem)
    refusals = []
    with pytest.raises(ConfigError) as caught:
        RedisStateStore(url)
    refusals.append(str(caught.value))
    with pytest.raises(ConfigError) as caught:
        RedisStreamsSink(url, name="events")
    refusals.append(str(caught.value))
    with pytest.raises(ConfigError) as caught:
        connect(url, "[cluster]")  # how the cluster's client is made
    refusals.append(str(caught.value))
    config = parse_config(
        {"streams": [{"id": "s", "filter": {}}], "cluster": {"url_env": "MUX_REDIS"}}
    )
    assert config.cluster is not None
    env = {"MUX_REDIS": url}
    with pytest.raises(ConfigError) as caught:
        config.state.target(env)
    refusals.append(str(caught.value))
    with pytest.raises(ConfigError) as caught:
        config.cluster.redis_url("cluster", env)
    refusals.append(str(caught.value))
    for refusal in refusals:
        assert refusal.endswith(problem), refusal
        assert_no_password(refusal)
    assert refusals[0].startswith("the Redis state store: ")
    assert refusals[1].startswith("Redis sink events: ")
    assert refusals[2].startswith("[cluster]: ")
    assert refusals[3].startswith("[state] url_env: MUX_REDIS: ")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1",
        "redis://mux:Secr3t%23Wq8zX@127.0.0.1:16390/3",
        "rediss://cache.example.com:6380/1?ssl_ca_certs=/etc/genesys-mux/ca.pem",
        "rediss://cache.example.com/0?ssl_cert_reqs=required&ssl_check_hostname=true",
        "redis://127.0.0.1/0?socket_timeout=2.5&client_name=mux&health_check_interval=30",
        "unix:///run/redis/redis.sock?db=2",
    ],
)
def test_urls_the_policy_takes(url: str) -> None:
    assert redis_url_problem(url) is None
    RedisStateStore(url)
    RedisStreamsSink(url)


def test_a_url_in_the_file_is_held_to_the_same_policy() -> None:
    url = "rediss://cache.example.com:6380/0?ssl_cert_reqs=none"
    for data in (
        {"state": {"url": url}},
        {"cluster": {"url": url}},
        {"streams": [{"id": "s", "filter": {}, "sinks": [{"type": "redis", "url": url}]}]},
    ):
        with pytest.raises(ConfigError) as caught:
            parse_config({"streams": [{"id": "s", "filter": {}}], **data})
        assert str(redis_url_problem(url)) in str(caught.value)
    # A unix socket is as good for the state as for a sink.
    config = parse_config({"streams": [{"id": "s", "filter": {}}], "state": {"url": "unix:///r.s"}})
    assert config.state.target() == "unix:///r.s"


@given(st.text(max_size=80))
def test_redis_name_never_raises_and_shows_no_password(tail: str) -> None:
    for url in (tail, f"redis://{tail}", f"redis://mux:{PASSWORD}@{tail}", f"rediss://{tail}:x"):
        name = redis_name(url)
        assert name.startswith("redis:")
        assert_no_password(name)


def test_redis_name_keeps_host_port_and_database_only() -> None:
    assert redis_name_of_the_store is redis_name  # still importable where it was
    assert redis_name("redis://mux:pw@cache:6380/3?ssl_ca_certs=/ca.pem") == "redis:cache:6380/3"
    assert redis_name("redis://cache") == "redis:cache:6379"
    assert redis_name("unix:///run/redis.sock?db=1") == "redis:unix:/run/redis.sock"
    assert redis_name(f"redis://mux:{PASSWORD}@127.0.0.1:16390/3") == (
        "redis:<a url that cannot be read>"
    )


async def test_validate_refuses_it_and_the_commands_say_so_in_one_line(tmp_path: Path) -> None:
    """The audit's case: validate passed it, then ``state show`` crashed with a piece of it."""
    (tmp_path / "mux.toml").write_text(
        '[genesys]\nregion = "eu_west_1"\n[[streams]]\nid = "calls"\nfilter = {}\n'
        '[state]\nurl_env = "STATE_REDIS_FOR_THIS_TEST"\n'
    )
    env = {
        "STATE_REDIS_FOR_THIS_TEST": f"redis://mux:{PASSWORD}@127.0.0.1:16390/3",
        "GENESYSCLOUD_OAUTHCLIENT_ID": "id",
        "GENESYSCLOUD_OAUTHCLIENT_SECRET": "secret",
    }
    report = check_config(tmp_path / "mux.toml", env)
    assert [where for where, _ in report.problems] == ["state.url_env"]
    assert "percent-encode" in report.problems[0][1]
    # Each stops at the unreadable URL: run side by side.
    results = await asyncio.gather(
        *(
            run_cli(*args, "-c", "mux.toml", cwd=tmp_path, env=env)
            for args in (("validate",), ("state", "show"), ("run", "--duration", "1"))
        )
    )
    for result in results:
        assert result.code in (1, 2), result.why()
        assert "Traceback" not in result.output, result.why()
        assert "percent-encode" in result.output, result.why()
        assert_no_password(result.output)
