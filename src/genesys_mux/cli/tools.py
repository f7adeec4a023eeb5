"""The small commands: validate, schema, listen, dlq.

Each is a plain function the typer layer in :mod:`genesys_mux.cli.app`
calls; they print with rich and return an exit code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from genesys_mux._extras import raise_if_extra_missing
from genesys_mux.cli.logs import lines_are_json
from genesys_mux.cli.runtime import build_sink, client_budgets, state_setting
from genesys_mux.configfile import (
    ConfigFile,
    GenesysSection,
    SinkSpec,
    check_config,
    json_schema,
    load_config,
    load_credentials,
    output_files,
    sink_key_paths,
)
from genesys_mux.core.checkpoint import StreamCheckpoint
from genesys_mux.core.limits import PLATFORM
from genesys_mux.core.snapshot import event_facts
from genesys_mux.core.streams import DeadLetter, Gap, StreamEvent
from genesys_mux.core.timestamps import format_iso
from genesys_mux.core.topics import expand_topic
from genesys_mux.errors import ConfigError, GenesysMuxError, SinkStartError
from genesys_mux.net.auth import TokenProvider
from genesys_mux.net.connection import ChannelPool
from genesys_mux.net.rest import RestClient
from genesys_mux.regions import endpoints_for, resolve_region
from genesys_mux.sinks.base import Sink
from genesys_mux.sinks.dlq import dead_letter_line, file_lock, read_dead_letters
from genesys_mux.sinks.runner import SinkRunner
from genesys_mux.state import StateStore, open_store

__all__ = [
    "dlq_list",
    "dlq_purge",
    "dlq_replay",
    "listen",
    "print_error",
    "print_schema",
    "unwritable_outputs",
    "validate",
]


def print_warning(console: Console, problem: object) -> None:
    """``warning: <problem>`` on one line, as :func:`print_error` writes errors."""
    console.print(Text.assemble(("warning:", "yellow"), " ", str(problem)), soft_wrap=True)


def print_error(console: Console, problem: object) -> None:
    """``error: <problem>`` on one line: never wrapped, never read as markup.

    Error texts carry config values and platform answers, whose brackets
    rich would otherwise take for markup and swallow. When stderr carries
    JSON lines (``--log-json``, ``demo --json``) it is one of them, at
    ERROR, so that a collector reading them does not trip on the last.
    """
    if lines_are_json():
        logging.getLogger("genesys_mux.cli").error("error: %s", problem)
        return
    console.print(Text.assemble(("error:", "red"), " ", str(problem)), soft_wrap=True)


def unwritable_outputs(config: ConfigFile) -> list[tuple[str, str, Path]]:
    """Files ``run`` appends to that this user cannot write here: ``(key, problem, file)``.

    The SQLite state store's file is one of them too. A directory that is
    not there is not: the configuration's own check reports it. What is
    reported is a path that names a directory, a file that is there but
    read-only, and a read-only directory (``os.access``: the permissions, a
    read-only mount) where the run must create something in it: the file
    when it is not there yet, the ``.lock`` beside the dead-letter queue and
    the state store, a JSONL sink's rotated files.
    An audit log created beforehand in a directory the service cannot
    write (``/var/log``, say) is fine: it is only ever appended to.
    """
    problems = []
    advice = "make it writable for the user the run runs as, or choose another path"
    files = output_files(config.settings, config.sinks, sink_key_paths(config))
    if config.state.url is None and config.state.url_env is None:
        files.append(("state.path", config.state.path))  # the SQLite store
    locked = ("settings.dlq_path", "state.path")  # each with a ".lock" beside it
    for where, name in files:
        file = Path(name)
        directory = file.parent
        if file.is_dir() or _no_file_name(file):
            problem = f"{str(file)!r} is a directory; name a file (in it, say)"
            problems.append((where, problem, file))
            continue
        creates = [file]
        if where in locked:
            creates.append(file.with_name(file.name + ".lock"))
        rotates = where not in (*locked, "settings.audit_path")
        if unwritable := [f for f in creates if f.exists() and not os.access(f, os.W_OK)]:
            problem = f"{str(unwritable[0])!r} is not writable by this user; {advice}"
        elif (
            (rotates or not all(f.exists() for f in creates))
            and directory.is_dir()
            and not os.access(directory, os.W_OK)
        ):
            problem = (
                f"directory {directory} of {str(file)!r} is not writable by this user; {advice}"
            )
        else:
            continue
        problems.append((where, problem, file))
    return problems


def _no_file_name(path: Path) -> bool:
    """``.``, ``/``, ``..``: a path that names a directory on every machine, never a file."""
    return path.name in ("", "..")


def validate(path: Path, console: Console, *, as_json: bool = False, here: bool = False) -> int:
    """Check a configuration file and what ``run`` would need beyond it; 0 if valid.

    Every problem is reported in one go (see
    :func:`~genesys_mux.configfile.check_config`). The result goes to stdout
    (a table, or one JSON object with ``--json``): ``valid``, ``problems``
    (path and problem: ``run`` would refuse it here), ``warnings`` (what may
    be set only where it runs), ``not_checked`` (checks that wait for a
    problem to be fixed) and ``streams``. Problems exit 1. ``here``: this
    is the machine it runs on, so a missing directory or secrets file named
    by an absolute path is a problem, not a warning.
    """
    out = Console(soft_wrap=True)
    report = check_config(path, here=here)
    problems, warnings = list(report.problems), list(report.warnings)
    not_checked = report.not_checked
    if report.config is not None:
        # A file that cannot be written is found now, not as run opens it. As
        # with a missing directory, a path outside the file's own directory
        # (an absolute one) may name another machine's: a warning, unless --here.
        home = path.resolve().parent
        for where, problem, file in unwritable_outputs(report.config):
            if here or _no_file_name(file) or file.resolve().is_relative_to(home):
                problems.append((where, problem))
            else:
                warnings.append(f"{where}: {problem} here; it must be writable where it runs")
    streams: list[dict[str, Any]] = []
    if report.config is not None:
        config = report.config
        for stream in config.streams:
            flt = (
                stream.filter.model_dump(by_alias=True, exclude_none=True)
                if stream.filter
                else None
            )
            streams.append(
                {
                    "id": stream.id,
                    "priority": stream.priority,
                    "filter": flt,
                    "raw_topics": len(stream.topics),
                    "sinks": [s.type for s in config.sinks.get(stream.id, ())],
                }
            )
    if as_json:
        result = {
            "file": str(path),
            "valid": not problems,
            "problems": [{"path": where, "problem": message} for where, message in problems],
            "warnings": list(warnings),
            "not_checked": list(not_checked),
            "streams": streams,
        }
        sys.stdout.write(json.dumps(result) + "\n")
        return 1 if problems else 0
    for warning in warnings:
        console.print(Text.assemble(("warning:", "yellow"), " ", warning), soft_wrap=True)
    if problems:
        table = Table(title=f"{len(problems)} problem(s) in {path}", show_lines=False)
        table.add_column("path", style="bold")
        table.add_column("problem")
        for where, message in problems:
            # Text, not markup: a message may quote "[genesys]" or a value.
            table.add_row(Text(where), Text(message))
        out.print(table)
        for note in not_checked:
            console.print(Text.assemble(("not checked yet:", "yellow"), " ", note), soft_wrap=True)
        console.print(
            "Fix each value and run validate again; `genesys-mux schema` lists every key."
        )
        return 1
    table = Table(title=f"{path}: valid")
    table.add_column("stream")
    table.add_column("priority", justify="right")
    table.add_column("filter")
    table.add_column("raw topics", justify="right")
    table.add_column("sinks")
    for row in streams:
        table.add_row(
            Text(row["id"]),
            str(row["priority"]),
            Text(json.dumps(row["filter"])),
            str(row["raw_topics"]),
            ", ".join(row["sinks"]) or "-",
        )
    out.print(table)
    return 0


def print_schema() -> int:
    """Print the JSON Schema of the configuration file to stdout."""
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
    return 0


def listen(
    topics: list[str],
    *,
    region: str | None,
    base_url: str | None,
    console: Console,
    count: int | None = None,
) -> int:
    """Print the raw notifications of some topics as JSON lines, until Ctrl-C."""
    try:
        wanted = [part for topic in topics for part in expand_topic(topic)]
        credentials, warnings = load_credentials(GenesysSection())
        if base_url is None:
            origin = "--region" if region else "GENESYSCLOUD_REGION in the environment"
            region = region or os.environ.get("GENESYSCLOUD_REGION")
            if region is None:
                raise ConfigError("give --region or --base-url, or set GENESYSCLOUD_REGION")
            # Named where it came from: --region wins over the variable.
            resolve_region(region, origin=origin)
        endpoints = endpoints_for(region=region if base_url is None else None, base_url=base_url)
    except ConfigError as exc:
        print_error(console, exc)
        return 2
    for warning in warnings:
        console.print(Text.assemble(("warning:", "yellow"), " ", warning), soft_wrap=True)

    async def listen_until() -> None:
        async with aiohttp.ClientSession(trust_env=True) as session:
            tokens = TokenProvider(
                session, endpoints, credentials.client_id, credentials.client_secret
            )
            rest = RestClient(session, endpoints, tokens)
            async with ChannelPool(session, rest, tokens) as pool:
                for rejection in await pool.set_topics(wanted):
                    console.print(
                        f"[yellow]rejected[/yellow] {rejection.topic}: {rejection.reason} "
                        f"{list(rejection.missing_permissions)}"
                    )
                console.print(f"listening to {len(wanted)} topic(s); Ctrl-C stops")
                printed = 0
                async for note in pool.frames():
                    line = msgspec.json.encode(
                        {
                            "received_at": note.received_at,
                            "channel": note.slot,
                            "topic": note.topic,
                            "correlation_id": note.correlation_id,
                            "eventBody": msgspec.Raw(note.body),
                        }
                    )
                    sys.stdout.write(line.decode() + "\n")
                    sys.stdout.flush()
                    printed += 1
                    if count is not None and printed >= count:
                        return

    async def run() -> None:
        # Ctrl-C and SIGTERM end the command in every state, connecting or
        # reading: the work is cancelled, not waited for.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        work = asyncio.ensure_future(listen_until())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if not work.cancelled():
            work.result()  # a failure (refused credentials...) is raised here

    try:
        asyncio.run(run())
    except GenesysMuxError as exc:
        print_error(console, exc)
        return 2
    return 0


def _listing_console() -> Console:
    """The console a listing prints to: stdout, so it pipes.

    Piped or redirected, rich would wrap the table at 80 columns and cut
    ids and reasons short; a file or a pager gets whole lines instead.
    """
    return Console() if sys.stdout.isatty() else Console(width=_PIPED_WIDTH)


#: A listing's width when stdout is not a terminal: a UUID, a stream id and
#: a reason each fit whole.
_PIPED_WIDTH = 200


def _every_letter(path: Path) -> list[DeadLetter]:
    if not path.exists():
        raise ConfigError(
            f"there is no dead-letter file {path}; give its path with -f (the run's "
            "dlq_path), or nothing has been dead-lettered yet"
        )
    return list(read_dead_letters(path))


def _letters(path: Path, stream: str | None) -> list[DeadLetter]:
    return [d for d in _every_letter(path) if stream is None or d.stream_id == stream]


def _no_such_stream(path: Path, stream: str | None, every: list[DeadLetter]) -> str | None:
    """Why ``--stream`` names no letter of a file that holds some (a typo, say), with its streams.

    None when it names some, or the file holds none. Said as a warning: a
    stream with no letter is a true answer (a script polling one stream's
    letters must not fail because another stream has some), but a typo
    must not read as "none" alone.
    """
    if stream is None or not every or any(d.stream_id == stream for d in every):
        return None
    counts = Counter(d.stream_id for d in every)
    present = ", ".join(f"{s} ({n})" for s, n in sorted(counts.items()))
    return f"no dead letters of stream {stream!r} in {path}; it holds letters of: {present}"


def dlq_list(path: Path, stream: str | None, as_json: bool, console: Console) -> int:
    """Show the dead letters in a DLQ file."""
    try:
        every = _every_letter(path)
    except ConfigError as exc:
        print_error(console, exc)
        return 1
    unknown = _no_such_stream(path, stream, every)
    if unknown is not None:
        print_warning(console, unknown)
    letters = [d for d in every if stream is None or d.stream_id == stream]
    if as_json:
        for d in letters:
            sys.stdout.write(
                json.dumps(
                    {
                        "stream_id": d.stream_id,
                        "epoch": d.epoch,
                        "sequence": d.sequence,
                        "reason": d.reason,
                        "topic": d.topic,
                        "conversation_id": d.conversation_id,
                        "received_at": d.received_at,
                        "bytes": len(d.raw),
                    }
                )
                + "\n"
            )
        return 0
    out = _listing_console()
    table = Table(title=f"{len(letters)} dead letter(s) in {path}")
    for column in ("stream", "sequence", "reason", "conversation", "received", "bytes"):
        table.add_column(column)
    for d in letters[-200:]:
        received = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(d.received_at))
        table.add_row(
            d.stream_id,
            str(d.sequence),
            d.reason,
            d.conversation_id or "-",
            received,
            str(len(d.raw)),
        )
    out.print(table)
    if len(letters) > 200:
        out.print(f"(showing the last 200; --json lists all {len(letters)})")
    by_reason = Counter(d.reason for d in letters)
    for reason, n in by_reason.most_common():
        out.print(f"  {reason}: {n}")
    return 0


def rewrite_without(
    path: Path, remove: Iterable[DeadLetter], add: Iterable[DeadLetter] = ()
) -> int:
    """Rewrite a DLQ file keeping every letter not in ``remove``, then ``add``; how many remain.

    Written to a temporary file and renamed, so a crash leaves either the old
    file or the new one, never half of each.
    """
    gone = {(d.stream_id, d.epoch, d.sequence, d.reason) for d in remove}
    kept: list[bytes] = []
    # Under the file's lock: a run writing letters waits, then reopens the
    # new file, so a letter written meanwhile is kept, not lost with the old one.
    with file_lock(path):
        with path.open("rb") as file:
            lines = [line for line in file if line.strip()]
        for line, letter in zip(lines, read_dead_letters(path), strict=True):
            if (letter.stream_id, letter.epoch, letter.sequence, letter.reason) not in gone:
                kept.append(line if line.endswith(b"\n") else line + b"\n")
        kept += [dead_letter_line(letter) for letter in add]
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_bytes(b"".join(kept))
        os.replace(temporary, path)
    return len(kept)


def dlq_purge(
    path: Path,
    stream: str | None,
    console: Console,
    *,
    confirm: Callable[[int], bool] = lambda count: True,
) -> int:
    """Delete dead letters (all, or one stream's), once ``confirm`` says yes to their count."""
    try:
        every = _every_letter(path)
        unknown = _no_such_stream(path, stream, every)
        if unknown is not None:
            print_warning(console, unknown)
        letters = [d for d in every if stream is None or d.stream_id == stream]
        if letters and not confirm(len(letters)):
            return 1
        remaining = rewrite_without(path, letters) if letters else len(every)
    except ConfigError as exc:
        print_error(console, exc)
        return 1
    console.print(f"purged {len(letters)} dead letter(s); {remaining} remain", markup=False)
    return 0


#: Attempts a replay makes to start a sink, and to send a batch when its
#: sink's ``max_attempts`` is unbounded: the letters stay for the next replay.
_REPLAY_ATTEMPTS = 5


def dlq_replay(path: Path, config_path: Path, stream: str, console: Console) -> int:
    """Send a stream's dead letters through its configured sinks; remove those delivered.

    A letter a sink gave up on (``sink_failed:<sink>: ...``) goes to that
    sink only: the stream's other sinks took the event when it was new, and
    would get it twice. Any other letter (the buffer pushed it out, the
    run stopped) goes to every sink of the stream. Letters that fail again
    stay in the file, so a replay can be repeated until the downstream
    service takes them.
    """
    try:
        config = load_config(config_path)
        stream_config = next((s for s in config.streams if s.id == stream), None)
        if stream_config is None:
            known = ", ".join(s.id for s in config.streams)
            raise ConfigError(f"no stream {stream!r} in {config_path}; streams: {known}")
        specs = config.sinks.get(stream, ())
        if not specs:
            raise ConfigError(f"stream {stream!r} has no sinks in {config_path} to replay into")
        letters = _letters(path, stream)
        sinks = [build_sink(spec, stream_id=stream) for spec in specs]
    except ConfigError as exc:
        print_error(console, exc)
        return 2
    if not letters:
        console.print(f"no dead letters for stream {stream!r} in {path}", markup=False)
        return 0
    names = [sink.name for sink in sinks]
    renamed = 0
    routes: list[list[DeadLetter]] = [[] for _ in sinks]
    for letter in letters:
        failed_at = letter.failed_sinks
        if failed_at and not set(failed_at) <= set(names):
            renamed += 1  # a sink renamed or removed since: every sink, to be sure
            failed_at = ()
        for index, name in enumerate(names):
            if not failed_at or name in failed_at:
                routes[index].append(letter)
    if renamed:
        print_warning(
            console,
            f"{renamed} letter(s) name a sink the configuration no longer has; they go to "
            f"every sink of {stream!r} ({', '.join(names)}), which may have some already",
        )
    failed: list[DeadLetter] = []

    async def items(route: list[DeadLetter]) -> AsyncIterator[StreamEvent | Gap]:
        for letter in route:
            # The facts give back the content key and state digest, so a
            # replayed event keeps the idempotency key it was lost with.
            facts = event_facts(letter.topic, letter.raw)
            yield StreamEvent(
                stream_id=letter.stream_id,
                sequence=letter.sequence,
                priority=stream_config.priority,
                topic=letter.topic,
                transition=letter.transition,
                conversation_id=letter.conversation_id,
                correlation_id=letter.correlation_id,
                raw=letter.raw,
                received_at=letter.received_at,
                epoch=letter.epoch,
                content_key=facts.key,
                digest=facts.hash,
            )

    async def replay_into(sink: Sink, spec: SinkSpec, route: list[DeadLetter]) -> None:
        # No lingering (the letters are all there), and a bounded number of
        # attempts, to start as to send: a replay that fails leaves the
        # letters for the next one.
        attempts = spec.batching.max_attempts or _REPLAY_ATTEMPTS
        runner = SinkRunner(
            items(route),
            [sink],
            failed.append,
            batch_size=spec.batching.batch_size,
            linger_s=0.0,
            max_attempts=attempts,
            start_attempts=attempts,
            name=stream,
        )
        try:
            await runner.run()
        except SinkStartError as exc:
            print_warning(console, f"{exc}; its {len(route)} letter(s) stay in {path}")
            why = DeadLetter.sink_failed([sink.name], f"cannot start: {exc.reason}")
            failed.extend(dataclasses.replace(letter, reason=why) for letter in route)

    async def replay() -> None:
        # One runner per sink, each with its own letters in their order.
        await asyncio.gather(
            *(
                replay_into(sink, spec, route)
                for sink, spec, route in zip(sinks, specs, routes, strict=True)
                if route
            )
        )

    asyncio.run(replay())
    # Each letter replayed is replaced by what failed of it now: one letter
    # per sink that gave up again, naming that sink, so that the next
    # replay goes to it alone.
    undelivered = {(d.stream_id, d.epoch, d.sequence) for d in failed}
    delivered = [d for d in letters if (d.stream_id, d.epoch, d.sequence) not in undelivered]
    remaining = rewrite_without(path, letters, add=failed)
    console.print(
        f"replayed {len(delivered)} of {len(letters)} dead letter(s) of {stream!r}; "
        f"{remaining} remain in {path}"
    )
    return 0 if not failed else 1


# -- state ---------------------------------------------------------------------------


def _store_of(config_path: Path, *, exclusive: bool = True) -> tuple[ConfigFile, StateStore]:
    config = load_config(config_path)
    store = open_store(
        config.state.target(),
        prefix=config.state.prefix,
        exclusive=exclusive,
        setting=state_setting(config),
    )
    return config, store


def state_show(config_path: Path, as_json: bool, console: Console) -> int:
    """Show each stream's saved state: next sequence, watermark, remembered keys."""

    async def read() -> tuple[ConfigFile, str, Mapping[str, StreamCheckpoint]]:
        # A reader: it may look while `run` writes.
        config, store = _store_of(config_path, exclusive=False)
        await store.open()
        try:
            return config, store.name, await store.load()
        finally:
            await store.close()

    try:
        config, name, checkpoints = asyncio.run(read())
    except GenesysMuxError as exc:
        print_error(console, exc)
        return 2
    configured = {s.id for s in config.streams}
    rows = [
        {
            "stream_id": stream_id,
            "configured": stream_id in configured,
            "next_sequence": c.next_sequence,
            "watermark": c.watermark,
            "remembered": len(c.memory),
            "epoch": c.epoch,
            "saved_at": c.saved_at,
        }
        for stream_id, c in sorted(checkpoints.items())
    ]
    if as_json:
        sys.stdout.write(json.dumps({"store": name, "streams": rows}) + "\n")
        return 0
    out = _listing_console()
    table = Table(title=f"state in {name}: {len(rows)} stream(s)")
    for column in ("stream", "next sequence", "watermark", "remembered", "saved", "note"):
        table.add_column(column)
    for row in rows:
        watermark = row["watermark"]
        table.add_row(
            str(row["stream_id"]),
            str(row["next_sequence"]),
            "-" if watermark is None else format_iso(float(str(watermark))),
            str(row["remembered"]),
            format_iso(float(str(row["saved_at"]))),
            "" if row["configured"] else "not in the configuration (state prune removes it)",
        )
    out.print(table)
    return 0


def state_prune(config_path: Path, console: Console) -> int:
    """Forget the saved state of streams that are no longer in the configuration."""

    async def prune() -> tuple[str, list[str]]:
        config, store = _store_of(config_path)
        await store.open()
        try:
            configured = {s.id for s in config.streams}
            gone = sorted(set(await store.load()) - configured)
            await store.remove(gone)
            return store.name, gone
        finally:
            await store.close()

    try:
        name, gone = asyncio.run(prune())
    except GenesysMuxError as exc:
        print_error(console, exc)
        return 2
    listed = ", ".join(gone) if gone else "none"
    console.print(f"removed the state of {len(gone)} stream(s) from {name}: {listed}", markup=False)
    return 0


def reset_state(config: ConfigFile, console: Console) -> int:
    """Move the configured state aside (never deleted), so the next run starts afresh."""

    async def move() -> str:
        store = open_store(
            config.state.target(), prefix=config.state.prefix, setting=state_setting(config)
        )
        return await store.move_aside()

    try:
        where = asyncio.run(move())
    except GenesysMuxError as exc:
        print_error(console, exc)
        return 2
    console.print(f"previous state moved aside to {where}", markup=False)
    return 0


# -- cluster -------------------------------------------------------------------


def cluster_status(config_path: Path, as_json: bool, console: Console) -> int:
    """The cluster as Redis has it: members, and each stream's holder, lease and token."""
    try:
        config = load_config(config_path)
    except GenesysMuxError as exc:
        print_error(console, exc)
        return 2
    cluster = config.cluster
    if cluster is None:
        console.print(
            f"error: {config_path} has no [cluster] section; add one to run several instances",
            markup=False,
        )
        return 2

    async def read() -> dict[str, Any]:
        from genesys_mux.cluster import LeaseTable
        from genesys_mux.cluster.member import (
            cluster_members,
            known_streams,
            placement_owners,
            stream_weights,
        )
        from genesys_mux.core.placement import StreamDemand, place
        from genesys_mux.state.redis_server import connect, redis_name

        try:
            import redis.asyncio  # noqa: F401 - to name the extra when it is missing
        except ModuleNotFoundError as exc:  # the [redis] extra is not installed
            raise_if_extra_missing(exc, "genesys-mux cluster status")
            raise

        url = cluster.redis_url("cluster")
        assert url is not None  # the section requires one
        client = connect(url, "[cluster]", socket_timeout=5.0, socket_connect_timeout=5.0)
        try:
            table = LeaseTable(
                client,
                cluster=cluster.name,
                instance="status",
                lease_ttl_s=cluster.lease_ttl_s,
                prefix=config.state.prefix,
                where=redis_name(url),
                reader=True,  # its errors say what to check, not what a member would do
            )
            await table.check_server(scripts=False)  # a reader: it runs no script
            members = await table.members()
            # As the members place them: every stream any of them has.
            ids = known_streams((s.id for s in config.streams), members)
            leases = await table.leases(ids)
            ready = await table.ready_for(s for s in ids if s not in leases)
            fences = {s: await table.fence(s) for s in ids}
        finally:
            await client.aclose()
        # As the members weigh them: with what each publishes it subscribes.
        weights = stream_weights(config.streams, members, others=ids)
        budgets = client_budgets(config)
        placement = place(
            (StreamDemand(s, weights[s]) for s in ids),
            cluster_members(members),
            placement_owners(leases, ready, {m.id for m in members}),
            budgets,
            topics_per_channel=config.settings.topics_per_channel,
        )
        return {
            "cluster": cluster.name,
            "redis": table.where,
            "members": [
                {
                    "id": m.id,
                    "client": m.client,
                    "host": m.host,
                    "since": m.since,
                    "channels": m.channels,
                }
                for m in members
            ],
            # Each client's channels as its members hold them, against its budget.
            "clients": {
                client: {
                    "channels": sum(m.channels for m in members if m.client == client),
                    "budget": budgets.get(client, PLATFORM.channels_per_client),
                }
                for client in sorted({m.client for m in members})
            },
            "streams": [
                {
                    "stream_id": s,
                    "holder": leases[s].holder if s in leases else None,
                    "lease_ttl_ms": leases[s].ttl_ms if s in leases else None,
                    "token": fences[s],
                    "placed_on": placement.owners.get(s),
                    "unplaced": placement.unplaced.get(s),
                    "weight": weights[s],
                }
                for s in ids
            ],
        }

    try:
        found = asyncio.run(read())
    except GenesysMuxError as exc:
        print_error(console, exc)
        return 2
    if as_json:
        sys.stdout.write(json.dumps(found) + "\n")
        return 0
    out = _listing_console()
    members = Table(title=f"cluster {found['cluster']} on {found['redis']}: members")
    for column in ("instance", "OAuth client", "channels", "host", "since"):
        members.add_column(column)
    for m in found["members"]:
        client = found["clients"][m["client"]]
        members.add_row(
            m["id"],
            m["client"],
            f"{m['channels']} (client: {client['channels']} of {client['budget']})",
            m["host"],
            format_iso(m["since"]),
        )
    out.print(members)
    streams = Table(title="streams")
    columns = ("stream", "topics", "holder", "lease left", "fencing token", "placed on", "note")
    for column in columns:
        streams.add_column(column)
    for row in found["streams"]:
        ttl = row["lease_ttl_ms"]
        streams.add_row(
            row["stream_id"],
            str(row["weight"]),
            row["holder"] or "-",
            "-" if ttl is None else f"{ttl / 1000:.1f} s",
            str(row["token"]),
            row["placed_on"] or "-",
            row["unplaced"] or ("moving" if row["placed_on"] != row["holder"] else ""),
        )
    out.print(streams)
    return 0
