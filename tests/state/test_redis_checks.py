"""The checks every Redis of genesys-mux gets at open, against real redis-servers.

The state store, a cluster's lease table and the Redis Streams sink each
refuse a Redis Cluster and a server that may evict any key, in the same
words naming their role; and a command the URL's user may not run (an ACL)
is told as the configuration problem it is, with what to grant, by an
error of the role's own kind that is also a ``RedisPermissionError``.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from genesys_mux.cluster import LeaseTable, MemberInfo
from genesys_mux.core.checkpoint import Remembered, StreamCheckpoint
from genesys_mux.emulator import ClientApp, Emulator
from genesys_mux.errors import (
    ClusterError,
    ClusterPermissionError,
    GenesysMuxError,
    RedisPermissionError,
    SinkError,
    SinkPermissionError,
    StateError,
    StatePermissionError,
)
from genesys_mux.sinks.redis_streams import RedisStreamsSink
from genesys_mux.state import RedisStateStore
from genesys_mux.state.redis_server import (
    CHECK_COMMANDS,
    CLUSTER,
    SINK,
    STATE,
    connect,
    redis_name,
)
from tests.cli.conftest import run_cli
from tests.cli.test_run import DEMO_CREDENTIALS
from tests.net.test_multiplexer import org_settings
from tests.sinks.conftest import RedisServer, a_gap, free_port, real_events

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
ROLES = ("state", "cluster", "sink")


@pytest.fixture
def cluster_enabled_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server in cluster mode, one node holding every slot.

    It answers every key as a standalone server would, so a refusal is
    the check's, not a MOVED or CROSSSLOT reply.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    directory = tmp_path / "redis-cluster"
    directory.mkdir()
    options = (
        *("--cluster-enabled", "yes", "--cluster-config-file", str(directory / "nodes.conf")),
        # Its bus on a port of its own: by default the port + 10000, which
        # a free port above 55535 does not have.
        *("--cluster-port", str(free_port())),
    )
    server = RedisServer(binary, free_port(), directory, options)
    server.start_sync()
    try:
        client = redis.Redis.from_url(server.url)
        client.cluster("ADDSLOTSRANGE", "0", "16383")
        client.close()
        yield server
    finally:
        server.stop_sync(save=False)


def a_user(server: RedisServer, name: str, *rules: str) -> str:
    """Create the ACL user ``name`` (password ``pw``) with ``rules``; its URL."""
    client = redis.Redis.from_url(server.url)
    try:
        cast(Any, client).execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", *rules)
    finally:
        client.close()
    return f"redis://{name}:pw@127.0.0.1:{server.port}/0"


async def opened(role: str, url: str) -> GenesysMuxError | None:
    """What the role raises when it opens on the server at ``url`` (None: it opened)."""
    try:
        if role == "state":
            store = RedisStateStore(url, prefix="genesys-mux:")
            try:
                await store.open()
            finally:
                await store.close()
        elif role == "cluster":
            async with lease_table(url) as table:
                await table.check_server()
        else:
            sink = RedisStreamsSink(url, name="events", fence=1, dedupe_ttl_s=60)
            try:
                await sink.start()
            finally:
                await sink.close()
    except GenesysMuxError as exc:
        return exc
    return None


@asynccontextmanager
async def lease_table(url: str, instance: str = "a") -> AsyncIterator[LeaseTable]:
    """A lease table on the server at ``url``, as ``run`` makes it."""
    client = connect(url, "[cluster]", socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        yield LeaseTable(client, cluster="c", instance=instance, where=redis_name(url))
    finally:
        await client.aclose()


def keys(server: RedisServer) -> list[bytes]:
    client = redis.Redis.from_url(server.url)
    try:
        return cast(list[bytes], client.keys("*"))
    finally:
        client.close()


# -- Redis Cluster ------------------------------------------------------------------


async def test_a_redis_cluster_is_refused_by_every_role_before_anything_is_written(
    cluster_enabled_redis: RedisServer,
) -> None:
    url = cluster_enabled_redis.url
    kinds = {"state": StateError, "cluster": ClusterError, "sink": SinkError}
    names = {"state": STATE.name, "cluster": CLUSTER.name, "sink": SINK.name}
    for role in ROLES:
        refused = await opened(role, url)
        assert isinstance(refused, kinds[role]), (role, refused)
        message = str(refused)
        assert "genesys-mux does not support Redis Cluster for " + names[role] in message
        assert "standalone Redis server, or a primary with replicas" in message
        assert f"redis:127.0.0.1:{cluster_enabled_redis.port}/0" in message
    refused = await opened("sink", url)
    assert isinstance(refused, SinkError)
    assert not refused.retryable
    assert keys(cluster_enabled_redis) == []


# -- eviction -------------------------------------------------------------------------


def set_policy(server: RedisServer, policy: str) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        client.config_set("maxmemory-policy", policy)
    finally:
        client.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random"])
async def test_a_redis_that_may_evict_any_key_is_refused_by_every_role(
    redis_server: RedisServer, policy: str
) -> None:
    set_policy(redis_server, policy)
    names = {"state": STATE.name, "cluster": CLUSTER.name, "sink": SINK.name}
    for role in ROLES:
        refused = await opened(role, redis_server.url)
        assert refused is not None, role
        message = str(refused)
        # One shape, naming the role.
        assert f"(maxmemory-policy {policy}), and the keys of {names[role]} must never" in message
        assert "set maxmemory-policy to noeviction" in message
    assert keys(redis_server) == [], "nothing was written"


async def test_under_volatile_policies_a_cluster_warns_that_its_leases_may_go(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    set_policy(redis_server, "volatile-lru")
    with caplog.at_level(logging.WARNING, logger="genesys_mux.redis"):
        for role in ROLES:
            assert await opened(role, redis_server.url) is None, role
    warned = [r.getMessage() for r in caplog.records if r.name == "genesys_mux.redis"]
    assert len(warned) == 1, warned
    assert "a cluster's leases and member keys have one" in warned[0]
    caplog.clear()
    set_policy(redis_server, "noeviction")
    with caplog.at_level(logging.WARNING, logger="genesys_mux.redis"):
        for role in ROLES:
            assert await opened(role, redis_server.url) is None, role
    assert [r for r in caplog.records if r.name == "genesys_mux.redis"] == []


async def test_a_server_that_will_not_say_is_warned_about_and_used(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = a_user(redis_server, "quiet", "~*", "+@all", "-info", "-config")
    with caplog.at_level(logging.WARNING, logger="genesys_mux.redis"):
        for role in ROLES:
            assert await opened(role, url) is None, role
    warned = [r.getMessage() for r in caplog.records if r.name == "genesys_mux.redis"]
    assert len(warned) == 3, warned
    for message in warned:
        assert "cannot tell whether it runs as a Redis Cluster" in message
        assert "nor its maxmemory-policy" in message


# -- permissions ----------------------------------------------------------------------


def documented_acl() -> list[str]:
    """The words of the documentation's ``ACL SETUSER`` for one user of all three roles."""
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(r"```sh\n(redis-cli ACL SETUSER .*?)\n```", text, re.DOTALL)
    assert found is not None, "the ACL example is gone from docs/configuration.md"
    words = shlex.split(found[1].replace("\\\n", " "))
    assert words[:4] == ["redis-cli", "ACL", "SETUSER", "genesys-mux"]
    return words[4:]


def test_the_documented_permissions_are_what_the_roles_run() -> None:
    granted = {w[1:] for w in documented_acl() if w.startswith("+")}
    needed = {*STATE.commands, *CLUSTER.commands, *SINK.commands, *CHECK_COMMANDS}
    assert granted == needed | {"select"}
    table = DOCS.read_text(encoding="utf-8")
    for role in (STATE, CLUSTER, SINK):
        row = next(line for line in table.splitlines() if line.startswith(f"| {role.name} |"))
        listed = re.findall(r"`([a-z ]+)`", row.split("|")[2])
        assert [c.replace(" ", "|") for c in listed] == list(role.commands), role.name


def checkpoint(next_sequence: int, *, complete: bool = True) -> StreamCheckpoint:
    memory = [Remembered(f"c{i}", 1000.0 + i, b"\x01" * 8, True, i) for i in range(3)]
    return StreamCheckpoint(
        "calls", "f", next_sequence, 1.0, "run-1", 2.0, memory, complete=complete, fence=2
    )


async def test_a_user_with_the_documented_permissions_runs_every_role(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = a_user(redis_server, "genesys-mux", *(w for w in documented_acl() if w != ">PASSWORD"))
    with caplog.at_level(logging.WARNING, logger="genesys_mux.redis"):
        # As a cluster's instance opens it: its cluster's name goes in the metadata.
        store = RedisStateStore(url, cluster="docs")
        await store.open()
        try:
            await store.claim("calls", 2)
            await store.save([checkpoint(5)])
            await store.save([checkpoint(6, complete=False)])
            assert (await store.load())["calls"].next_sequence == 6
            await store.remove(["calls"])
            await store.save([checkpoint(7)])
            assert (await store.move_aside()).startswith(store.name)
        finally:
            await store.close()
        async with lease_table(url) as table, lease_table(url, "b") as other:
            await table.check_server()
            await table.heartbeat(MemberInfo("a", "default", 1.0))
            await other.heartbeat(MemberInfo("b", "default", 1.0))
            assert [m.id for m in await table.members()] == ["a", "b"]
            lease = await table.acquire("calls")
            assert lease is not None
            assert await table.renew([lease]) == []
            assert await table.holders(["calls"]) == {"calls": "a"}
            assert "calls" in await table.leases(["calls"])
            assert await other.signal_ready("calls")
            assert await table.ready_for(["calls"]) == {"calls": "b"}
            assert await table.promise(lease, "b")
            assert await other.promised_here("calls")
            assert not await other.withdraw_ready("calls")
            assert await table.release(lease)
            await other.clear_ready("calls")
            assert await table.fence("calls") == lease.token
            await table.leave()
        for fence in (0, 3):
            sink = RedisStreamsSink(url, name="events", fence=fence, dedupe_ttl_s=60 * fence)
            await sink.start()
            try:
                await sink.send([*real_events(3, "calls"), a_gap("calls")])
            finally:
                await sink.close()
    assert [r.getMessage() for r in caplog.records if r.name == "genesys_mux.redis"] == []


async def test_a_user_that_may_not_run_scripts_is_told_what_to_grant_at_open(
    redis_server: RedisServer,
) -> None:
    url = a_user(redis_server, "noscripts", "~*", "+@all", "-@scripting")
    kinds = {
        "state": StatePermissionError,
        "cluster": ClusterPermissionError,
        "sink": SinkPermissionError,
    }
    for role, grant in zip(ROLES, (STATE, CLUSTER, SINK), strict=True):
        refused = await opened(role, url)
        assert isinstance(refused, kinds[role]), (role, refused)
        assert isinstance(refused, RedisPermissionError)
        message = str(refused)
        assert "Redis refused the command SCRIPT|LOAD to the url's user" in message
        assert "not an outage" in message
        assert " ".join(f"+{c}" for c in grant.commands) in message
        assert "cannot reach" not in message
        assert ":pw@" not in message
    refused = await opened("sink", url)
    assert isinstance(refused, SinkError)
    assert not refused.retryable
    # The cluster's error is a ClusterError too: a member that knows no
    # better treats it as an outage, and stops what it cannot prove it owns.
    assert issubclass(ClusterPermissionError, ClusterError)


async def test_keys_outside_the_users_pattern_are_a_permission_error(
    redis_server: RedisServer,
) -> None:
    url = a_user(redis_server, "otherkeys", "~other:*", "+@all")
    refused = await opened("state", url)
    assert isinstance(refused, StatePermissionError)
    assert (
        "cannot open the state store: Redis refused access to a key under genesys-mux:state*"
        in str(refused)
    )
    async with lease_table(url) as table:
        await table.check_server()  # the server's checks and the scripts touch no key
        with pytest.raises(ClusterPermissionError) as caught:
            await table.heartbeat(MemberInfo("a", "default", 1.0))
    assert "cannot heartbeat: Redis refused access to a key under genesys-mux:cluster:{c}:*" in str(
        caught.value
    )
    for fence in (0, 1):
        sink = RedisStreamsSink(url, name="events", fence=fence, dedupe_ttl_s=60 * fence)
        await sink.start()
        try:
            with pytest.raises(SinkPermissionError) as refused_batch:
                await sink.send(real_events(2, "calls"))
        finally:
            await sink.close()
        assert not refused_batch.value.retryable
        assert "sink events: redis:127.0.0.1:" in str(refused_batch.value)
        assert "cannot send a batch: Redis refused access to a key under genesys-mux:*" in str(
            refused_batch.value
        )


async def test_a_command_refused_inside_a_script_is_a_permission_error(
    redis_server: RedisServer,
) -> None:
    # RENAME, which only the state's commit script runs; TIME, which only the
    # cluster's acquisition script runs: refused inside the script.
    url = a_user(redis_server, "partial", "~*", "+@all", "-rename", "-time")
    store = RedisStateStore(url)
    await store.open()
    try:
        with pytest.raises(StatePermissionError) as caught:
            await store.save([checkpoint(5)])
    finally:
        await store.close()
    assert "cannot write the state: Redis refused a command of genesys-mux's script" in str(
        caught.value
    )
    assert "+rename" in str(caught.value)
    async with lease_table(url) as table:
        await table.check_server()
        with pytest.raises(ClusterPermissionError) as refused:
            await table.acquire("calls")
    assert "cannot acquire the lease of calls: Redis refused a command" in str(refused.value)
    assert "+time" in str(refused.value)


# -- the command line -----------------------------------------------------------------


async def test_run_and_cluster_status_stop_on_a_cluster_redis_they_cannot_use(
    cluster_enabled_redis: RedisServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The state is usable, the cluster's Redis is not: the run stops before joining."""
    (tmp_path / "mux.toml").write_text(
        f'[settings]\ndlq_path = "dlq.jsonl"\n[state]\nurl = "{redis_server.url}"\n'
        f'[cluster]\nurl = "{cluster_enabled_redis.url}"\nname = "t"\n'
        '[[streams]]\nid = "s"\nfilter = {}\n'
    )
    expected = "genesys-mux does not support Redis Cluster for a cluster"
    async with Emulator(org_settings(clients=[ClientApp("demo-client", "demo-secret")])) as org:
        ran = await run_cli(
            *("run", "-c", "mux.toml", "--base-url", org.base_url, "--duration", "20"),
            env=DEMO_CREDENTIALS,
            cwd=tmp_path,
        )
    assert ran.code == 2, ran.why()
    assert expected in ran.output, ran.why()
    assert "Traceback" not in ran.output, ran.why()
    shown = await run_cli("cluster", "status", "-c", "mux.toml", cwd=tmp_path)
    assert shown.code == 2, shown.why()
    assert expected in shown.output, shown.why()
    assert keys(cluster_enabled_redis) == []
