"""The NATS JetStream sink against a real ``nats-server -js``: acks, de-duplication, outages."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import DiscardPolicy
from nats.js.errors import NotFoundError

from genesys_mux.cli.runtime import build_sink
from genesys_mux.configfile import NatsSinkSpec, check_environment, parse_config
from genesys_mux.core.backoff import Backoff
from genesys_mux.core.streams import DeadLetter, StreamEvent
from genesys_mux.errors import ConfigError, ConfigFileError, SinkError
from genesys_mux.sinks.base import (
    EventRecord,
    GapRecord,
    Item,
    decode_record,
    encode_record,
    idempotency_key,
)
from genesys_mux.sinks.nats import NatsJetStreamSink
from genesys_mux.sinks.runner import SinkRunner
from tests.sinks.conftest import (
    NatsServer,
    a_gap,
    free_port,
    nats_binary,
    real_events,
    source,
)
from tests.waiting import eventually

STREAM = "GENESYS"
PASSWORD = "canary-nats-password-93ab1c"


@asynccontextmanager
async def jetstream(server: NatsServer) -> AsyncIterator[Any]:
    """A separate client's JetStream context, to look at what the sink stored."""
    options: dict[str, Any] = {"servers": [server.url], "allow_reconnect": False}
    if server.user is not None:
        options.update(user=server.user, password=server.password)
    client = await nats.connect(**options)
    try:
        yield client.jetstream()
    finally:
        await client.close()


async def stored(
    server: NatsServer, stream: str = STREAM
) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message of ``stream`` in order: (subject, headers, payload)."""
    async with jetstream(server) as js:
        info = await js.stream_info(stream)
        messages = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            messages.append((msg.subject, dict(msg.headers or {}), bytes(msg.data)))
        return messages


async def count(server: NatsServer, stream: str = STREAM) -> int:
    async with jetstream(server) as js:
        try:
            return int((await js.stream_info(stream)).state.messages)
        except NotFoundError:
            return 0


async def reaches(server: NatsServer, messages: int) -> bool:
    return await count(server) == messages


def a_sink(server: NatsServer, **options: Any) -> NatsJetStreamSink:
    options.setdefault("stream", STREAM)
    options.setdefault("create_stream", True)
    options.setdefault("ack_timeout_s", 5.0)
    options.setdefault("connect_timeout_s", 1.0)
    return NatsJetStreamSink([server.url], **options)


def a_runner(
    items: Sequence[Item], sink: NatsJetStreamSink, dead: list[DeadLetter], **options: Any
) -> SinkRunner:
    return SinkRunner(
        source(items),
        [sink],
        dead.append,
        backoff=Backoff(0.01, 0.05),
        linger_s=0.0,
        **options,
    )


async def test_items_arrive_in_order_with_their_ids_and_records(nats_server: NatsServer) -> None:
    voice = real_events(40, stream_id="voice.main")
    chat = real_events(3, stream_id="chat")
    gap = a_gap("voice.main")
    sink = a_sink(nats_server)
    dead: list[DeadLetter] = []
    items: list[Item] = [*voice[:10], gap, *voice[10:], *chat]
    runner = a_runner(items, sink, dead, batch_size=16)
    await runner.run()

    assert dead == []
    assert sink.published == 44
    assert sink.duplicates == 0
    messages = await stored(nats_server)
    assert [m[0] for m in messages] == [f"genesys.{i.stream_id}" for i in items]
    for (_subject, headers, payload), item in zip(messages, items, strict=True):
        # The server de-duplicates by this header; the stream is the one asked for.
        assert headers["Nats-Msg-Id"] == idempotency_key(item)
        assert headers["Nats-Expected-Stream"] == STREAM
        record = decode_record(payload)
        assert record.idempotency_key == idempotency_key(item)
        if isinstance(item, StreamEvent):
            assert isinstance(record, EventRecord)
            assert (record.stream_id, record.sequence) == (item.stream_id, item.sequence)
            assert record.raw == item.raw
        else:
            assert isinstance(record, GapRecord)
    # The stream was created as asked, capturing every stream id (dots too).
    async with jetstream(nats_server) as js:
        info = await js.stream_info(STREAM)
    assert info.config.subjects == ["genesys.>"]
    assert info.config.duplicate_window == 120.0


async def test_a_batch_sent_again_after_a_timeout_is_stored_once(nats_server: NatsServer) -> None:
    events = real_events(25)
    # The first attempt gives up before any PubAck can come back, though the
    # server stores every message: exactly what a slow network looks like.
    sink = a_sink(nats_server, ack_timeout_s=1e-9)
    await sink.start()
    with pytest.raises(SinkError) as failure:
        await sink.send(events)
    assert failure.value.retryable
    assert "25 of 25 not acknowledged" in str(failure.value)
    await eventually(lambda: reaches(nats_server, 25))

    sink.ack_timeout_s = 5.0
    await sink.send(events)
    await sink.close()

    # Every PubAck of the re-send said "duplicate": stored once, counted as delivered.
    assert sink.published == 25
    assert sink.duplicates == 25
    messages = await stored(nats_server)
    assert [h["Nats-Msg-Id"] for _s, h, _p in messages] == [e.idempotency_key for e in events]


async def test_a_restart_between_attempts_still_stores_each_message_once(
    nats_server: NatsServer,
) -> None:
    events = real_events(30)
    sink = a_sink(nats_server, ack_timeout_s=1e-9)
    await sink.start()
    with pytest.raises(SinkError):
        await sink.send(events[:20])
    await eventually(lambda: reaches(nats_server, 20))

    # The server goes away and comes back with its store: the sink's client
    # reconnects, and the re-sent batch finds the ids it stored before.
    await nats_server.stop()
    with pytest.raises(SinkError) as down:
        await sink.send(events[:20])
    assert down.value.retryable
    await nats_server.start()
    sink.ack_timeout_s = 5.0

    meanwhile: list[SinkError] = []

    async def resent() -> bool:
        try:
            await sink.send(events)
        except SinkError as exc:
            meanwhile.append(exc)
            return False
        return True

    await eventually(resent, within=15.0, interval=0.1)
    await sink.close()
    assert all(exc.retryable for exc in meanwhile), meanwhile

    messages = await stored(nats_server)
    ids = [h["Nats-Msg-Id"] for _s, h, _p in messages]
    assert ids == [e.idempotency_key for e in events]
    assert sink.duplicates >= 20


async def test_a_server_that_is_down_costs_retries_then_the_dlq_nothing_lost(
    nats_server: NatsServer,
) -> None:
    events = real_events(12)
    sink = a_sink(nats_server, connect_timeout_s=0.5)
    # Started while the server is up; it goes down before the first send.
    await sink.start()
    await nats_server.stop()
    failures: list[str] = []
    dead: list[DeadLetter] = []
    runner = a_runner(events, sink, dead, batch_size=5, max_attempts=3, own_sinks=False)
    runner.on_failure.append(lambda _sink, text: failures.append(text))
    try:
        await runner.run()
    finally:
        await sink.close()

    assert sorted(d.sequence for d in dead) == [e.sequence for e in events]
    assert {d.reason.split(":")[0] for d in dead} == {"sink_failed"}
    assert all(d.reason.startswith("sink_failed:nats: cannot connect to NATS") for d in dead)
    assert runner.failed_batches == 3
    assert runner.retries == 3 * 2
    assert sink.published == 0
    assert len(failures) == 9


async def test_the_server_coming_back_lets_the_runner_deliver_everything(
    nats_server: NatsServer,
) -> None:
    await nats_server.stop()
    events = real_events(8)
    sink = a_sink(nats_server, connect_timeout_s=0.5)
    failures: list[str] = []
    dead: list[DeadLetter] = []
    runner = a_runner(events, sink, dead, batch_size=8)
    # The server comes up late: the start is retried, counted as a failure
    # meanwhile, and the stream is delivered once it has started.
    runner.on_failure.append(lambda _sink, text: failures.append(text))
    task = asyncio.ensure_future(runner.run())
    await eventually(lambda: len(failures) >= 2)
    counters = runner.per_sink["nats"]
    assert counters.failing_since is not None
    assert counters.last_error is not None
    assert counters.last_error.startswith("nats: cannot start: cannot connect to NATS")
    assert failures[0].startswith("cannot start: cannot connect to NATS")
    assert "retrying in" in failures[0]
    assert sink.published == 0
    await nats_server.start()
    await asyncio.wait_for(task, 20.0)

    assert dead == []
    assert counters.failing_since is None
    assert counters.last_error is None
    assert counters.retries >= 2
    assert sink.published == 8
    assert [h["Nats-Msg-Id"] for _s, h, _p in await stored(nats_server)] == [
        e.idempotency_key for e in events
    ]


async def test_a_missing_stream_is_a_clear_error_at_start(nats_server: NatsServer) -> None:
    sink = a_sink(nats_server, stream="NOPE", create_stream=False)
    with pytest.raises(SinkError) as failure:
        await sink.start()
    assert not failure.value.retryable
    text = str(failure.value)
    assert "'NOPE' does not exist" in text
    assert "create_stream = true" in text
    await sink.close()


async def test_a_message_for_another_stream_is_refused_and_dead_lettered(
    nats_server: NatsServer,
) -> None:
    # OTHER captures the subjects, but the sink expects its messages in GENESYS.
    async with jetstream(nats_server) as js:
        await js.add_stream(name="OTHER", subjects=["genesys.>"])
        await js.add_stream(name=STREAM, subjects=["elsewhere.>"])
    sink = a_sink(nats_server, create_stream=False)
    dead: list[DeadLetter] = []
    runner = a_runner(real_events(3), sink, dead)
    await runner.run()
    assert [d.sequence for d in dead] == [1, 2, 3]
    assert "JetStream refused 3 of 3" in dead[0].reason
    assert runner.retries == 0


async def test_a_full_stream_is_waited_for_and_an_oversized_message_is_not(
    nats_server: NatsServer,
) -> None:
    async with jetstream(nats_server) as js:
        await js.add_stream(
            name=STREAM, subjects=["genesys.>"], max_msgs=2, discard=DiscardPolicy.NEW
        )
        await js.add_stream(name="TINY", subjects=["tiny.>"], max_msg_size=16)
    dead: list[DeadLetter] = []
    # "maximum messages exceeded" (503): a consumer or a purge may free room.
    full = a_runner(real_events(3), a_sink(nats_server), dead, max_attempts=3)
    await full.run()
    assert full.retries == 2
    assert "maximum messages exceeded" in dead[0].reason
    # "message size exceeds maximum allowed" (400): it never will fit.
    dead.clear()
    tiny = a_sink(nats_server, stream="TINY", subject="tiny.{stream}")
    oversized = a_runner(real_events(2), tiny, dead, max_attempts=3)
    await oversized.run()
    assert oversized.retries == 0
    assert [d.sequence for d in dead] == [1, 2]
    assert "message size exceeds maximum allowed" in dead[0].reason


async def test_a_record_over_max_payload_with_its_headers_is_dead_lettered_at_once(
    tmp_path: Path,
) -> None:
    """Under max_payload alone but over it with the headers: the server would cut the connection."""
    max_payload = 2048
    config = tmp_path / "nats.conf"
    config.write_text(f"max_payload: {max_payload}\n")
    server = NatsServer(nats_binary(), free_port(), tmp_path, options=("-c", str(config)))
    await server.start()
    try:
        event = real_events(1)[0]
        body = b'{"pad":"' + b"x" * max_payload + b'"}'
        while len(encode_record(dataclasses.replace(event, raw=body))) > max_payload - 20:
            body = body[:-3] + b'"}'
        event = dataclasses.replace(event, raw=body)
        assert len(encode_record(event)) in range(max_payload - 22, max_payload - 19)
        dead: list[DeadLetter] = []
        failures: list[str] = []
        runner = a_runner([event, *real_events(1, start=2)], a_sink(server), dead, max_attempts=5)
        runner.on_failure.append(lambda _sink, text: failures.append(text))
        await asyncio.wait_for(runner.run(), 20)
        assert runner.retries == 0
        assert [d.sequence for d in dead] == [1, 2]  # the batch, refused before any was sent
        size = len(encode_record(event))
        assert f"a record of {size} bytes plus" in dead[0].reason
        assert f"max_payload of {max_payload} bytes" in dead[0].reason
        assert "raise max_payload" in dead[0].reason
        assert len(failures) == 1
        # The connection was not lost: the next batch (one that fits) goes through it.
        sink = a_sink(server)
        small = dataclasses.replace(real_events(1, start=3)[0], raw=b'{"id":"small"}')
        await sink.send([small])
        await sink.close()
        assert await count(server) == 1
    finally:
        await server.stop()


async def test_credentials_are_used_and_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    directory = tmp_path / "nats"
    directory.mkdir()
    server = NatsServer(nats_binary(), free_port(), directory, user="mux", password=PASSWORD)
    server.start_sync()
    try:
        good = a_sink(server, user="mux", password=PASSWORD)
        assert PASSWORD not in repr(good)
        assert PASSWORD not in repr(vars(good))
        await good.start()
        await good.send(real_events(2))
        await good.close()
        assert good.published == 2

        bad = a_sink(server, user="mux", password=PASSWORD + "-wrong")
        with pytest.raises(SinkError) as refused:
            await bad.start()
        assert not refused.value.retryable
        assert "authorization" in str(refused.value).lower()
        await bad.close()
        for text in (str(refused.value), repr(bad), caplog.text):
            assert PASSWORD not in text
    finally:
        server.stop_sync()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: the TLS test makes its certificates with it")

    def run(*args: str) -> None:
        subprocess.run(  # noqa: S603 - fixed argv, binary found by shutil.which
            [openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60
        )

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=genesys-mux test CA")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")  # fmt: skip
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


async def test_tls_servers_are_verified(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    directory = tmp_path / "nats"
    directory.mkdir()
    server = NatsServer(
        nats_binary(),
        free_port(),
        directory,
        options=("--tlscert", str(cert), "--tlskey", str(key)),
    )
    server.start_sync()
    try:
        tls_url = f"tls://127.0.0.1:{server.port}"
        # A certificate no trusted CA signed is refused, for good, whichever
        # scheme was written: a server that asks for TLS gets it verified.
        for url in (tls_url, server.url):
            untrusted = NatsJetStreamSink([url], stream=STREAM, create_stream=True)
            with pytest.raises(SinkError) as refused:
                await untrusted.start()
            assert not refused.value.retryable
            assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
            await untrusted.close()

        trusted = NatsJetStreamSink(
            [tls_url], stream=STREAM, create_stream=True, tls_ca_file=str(ca)
        )
        await trusted.start()
        await trusted.send(real_events(3))
        await trusted.close()
        assert trusted.published == 3
    finally:
        server.stop_sync()


def test_bad_configuration_is_reported_with_paths() -> None:
    sink: dict[str, Any] = {
        "type": "nats",
        "servers": ["nats://127.0.0.1:4222"],
        "ack_timeout_s": 0,
        "surprise": 1,
    }
    with pytest.raises(ConfigFileError) as bad:
        parse_config(
            {"streams": [{"id": "calls", "topics": ["v2.users.u1.presence"], "sinks": [sink]}]}
        )
    found = dict(bad.value.errors)
    # Nothing like it: every key the sink has.
    surprise = found["streams[0].sinks[0].surprise"]
    assert surprise.startswith("unknown key; allowed keys are ")
    assert "ack_timeout_s" in surprise
    assert "greater than 0" in found["streams[0].sinks[0].ack_timeout_s"]
    assert "secret" not in str(bad.value)

    # A subject that is fine as a template may not be for a stream's id.
    with pytest.raises(ConfigFileError) as dotted:
        parse_config(
            {
                "streams": [
                    {
                        "id": "calls..x",
                        "topics": ["v2.users.u1.presence"],
                        "sinks": [{"type": "nats", "stream": STREAM}],
                    }
                ]
            }
        )
    assert "empty tokens" in dict(dotted.value.errors)["streams[0].sinks[0].subject"]

    for wrong, message in (
        ({"create_stream": True}, "create_stream needs the stream's name"),
        ({"user": "mux"}, "user and password_env go together"),
        ({"token_env": "T", "creds_file": "x.creds"}, "one kind of credentials"),
        ({"subject": "genesys.*"}, "wildcards"),
        ({"servers": ["http://h:1"]}, "nats:// or tls://"),
        ({"servers": ["nats://user:secret@h:4222"]}, "a server URL holds credentials"),
        ({"subject": "genesys.{stream}.{other}"}, "only {stream} may appear in braces"),
    ):
        with pytest.raises(ConfigFileError) as error:
            parse_config(
                {
                    "streams": [
                        {
                            "id": "calls",
                            "topics": ["v2.users.u1.presence"],
                            "sinks": [{"type": "nats", **wrong}],
                        }
                    ]
                }
            )
        assert message in dict(error.value.errors)["streams[0].sinks[0]"], (wrong, error.value)
        assert "secret" not in str(error.value)


@pytest.mark.parametrize(
    "server",
    [
        "natsuser:NatsPassw0rd@nats.example.com:4222",
        "wss://natsuser:NatsPassw0rd@nats.example.com",
        "NATS://natsuser:NatsPassw0rd@nats.example.com:4222",
        "nats://natsuser:NatsPassw0rd@nats.example.com:4222",
    ],
)
def test_a_server_with_credentials_is_refused_for_them_whatever_its_scheme(server: str) -> None:
    # The credentials are checked first: a wrong scheme must not get the URL quoted.
    with pytest.raises(ConfigFileError) as error:
        parse_config(
            {
                "streams": [
                    {
                        "id": "calls",
                        "topics": ["v2.users.u1.presence"],
                        "sinks": [{"type": "nats", "servers": [server]}],
                    }
                ]
            }
        )
    found = dict(error.value.errors)["streams[0].sinks[0]"]
    assert found.startswith("a server URL holds credentials; use user with password_env")
    assert "NatsPassw0rd" not in str(error.value)


def test_a_server_with_a_wrong_scheme_is_quoted_without_its_query() -> None:
    with pytest.raises(ConfigFileError) as error:
        parse_config(
            {
                "streams": [
                    {
                        "id": "calls",
                        "topics": ["v2.users.u1.presence"],
                        "sinks": [{"type": "nats", "servers": ["wss://h:4222/?token=Tok3nValue"]}],
                    }
                ]
            }
        )
    found = dict(error.value.errors)["streams[0].sinks[0]"]
    assert found == "server 'wss://h:4222/' must be a nats:// or tls:// URL"


async def test_a_token_is_used_and_never_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = NatsServer(nats_binary(), free_port(), tmp_path, options=("--auth", PASSWORD))
    server.start_sync()
    try:
        good = a_sink(server, token=PASSWORD)
        await good.start()
        await good.send(real_events(1))
        await good.close()
        assert good.published == 1
        bad = a_sink(server, token="not-" + PASSWORD)
        with pytest.raises(SinkError) as refused:
            await bad.start()
        assert not refused.value.retryable
        await bad.close()
        for text in (str(refused.value), repr(good), repr(bad), caplog.text):
            assert PASSWORD not in text
    finally:
        server.stop_sync()


@pytest.mark.parametrize(
    "server",
    [
        "nats://natsuser:NatsPa/ss99@127.0.0.1:4299",
        "nats://natsuser:NatsPa#ss99@127.0.0.1:4299",
        "tls://natsuser:NatsPa?ss99@127.0.0.1:4299",
        "nats://natsuser:NatsPass99@127.0.0.1:4299",
        "nats://natsuser:NatsPass99@[::1:4299",
    ],
)
def test_a_sink_refuses_credentials_in_a_server_url_without_showing_them(server: str) -> None:
    # nats://u:Pa/ss@h reads as the host u with a path: it must not get past as one.
    with pytest.raises(ConfigError, match="holds credentials") as refused:
        NatsJetStreamSink([server], connect_timeout_s=1)
    message = str(refused.value)
    assert message.startswith("NATS sink nats: ")
    assert "give them as user and password, token, creds_file or nkey_seed_file" in message
    for piece in ("NatsPa", "ss99"):
        assert piece not in message


@pytest.mark.parametrize("server", ["nats://[::1:4222", "nats://h:port", "ws://h:4222/?t=Tok3n"])
def test_a_server_that_is_no_nats_url_is_a_config_error(server: str) -> None:
    with pytest.raises(ConfigError, match="must be a nats://host:port or tls://host:port URL") as e:
        NatsJetStreamSink([server])
    assert "Tok3n" not in str(e.value)


def test_validate_warns_about_a_secret_variable_that_is_not_set() -> None:
    config = parse_config(
        {
            "streams": [
                {
                    "id": "calls",
                    "topics": ["v2.users.u1.presence"],
                    "sinks": [{"type": "nats", "token_env": "NATS_TOKEN"}],
                }
            ]
        }
    )
    errors, warnings = check_environment(config, {})
    assert errors == []
    assert any("NATS_TOKEN is not set" in w for w in warnings), warnings
    _, warnings = check_environment(config, {"NATS_TOKEN": "t"})
    assert not any("NATS_TOKEN" in w for w in warnings)


def test_a_password_comes_from_the_environment_only() -> None:
    spec = NatsSinkSpec(type="nats", user="mux", password_env="NATS_PASSWORD")
    with pytest.raises(ConfigError, match="NATS_PASSWORD is not set"):
        build_sink(spec, {})
    sink = build_sink(spec, {"NATS_PASSWORD": PASSWORD})
    assert isinstance(sink, NatsJetStreamSink)
    assert PASSWORD not in repr(sink)
    assert "auth=user/password" in repr(sink)


def test_without_nats_py_genesys_mux_imports_and_the_sink_says_what_to_install() -> None:
    # nats-py made unimportable in a fresh interpreter, as if never installed.
    script = """
import sys
sys.modules["nats"] = None
import genesys_mux, genesys_mux.configfile, genesys_mux.sinks.nats
from genesys_mux.cli.runtime import build_sink
from genesys_mux.configfile import NatsSinkSpec
from genesys_mux.errors import MissingExtraError
try:
    build_sink(NatsSinkSpec(type="nats"))
except MissingExtraError as exc:
    print(exc)
"""
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'genesys-mux[nats]'" in done.stdout
