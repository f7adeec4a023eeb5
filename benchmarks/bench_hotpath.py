"""The per-event work of the pipeline, without a socket, against a naive decode of the same frames.

Run from the project root::

    .venv/bin/python -m benchmarks.bench_hotpath [--count N] [--repeat R] [--max-body B ...]
    .venv/bin/python -m benchmarks.bench_hotpath --instructions [--count N] [--max-body B ...]

``bench_pipeline`` measures the whole client, sockets and event loop
included; on a machine shared with other work its single runs of the same
client differ by up to 40 %, too much to tell a change of a few per cent.
This benchmark isolates the synchronous work a notification costs once it
is off the socket, stage by stage, on the frames ``bench_pipeline`` sends
(the emulator's conversation snapshots, :func:`snapshot_template`, a
distinct conversation id per frame):

1. ``json.loads`` of the whole frame: the naive client's decode (**baseline**);
2. ``decode_frame``: the envelope, the body kept as bytes;
3. ``+ event_facts``: the typed snapshot decode, the facts, the state digest;
4. ``+ Stream.offer/take/settle``: de-duplication, ordering, numbering and
   the hand-over of one stream with no client-side rules.

Each stage is timed as process CPU per frame, best of ``--repeat`` passes
over ``--count`` frames, with the garbage collector on. A stage's row
includes the stages above it, as the pipeline runs them.

``--instructions`` counts instructions instead, with ``valgrind
--tool=callgrind`` (Debian's ``valgrind``): the same program, inputs and
interpreter give the same count whatever else the machine is doing, so two
versions of the code can be compared on a busy machine. Each stage runs
twice, over ``count`` and ``3 * count`` frames, in fresh interpreters; the
difference divided by ``2 * count`` is the count per frame, without start-up
and set-up. Caveat: under valgrind OpenSSL cannot use the CPU's SHA
instructions, so SHA-256 (the state digest) weighs more in these counts
than in time.

The Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

from benchmarks.bench_streams import (
    add_body_sizes_argument,
    add_names_argument,
    snapshot_template,
)
from genesys_mux.core.frames import Notification, decode_frame
from genesys_mux.core.snapshot import event_facts
from genesys_mux.core.streams import DeadLetter, Stream

#: Stage key -> its row label, in pipeline order.
STAGES: dict[str, str] = {
    "naive": "`json.loads` of the frame (naive client's decode, **baseline**)",
    "envelope": "`decode_frame` (envelope; body kept as bytes)",
    "facts": "… + `event_facts` (typed decode, facts, state digest)",
    "stream": "… + `Stream.offer` / `take` / `settle` (one stream, no rules)",
}
TOPIC = f"v2.routing.queues.{uuid.UUID(int=1)}.conversations"


class HotPathError(Exception):
    """The frames or a stage did not behave as the benchmark expects."""


def frames_of(max_body: int, count: int, names: str = "world") -> list[bytes]:
    """``count`` notification frames of the template snapshot, each about its own conversation.

    Compact JSON, so no frame holds a newline (the children read them as lines).
    """
    template = snapshot_template(max_body, names)
    queue_id = TOPIC.split(".")[3]
    return [
        b'{"topicName":"%s","version":"2","eventBody":%s,"metadata":{"CorrelationId":"%s"}}'
        % (TOPIC.encode(), template.body_for(queue_id, i), str(uuid.UUID(int=i)).encode())
        for i in range(count)
    ]


def _refuse(letter: DeadLetter) -> None:
    raise HotPathError(f"unexpected dead letter: {letter.reason}")


def run_stage(stage: str, frames: list[bytes]) -> int:
    """Run ``stage`` over ``frames``; how many events a stream delivered (stage ``stream``)."""
    if stage == "naive":
        loads = json.loads
        for data in frames:
            loads(data)
        return 0
    stream = Stream("bench", buffer_size=len(frames) + 1, dead_letter=_refuse)
    delivered = 0
    for data in frames:
        frame = decode_frame(data)
        if stage == "envelope":
            continue
        assert isinstance(frame, Notification)
        facts = event_facts(frame.topic, frame.body)
        if stage == "facts":
            continue
        event = stream.offer(frame.topic, frame.body, frame.correlation_id, 1.0, 1.0, facts)
        if event is None or stream.take(1.0, 1.0) is not event:
            raise HotPathError("a distinct conversation was not delivered at once")
        stream.settle(event.sequence)
        delivered += 1
    return delivered


def cpu_us_per_frame(run: Callable[[], object], count: int, repeat: int) -> float:
    """Best of ``repeat`` runs, process CPU µs per frame."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best / count * 1e6


def _instructions(stage: str, frames_path: str, count: int) -> int:
    """Instructions valgrind counted for a fresh interpreter running ``stage`` over ``count``."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise HotPathError("--instructions needs valgrind (apt-get install valgrind)")
    done = subprocess.run(  # noqa: S603 - valgrind on our own interpreter and module
        [
            valgrind,
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "benchmarks.bench_hotpath",
            "--child",
            stage,
            "--frames",
            frames_path,
            "--count",
            str(count),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise HotPathError(f"valgrind run of {stage} failed: {done.stderr[-2000:]}")
    return int(found.group(1))


def instructions_per_frame(stage: str, frames: list[bytes], count: int) -> float:
    """Instructions per frame: the difference between ``3 * count`` and ``count`` frames.

    The frames are written to a file for the children: building them runs
    the emulator's contact centre, far too slow under valgrind.
    """
    if len(frames) < 3 * count:
        raise HotPathError(f"need {3 * count} frames, have {len(frames)}")
    with tempfile.NamedTemporaryFile("wb", suffix=".frames") as file:
        file.write(b"\n".join(frames))
        file.flush()
        small = _instructions(stage, file.name, count)
        large = _instructions(stage, file.name, 3 * count)
    return (large - small) / (2 * count)


def _child(stage: str, frames_path: str, count: int) -> int:
    with open(frames_path, "rb") as file:
        frames = file.read().split(b"\n")[:count]
    delivered = run_stage(stage, frames)
    if stage == "stream" and delivered != count:
        raise HotPathError(f"{delivered} of {count} delivered")
    return 0


def _table(args: argparse.Namespace) -> list[str]:
    unit = "instructions per frame" if args.instructions else "CPU µs per frame"
    sizes: list[tuple[int, int]] = []
    values: dict[tuple[str, int], float] = {}
    for max_body in args.max_body:
        frames = frames_of(
            max_body, 3 * args.count if args.instructions else args.count, args.names
        )
        sizes.append((max_body, len(frames[0])))
        for stage in STAGES:
            print(f"{max_body} {stage} ...", file=sys.stderr, flush=True)
            if args.instructions:
                value = instructions_per_frame(stage, frames, args.count)
            else:
                value = cpu_us_per_frame(
                    functools.partial(run_stage, stage, frames), args.count, args.repeat
                )
            values[stage, max_body] = value
    header = " | ".join(f"{size:,} B frames" for _, size in sizes)
    lines = [
        f"{unit[0].upper()}{unit[1:]} (x the baseline), Python {platform.python_version()}, "
        f"{platform.machine()}, {args.count:,} frames per pass, names {args.names}"
        + ("" if args.instructions else f", best of {args.repeat}")
        + ":",
        "",
        f"| stage | {header} |",
        "|---|" + "--:|" * len(sizes),
    ]
    for stage, label in STAGES.items():
        cells = []
        for max_body, _ in sizes:
            value, baseline = values[stage, max_body], values["naive", max_body]
            number = f"{value:,.0f}" if args.instructions else f"{value:.2f}"
            cells.append(f"{number} ({value / baseline:.2f}x)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=5_000, help="frames per pass")
    parser.add_argument("--repeat", type=int, default=7, help="passes; the best counts")
    add_body_sizes_argument(parser)
    add_names_argument(parser)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions with valgrind's callgrind instead of timing",
    )
    # Internal: one stage over the frames in a file, under valgrind.
    parser.add_argument("--child", choices=list(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--frames", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1 or min(args.max_body) < 512:
        parser.error("need --count and --repeat >= 1, --max-body >= 512")
    if args.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind (apt-get install valgrind)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Print the table; 0 on success."""
    args = _parse(argv)
    if args.child is not None:
        return _child(args.child, args.frames, args.count)
    print("\n".join(_table(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
