"""A cluster's Redis that does not answer: each command names the key to fix, in its own words.

Without a ``[state]`` section the state is kept in the cluster's Redis, so
``run`` sends the operator to ``[cluster] url``, not to a ``[state]`` the
file does not have; ``cluster status`` only reads, so it does not speak of
what a running instance does about the outage.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.cli.conftest import run_cli
from tests.sinks.conftest import free_port

CREDENTIALS = {"GENESYSCLOUD_OAUTHCLIENT_ID": "x", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "y"}


def config(redis: str, state: str = "") -> str:
    return (
        '[genesys]\nbase_url = "http://127.0.0.1:9"\n'
        '[settings]\ndlq_path = "dlq.jsonl"\n'
        f'[cluster]\n{redis}\nname = "cc"\n{state}'
        '[[streams]]\nid = "voice"\nfilter = { channelType = "voice" }\n'
    )


async def test_each_command_names_the_key_that_names_the_unreachable_redis(
    tmp_path: Path,
) -> None:
    # A port nothing listens on: the connection is refused at once.
    url = f"redis://127.0.0.1:{free_port()}/0"
    for name, text in {
        "cluster.toml": config(f'url = "{url}"'),
        "cluster-env.toml": config('url_env = "CLUSTER_REDIS"'),
        "state.toml": config(
            f'url = "{url}"', state=f'[state]\nurl = "{url.replace("/0", "/1")}"\n'
        ),
    }.items():
        (tmp_path / name).write_text(text)
    env = {**CREDENTIALS, "CLUSTER_REDIS": url}
    args = ("--duration", "5")
    own, by_env, state, status = await asyncio.gather(
        run_cli("run", "-c", "cluster.toml", *args, cwd=tmp_path, env=env),
        run_cli("run", "-c", "cluster-env.toml", *args, cwd=tmp_path, env=env),
        run_cli("run", "-c", "state.toml", *args, cwd=tmp_path, env=env),
        run_cli("cluster", "status", "-c", "cluster.toml", cwd=tmp_path, env=env),
    )
    for result in (own, by_env, state, status):
        assert result.code == 2, result.why()
        assert "Traceback" not in result.output
    assert "or fix [cluster] url (the state is kept in the cluster's Redis)" in own.stderr, (
        own.why()
    )
    assert "[state]" not in own.output
    assert "or fix [cluster] url_env" in by_env.stderr, by_env.why()
    # A [state] of its own is the one to fix.
    assert "or fix [state] url" in state.stderr, state.why()
    assert "[cluster]" not in state.output
    # A query changes nothing and forwards nothing.
    assert "cannot check the server" in status.stderr, status.why()
    assert "check that Redis runs there" in status.stderr
    assert "forwarding" not in status.output
