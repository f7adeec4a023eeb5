"""``genesys-mux``: the command-line entry point."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Annotated

import structlog
import typer
from rich.console import Console
from rich.panel import Panel

from genesys_mux.cli.logs import configure_logging
from genesys_mux.emulator import ClientApp, Emulator, EmulatorSettings, PlatformLimits
from genesys_mux.errors import GenesysMuxError

__all__ = ["app", "main"]

app = typer.Typer(
    name="genesys-mux",
    help="Multiplex Genesys Cloud interaction streams over a few Notifications-API WebSockets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
log = structlog.get_logger("genesys_mux.cli")


@app.callback()
def _root() -> None:
    """Multiplex Genesys Cloud interaction streams over a few Notifications-API WebSockets."""


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
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except OSError as exc:
        console.print(f"[red]error:[/red] cannot listen on {host}:{port}: {exc.strerror or exc}")
        raise typer.Exit(2) from None


async def _serve_emulator(settings: EmulatorSettings, client_id: str) -> None:
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


def main() -> None:
    """Console-script entry point."""
    app()
