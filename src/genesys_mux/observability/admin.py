"""The admin HTTP server: Prometheus metrics, liveness, readiness and a JSON status.

Theory of operation
-------------------
:class:`AdminServer` is a small aiohttp application run on the multiplexer's
own event loop, so every handler reads the multiplexer directly, without
locks, between two of its steps:

* ``/metrics``: the registry of a :class:`~genesys_mux.observability.MuxMetrics`
  in the Prometheus text format. Counters are read from ``mux.stats()`` at
  that moment; a scrape costs one snapshot.
* ``/healthz``: 200 while the multiplexer's dispatcher task runs. If it
  died, restarting the process is the fix, which is what a liveness probe
  does.
* ``/readyz``: 200 when the feed runs, every channel is live and subscribed
  and at least one stream is configured; otherwise 503 with a JSON reason.
  During an outage (a lost socket, a channel being recreated) it is 503
  until the replacement is live: a load balancer or an orchestrator can act
  on it. A feed that stopped for good (refused credentials) or whose
  dispatcher ended is not ready either. ``genesys_mux_ready`` is the same
  judgement (:meth:`MuxMetrics.readiness`), so the gauge and the probe agree.
* ``/status``: a JSON snapshot of streams and channels (the dashboard's
  data), plus whatever ``status_extra()`` returns (sinks, build info...).
  Channel ids are fine here; Prometheus labels never carry them. The extra
  part is the caller's and is redacted like the audit log, by key name and
  by value shape, since we cannot know what it holds.

It binds loopback by default: these endpoints are for the machine's own
scraper and probes. Binding anything else is allowed (containers need it)
but logged as a warning. The access log is off: a scrape every few seconds
would otherwise be the loudest thing in the logs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from genesys_mux._extras import raise_if_extra_missing

try:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
except ModuleNotFoundError as exc:  # pip install 'genesys-mux[metrics]'
    raise_if_extra_missing(exc, "the admin server (/metrics)")
    raise

from genesys_mux.errors import ConfigError, InvalidStateError
from genesys_mux.observability.metrics import MuxMetrics, Readiness
from genesys_mux.observability.sanitize import redact
from genesys_mux.regions import is_loopback_host

if TYPE_CHECKING:
    from genesys_mux.net.multiplexer import Multiplexer

__all__ = ["AdminServer"]

log = logging.getLogger("genesys_mux.observability.admin")


def _dispatcher_state(mux: Multiplexer) -> tuple[bool, str | None]:
    """Whether the process is alive for ``/healthz``, and if not, why.

    A multiplexer still starting (no token or channel yet, perhaps because
    the platform is down) is alive: it is working on it, and a liveness probe
    that failed it would only restart it into the same outage. ``/readyz``
    says it is not ready, and why.
    """
    if mux.pool is None:
        return True, None
    if not mux.running:
        return False, "the multiplexer is stopped or its dispatcher has ended"
    return True, None


def status_snapshot(mux: Multiplexer, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Streams and channels as JSON-ready data: what ``/status`` and the dashboard show."""
    stats = mux.stats() if stats is None else stats
    return {
        "live": mux.live,
        "streams": {stream_id: dataclasses.asdict(s) for stream_id, s in stats["streams"].items()},
        "channels": {str(index): dataclasses.asdict(c) for index, c in stats["channels"].items()},
    }


def _json_response(data: Mapping[str, Any], status: int = 200) -> web.Response:
    body = json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    return web.Response(body=body.encode(), status=status, content_type="application/json")


class AdminServer:
    """``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` for one multiplexer.

    Use as an async context manager::

        metrics = MuxMetrics(mux)
        async with AdminServer(mux, metrics, port=9464) as admin:
            print(admin.base_url)

    ``port=0`` picks a free port; :attr:`base_url` tells which.
    ``status_extra`` is called on every ``/status`` request and its mapping
    is merged into the answer (the built-in keys win).
    ``sink_unready_after_s``, when given, sets how long a sink may fail
    without a break before ``/readyz`` (and ``genesys_mux_ready``) say not
    ready; by default the metrics' own setting holds.
    """

    def __init__(
        self,
        mux: Multiplexer,
        metrics: MuxMetrics,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        status_extra: Callable[[], Mapping[str, Any]] | None = None,
        sink_unready_after_s: float | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is not between 0 and 65535")
        self.mux = mux
        self.metrics = metrics
        if sink_unready_after_s is not None:
            # Set on the metrics, whose judgement /readyz and genesys_mux_ready share.
            metrics.sink_unready_after_s = sink_unready_after_s
        self.host = host
        self.port = port
        self._status_extra = status_extra
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._started_at = time.time()

    # -- lifecycle ------------------------------------------------------------

    async def __aenter__(self) -> AdminServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind and start serving.

        Raises :class:`~genesys_mux.errors.ConfigError` when the host and
        port cannot be bound (taken, not this host's, not resolvable).
        """
        if self._runner is not None:
            return
        if not is_loopback_host(self.host):
            log.warning(
                "the admin server binds %s, not loopback: metrics and status are reachable "
                "from the network",
                self.host,
            )
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            # Taken, not an address of this host, or a name that does not
            # resolve: the operator's choice of host and port, so a
            # ConfigError that says which and what to do, not a traceback.
            await runner.cleanup()
            raise ConfigError(
                f"the admin server cannot listen on {self.host}:{self.port} "
                f"(admin_host / admin_port): {exc.strerror or exc}; pick another port, "
                "or stop the process that holds it"
            ) from exc
        self._runner = runner
        address = runner.addresses[0]
        host, port = address[0], address[1]
        shown = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{shown}:{port}"
        self._started_at = time.time()
        log.info("admin server listening on %s", self._base_url)

    async def stop(self) -> None:
        """Stop serving and release the port."""
        runner, self._runner = self._runner, None
        self._base_url = None
        if runner is not None:
            await runner.cleanup()

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._base_url is None:
            raise InvalidStateError("the admin server is not running; start it first")
        return self._base_url

    # -- handlers ------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        running, reason = _dispatcher_state(self.mux)
        if running:
            return _json_response({"status": "ok"})
        return _json_response({"status": "down", "reason": reason}, 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        state = self._readiness()
        if state.ready:
            return _json_response({"status": "ready"})
        return _json_response({"status": "not_ready", "reason": state.reason}, 503)

    @property
    def sink_unready_after_s(self) -> float:
        """A sink failing without a break for longer than this makes /readyz 503."""
        return self.metrics.sink_unready_after_s

    def _readiness(self) -> Readiness:
        """The feed's readiness, and its sinks': the same judgement as ``genesys_mux_ready``."""
        return self.metrics.readiness()

    async def _status(self, request: web.Request) -> web.Response:
        return _json_response(self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        """What ``/status`` answers: readiness, streams, channels, control-event counts.

        Each stream has ``dead_lettered`` (events its buffer dead-lettered)
        and ``sink_dead_lettered`` (events its sinks gave up on): together,
        every dead letter of the stream.
        """
        stats = self.mux.stats()
        state = self._readiness()
        running, _ = _dispatcher_state(self.mux)
        status: dict[str, Any] = {
            "generated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "uptime_s": round(time.time() - self._started_at, 3),
            "running": running,
            "ready": state.ready,
            "reason": state.reason,
            **status_snapshot(self.mux, stats),
            "control_events": dict(self.metrics.control_events),
        }
        for stream_id, stream in status["streams"].items():
            # A stream's dead_lettered is its buffer's (as in the metric of that
            # name); what its sinks gave up on is beside it, so neither is missed.
            delivery = self.metrics.sink_runners.get(stream_id)
            stream["sink_dead_lettered"] = delivery.dead_lettered if delivery is not None else 0
        if self._status_extra is not None:
            try:
                extra = redact(self._status_extra())
            except Exception as exc:
                # The caller's hook must not break the status page; its
                # message is not shown, only its type, as it may hold anything.
                log.warning("status_extra failed: %s", type(exc).__name__)
                status["extra_error"] = type(exc).__name__
            else:
                for key, value in extra.items():
                    status.setdefault(key, value)
        return status
