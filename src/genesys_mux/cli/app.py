"""``genesys-mux``: the command-line entry point.

Only typer (and the standard library it loads anyway) is imported at the
top. Each command imports what it runs (asyncio, the emulator, aiohttp, the
runtime, structlog, rich's widgets) inside its function, so ``genesys-mux
--help``, ``--version`` and shell completion pay for none of it: they answer
in a fraction of the time a full import takes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from genesys_mux.errors import GenesysMuxError, MissingExtraError

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable

    from rich.console import Console

    from genesys_mux.emulator import EmulatorSettings

__all__ = ["app", "main"]

app = typer.Typer(
    name="genesys-mux",
    help="Multiplex Genesys Cloud interaction streams over a few Notifications-API WebSockets.",
    no_args_is_help=True,
    # --install-completion and --show-completion for bash, zsh, fish, PowerShell.
    add_completion=True,
    pretty_exceptions_enable=False,
)


@functools.cache
def _console() -> Console:
    """The stderr console, made on first use (rich's import is not free)."""
    from rich.console import Console

    return Console(stderr=True)


def _log() -> Any:
    """The command line's structlog logger, imported on first use."""
    import structlog

    return structlog.get_logger("genesys_mux.cli")


def _print_version(value: bool) -> None:
    if value:
        # Read from the installed package's metadata: one place for the version.
        from genesys_mux._version import __version__

        print(f"genesys-mux {__version__}")
        raise typer.Exit(0)


class _LogLevel(StrEnum):
    """The levels of ``--log-level``; typer lists them and refuses others."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
    log_level: Annotated[
        _LogLevel | None,
        typer.Option(
            "--log-level",
            envvar="GENESYS_MUX_LOG_LEVEL",
            case_sensitive=False,
            help="Level of the log lines on stderr, for every command (each has its own "
            "default: INFO for run, WARNING for the tools). Audit facts are written at any level.",
        ),
    ] = None,
) -> None:
    """Multiplex Genesys Cloud interaction streams over a few Notifications-API WebSockets."""
    from genesys_mux.cli.logs import override_level

    override_level(None if log_level is None else log_level.value)


@app.command()
def emulator(
    host: Annotated[
        str,
        typer.Option(
            help="Interface to bind. Loopback by default; anything else is reachable by others."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).")] = 8080,
    seed: Annotated[
        int, typer.Option(help="Seed of the simulated contact centre: same seed, same traffic.")
    ] = 1,
    queues: Annotated[int, typer.Option(min=1, help="Number of routing queues.")] = 10,
    agents: Annotated[int, typer.Option(min=0, help="Number of agents.")] = 50,
    rate: Annotated[
        float, typer.Option(min=0, help="New conversations per second across the org.")
    ] = 20.0,
    heartbeat_interval: Annotated[
        float, typer.Option(min=0.01, help="Seconds between socket heartbeats.")
    ] = 30.0,
    client_id: Annotated[
        str, typer.Option(help="OAuth client id the emulator accepts.")
    ] = "demo-client",
    client_secret: Annotated[
        str,
        typer.Option(
            envvar="GENESYS_MUX_EMULATOR_CLIENT_SECRET",
            help="Secret of that client (an emulator-only value; prefer the environment variable).",
        ),
    ] = "demo-secret",  # noqa: S107 - the emulator's published demo credential
    token_lifetime: Annotated[int, typer.Option(min=1, help="Token lifetime in seconds.")] = 86399,
    channel_lifetime: Annotated[
        float, typer.Option(min=1, help="Channel lifetime in seconds.")
    ] = 86400.0,
    requests_per_minute: Annotated[
        int, typer.Option(min=1, help="REST budget per token per minute.")
    ] = 300,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Log JSON lines instead of console text.")
    ] = False,
) -> None:
    """Run the Genesys Cloud emulator: OAuth, channels, sockets, simulated traffic, faults."""
    import asyncio

    from genesys_mux.cli import tools
    from genesys_mux.cli.logs import configure_logging
    from genesys_mux.emulator import ClientApp, EmulatorSettings, PlatformLimits

    console = _console()
    configure_logging(json=log_json)
    try:
        settings = EmulatorSettings(
            host=host,
            port=port,
            seed=seed,
            queues=queues,
            agents=agents,
            rate=rate,
            heartbeat_interval_s=heartbeat_interval,
            clients=[ClientApp(client_id, client_secret, token_lifetime_s=token_lifetime)],
            limits=PlatformLimits(
                channel_lifetime_s=channel_lifetime, requests_per_minute=requests_per_minute
            ),
        )
        asyncio.run(_serve_emulator(settings, client_id))
    except GenesysMuxError as exc:
        tools.print_error(console, exc)
        raise typer.Exit(2) from None
    except OSError as exc:
        tools.print_error(console, f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        raise typer.Exit(2) from None


async def _serve_emulator(settings: EmulatorSettings, client_id: str) -> None:
    import asyncio

    from rich.panel import Panel

    from genesys_mux.emulator import Emulator

    console = _console()
    log = _log()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with Emulator(settings) as running:
        base = running.base_url
        console.print(
            Panel.fit(
                f"[bold]Genesys Cloud emulator[/bold] on [cyan]{base}[/cyan]\n"
                f"login/api/streaming base URL: {base}\n"
                f"OAuth client id: {client_id}  (secret as configured)\n"
                f"org: {settings.queues} queues, {settings.agents} agents, "
                f"{settings.rate:g} conversations/s, seed {settings.seed}\n"
                f"control surface: {base}/__emulator__/  (org, channels, traffic, faults, ledger)\n"
                "Ctrl-C stops it.",
                title="genesys-mux",
            )
        )
        log.info("emulator started", base_url=base, pid=os.getpid())
        await stop.wait()
        log.info("emulator stopping")


ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="TOML configuration file.", exists=False, dir_okay=False),
]


@app.command()
def validate(
    config: ConfigOption,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object on stdout instead of tables.")
    ] = False,
    here: Annotated[
        bool,
        typer.Option(
            "--here",
            help="This is the machine it runs on: a missing directory or secrets file named by "
            "an absolute path is a problem, not a warning.",
        ),
    ] = False,
) -> None:
    """Check a configuration file (and what run needs beyond it); print every problem."""
    from genesys_mux.cli import tools

    raise typer.Exit(tools.validate(config, _console(), as_json=as_json, here=here))


@app.command()
def schema() -> None:
    """Print the JSON Schema of the configuration file."""
    from genesys_mux.cli import tools

    raise typer.Exit(tools.print_schema())


@app.command()
def listen(
    topics: Annotated[list[str], typer.Argument(help="Genesys topics (combined topics allowed).")],
    region: Annotated[str | None, typer.Option(help="Region name or domain.")] = None,
    base_url: Annotated[str | None, typer.Option(help="Emulator (or other) base URL.")] = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many notifications.")
    ] = None,
) -> None:
    """Print raw notifications of some topics as JSON lines (credentials from GENESYSCLOUD_*)."""
    from genesys_mux.cli import tools
    from genesys_mux.cli.logs import configure_logging

    configure_logging()
    raise typer.Exit(
        tools.listen(topics, region=region, base_url=base_url, console=_console(), count=count)
    )


def _run_async(main: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run ``main`` with an event that Ctrl-C and SIGTERM set, for a clean stop."""
    import asyncio

    from genesys_mux.cli import tools
    from genesys_mux.cli.runtime import StopRequest

    async def runner() -> int:
        stop = StopRequest()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.ask, sig.name)
        return await main(stop)

    try:
        return asyncio.run(runner())
    except GenesysMuxError as exc:
        tools.print_error(_console(), exc)
        return 2


@app.command()
def demo(
    chaos: Annotated[
        bool, typer.Option("--chaos", help="Inject a fault every few seconds.")
    ] = False,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Stop after this many seconds.")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="JSON lines on stdout (audit log on stderr), no dashboard."),
    ] = False,
    chaos_interval: Annotated[
        float, typer.Option(min=0.5, help="Seconds between chaos faults.")
    ] = 4.0,
    admin_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve /metrics, /healthz, /readyz, /status."),
    ] = None,
) -> None:
    """Run the whole product against the embedded emulator, with a live dashboard."""
    from genesys_mux.cli.demo import run_demo
    from genesys_mux.cli.logs import configure_logging, level_asked

    console = _console()
    configure_logging(level="WARNING", json=as_json)
    if as_json and level_asked() is None:
        # No dashboard to say them: the run's own few lines (the admin
        # server's address, which --admin-port 0 chooses, the stop and its
        # summary) join the audit log on stderr.
        logging.getLogger("genesys_mux.cli").setLevel(logging.INFO)

    async def main(stop: asyncio.Event) -> int:
        return await run_demo(
            stop,
            duration_s=duration,
            chaos=chaos,
            json_lines=as_json,
            stdout=sys.stdout,
            console=console,
            chaos_every_s=chaos_interval,
            admin_port=admin_port,
        )

    raise typer.Exit(_run_async(main))


@app.command()
def run(
    config: ConfigOption,
    base_url: Annotated[
        str | None,
        typer.Option(help="Point everything at this URL (an emulator) instead of the region."),
    ] = None,
    tui: Annotated[bool, typer.Option("--tui", help="Show the live dashboard.")] = False,
    admin_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve /metrics, /healthz, /readyz, /status here."),
    ] = None,
    admin_host: Annotated[
        str | None,
        typer.Option(help="Interface of the admin server (default 127.0.0.1, or the config's)."),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=1, help="Stop after this many seconds.")
    ] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")] = False,
    reset_state: Annotated[
        bool,
        typer.Option(
            "--reset-state",
            help="Move the saved state aside (never deleted) and start afresh.",
        ),
    ] = False,
) -> None:
    """Run a configuration file's streams against a tenant (credentials from the environment)."""
    from genesys_mux.cli import tools
    from genesys_mux.cli.logs import configure_logging
    from genesys_mux.cli.runtime import Output, Runtime, sink_problems
    from genesys_mux.configfile import (
        advice,
        configured_region,
        load_config,
        load_credentials,
        missing_extras,
    )
    from genesys_mux.errors import ConfigFileError

    console = _console()
    log = _log()
    configure_logging(level="WARNING" if tui else "INFO", json=log_json)
    try:
        loaded = load_config(config)
        # A feature whose package is not installed: said now, not once connected.
        missing = missing_extras(loaded)
        if missing:
            for where, problem in missing:
                tools.print_error(console, f"{where}: {problem}")
            raise typer.Exit(2)
        # A file it could not write (the audit log, dead letters, a JSONL
        # sink): said now, each with its key, not once connected.
        unwritable = tools.unwritable_outputs(loaded)
        if unwritable:
            for where, problem, _ in unwritable:
                tools.print_error(console, f"{where}: {problem}")
            raise typer.Exit(2)
        # The dashboard draws on the terminal: a sink printing to the same one
        # would write over it, line after line.
        if tui and sys.stdout.isatty():
            printing = [
                s for s, specs in loaded.sinks.items() if any(p.type == "stdout" for p in specs)
            ]
            if printing:
                tools.print_error(
                    console,
                    f"--tui: stream(s) {', '.join(printing)} print their events to this terminal "
                    "(a stdout sink), over the dashboard: send stdout elsewhere (`> events.jsonl`) "
                    "or run without --tui",
                )
                raise typer.Exit(2)
        # A sink's variable not set, or refused: every one, before any channel.
        unbuildable = sink_problems(loaded)
        if unbuildable:
            for problem in unbuildable:
                tools.print_error(console, problem)
            raise typer.Exit(2)
        if base_url is None:
            # Said now, naming where the region came from (the file wins over
            # GENESYSCLOUD_REGION), rather than once the multiplexer starts.
            configured_region(loaded)
        # A cluster's instance uses its own OAuth client (see [[genesys.clients]]).
        client = loaded.cluster.client_name() if loaded.cluster is not None else None
        credentials, warnings = load_credentials(loaded.genesys, client=client)
    except ConfigFileError as exc:
        # Every problem at once, as validate shows them, for this machine.
        tools.validate(config, console, here=True)
        raise typer.Exit(2) from exc
    except GenesysMuxError as exc:
        tools.print_error(console, exc)
        raise typer.Exit(2) from None
    for warning in [*warnings, *advice(loaded)]:
        log.warning(warning)
    overrides = {
        key: value
        for key, value in (("admin_port", admin_port), ("admin_host", admin_host))
        if value is not None
    }
    if overrides:
        loaded = dataclasses.replace(loaded, settings=loaded.settings.model_copy(update=overrides))
    if reset_state and tools.reset_state(loaded, console) != 0:
        raise typer.Exit(2)

    async def main(stop: asyncio.Event) -> int:
        runtime = Runtime(
            loaded,
            credentials,
            base_url=base_url,
            # Streams without sinks print JSON lines (or are counted under the dashboard).
            output=Output(mode="dashboard" if tui else "json"),
            console=console,
        )
        return await runtime.run(stop, duration)

    raise typer.Exit(_run_async(main))


dlq_app = typer.Typer(help="Inspect, replay or purge the dead-letter queue.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


DlqFile = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help="Dead-letter file (default: the config's dlq_path, else genesys-mux-dlq.jsonl).",
        dir_okay=False,
    ),
]
OptionalConfig = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Take dlq_path from this configuration file.", dir_okay=False
    ),
]


def _dlq_file(file: Path | None, config: Path | None) -> Path:
    """-f if given, else the config's dlq_path, else the default file name."""
    if file is not None:
        return file
    if config is not None:
        from genesys_mux.cli import tools
        from genesys_mux.configfile import load_config

        try:
            return Path(load_config(config).settings.dlq_path)
        except GenesysMuxError as exc:
            tools.print_error(_console(), exc)
            raise typer.Exit(2) from None
    return Path("genesys-mux-dlq.jsonl")


@dlq_app.command("list")
def dlq_list(
    file: DlqFile = None,
    config: OptionalConfig = None,
    stream: Annotated[str | None, typer.Option(help="Only this stream.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List dead letters: stream, sequence, reason, conversation."""
    from genesys_mux.cli import tools

    raise typer.Exit(tools.dlq_list(_dlq_file(file, config), stream, as_json, _console()))


@dlq_app.command("replay")
def dlq_replay(
    config: ConfigOption,
    stream: Annotated[str, typer.Option(help="The stream whose sinks receive its dead letters.")],
    file: DlqFile = None,
) -> None:
    """Send a stream's dead letters through its sinks; delivered ones leave the file."""
    from genesys_mux.cli import tools
    from genesys_mux.cli.logs import configure_logging

    configure_logging(level="WARNING")
    raise typer.Exit(tools.dlq_replay(_dlq_file(file, config), config, stream, _console()))


@dlq_app.command("purge")
def dlq_purge(
    file: DlqFile = None,
    config: OptionalConfig = None,
    stream: Annotated[str | None, typer.Option(help="Only this stream.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete dead letters (all of them, or one stream's)."""
    path = _dlq_file(file, config)
    from genesys_mux.cli import tools

    def confirm(count: int) -> bool:
        # Asked once the letters are counted: a stream with none (a typo)
        # is said, not asked about.
        whose = f" of stream {stream!r}" if stream is not None else ""
        return yes or typer.confirm(f"Delete {count} dead letter(s){whose} from {path}?")

    raise typer.Exit(tools.dlq_purge(path, stream, _console(), confirm=confirm))


state_app = typer.Typer(
    help="Inspect or prune the state streams keep across restarts.", no_args_is_help=True
)
app.add_typer(state_app, name="state")


@state_app.command("show")
def state_show(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Each stream's saved state: next sequence, watermark, remembered keys, the store."""
    from genesys_mux.cli import tools
    from genesys_mux.cli.logs import configure_logging

    configure_logging(level="WARNING")
    raise typer.Exit(tools.state_show(config, as_json, _console()))


@state_app.command("prune")
def state_prune(config: ConfigOption) -> None:
    """Forget the saved state of streams no longer in the configuration."""
    from genesys_mux.cli import tools
    from genesys_mux.cli.logs import configure_logging

    configure_logging(level="WARNING")
    raise typer.Exit(tools.state_prune(config, _console()))


cluster_app = typer.Typer(
    help="Look at a cluster of instances sharing the streams.", no_args_is_help=True
)
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("status")
def cluster_status(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Members, and each stream's holder, lease, fencing token and placement."""
    from genesys_mux.cli import tools
    from genesys_mux.cli.logs import configure_logging

    configure_logging(level="WARNING")
    raise typer.Exit(tools.cluster_status(config, as_json, _console()))


def main() -> None:
    """Run the command line (see :func:`genesys_mux.cli.main`, the console script)."""
    try:
        # The name the user types, also under ``python -m genesys_mux``: what
        # --help shows and what completion scripts are registered for.
        app(prog_name="genesys-mux")
    except MissingExtraError as exc:
        # A command that needs an extra not installed (a Redis sink without
        # [redis]): one line saying what to install, not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
