"""The stdout and JSONL sinks: JSON lines, rotation by size, and the fsync policies."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from genesys_mux.core.streams import StreamEvent
from genesys_mux.errors import ConfigError, SinkError
from genesys_mux.sinks.base import decode_record, encode_record
from genesys_mux.sinks.jsonl import JsonlSink
from genesys_mux.sinks.stdout import StdoutSink
from tests.sinks.conftest import a_gap, real_events

# -- stdout ------------------------------------------------------------------------------


async def test_stdout_writes_one_json_line_per_item() -> None:
    out = io.StringIO()
    sink = StdoutSink(out)
    events = real_events(5)
    await sink.start()
    await sink.send([*events[:3], a_gap()])
    await sink.send(events[3:])
    await sink.close()
    lines = out.getvalue().splitlines()
    assert out.getvalue().endswith("\n")
    assert len(lines) == 6
    records = [json.loads(line) for line in lines]
    assert [r["kind"] for r in records] == ["event"] * 3 + ["gap"] + ["event"] * 2
    assert [r.get("sequence") for r in records if r["kind"] == "event"] == [1, 2, 3, 4, 5]
    for line, event in zip([lines[i] for i in (0, 1, 2, 4, 5)], events, strict=True):
        assert decode_record(line).raw == event.raw  # type: ignore[union-attr]


def test_stdout_of_a_real_process_is_json_lines() -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from genesys_mux.sinks.stdout import StdoutSink
        from tests.sinks.conftest import a_gap, real_events

        async def main():
            sink = StdoutSink()
            await sink.start()
            await sink.send([*real_events(4), a_gap()])
            await sink.close()

        asyncio.run(main())
        """
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script],
        capture_output=True,
        cwd=root,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 5
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds == ["event"] * 4 + ["gap"]


async def test_a_closed_output_is_a_permanent_failure() -> None:
    out = io.StringIO()
    out.close()
    with pytest.raises(SinkError) as caught:
        await StdoutSink(out, name="out").send(real_events(1))
    assert not caught.value.retryable


# -- JSONL -------------------------------------------------------------------------------


def lines_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


async def test_jsonl_rotates_by_size_and_keeps_the_backups(tmp_path: Path) -> None:
    events = real_events(40)
    line_sizes = sorted(len(line) for line in _encoded_lines(events))
    max_bytes = line_sizes[-1] * 4  # a few lines per file
    path = tmp_path / "calls.jsonl"
    sink = JsonlSink(path, max_bytes=max_bytes, backups=2, fsync="never")
    await sink.start()
    for at in range(0, len(events), 3):
        await sink.send(events[at : at + 3])
    await sink.close()

    assert sink.rotations >= 3
    files = [sink.backup_path(2), sink.backup_path(1), path]
    assert all(f.exists() for f in files)
    assert not sink.backup_path(3).exists()
    for f in files:
        assert 0 < f.stat().st_size <= max_bytes
        assert f.read_bytes().endswith(b"\n")
    # Oldest to newest, the kept files hold the newest lines, in order, with
    # no line split across files.
    sequences = [int(str(r["sequence"])) for f in files for r in lines_of(f)]
    assert sequences == list(range(sequences[0], 41))
    assert sequences[0] > 1  # older files were deleted


async def test_jsonl_rotation_without_backups_starts_afresh(tmp_path: Path) -> None:
    events = real_events(10)
    path = tmp_path / "out.jsonl"
    biggest = max(len(line) for line in _encoded_lines(events))
    sink = JsonlSink(path, max_bytes=biggest * 2, backups=0, fsync="never")
    await sink.send(events)
    await sink.close()
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl"]
    assert [r["sequence"] for r in lines_of(path)][-1] == 10


async def test_jsonl_line_larger_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path, max_bytes=10, backups=5, fsync="never")
    await sink.send(real_events(3))
    await sink.close()
    for f in (sink.backup_path(2), sink.backup_path(1), path):
        assert len(lines_of(f)) == 1


async def test_jsonl_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first = JsonlSink(path)
    await first.send(real_events(2))
    await first.close()
    second = JsonlSink(path)
    await second.send(real_events(2, start=3))
    await second.close()
    assert [r["sequence"] for r in lines_of(path)] == [1, 2, 3, 4]


@pytest.mark.parametrize("after", ["deleted", "moved"])
async def test_jsonl_a_file_moved_or_deleted_under_the_sink_is_opened_again(
    tmp_path: Path, after: str
) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path)
    await sink.send(real_events(2))
    moved = tmp_path / "out.jsonl.old"
    os.rename(path, moved)  # what logrotate does without copytruncate
    if after == "deleted":
        moved.unlink()
    await sink.send(real_events(3, start=3))
    await sink.close()
    assert [r["sequence"] for r in lines_of(path)] == [3, 4, 5]
    if after == "moved":
        assert [r["sequence"] for r in lines_of(moved)] == [1, 2]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("never", lambda batches, lines: 0), ("batch", lambda b, n: b), ("always", lambda b, n: n)],
)
async def test_jsonl_fsync_policies(tmp_path: Path, policy: str, expected: object) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path, fsync=policy)  # type: ignore[arg-type]
    events = real_events(12)
    batches = [events[0:5], events[5:6], events[6:12]]
    for number, batch in enumerate(batches, 1):
        await sink.send(batch)
        # Whatever the policy, a batch is in the file once send returns.
        assert len(lines_of(path)) == sum(len(b) for b in batches[:number])
    await sink.close()
    assert callable(expected)
    assert sink.fsyncs == expected(len(batches), len(events))


async def test_jsonl_batch_policy_syncs_a_file_before_rotating_it(tmp_path: Path) -> None:
    events = real_events(6)
    biggest = max(len(line) for line in _encoded_lines(events))
    sink = JsonlSink(tmp_path / "out.jsonl", max_bytes=biggest * 3, backups=3, fsync="batch")
    await sink.send(events)
    await sink.close()
    assert sink.rotations >= 1
    assert sink.fsyncs == 1 + sink.rotations


async def test_jsonl_unwritable_directory_is_a_permanent_failure(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "missing" / "out.jsonl", name="file")
    with pytest.raises(SinkError) as caught:
        await sink.send(real_events(1))
    assert not caught.value.retryable
    path = tmp_path / "missing" / "out.jsonl"
    assert str(caught.value) == f"sink file: cannot write {path}: No such file or directory"


def test_jsonl_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fsync"):
        JsonlSink(tmp_path / "x.jsonl", fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_bytes"):
        JsonlSink(tmp_path / "x.jsonl", max_bytes=0)
    with pytest.raises(ConfigError, match="backups"):
        JsonlSink(tmp_path / "x.jsonl", backups=-1)


def _encoded_lines(events: list[StreamEvent]) -> list[bytes]:
    return [encode_record(e) + b"\n" for e in events]
