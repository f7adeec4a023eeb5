"""What dead-lettering costs per letter: the JSON-lines queue against a raw file append.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_dlq [--count N] [--burst B] [--repeat R] [--max-body BYTES]

A consumer that stalls makes its stream overflow: at 10,000 events/s the
multiplexer dead-letters 10,000 letters a second, on the event loop. This
benchmark times, in one process and on the same letters (each a distinct
real conversation snapshot, bench_streams' template of at most
``--max-body`` bytes):

* ``raw append (baseline)``: ``msgspec.json.encode`` of each letter's
  record plus a newline, appended to a file and flushed once per burst;
  what any batching writer pays at least.
* ``JsonlDeadLetterQueue, one at a time``: ``write`` outside an event loop,
  where each letter is written and flushed at once (a lock, a write and a
  flush per letter; every letter was written so before batching).
* ``JsonlDeadLetterQueue in a loop``: ``write`` from a coroutine, ``--burst``
  letters per event-loop iteration, as an overflowing stream produces them;
  the queue writes each iteration's letters together when it ends.

CPU is this process's user + system time (``getrusage``) over the
letters, medians of ``--repeat`` interleaved runs (each round starting
with another case); each run checks that the
file holds exactly the letters written, in order. Markdown to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from benchmarks.bench_sinks import _events
from benchmarks.bench_streams import Template, snapshot_template
from genesys_mux.core.snapshot import event_facts
from genesys_mux.core.streams import DeadLetter, Stream
from genesys_mux.sinks.dlq import JsonlDeadLetterQueue, _record, read_dead_letters


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _raw(letters: Sequence[DeadLetter], path: Path, burst: int) -> None:
    encode = msgspec.json.Encoder().encode
    with path.open("ab") as file:
        for start in range(0, len(letters), burst):
            file.write(b"".join(encode(_record(x)) + b"\n" for x in letters[start : start + burst]))
            file.flush()


def _one_at_a_time(letters: Sequence[DeadLetter], path: Path, burst: int) -> None:
    queue = JsonlDeadLetterQueue(path, max_bytes=None)
    for letter in letters:
        queue.write(letter)
    queue.close()


def _in_a_loop(letters: Sequence[DeadLetter], path: Path, burst: int) -> None:
    async def bursts() -> None:
        queue = JsonlDeadLetterQueue(path, max_bytes=None)
        for start in range(0, len(letters), burst):
            for letter in letters[start : start + burst]:
                queue.write(letter)
            await asyncio.sleep(0)  # the iteration ends: the stream's next batch comes later
        queue.close()

    asyncio.run(bursts())


CASES: dict[str, Callable[[Sequence[DeadLetter], Path, int], None]] = {
    "raw append (baseline)": _raw,
    "JsonlDeadLetterQueue, one at a time": _one_at_a_time,
    "JsonlDeadLetterQueue in a loop": _in_a_loop,
}


def _measure(
    case: Callable[[Sequence[DeadLetter], Path, int], None],
    letters: Sequence[DeadLetter],
    burst: int,
    directory: Path,
) -> float:
    """CPU µs per letter of one run; checks the file afterwards."""
    path = directory / "dlq.jsonl"
    path.unlink(missing_ok=True)
    started = _cpu()
    case(letters, path, burst)
    spent = _cpu() - started
    found = [x.sequence for x in read_dead_letters(path)]
    if found != [x.sequence for x in letters]:
        raise SystemExit(f"{case.__name__}: the file does not hold the letters written")
    return spent / len(letters) * 1e6


def _overflowed(template: Template, count: int) -> list[DeadLetter]:
    """``count`` letters as an overflowing stream makes them: offered with their facts.

    So each carries what the pipeline gives a letter (its idempotency key
    from the state digest, and that its body was read as JSON), not a hand-
    made event's defaults.
    """
    letters: list[DeadLetter] = []
    stream = Stream("bench", buffer_size=1, overflow="drop_oldest", dead_letter=letters.append)
    # One more than the letters: the last one stays in the buffer.
    for event in _events(template, count + 1):
        facts = event_facts(event.topic, event.raw)
        stream.offer(event.topic, event.raw, event.correlation_id, event.received_at, 0.0, facts)
    if len(letters) != count or not all(x.well_formed for x in letters):
        raise SystemExit(f"the stream dead-lettered {len(letters)} letters, not {count} JSON ones")
    return letters


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000, help="letters per run")
    parser.add_argument("--burst", type=int, default=100, help="letters per loop iteration")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-body", type=int, default=2400, help="largest snapshot (bytes)")
    args = parser.parse_args(argv)
    template = snapshot_template(args.max_body)
    letters = _overflowed(template, args.count)
    runs: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory(prefix="bench-dlq-") as directory:
        for round_ in range(args.repeat):
            print(f"round {round_ + 1}/{args.repeat}", file=sys.stderr)
            # Each round starts with another case: the kernel's work for the
            # files written before (page cache, writeback) lands on whichever
            # case comes next, and must not always land on the same one.
            names = list(CASES)
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                runs[name].append(_measure(CASES[name], letters, args.burst, Path(directory)))
    body = len(letters[0].raw)
    print(f"{args.count} letters of {body} B, bursts of {args.burst}, medians of {args.repeat}\n")
    # The best run too: the kernel's page-cache work for the files written
    # before lands on some runs and not others, and weighs a lot here.
    print("| writer | CPU µs/letter, median | ratio | best | ratio |")
    print("|---|--:|--:|--:|--:|")
    baseline = statistics.median(runs["raw append (baseline)"])
    best_baseline = min(runs["raw append (baseline)"])
    for name, values in runs.items():
        median, best = statistics.median(values), min(values)
        print(
            f"| {name} | {median:.2f} | {median / baseline:.2f} "
            f"| {best:.2f} | {best / best_baseline:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
