"""``genesys-mux run`` as a cluster: two processes, one configuration, one Redis.

Each stream is carried by exactly one process at a time (its lease in
Redis); a process stopped with SIGTERM hands its streams over to the other,
make-before-break: the Redis stream sink shows numbering that continues
across the handover and no record delivered twice.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import tomllib
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis

from genesys_mux.cli.runtime import Runtime
from genesys_mux.configfile import Credentials, parse_config
from genesys_mux.core.checkpoint import decode_checkpoint
from genesys_mux.emulator import ClientApp, Emulator
from genesys_mux.sinks.base import EventRecord, GapRecord, decode_record
from tests.cli.conftest import communicating, run_cli, start_cli
from tests.cli.test_run import DEMO_CREDENTIALS
from tests.net.test_multiplexer import org_settings
from tests.sinks.conftest import RedisServer, free_port
from tests.state.test_redis_checks import a_user

STREAMS = ("s0", "s1", "s2", "s3")
DEADLINE_S = 30.0


def cluster_config(redis_url: str) -> str:
    streams = "".join(
        f"""
[[streams]]
id = "{stream_id}"
filter = {{}}

  [[streams.sinks]]
  type = "redis"
  url = "{redis_url}"
  prefix = "out:"
"""
        for stream_id in STREAMS
    )
    return f"""\
[settings]
dlq_path = "dlq.jsonl"

[cluster]
url = "{redis_url}"
name = "t"
lease_ttl_s = 2
heartbeat_s = 0.3
{streams}"""


def holders(client: redis.Redis) -> dict[str, str]:
    """Each stream's lease holder, as Redis has it."""
    found = {}
    for stream_id in STREAMS:
        value = cast(bytes | None, client.get(f"genesys-mux:cluster:{{t}}:lease:{stream_id}"))
        if value is not None:
            found[stream_id] = value.decode().rpartition("|")[0]
    return found


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check()`` towards a deadline (the processes are elsewhere: nothing to await)."""
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        await asyncio.sleep(0.1)  # polling towards a deadline, not synchronisation


def records(client: redis.Redis, stream_id: str) -> list[EventRecord | GapRecord]:
    stored = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(f"out:{stream_id}"))
    return [decode_record(fields[b"record"]) for _, fields in stored]


async def test_two_processes_share_the_streams_and_hand_over_on_sigterm(
    emulator: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "mux.toml").write_text(cluster_config(redis_server.url))
    client = redis.Redis.from_url(redis_server.url)
    args = ("run", "-c", "mux.toml", "--base-url", emulator.base_url, "--admin-port")
    ports = [free_port(), free_port()]
    processes = [
        await start_cli(*args, str(port), env=DEMO_CREDENTIALS, cwd=tmp_path) for port in ports
    ]
    try:
        first, second = processes
        await until(
            lambda: len(holders(client)) == 4 and len(set(holders(client).values())) == 2,
            "both processes carry streams",
        )
        by_process = {str(p.pid): p for p in processes}
        assert all(h.endswith(tuple(by_process)) for h in holders(client).values())
        await until(
            lambda: all(len(records(client, s)) >= 5 for s in STREAMS), "records in every stream"
        )
        # `cluster status` reads the same from Redis.
        shown = await run_cli("cluster", "status", "-c", "mux.toml", "--json", cwd=tmp_path)
        assert shown.code == 0, shown.why()
        status = json.loads(shown.stdout)
        assert sorted(m["id"].rpartition("-")[2] for m in status["members"]) == sorted(
            str(p.pid) for p in processes
        )
        # Each carries streams on channels of its own, added up by OAuth client.
        assert all(m["channels"] >= 1 for m in status["members"])
        assert status["clients"] == {
            m["client"]: {"channels": sum(x["channels"] for x in status["members"]), "budget": 20}
            for m in status["members"]
        }
        for row in status["streams"]:
            assert row["holder"] == holders(client)[row["stream_id"]] == row["placed_on"]
            assert row["token"] >= 1
            # An all-queues stream weighs the org's queues, as the members count them.
            assert row["weight"] == len(emulator.centre.queues) > 1
        # Each instance says what it carries, and is ready.
        async with aiohttp.ClientSession() as session:
            for port, process in zip(ports, processes, strict=True):
                mine = {s for s, h in holders(client).items() if h.endswith(str(process.pid))}
                async with session.get(f"http://127.0.0.1:{port}/status") as resp:
                    status = await resp.json()
                assert set(status["cluster"]["held"]) == mine
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    assert resp.status == 200, await resp.text()
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = await resp.text()
                assert f"genesys_mux_cluster_leases_held {float(len(mine))}" in text
        # SIGTERM: the first process hands its streams to the second.
        first.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(first.communicate(), DEADLINE_S)
        assert first.returncode == 0, err.decode()[-3000:]
        # Its audit log says what it took and what it handed over.
        assert "LEASE_ACQUIRED" in err.decode()
        assert "LEASE_RELEASED" in err.decode()
        await until(
            lambda: (
                len(holders(client)) == 4
                and all(h.endswith(str(second.pid)) for h in holders(client).values())
            ),
            "the second process carries every stream",
        )
        counts = {s: len(records(client, s)) for s in STREAMS}
        await until(
            lambda: all(len(records(client, s)) >= counts[s] + 5 for s in STREAMS),
            "every stream delivers after the handover",
        )
    finally:
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(process.communicate(), DEADLINE_S)
    for stream_id in STREAMS:
        found = records(client, stream_id)
        events = [r for r in found if isinstance(r, EventRecord)]
        # Nothing delivered twice, and no window without an owner.
        keys = [e.idempotency_key for e in events]
        assert len(keys) == len(set(keys)), stream_id
        gaps = [r for r in found if isinstance(r, GapRecord)]
        assert gaps == [], (stream_id, gaps)
        # Numbering continues across owners (each run has its own epoch).
        by_epoch: dict[str, list[int]] = defaultdict(list)
        for event in events:
            by_epoch[event.epoch].append(event.sequence)
        sequences = [e.sequence for e in events]
        assert sequences == list(range(1, len(sequences) + 1)), (stream_id, dict(by_epoch))
    client.close()


async def test_cluster_status_needs_a_cluster_section(tmp_path: Path) -> None:
    (tmp_path / "mux.toml").write_text('[[streams]]\nid = "s"\nfilter = {}\n')
    shown = await run_cli("cluster", "status", "-c", "mux.toml", cwd=tmp_path)
    assert shown.code == 2, shown.why()
    assert "has no [cluster] section" in shown.output


TWO_CLIENTS = {
    "GENESYS_A_ID": "client-a",
    "GENESYS_A_SECRET": "secret-a",
    "GENESYS_B_ID": "client-b",
    "GENESYS_B_SECRET": "secret-b",
}


def budget_config(redis_url: str, users: list[str]) -> str:
    """Four streams of 4 user topics and one of 12; two channels' worth of topics each... at 2."""
    groups = {f"s{i}": users[4 * i : 4 * i + 4] for i in range(4)}
    groups["huge"] = users[16:28]
    streams = "".join(
        f'\n[[streams]]\nid = "{stream_id}"\n'
        f"topics = {json.dumps([f'v2.users.{u}.conversations' for u in ids])}\n"
        for stream_id, ids in groups.items()
    )
    return f"""\
[genesys]
[[genesys.clients]]
name = "a"
id_env = "GENESYS_A_ID"
secret_env = "GENESYS_A_SECRET"
channels = 6

[[genesys.clients]]
name = "b"
id_env = "GENESYS_B_ID"
secret_env = "GENESYS_B_SECRET"
channels = 4

[settings]
dlq_path = "dlq.jsonl"
topics_per_channel = 2

[cluster]
url = "{redis_url}"
name = "budgets"
lease_ttl_s = 2
heartbeat_s = 0.3
{streams}"""


async def test_two_oauth_clients_each_keep_to_their_channel_budget(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """At 2 topics a channel, a may use 6 channels and b 4 (its platform allows 5).

    Four streams of 4 topics: a can carry two (4 channels and a spare), b
    only one (2 and a spare); balance alone would give each two. The fourth
    and a stream of 12 topics fit nowhere and are reported.
    """
    settings = org_settings(
        agents=28,
        rate=5.0,
        clients=[ClientApp("client-a", "secret-a"), ClientApp("client-b", "secret-b", channels=5)],
    )
    async with Emulator(settings) as emulator:
        users = [u["id"] for u in emulator.centre.org()["users"]]
        (tmp_path / "mux.toml").write_text(budget_config(redis_server.url, users))
        port = free_port()
        args = ("run", "-c", "mux.toml", "--base-url", emulator.base_url)
        a = await start_cli(
            *args, "--admin-port", str(port), env={**TWO_CLIENTS, "GENESYS_MUX_CLIENT": "a"},
            cwd=tmp_path,
        )  # fmt: skip
        b = await start_cli(*args, env={**TWO_CLIENTS, "GENESYS_MUX_CLIENT": "b"}, cwd=tmp_path)
        try:
            shown: dict[str, Any] = {}

            async def placed() -> bool:
                result = await run_cli(
                    "cluster", "status", "-c", "mux.toml", "--json", cwd=tmp_path
                )
                shown.update(json.loads(result.stdout))
                rows = {r["stream_id"]: r for r in shown["streams"]}
                held = [r["holder"] for r in rows.values() if r["holder"]]
                return len(shown["members"]) == 2 and len(held) == 3

            await until_async(placed, "both clients' instances carry their streams")
            rows = {r["stream_id"]: r for r in shown["streams"]}
            clients = {m["id"]: m["client"] for m in shown["members"]}
            per_client: dict[str, int] = defaultdict(int)
            for row in rows.values():
                if row["holder"] is not None:
                    per_client[clients[row["holder"]]] += 4
            assert dict(per_client) == {"a": 8, "b": 4}
            unplaced = {s for s, row in rows.items() if row["unplaced"]}
            assert "huge" in unplaced
            assert len(unplaced) == 2
            assert all("fit on no instance" in rows[s]["unplaced"] for s in unplaced)
            # cluster status adds up each client's channels against its budget.
            assert {c: v["budget"] for c, v in shown["clients"].items()} == {"a": 6, "b": 4}
            assert all(v["channels"] <= v["budget"] for v in shown["clients"].values())
            # Each client stayed within its budget: b below what its platform allows.
            channels: dict[str, int] = defaultdict(int)
            for channel in emulator.platform.channels.values():
                channels[channel.client_id] += 1
            assert channels["client-a"] <= 6
            assert channels["client-b"] <= 3
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/readyz") as resp,
            ):
                assert resp.status == 503
                assert "fit on no instance:" in await resp.text()
            # The instance on a may open a's six channels, not max_channels' 20,
            # and says what it needs from its next round on.
            mine: dict[str, Any] = {}

            async def counted() -> bool:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{port}/status") as resp,
                ):
                    mine.update((await resp.json())["cluster"]["channels"])
                # Its own count first, its client's sum at the end of the same round.
                return bool(1 <= mine["here"] <= mine["client"])

            await until_async(counted, "instance a counts the channels it needs")
            assert (mine["max"], mine["budget"]) == (6, 6)
            assert mine["client"] <= 6
        finally:
            for process in (a, b):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            errs = [await asyncio.wait_for(p.communicate(), DEADLINE_S) for p in (a, b)]
    assert "STREAM_UNPLACED" in errs[0][1].decode()
    assert "secret-a" not in errs[0][1].decode() + errs[1][1].decode()


@pytest.mark.parametrize(
    ("client", "cap"), [("a", 6), ("b", 4), (None, 20)], ids=["a", "b", "no-clients"]
)
def test_an_instance_never_opens_more_channels_than_its_client_may_hold(
    client: str | None, cap: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's own limit is its client's budget, whatever the placement estimated."""
    users = [str(uuid.UUID(int=i + 1)) for i in range(28)]
    text = budget_config("redis://127.0.0.1:6379/0", users)
    if client is None:
        # One client, the default: the pool keeps to max_channels.
        text = text[text.index("[settings]") :]
    config = parse_config(tomllib.loads(text))
    if client is not None:
        monkeypatch.setenv("GENESYS_MUX_CLIENT", client)
    runtime = Runtime(config, Credentials("id", "secret"))
    assert runtime.channel_cap() == cap


async def test_a_member_lets_go_of_the_delivery_tasks_that_ended() -> None:
    """A member starts a delivery task per stream it takes, for weeks: only the running stay.

    One that failed stays too, for the stop to collect its error.
    """
    users = [str(uuid.UUID(int=i + 1)) for i in range(28)]
    config = parse_config(tomllib.loads(budget_config("redis://127.0.0.1:6379/0", users)))
    runtime = Runtime(config, Credentials("id", "secret"))
    release = asyncio.Event()

    async def delivers() -> None:
        await release.wait()

    async def fails() -> None:
        await release.wait()
        raise RuntimeError("a sink's bug")

    running = asyncio.create_task(asyncio.Event().wait())
    ended = [asyncio.create_task(delivers()) for _ in range(100)]
    failed = asyncio.create_task(fails())
    for task in (running, *ended, failed):
        runtime._hold(task)
    assert len(runtime._tasks) == 102
    release.set()
    await asyncio.gather(*ended, failed, return_exceptions=True)
    await asyncio.sleep(0)  # the done callbacks run on the loop's next turn
    assert runtime._tasks == {running, failed}
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await asyncio.sleep(0)
    assert runtime._tasks == {failed}


async def until_async(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        await asyncio.sleep(0.2)  # polling towards a deadline, not synchronisation


async def test_a_frozen_owner_is_fenced_when_it_wakes_up(
    emulator: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGSTOP past the lease, the other takes over, SIGCONT: nothing it writes lands."""
    (tmp_path / "mux.toml").write_text(cluster_config(redis_server.url))
    client = redis.Redis.from_url(redis_server.url)
    ports = [free_port(), free_port()]
    args = ("run", "-c", "mux.toml", "--base-url", emulator.base_url, "--admin-port")
    first = await start_cli(*args, str(ports[0]), env=DEMO_CREDENTIALS, cwd=tmp_path)
    await until(lambda: len(holders(client)) == 4, "the first process carries every stream")
    second = await start_cli(*args, str(ports[1]), env=DEMO_CREDENTIALS, cwd=tmp_path)
    try:
        await until(lambda: len(set(holders(client).values())) == 2, "the second takes its share")
        frozen = {s for s, h in holders(client).items() if h.endswith(str(first.pid))}
        first.send_signal(signal.SIGSTOP)
        # Its leases expire (2 s) and the second fails them over.
        await until(
            lambda: (
                all(h.endswith(str(second.pid)) for h in holders(client).values())
                and len(holders(client)) == 4
            ),
            "the second process carries every stream",
        )
        counts = {s: len(records(client, s)) for s in STREAMS}
        await until(
            lambda: all(len(records(client, s)) > counts[s] for s in frozen),
            "the new owner writes",
        )
        first.send_signal(signal.SIGCONT)
        # It wakes up, finds it lost its leases and rejoins as a member.
        async with aiohttp.ClientSession() as session:

            async def rejoined() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{ports[0]}/status") as resp:
                        status = await resp.json()
                except aiohttp.ClientError:
                    return False
                return "lost" in status["cluster"]["changes"]

            await until_async(rejoined, "the woken process learns it lost its leases")
    finally:
        for process in (first, second):
            if process.returncode is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        outputs = [await asyncio.wait_for(p.communicate(), DEADLINE_S) for p in (first, second)]
    woken = outputs[0][1].decode()
    assert "LEASE_LOST" in woken
    for stream_id in STREAMS:
        events = [r for r in records(client, stream_id) if isinstance(r, EventRecord)]
        keys = [e.idempotency_key for e in events]
        # Nothing stored twice, whatever the woken process tried to write.
        assert len(keys) == len(set(keys)), stream_id
        if stream_id in frozen:
            # Once the new owner wrote, nothing of the frozen one's run lands
            # (what it tried was refused by fencing, and counted).
            epochs = [e.epoch for e in events]
            old = epochs[0]
            first_new = next(i for i, epoch in enumerate(epochs) if epoch != old)
            assert old not in epochs[first_new:], (stream_id, epochs)
        # The shared state too: its last checkpoint is the newest claimant's.
        header = client.get(f"genesys-mux:state:stream:{stream_id}")
        claim = client.get(f"genesys-mux:state:fence:{stream_id}")
        assert isinstance(header, bytes), stream_id
        assert isinstance(claim, bytes), stream_id
        assert decode_checkpoint(header, stream_id).fence == int(claim) > 0, stream_id
    client.close()


async def test_a_cluster_user_refused_a_command_mid_run_stops_it_with_2(
    emulator: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    """An ACL changed under a running instance: it stops (exit 2), saying what to allow.

    Retried as an outage, it carried nothing for ever while its process
    looked alive to systemd or Docker.
    """
    user_url = a_user(redis_server, "mux", "~*", "+@all")
    # A URL with a password is given through the environment, never the file.
    config = cluster_config(redis_server.url).replace(
        f'[cluster]\nurl = "{redis_server.url}"', '[cluster]\nurl_env = "MUX_CLUSTER_URL"'
    )
    assert "MUX_CLUSTER_URL" in config
    (tmp_path / "mux.toml").write_text(config)
    client = redis.Redis.from_url(redis_server.url)
    process = await start_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url,
        env={**DEMO_CREDENTIALS, "MUX_CLUSTER_URL": user_url},
        cwd=tmp_path,
    )  # fmt: skip
    try:
        async with communicating(process, DEADLINE_S) as finished:
            await until(lambda: len(holders(client)) == 4, "the instance carries the streams")
            a_user(redis_server, "mux", "~*", "+@all", "-@scripting")
            _, err = await asyncio.wait_for(asyncio.shield(finished), DEADLINE_S)
    finally:
        client.close()
    stderr = err.decode()
    assert process.returncode == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "EVALSHA" in errors[0]
    # Whichever role's script ran first after the change (the leases, or a
    # stream's state claim still under way) says what to allow.
    assert re.search(r"allow it what (a cluster|the state store) runs \(.*\+evalsha", errors[0])
    assert ":pw@" not in stderr
    assert "Traceback" not in stderr


async def test_a_second_cluster_on_the_same_state_keys_is_refused(
    emulator: Emulator, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two deployments differing only in their cluster's name, on one Redis.

    Each would take every stream with tokens from its own counters, and
    both would write the same state and sink streams, in turn.
    """
    (tmp_path / "mux.toml").write_text(cluster_config(redis_server.url))
    other = cluster_config(redis_server.url).replace('name = "t"', 'name = "u"')
    (tmp_path / "other.toml").write_text(other)
    client = redis.Redis.from_url(redis_server.url)
    first = await start_cli(
        "run", "-c", "mux.toml", "--base-url", emulator.base_url, env=DEMO_CREDENTIALS, cwd=tmp_path
    )  # fmt: skip
    try:
        async with communicating(first, DEADLINE_S):
            await until(lambda: len(holders(client)) == 4, "the first cluster carries the streams")
            second = await run_cli(
                "run", "-c", "other.toml", "--base-url", emulator.base_url, "--duration", "20",
                env=DEMO_CREDENTIALS,
                cwd=tmp_path,
            )  # fmt: skip
    finally:
        client.close()
    assert second.code == 2, second.why()
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, second.why()
    assert "is cluster 't'" in errors[0]
    assert "this instance is in cluster 'u'" in errors[0]
