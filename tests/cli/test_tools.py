"""``validate``, ``schema``, ``listen`` and ``dlq list|purge|replay`` as a user runs them.

Every command runs as a real ``python -m genesys_mux`` process; DLQ files are
written by the real :class:`JsonlDeadLetterQueue`; replays go to a real JSONL
file and a real aiohttp webhook receiver that checks every signature.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from genesys_mux.core.streams import DeadLetter, StreamEvent, Transition
from genesys_mux.emulator import Emulator
from genesys_mux.sinks.base import EventRecord, decode_record
from genesys_mux.sinks.dlq import JsonlDeadLetterQueue, read_dead_letters
from tests.cli.conftest import Result, run_cli, start_cli
from tests.sinks.conftest import SECRET, Receiver, free_port, real_events

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "genesys-mux.toml"


# -- validate ------------------------------------------------------------------------


async def test_validate_the_annotated_example_lists_every_stream() -> None:
    result = await run_cli("validate", "-c", str(EXAMPLE))
    assert result.code == 0, result.why()
    assert "valid" in result.output
    for stream in ("voice-main", "chat-support", "waiting-calls", "team-presence"):
        assert stream in result.output, result.why()
    for sink in ("redis", "webhook", "jsonl", "stdout"):
        assert sink in result.output


FIVE_MISTAKES = """\
[settings]
max_streams = 0                         # 1. out of range

[[streams]]
id = "voice-main"
filter = { channelType = "fax" }        # 2. not a media type
colour = "blue"                         # 3. not a key

  [[streams.sinks]]
  type = "webhook"
  url = "ftp://crm.example.com/hook"    # 4. not http(s)
  secret_env = "CRM_WEBHOOK_SECRET"

[[streams]]
id = "voice-main"                       # 5. the same id again
filter = { channelType = "voice" }
"""


async def test_validate_reports_every_mistake_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text(FIVE_MISTAKES)
    result = await run_cli("validate", "-c", "bad.toml", cwd=tmp_path)
    assert result.code == 1, result.why()
    assert "5 problem(s)" in result.output, result.why()
    for path in (
        "settings.max_streams",
        "streams[0].filter.channelType",
        "streams[0].colour",
        "streams[0].sinks[0].url",
        "streams[1].id",
    ):
        assert path in result.output, f"{path} missing\n{result.why()}"
    assert "fax" in result.output
    assert "unknown key" in result.output
    assert "duplicate stream id" in result.output
    assert "Traceback" not in result.output


async def test_validate_a_missing_or_non_toml_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes.toml").write_text("this is = = not TOML\n[[streams\n")
    (tmp_path / "binary.toml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    # Three readers of three files: run side by side.
    missing, not_toml, binary = await asyncio.gather(
        run_cli("validate", "-c", "nowhere.toml", cwd=tmp_path),
        run_cli("validate", "-c", "notes.toml", cwd=tmp_path),
        run_cli("validate", "-c", "binary.toml", cwd=tmp_path),
    )
    assert missing.code != 0, missing.why()
    assert "nowhere.toml does not exist" in missing.output, missing.why()

    assert not_toml.code != 0, not_toml.why()
    assert "not valid TOML" in not_toml.output, not_toml.why()
    assert "line 1" in not_toml.output

    assert binary.code != 0, binary.why()
    assert "not UTF-8" in binary.output, binary.why()
    for result in (missing, not_toml, binary):
        assert "Traceback" not in result.output


# -- schema --------------------------------------------------------------------------


async def test_schema_is_json_with_streams_sinks_and_filter() -> None:
    result = await run_cli("schema")
    assert result.code == 0, result.why()
    schema = json.loads(result.stdout)
    assert set(schema["properties"]) >= {"genesys", "settings", "streams"}
    streams = schema["properties"]["streams"]
    assert streams["type"] == "array"
    item = streams["items"]["properties"]
    assert {"id", "filter", "priority", "topics", "sinks"} <= set(item)
    # Every $ref points at a definition that is there.
    refs = {
        value.split("/")[-1]
        for value in _walk(schema)
        if isinstance(value, str) and value.startswith("#/$defs/")
    }
    assert refs <= set(schema["$defs"]), refs - set(schema["$defs"])
    sink_types = {
        d["properties"]["type"].get("const") or d["properties"]["type"]["enum"][0]
        for d in schema["$defs"].values()
        if "type" in d.get("properties", {}) and "Sink" in d.get("title", "")
    }
    assert sink_types == {"stdout", "jsonl", "redis", "webhook", "nats"}


def _walk(value: Any) -> Any:
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


# -- dlq list / purge ------------------------------------------------------------------


def write_dlq(path: Path) -> list[DeadLetter]:
    """Five dead letters from two streams, interleaved, written by the real DLQ."""
    # State streams' events carry their transition; the letters must keep it.
    transitions: tuple[Transition, ...] = ("enter", "update", "exit")
    voice = [
        dataclasses.replace(e, transition=t)
        for e, t in zip(real_events(3, "voice-main"), transitions, strict=True)
    ]
    chat = real_events(2, "chat-support", start=7)
    events: list[StreamEvent] = [voice[0], chat[0], voice[1], chat[1], voice[2]]
    letters = [
        DeadLetter.of(e, "overflow_drop_oldest" if e.stream_id == "voice-main" else "stopped")
        for e in events
    ]
    dlq = JsonlDeadLetterQueue(path)
    for letter in letters:
        dlq.write(letter)
    dlq.close()
    return letters


def dlq_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


async def test_dlq_list_as_a_table_and_as_json(tmp_path: Path) -> None:
    letters = write_dlq(tmp_path / "dlq.jsonl")

    # Three readers of one file: run side by side.
    table, as_json, one = await asyncio.gather(
        run_cli("dlq", "list", "--file", "dlq.jsonl", cwd=tmp_path),
        run_cli("dlq", "list", "--file", "dlq.jsonl", "--json", cwd=tmp_path),
        run_cli(
            "dlq", "list", "-f", "dlq.jsonl", "--stream", "chat-support", "--json", cwd=tmp_path
        ),
    )
    assert table.code == 0, table.why()
    assert "5 dead letter(s)" in table.output, table.why()
    for text in ("voice-main", "chat-support", "overflow_drop_oldest", "stopped"):
        assert text in table.output
    assert "overflow_drop_oldest: 3" in table.output
    assert "stopped: 2" in table.output
    # Piped, each row is whole: ids are not wrapped or cut at 80 columns.
    for letter in letters:
        assert letter.conversation_id is not None
        assert letter.conversation_id in table.stdout, table.why()
        # Its time says its zone, as the logs' do.
        received = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(letter.received_at))
        assert received in table.stdout, table.why()

    assert as_json.code == 0, as_json.why()
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["stream_id"], r["sequence"]) for r in rows] == [
        (d.stream_id, d.sequence) for d in letters
    ]
    for row, letter in zip(rows, letters, strict=True):
        assert row["reason"] == letter.reason
        assert row["topic"] == letter.topic
        assert row["conversation_id"] == letter.conversation_id
        assert row["bytes"] == len(letter.raw)

    assert one.code == 0, one.why()
    assert [json.loads(line)["sequence"] for line in one.stdout.splitlines()] == [7, 8]


async def test_dlq_list_of_a_missing_file_is_an_error(tmp_path: Path) -> None:
    """A wrong -f must not read as "no dead letters": that hides the real file."""
    results = await asyncio.gather(
        *(
            run_cli("dlq", "list", "--file", "none.jsonl", *extra, cwd=tmp_path)
            for extra in ((), ("--json",))
        )
    )
    for result in results:
        assert result.code == 1, result.why()
        assert "no dead-letter file none.jsonl" in result.stderr
        assert result.stdout == ""


async def test_dlq_commands_find_the_file_through_the_config(tmp_path: Path) -> None:
    (tmp_path / "letters").mkdir()
    letters = write_dlq(tmp_path / "letters" / "dead.jsonl")
    (tmp_path / "mux.toml").write_text(
        '[settings]\ndlq_path = "letters/dead.jsonl"\n\n'
        '[[streams]]\nid = "voice-main"\nfilter = { channelType = "voice" }\n'
    )
    listed = await run_cli("dlq", "list", "-c", "mux.toml", "--json", cwd=tmp_path)
    assert listed.code == 0, listed.why()
    assert len(listed.stdout.splitlines()) == len(letters)
    purged = await run_cli(
        "dlq", "purge", "-c", "mux.toml", "--stream", "chat-support", "--yes", cwd=tmp_path
    )
    assert purged.code == 0, purged.why()
    assert "purged 2 dead letter(s); 3 remain" in purged.output
    assert not (tmp_path / "none.jsonl").exists()


async def test_dlq_list_names_the_corrupt_line(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    write_dlq(path)
    lines = dlq_lines(path)
    path.write_bytes(b"\n".join([*lines[:2], b'{"stream_id": "voice-main", "sequ', *lines[2:]]))
    results = await asyncio.gather(
        *(
            run_cli("dlq", "list", "-f", "dlq.jsonl", *extra, cwd=tmp_path)
            for extra in ((), ("--json",))
        )
    )
    for result in results:
        assert result.code != 0, result.why()
        assert "dlq.jsonl:3:" in result.output, result.why()
        assert "not a dead-letter record" in result.output
        assert "Traceback" not in result.output


async def test_dlq_purge_everything_or_one_stream(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    write_dlq(path)
    original = dlq_lines(path)

    # Without --yes it asks, saying how many; "n" keeps everything.
    declined = await run_cli("dlq", "purge", "-f", "dlq.jsonl", cwd=tmp_path, input=b"n\n")
    assert declined.code != 0, declined.why()
    assert "Delete 5 dead letter(s) from dlq.jsonl?" in declined.output, declined.why()
    assert dlq_lines(path) == original
    # A stream with no letter (a typo) is said at once, not asked about.
    typo = await run_cli(
        "dlq", "purge", "-f", "dlq.jsonl", "--stream", "voice-mian", cwd=tmp_path, input=b""
    )
    assert typo.code == 0, typo.why()
    assert "Delete" not in typo.output, typo.why()
    assert "no dead letters of stream 'voice-mian'" in typo.output, typo.why()
    assert dlq_lines(path) == original

    one = await run_cli(
        "dlq", "purge", "-f", "dlq.jsonl", "--stream", "voice-main", "--yes", cwd=tmp_path
    )
    assert one.code == 0, one.why()
    assert "purged 3" in one.output, one.why()
    assert "2 remain" in one.output
    # The other stream's letters are kept byte for byte.
    assert dlq_lines(path) == [line for line in original if b'"chat-support"' in line]

    rest = await run_cli("dlq", "purge", "-f", "dlq.jsonl", "--yes", cwd=tmp_path)
    assert rest.code == 0, rest.why()
    assert "purged 2" in rest.output, rest.why()
    assert "0 remain" in rest.output
    assert dlq_lines(path) == []
    listed = await run_cli("dlq", "list", "-f", "dlq.jsonl", "--json", cwd=tmp_path)
    assert listed.code == 0, listed.why()
    assert listed.stdout == ""


async def test_a_stream_with_no_letter_in_the_file_is_named_with_the_streams_it_has(
    tmp_path: Path,
) -> None:
    """A typo in --stream must not read as "purged 0; 0 remain" of a file that holds letters."""
    path = tmp_path / "dlq.jsonl"
    write_dlq(path)
    original = dlq_lines(path)
    typo = ("--stream", "voice-mian")
    purged, table, as_json = await asyncio.gather(
        run_cli("dlq", "purge", "-f", "dlq.jsonl", *typo, "--yes", cwd=tmp_path),
        run_cli("dlq", "list", "-f", "dlq.jsonl", *typo, cwd=tmp_path),
        run_cli("dlq", "list", "-f", "dlq.jsonl", *typo, "--json", cwd=tmp_path),
    )
    for result in (purged, table, as_json):
        # None is a true answer (a script polling one stream must not fail
        # because others have letters), said with what the file does hold.
        assert result.code == 0, result.why()
        assert (
            "warning: no dead letters of stream 'voice-mian' in dlq.jsonl; "
            "it holds letters of: chat-support (2), voice-main (3)"
        ) in result.output, result.why()
    assert "purged 0 dead letter(s); 5 remain" in purged.output
    assert as_json.stdout == ""
    assert dlq_lines(path) == original


# -- dlq replay ------------------------------------------------------------------------


def replay_config(sink: str) -> str:
    return f"""\
[settings]
dlq_path = "runtime-dlq.jsonl"

[[streams]]
id = "voice-main"
filter = {{ channelType = "voice" }}

  [[streams.sinks]]
{sink}

[[streams]]
id = "chat-support"
filter = {{ channelType = "chat" }}
"""


async def replay_voice(tmp_path: Path, env: dict[str, str] | None = None) -> Result:
    """``dlq replay`` of stream voice-main, from dlq.jsonl, with mux.toml."""
    return await run_cli(
        "dlq", "replay", "-c", "mux.toml", "--stream", "voice-main", "-f", "dlq.jsonl",
        cwd=tmp_path, env=env,
    )  # fmt: skip


async def test_dlq_replay_moves_letters_into_a_jsonl_sink(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    letters = write_dlq(path)
    original = dlq_lines(path)
    (tmp_path / "mux.toml").write_text(
        replay_config('  type = "jsonl"\n  path = "replayed/voice-main.jsonl"')
    )
    (tmp_path / "replayed").mkdir()

    result = await replay_voice(tmp_path)
    assert result.code == 0, result.why()
    assert "replayed 3 of 3" in result.output, result.why()

    replayed = [
        decode_record(line)
        for line in (tmp_path / "replayed" / "voice-main.jsonl").read_bytes().splitlines()
    ]
    voice = [d for d in letters if d.stream_id == "voice-main"]
    assert len(replayed) == len(voice)
    for record, letter in zip(replayed, voice, strict=True):
        assert isinstance(record, EventRecord)
        assert record.stream_id == letter.stream_id
        assert record.sequence == letter.sequence
        # The replay keeps the key the event was lost with: the same state.
        assert record.idempotency_key == letter.idempotency_key
        assert record.idempotency_key.startswith(f"{letter.stream_id}:{letter.conversation_id}:")
        assert record.topic == letter.topic
        assert record.transition == letter.transition is not None
        assert record.conversation_id == letter.conversation_id
        assert record.correlation_id == letter.correlation_id
        assert bytes(record.event_body) == letter.raw, "the body must arrive byte for byte"
    # Also plain JSON for any consumer.
    for line in (tmp_path / "replayed" / "voice-main.jsonl").read_text().splitlines():
        assert json.loads(line)["stream_id"] == "voice-main"

    # Delivered letters left the file; the other stream's stayed, byte for byte.
    assert dlq_lines(path) == [line for line in original if b'"chat-support"' in line]

    again = await replay_voice(tmp_path)
    assert again.code == 0, again.why()
    assert "no dead letters" in again.output
    assert len((tmp_path / "replayed" / "voice-main.jsonl").read_bytes().splitlines()) == 3


async def test_dlq_replay_into_a_refusing_webhook_keeps_the_letters(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    letters = write_dlq(path)
    before = path.read_bytes()
    async with Receiver(status=400) as receiver:
        (tmp_path / "mux.toml").write_text(
            replay_config(
                f'  type = "webhook"\n  url = "{receiver.url}"\n  secret_env = "CRM_HOOK_SECRET"'
            )
        )
        result = await replay_voice(tmp_path, env={"CRM_HOOK_SECRET": SECRET})
        assert result.code != 0, result.why()
        assert "replayed 0 of 3" in result.output, result.why()
        # The receiver saw correctly signed requests with the letters, and refused them once.
        assert receiver.bad_signatures == 0
        assert len(receiver.requests) == 1, "a 400 is not retried"
        sent = [(i["stream_id"], i["sequence"]) for r in receiver.requests for i in r.items]
        assert sent == [(d.stream_id, d.sequence) for d in letters if d.stream_id == "voice-main"]
    # Kept, each now naming the sink that refused it, so that the next
    # replay goes to that sink alone; the other stream's, byte for byte.
    after = dlq_lines(path)
    assert [line for line in after if b'"chat-support"' in line] == [
        line for line in before.splitlines() if b'"chat-support"' in line
    ]
    kept = [d for d in read_dead_letters(path) if d.stream_id == "voice-main"]
    voice = [d for d in letters if d.stream_id == "voice-main"]
    assert [dataclasses.replace(d, reason="") for d in kept] == [
        dataclasses.replace(d, reason="") for d in voice
    ]
    assert all(d.failed_sinks == ("webhook",) for d in kept), [d.reason for d in kept]
    assert SECRET not in result.output
    before = path.read_bytes()

    # Without the secret in the environment: a clear error naming the variable, nothing sent.
    unset = await replay_voice(tmp_path)
    assert unset.code != 0, unset.why()
    assert "CRM_HOOK_SECRET" in unset.output, unset.why()
    assert path.read_bytes() == before


async def test_dlq_replay_into_a_sink_that_cannot_start_ends_and_keeps_the_letters(
    tmp_path: Path,
) -> None:
    """A Redis that nothing answers: the replay gives up on it after a few attempts.

    It used to try to start the sink for ever, printing nothing after the
    first warning: a replay in a script or a cron job hung for good.
    """
    path = tmp_path / "dlq.jsonl"
    letters = write_dlq(path)
    before = dlq_lines(path)
    (tmp_path / "mux.toml").write_text(
        replay_config(f'  type = "redis"\n  url = "redis://127.0.0.1:{free_port()}/0"')
    )
    result = await replay_voice(tmp_path)
    assert result.code == 1, result.why()
    assert "sink redis cannot start" in result.output, result.why()
    assert "gave up after 5 attempts" in result.output, result.why()
    assert "its 3 letter(s) stay in dlq.jsonl" in result.output, result.why()
    assert "replayed 0 of 3" in result.output, result.why()
    # Kept, each naming the sink that could not take it; the other stream's untouched.
    assert [line for line in dlq_lines(path) if b'"chat-support"' in line] == [
        line for line in before if b'"chat-support"' in line
    ]
    kept = [d for d in read_dead_letters(path) if d.stream_id == "voice-main"]
    assert [(d.epoch, d.sequence) for d in kept] == [
        (d.epoch, d.sequence) for d in letters if d.stream_id == "voice-main"
    ]
    assert all(d.failed_sinks == ("redis",) for d in kept), [d.reason for d in kept]
    assert all("cannot start" in d.reason for d in kept), [d.reason for d in kept]


async def test_dlq_replay_sends_a_letter_only_to_the_sinks_that_failed_it(
    tmp_path: Path,
) -> None:
    """A sink's failure goes back to that sink; what the buffer or a stop lost, to every sink."""
    path = tmp_path / "dlq.jsonl"
    events = real_events(4, "voice-main")
    archive = "jsonl:voice-main.jsonl"  # the sinks' names, as their letters give them
    reasons = [
        "sink_failed:webhook: HTTP 500",  # the archive has it already
        "stopped",
        f"sink_failed:{archive},webhook: stopped",  # a fan-out stopped before either had it
        f"sink_failed:{archive}: disk full",
    ]
    dlq = JsonlDeadLetterQueue(path)
    for event, reason in zip(events, reasons, strict=True):
        dlq.write(DeadLetter.of(dataclasses.replace(event, epoch="run-1"), reason))
    dlq.close()
    async with Receiver() as receiver:
        (tmp_path / "archive").mkdir()
        (tmp_path / "mux.toml").write_text(
            replay_config(
                '  type = "jsonl"\n  path = "archive/voice-main.jsonl"\n\n'
                "  [[streams.sinks]]\n"
                f'  type = "webhook"\n  url = "{receiver.url}"\n'
                '  secret_env = "CRM_HOOK_SECRET"'
            )
        )
        result = await replay_voice(tmp_path, env={"CRM_HOOK_SECRET": SECRET})
        assert result.code == 0, result.why()
        assert "replayed 4 of 4" in result.output, result.why()
        to_crm = [i["sequence"] for r in receiver.requests for i in r.items]
    archived = [
        decode_record(line).sequence  # type: ignore[union-attr]
        for line in (tmp_path / "archive" / "voice-main.jsonl").read_bytes().splitlines()
    ]
    assert to_crm == [1, 2, 3]
    assert archived == [2, 3, 4]
    assert dlq_lines(path) == []


# -- listen -------------------------------------------------------------------------------

# -- listen -------------------------------------------------------------------------------


async def test_listen_prints_raw_notifications(emulator: Emulator) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{emulator.base_url}/__emulator__/org") as resp,
    ):
        org = await resp.json()
    topic = f"v2.routing.queues.{org['queues'][0]['id']}.conversations"
    result = await run_cli(
        "listen", topic, "--base-url", emulator.base_url, "--count", "3",
        env={
            "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
            "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
        },
    )  # fmt: skip
    assert result.code == 0, result.why()
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.why()
    for line in lines:
        note = json.loads(line)
        assert note["topic"] == topic
        assert note["eventBody"]["id"]
        assert isinstance(note["eventBody"]["participants"], list)
        # The body is embedded verbatim: valid JSON that msgspec reads back as well.
        msgspec.json.decode(line)
    assert "demo-secret" not in result.output


async def test_listen_without_credentials_names_the_variables() -> None:
    result = await run_cli("listen", "v2.users.x.presence", "--base-url", "http://127.0.0.1:9")
    assert result.code == 2, result.why()
    assert "GENESYSCLOUD_OAUTHCLIENT_ID" in result.output
    assert "Traceback" not in result.output


async def test_listen_with_a_wrong_secret_exits_2_at_once(emulator: Emulator) -> None:
    started = time.monotonic()
    result = await run_cli(
        "listen", "v2.users.x.presence", "--base-url", emulator.base_url,
        env={
            "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
            "GENESYSCLOUD_OAUTHCLIENT_SECRET": "not-the-secret",
        },
    )  # fmt: skip
    assert result.code == 2, result.why()
    assert time.monotonic() - started < 5.0
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "refused the client credentials" in error
    assert "Traceback" not in result.output
    # Said once: not also in a log line before it.
    assert result.output.count("refused the client credentials") == 1, result.why()


async def test_listen_stops_on_ctrl_c_while_still_connecting() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    process = await start_cli(
        "listen", "v2.users.x.presence", "--base-url", nobody,
        env={
            "GENESYSCLOUD_OAUTHCLIENT_ID": "demo-client",
            "GENESYSCLOUD_OAUTHCLIENT_SECRET": "demo-secret",
        },
    )  # fmt: skip
    assert process.stderr is not None
    try:
        seen = b""
        while b"token request failed" not in seen:
            line = await asyncio.wait_for(process.stderr.readline(), 20)
            assert line, "listen exited before retrying: " + seen.decode()
            seen += line
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = await asyncio.wait_for(process.communicate(), 10.0)
        took = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, (seen + err).decode()
    assert took < 1.5, f"Ctrl-C took {took:.1f} s while connecting"
    assert b"Traceback" not in err


async def test_version_comes_from_the_package_metadata() -> None:
    result = await run_cli("--version")
    assert result.code == 0, result.why()
    assert result.stdout.strip() == f"genesys-mux {importlib.metadata.version('genesys-mux')}"
