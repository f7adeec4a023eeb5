"""Tests for genesys_mux.sinks.dlq: the JSON-lines and in-memory dead-letter queues."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import threading
from pathlib import Path

import pytest

from genesys_mux.core.snapshot import event_facts
from genesys_mux.core.streams import DeadLetter, Stream, StreamEvent
from genesys_mux.emulator.org import ContactCentre
from genesys_mux.errors import ConfigError, StateError
from genesys_mux.sinks.dlq import (
    DeadLetterQueue,
    JsonlDeadLetterQueue,
    MemoryDeadLetterQueue,
    read_dead_letters,
)

EPOCH = 1_800_000_000.0
TOPIC = "v2.routing.queues.4c2bb8ef-5f0a-4a8c-9b3e-0c1d2e3f4a5b.conversations.calls"


def letter(sequence: int, raw: bytes, **overrides: object) -> DeadLetter:
    values: dict[str, object] = {
        "stream_id": "voice-main",
        "sequence": sequence,
        "reason": "overflow_drop_oldest",
        "topic": TOPIC,
        "conversation_id": "22c91b83-a417-40fe-84e4-a7fa9064dbd9",
        "correlation_id": "7a0c3e1d-5b2f-4c8e-9d6a-1e2f3a4b5c6d",
        "received_at": EPOCH + 0.123456789,
        "raw": raw,
        "idempotency_key": f"voice-main:22c91b83-a417-40fe-84e4-a7fa9064dbd9:{sequence:032x}",
    }
    values.update(overrides)
    return DeadLetter(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def real_bodies() -> list[bytes]:
    """A few real conversation snapshots from the simulated contact centre."""
    org = ContactCentre(seed=3, queues=2, agents=4, rate=2.0, epoch=EPOCH)
    pubs = [p for p in org.advance(20.0) if p.topics[0].startswith("v2.routing.queues.")]
    assert len(pubs) >= 5
    return [p.body for p in pubs[:5]]


# Bodies that must come back byte for byte.
ODD_BODIES = {
    "not json": b"\x00\xffnot json at all",
    "empty": b"",
    "json null": b"null",
    "spaced json": b'{"a": 1,  "b": [1.0, 1E5, "\\u00e9"]}',
    "padded json": b'  {"a":1}\n',
    "pretty json": b'{\n  "a": 1\n}',
    "invalid utf-8 in a string": b'{"name":"\xff\xfe"}',
    "nested too deep": b"[" * 100_000 + b"]" * 100_000,
    "a plain string": b'"just a string"',
}


def test_round_trip(tmp_path: Path, real_bodies: list[bytes]) -> None:
    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    letters = [letter(i, body) for i, body in enumerate(real_bodies, 1)]
    letters += [
        letter(100 + i, body, reason=f"odd: {name}")
        for i, (name, body) in enumerate(ODD_BODIES.items())
    ]
    letters.append(letter(200, b'{"id":"x"}', conversation_id=None, correlation_id=None))
    letters.append(letter(201, b'{"id":"y"}', transition="exit"))
    # The run that numbered it (written only when there is one).
    letters.append(letter(201, b'{"id":"y"}', epoch="20261204T215700Z-3f2a"))
    for item in letters:
        queue.write(item)
    queue.close()

    assert list(read_dead_letters(path)) == letters
    assert list(read_dead_letters(str(path))) == letters
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[-1]["epoch"] == "20261204T215700Z-3f2a"
    assert "epoch" not in records[-2]


def test_json_bodies_are_stored_readably(tmp_path: Path, real_bodies: list[bytes]) -> None:
    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    queue.write(letter(1, real_bodies[0]))
    queue.write(letter(2, ODD_BODIES["not json"]))
    queue.close()

    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["event_body"] == json.loads(real_bodies[0])
    assert "event_body_b64" not in first
    assert first["idempotency_key"] == letter(1, real_bodies[0]).idempotency_key
    assert first["sequence"] == 1
    assert first["reason"] == "overflow_drop_oldest"
    assert first["topic"] == TOPIC
    assert base64.b64decode(second["event_body_b64"]) == ODD_BODIES["not json"]
    assert "event_body" not in second


def test_the_file_is_created_lazily(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    assert not path.exists()
    queue.close()  # closing an unused queue creates nothing either
    assert not path.exists()

    queue.write(letter(1, b"{}"))
    assert path.exists()
    queue.close()


def test_one_line_per_letter(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    for i, body in enumerate(ODD_BODIES.values(), 1):
        queue.write(letter(i, body))
        # Flushed as written: readable before close.
        assert len(path.read_bytes().splitlines()) == i
    queue.close()

    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # every line is terminated
    assert len(lines) - 1 == len(ODD_BODIES)
    assert [json.loads(line)["sequence"] for line in lines[:-1]] == list(
        range(1, len(ODD_BODIES) + 1)
    )


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    for sequence in (1, 2):
        queue = JsonlDeadLetterQueue(path, fsync=True)
        queue.write(letter(sequence, b"{}"))
        queue.close()
    assert [x.sequence for x in read_dead_letters(path)] == [1, 2]


def test_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dlq.jsonl"
    with pytest.raises(ConfigError, match="not a writable directory") as info:
        JsonlDeadLetterQueue(path)
    assert str(path) in str(info.value)
    assert "dead-letter" in str(info.value)


def test_a_file_as_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="not a writable directory"):
        JsonlDeadLetterQueue(blocker / "dlq.jsonl")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)
def test_a_read_only_directory_is_a_config_error(tmp_path: Path) -> None:
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not a writable directory"):
            JsonlDeadLetterQueue(directory / "dlq.jsonl")
    finally:
        directory.chmod(0o700)


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b"[1, 2, 3]",
        b'{"stream_id": "s"}',
        b'{"stream_id": "s", "sequence": "one", "reason": "r", "topic": "t", "received_at": 1}',
        b'{"stream_id": "s", "sequence": 1, "reason": "r", "topic": "t", "received_at": 1, '
        b'"event_body_b64": "%%% not base64 %%%"}',
        b'{"stream_id": "\xff", "sequence": 1}',
        b'{"stream_id": "s", "sequence": 1, "reason": "r", "topic": "t", "received_at": 1, '
        b'"event_body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
    ids=[
        "not json",
        "not an object",
        "missing fields",
        "wrong type",
        "bad base64",
        "bad utf-8",
        "nested too deep",
    ],
)
def test_a_corrupt_line_is_a_config_error_naming_it(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    queue.write(letter(1, b"{}"))
    queue.write(letter(2, b"{}"))
    queue.close()
    with path.open("ab") as file:
        file.write(b"\n" + bad + b"\n")  # a blank line 3, then the bad line 4

    letters = read_dead_letters(path)
    assert [next(letters).sequence, next(letters).sequence] == [1, 2]
    with pytest.raises(ConfigError, match=r"dlq\.jsonl:4: not a dead-letter record"):
        next(letters)


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    queue.write(letter(1, b"{}"))
    queue.close()
    path.write_bytes(b"\n  \n" + path.read_bytes() + b"\n\n")
    assert [x.sequence for x in read_dead_letters(path)] == [1]


def test_memory_queue() -> None:
    queue = MemoryDeadLetterQueue()
    letters = [letter(1, b"{}"), letter(2, b"not json")]
    for item in letters:
        queue.write(item)
    assert queue.letters == letters


def test_both_queues_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(MemoryDeadLetterQueue(), DeadLetterQueue)
    assert isinstance(JsonlDeadLetterQueue(tmp_path / "dlq.jsonl"), DeadLetterQueue)


def test_a_stream_overflowing_into_the_file(tmp_path: Path, real_bodies: list[bytes]) -> None:
    """End to end: a stream's drops land in the file and read back with their sequences."""
    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    stream = Stream("voice-main", buffer_size=2, overflow="drop_oldest", dead_letter=queue.write)
    for i, body in enumerate(real_bodies):
        stream.offer(TOPIC, body, f"corr-{i}", EPOCH + i, float(i), event_facts(TOPIC, body))
    queue.close()

    letters = list(read_dead_letters(path))
    assert [(x.sequence, x.reason) for x in letters] == [
        (i, "overflow_drop_oldest") for i in range(1, len(real_bodies) - 1)
    ]
    assert [x.raw for x in letters] == real_bodies[:-2]
    assert [x.correlation_id for x in letters] == [f"corr-{i}" for i in range(len(letters))]
    kept = [stream.take(EPOCH + 10, 10.0) for _ in range(2)]
    kept_sequences = {k.sequence for k in kept if isinstance(k, StreamEvent)}
    assert {x.sequence for x in letters} | kept_sequences == set(range(1, len(real_bodies) + 1))


def test_letters_of_bodies_the_facts_read_as_json_still_come_back_byte_for_byte(
    tmp_path: Path, real_bodies: list[bytes]
) -> None:
    """The facts' reading spares a letter the JSON walk (``well_formed``), never the rest.

    Among them a snapshot the compiled read takes whole although a name in it
    is not UTF-8 (it does not check text it skips): written verbatim, that
    line would not read back.
    """
    not_utf8 = b'{"id":"c1","name":"\xff\xfe","participants":[]}'
    # (Not "pretty json": the same JSON as "padded json", so a duplicate.)
    odd = [body for name, body in ODD_BODIES.items() if name != "pretty json"]
    bodies = [real_bodies[0], not_utf8, *odd]
    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    stream = Stream("voice-main", buffer_size=1, overflow="drop_oldest", dead_letter=queue.write)
    for i, body in enumerate([*bodies, b'{"id":"last"}']):
        facts = event_facts(TOPIC, body)
        stream.offer(TOPIC, body, f"corr-{i}", EPOCH + i, float(i), facts)
    queue.close()

    letters = list(read_dead_letters(path))
    assert [x.raw for x in letters] == bodies
    records = [json.loads(line) for line in path.read_text().splitlines()]
    verbatim = {b for b, record in zip(bodies, records, strict=True) if "event_body" in record}
    assert verbatim == {
        real_bodies[0],
        ODD_BODIES["json null"],
        ODD_BODIES["spaced json"],
        ODD_BODIES["a plain string"],
    }
    # The read did take the one that is not UTF-8, as JSON: the text check caught it.
    assert event_facts(TOPIC, not_utf8).conversation is not None
    assert stream.counters.duplicates == 0


def test_the_memory_queue_is_bounded_and_counts_what_it_cannot_hold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = MemoryDeadLetterQueue(limit=3)
    letters = [letter(i, b'{"id":"x"}') for i in range(1, 2006)]
    with caplog.at_level(logging.ERROR, logger="genesys_mux.dlq"):
        for item in letters:
            queue.write(item)
    assert queue.letters == letters[:3]
    assert queue.dropped == 2002
    # Said at once, then every thousandth, not once per letter.
    full = [r for r in caplog.records if "dead-letter queue full" in r.getMessage()]
    assert len(full) == 3
    assert "sequence=4 " in full[0].getMessage()
    with pytest.raises(ValueError, match="limit"):
        MemoryDeadLetterQueue(limit=-1)
    unbounded = MemoryDeadLetterQueue()
    for item in letters:
        unbounded.write(item)
    assert unbounded.letters == letters
    assert unbounded.dropped == 0


def test_a_purge_while_letters_are_written_loses_none(tmp_path: Path) -> None:
    """`dlq purge` in one process while `run` writes letters in another (here a thread)."""
    from genesys_mux.cli.tools import rewrite_without

    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    written = [letter(i, b'{"id":"x"}', stream_id="a" if i % 2 else "b") for i in range(1, 1001)]

    def write_all() -> None:
        for item in written:
            queue.write(item)

    writer = threading.Thread(target=write_all)
    writer.start()
    purges = 0
    # At least two purges whatever the machine's speed (a loaded one may
    # finish the writes before a second); most run while letters are written.
    while writer.is_alive() or purges < 2:
        if path.exists():
            present = [d for d in read_dead_letters(path) if d.stream_id == "a"]
            rewrite_without(path, present)
            purges += 1
    writer.join()
    queue.close()
    left = list(read_dead_letters(path))
    # Every "b" letter survived every purge; only "a" letters were removed.
    assert [d.sequence for d in left if d.stream_id == "b"] == [
        d.sequence for d in written if d.stream_id == "b"
    ]
    assert purges > 1


async def test_in_an_event_loop_letters_are_written_together_when_the_iteration_ends(
    tmp_path: Path, real_bodies: list[bytes]
) -> None:
    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    batch = [letter(i, body) for i, body in enumerate(real_bodies[:50], 1)]
    for item in batch:
        queue.write(item)
    assert not path.exists()  # pending: one write for the whole burst
    await asyncio.sleep(0)  # the iteration ends: the flush scheduled with call_soon runs
    assert list(read_dead_letters(path)) == batch
    # flush() writes what is pending at once (before a checkpoint, say).
    queue.write(letter(99, b"{}"))
    queue.flush()
    assert len(path.read_bytes().splitlines()) == len(batch) + 1
    queue.close()


def test_past_its_cap_the_file_counts_letters_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dlq.jsonl"
    probe = tmp_path / "probe.jsonl"
    sizing = JsonlDeadLetterQueue(probe)
    sizing.write(letter(1, b'{"id":"a"}'))
    sizing.close()
    line = probe.stat().st_size
    queue = JsonlDeadLetterQueue(path, max_bytes=2 * line + line // 2)
    with caplog.at_level(logging.ERROR, logger="genesys_mux.dlq"):
        for sequence in range(1, 2006):
            queue.write(letter(sequence, b'{"id":"a"}'))
    assert [x.sequence for x in read_dead_letters(path)] == [1, 2]
    assert path.stat().st_size == queue.size == 2 * line
    assert queue.dropped == 2003
    # Loud, but not once per letter: the first, then each thousandth.
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 3
    assert "raise the cap" in full[0].getMessage()
    # Emptied by an operator (a purge rewrites the file): there is room again.
    path.write_bytes(b"")
    queue.write(letter(3000, b'{"id":"a"}'))
    assert [x.sequence for x in read_dead_letters(path)] == [3000]
    assert queue.dropped == 2003
    queue.close()


def test_a_batch_left_by_an_event_loop_that_ended_is_written_by_the_next(tmp_path: Path) -> None:
    path = tmp_path / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)

    async def burst(first: int, *, stop: bool = False) -> None:
        queue.write(letter(first, b"{}"))
        queue.write(letter(first + 1, b"{}"))
        if stop:  # the loop ends with this iteration, before the flush scheduled for the next
            asyncio.get_running_loop().stop()

    ended = asyncio.new_event_loop()
    ended.run_until_complete(burst(1, stop=True))
    ended.close()
    assert not path.exists()
    asyncio.run(burst(3))
    assert [x.sequence for x in read_dead_letters(path)] == [1, 2, 3, 4]
    queue.close()


async def test_letters_that_cannot_be_written_are_kept_and_block_the_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "dlq"
    directory.mkdir()
    path = directory / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    queue.write(letter(1, b"{}"))
    await asyncio.sleep(0)  # the iteration ends: letter 1 is on file
    assert [x.sequence for x in read_dead_letters(path)] == [1]
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()  # removed (or unmounted) under a running feed
    with caplog.at_level(logging.ERROR, logger="genesys_mux.dlq"):
        for sequence in (2, 3, 4):
            queue.write(letter(sequence, b"{}"))
        await asyncio.sleep(0)  # the scheduled write fails: the letters are held, not lost
        # What a checkpoint calls first: it must not pass letters that are not on file.
        with pytest.raises(StateError, match=r"sequence 2-4.*no checkpoint.*make the directory"):
            queue.flush()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1  # loud once, not once per attempt
    assert "cannot write 3 dead letter(s) (stream=voice-main sequence 2-4)" in said[0]
    assert queue.dropped == 0
    directory.mkdir()
    queue.flush()
    assert [x.sequence for x in read_dead_letters(path)] == [2, 3, 4]
    queue.close()


def test_letters_past_the_memory_bound_are_counted_when_the_file_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "dlq"
    directory.mkdir()
    path = directory / "dlq.jsonl"
    queue = JsonlDeadLetterQueue(path)
    monkeypatch.setattr("genesys_mux.sinks.dlq._HELD_BYTES", 0)  # no room to hold any
    directory.rmdir()
    queue.write(letter(1, b"{}"))  # no event loop: written at once, or held, or counted
    assert queue.dropped == 1
    queue.flush()  # nothing is held: a checkpoint may pass the counted letter
    directory.mkdir()
    queue.close()
    assert not path.exists()
