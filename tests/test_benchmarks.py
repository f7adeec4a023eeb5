"""The benchmarks' own machinery: bench_pipeline's source, and a smoke run of it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("websockets")

from benchmarks.bench_pipeline import (
    CORRELATION_PREFIX,
    RING_SLOTS,
    ChunkLedger,
    FrameRing,
    _Chunk,
    _paired,
)
from benchmarks.bench_pool import Result

from genesys_mux.emulator.sockets import Pending

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "v2.routing.queues.00000000-0000-4000-8000-000000000001.conversations"


def _frames(data: bytes) -> list[bytes]:
    """Split unmasked server frames, checking each header."""
    frames, at = [], 0
    while at < len(data):
        assert data[at] == 0x81  # final text frame
        length, header = data[at + 1], 2
        assert length & 0x80 == 0  # a server never masks
        if length == 126:
            length, header = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif length == 127:
            length, header = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        frames.append(data[at + header : at + header + length])
        at += header + length
    assert at == len(data)
    return frames


@pytest.mark.parametrize("body_bytes", [100, 2_000, 70_000])
def test_the_firehose_ring_numbers_every_frame_in_place(body_bytes: int) -> None:
    head, tail = b'{"id":"conv-', b'","pad":"' + b"x" * body_bytes + b'"}'
    ring = FrameRing.build(TOPIC, head, tail)
    assert len(ring.buffer) == ring.frame_bytes * ring.per_slot * RING_SLOTS
    n = min(3, ring.per_slot)
    for slot, first in ((0, 0), (RING_SLOTS - 1, 10**6 + 7)):
        frames = _frames(bytes(ring.fill(slot, first, n)))
        assert len(frames) == n
        for i, frame in enumerate(frames, start=first):
            doc = json.loads(frame)
            assert doc["topicName"] == TOPIC
            assert doc["eventBody"]["id"] == f"conv-{i:012d}"
            assert doc["metadata"]["CorrelationId"] == f"{CORRELATION_PREFIX}{i:012d}"


def test_the_chunk_ledger_reads_as_the_emulator_ledger_in_send_order() -> None:
    ledger = ChunkLedger(size=4)
    ledger.record_chunk(_Chunk(ledger.next_seq, 1.0, "ch", TOPIC, "c-", 0, 2))
    # A frame the socket's writer sent between two firehose writes.
    ledger.record("ch", Pending(b"{}", TOPIC, "pong-like", None))
    ledger.record_chunk(_Chunk(ledger.next_seq, 2.0, "ch", TOPIC, "c-", 2, 2))
    assert ledger.next_seq == 6
    entries = list(ledger.entries)
    # Bounded as the emulator's ledger is: the oldest entry fell out.
    assert [e.seq for e in entries] == [2, 3, 4, 5]
    assert [e.correlation_id for e in entries] == [
        f"{CORRELATION_PREFIX}{1:012d}",
        "pong-like",
        f"{CORRELATION_PREFIX}{2:012d}",
        f"{CORRELATION_PREFIX}{3:012d}",
    ]
    assert [e.conversation_id for e in entries] == [
        f"c-{1:012d}",
        None,
        f"c-{2:012d}",
        f"c-{3:012d}",
    ]
    assert [entries[0].time, entries[2].time, entries[3].time] == [1.0, 2.0, 2.0]


def _run(scenario: str, cpu_us: float) -> Result:
    return Result(scenario, 1000, 2300, 1.0, 1.0, cpu_us / 1000, None, 0, None, None, 0)


def test_paired_ratios_say_where_the_target_lies_in_the_spread() -> None:
    """Repetition i of stream() against repetition i of the baseline, not the medians."""
    naive = [_run("naive", us) for us in (20.0, 40.0, 30.0)]
    mux = [_run("mux", us) for us in (12.0, 16.0, 12.0)]
    # Ratios 0.60, 0.40, 0.40: two of three within 0.5, though the medians
    # (12/30) alone would say 0.40.
    assert _paired({"mux": mux, "naive": naive}, "naive", 0.5) == (
        " (per repetition: median 0.40x, 0.40x to 0.60x; 2 of 3 within the target)"
    )
    assert _paired({"mux": mux, "naive": naive}, "naive", 0.7).endswith(
        "every one within the target)"
    )
    assert _paired({"mux": mux, "naive": naive}, "naive", 0.3).endswith("none within the target)")
    # One repetition, or a baseline not run: nothing to add.
    assert _paired({"mux": mux[:1], "naive": naive[:1]}, "naive", 0.5) == ""
    assert _paired({"mux": mux}, "node", 1.0) == ""


def run_module(module: str, *args: str, timeout: float) -> str:
    """``python -m benchmarks.<module> ARGS`` from the project root; its stdout (it exited 0)."""
    # Our own modules and arguments, never outside input.
    process = subprocess.run(  # noqa: S603
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout


@pytest.mark.timeout(180)
def test_bench_pipeline_quick_run_produces_its_tables() -> None:
    """A smoke run with tiny counts, one body size: every table, every check passed."""
    out = run_module("bench_pipeline", "--quick", "--max-body", "2300", timeout=170)
    for heading in ("Throughput and CPU per event", "Latency", "Memory: a stalled consumer"):
        assert f"#### {heading}" in out
    mux = re.search(r"^\| `Multiplexer.stream\(\)`, 1 stream \| ([\d,]+) \| ([\d.]+) \|", out, re.M)
    assert mux is not None, out
    assert float(mux.group(2)) > 0
    assert re.search(r"`Multiplexer.stream\(\)` ≤ 0.5x naive Python: [\d.]+x, \*\*", out)
    assert re.search(
        r"10 streams ≤ 1.25x one stream per event: [\d.]+ µs per delivered event, "
        r"[\d.]+x, \*\*(met|not met)\*\* \(per frame, which delivers 10 events: [\d.]+x\)",
        out,
    )
    assert len(re.findall(r"^\| [\d,]+ B \| .* ms \| .* ms \| .* ms \|", out, re.M)) == 3
    # The stall: 0.5 s at 10,000/s is 5,000 frames, all received, none read,
    # all but the buffer's 500 pushed out and dead-lettered, and the file
    # holds those and the 500 (dead-lettered as the multiplexer stops).
    stall = re.search(
        r"^\| [\d,]+ B \| 5,000 \| 5,000 \| 0 \| 4,500 \| 4,500 \| 5,000 \|", out, re.M
    )
    assert stall is not None, out


def test_bench_hotpath_times_every_stage_against_the_baseline() -> None:
    """A smoke run: every stage has a row, and the decode alone costs least."""
    out = run_module(
        "bench_hotpath", "--count", "200", "--repeat", "3", "--max-body", "2300", timeout=120
    )
    rows = re.findall(r"^\| (.+?) \| ([\d.]+) \(([\d.]+)x\) \|$", out, re.M)
    firsts = [label.split()[0] for label, _, _ in rows]
    assert firsts == ["`json.loads`", "`decode_frame`", "…", "…"]
    assert float(rows[0][2]) == 1.0  # the baseline against itself
    envelope, facts, stream = (float(us) for _, us, _ in rows[1:])
    # The later stages add several times the envelope's work: an order that
    # holds whatever the machine does (facts against stream is too close).
    assert 0 < envelope < min(facts, stream)


def test_bench_longrun_quick_run_accounts_for_every_frame() -> None:
    """A smoke run of the long run under faults: the tables, and every frame accounted for."""
    out = run_module("bench_longrun", "--quick", "--clients", "raw", "mux", timeout=50)
    for heading in ("Memory over the run", "Faults and accounting"):
        assert f"#### {heading}" in out
    memory = re.search(r"^\| `Multiplexer.stream\(\)`, no state store \| (.*) \|$", out, re.M)
    assert memory is not None, out
    cells = memory.group(1).split(" | ")
    # RSS at six points, then growth, per conversation, objects, keys and the verdict.
    assert all(float(cell) > 0 for cell in cells[:6])
    assert cells[-2] == "200 of 200"  # the memory is full at its bound
    assert cells[-1] in ("**flat**", "**GROWS**")
    faults = re.search(
        r"^\| `Multiplexer.stream\(\)`, no state store \| (\d+) / (\d+) \| (\d+) \| (\d+) \|",
        out,
        re.M,
    )
    assert faults is not None, out
    drops, closings, reconnects, rotations = (int(n) for n in faults.groups())
    assert min(drops, closings, reconnects, rotations) >= 1
    # The stream's own counters add up, and every conversation sent was
    # delivered once or lost inside a reported gap.
    sums = re.search(
        r"^- `Multiplexer.stream\(\)`, no state store: received ([\d,]+) = delivered ([\d,]+) "
        r"\+ duplicates ([\d,]+) \+ stale ([\d,]+) \+ filtered ([\d,]+) \+ dead-lettered "
        r"([\d,]+); sent ([\d,]+) = delivered ([\d,]+) \+ lost ([\d,]+), every loss inside a "
        r"reported gap: \*\*holds\*\*\.$",
        out,
        re.M,
    )
    assert sums is not None, out
    received, delivered, *dropped, sent, once, lost = (
        int(n.replace(",", "")) for n in sums.groups()
    )
    assert received == delivered + sum(dropped)
    assert sent == 4_000 == once + lost
    assert delivered == once
    assert re.search(
        r"^- aiohttp .*\(\*\*baseline\*\*\): sent 4,000 = .*: \*\*holds\*\*\.$", out, re.M
    )
