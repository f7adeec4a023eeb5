"""What ``run`` and ``demo`` share: a Multiplexer with its sinks, audit log, metrics and UI.

Theory of operation
-------------------
:class:`Runtime` turns a validated :class:`~genesys_mux.configfile.ConfigFile`
into running parts and tears them down in order:

1. the audit log and the Multiplexer (settings from ``[settings]``);
2. every stream, then one :class:`~genesys_mux.sinks.runner.SinkRunner` per
   stream with sinks (one per batching, behind a tee, when its sinks batch
   differently: see :mod:`genesys_mux.sinks.fanout`), reading that stream
   alone so a slow sink only holds back its own stream;
3. streams without sinks are read by the runtime itself: printed as JSON
   lines (``--json``), or just counted under the dashboard;
4. the admin server (``/metrics``, ``/healthz``, ``/readyz``, ``/status``)
   when ``admin_port`` is set, and the periodic ``STREAM_METRIC`` lines;
5. on stop: the runners finish their batch, the Multiplexer drains, and
   whatever is still buffered goes to the dead-letter queue.

A sink that cannot start for good (:class:`~genesys_mux.errors.SinkStartError`:
a missing destination, a refused login) stops the whole run the same way,
then :meth:`Runtime.run` raises it: a stream that can never be delivered is a
configuration to fix, not something to keep running without. A sink that
cannot start *yet* is retried by its runner and shows as failing meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import msgspec
from rich.console import Console
from rich.live import Live

from genesys_mux._extras import raise_if_extra_missing
from genesys_mux.cli.dashboard import AuditTail, Dashboard
from genesys_mux.config import StreamConfig
from genesys_mux.configfile import (
    ClusterSection,
    ConfigFile,
    Credentials,
    JsonlSinkSpec,
    NatsSinkSpec,
    PluginSinkSpec,
    RedisSinkSpec,
    SinkSpec,
    StdoutSinkSpec,
    WebhookSinkSpec,
    check_sink,
    configured_region,
    sink_key_path,
    sink_key_paths,
)
from genesys_mux.core.backoff import Backoff
from genesys_mux.core.events import ControlEvent, Fatal
from genesys_mux.core.streams import Gap, StreamEvent
from genesys_mux.errors import AuthenticationError, ConfigError, GenesysMuxError, SinkStartError
from genesys_mux.net.connection import PoolSettings
from genesys_mux.net.multiplexer import Multiplexer
from genesys_mux.observability.admin import AdminServer, status_snapshot
from genesys_mux.observability.audit import AUDIT_LOGGER, AuditLog
from genesys_mux.observability.metrics import MuxMetrics
from genesys_mux.sinks.base import Sink
from genesys_mux.sinks.dlq import JsonlDeadLetterQueue
from genesys_mux.sinks.fanout import StreamDelivery, deliver_stream
from genesys_mux.sinks.jsonl import JsonlSink
from genesys_mux.sinks.plugins import SinkContext, build_plugin_sink
from genesys_mux.sinks.runner import sink_figures
from genesys_mux.sinks.stdout import StdoutSink
from genesys_mux.sinks.webhook import WebhookSink
from genesys_mux.state import open_store

if TYPE_CHECKING:
    from genesys_mux.cluster import ClusterMember, Lease

__all__ = ["Output", "Runtime", "build_sink", "sink_problems", "state_setting"]

log = logging.getLogger("genesys_mux.cli")


@dataclass(frozen=True, slots=True)
class Output:
    """How the runtime shows what it does."""

    #: "dashboard", "json" (JSON lines of events on stdout) or "quiet".
    mode: str = "quiet"
    refresh_s: float = 0.5


def build_sink(
    spec: SinkSpec,
    environ: Mapping[str, str] | None = None,
    *,
    fence: int = 0,
    dedupe_ttl_s: float = 0.0,
    stream_id: str = "",
) -> Sink:
    """The sink a spec describes; secrets are read from the environment here.

    ``fence`` (a cluster lease's fencing token) and ``dedupe_ttl_s`` guard
    the sinks that can enforce them (Redis Streams; plugins are told both).
    ``stream_id`` is the stream the sink serves (plugins are told it).
    """
    env = os.environ if environ is None else environ
    if isinstance(spec, StdoutSinkSpec):
        return StdoutSink()
    if isinstance(spec, JsonlSinkSpec):
        return JsonlSink(
            spec.path, max_bytes=spec.max_bytes, backups=spec.backups, fsync=spec.fsync
        )
    if isinstance(spec, RedisSinkSpec):
        # Redis comes with the [redis] extra: imported only when a sink uses it.
        from genesys_mux.sinks.redis_streams import RedisStreamSink

        url = spec.url if spec.url is not None else env.get(spec.url_env or "")
        if not url:
            raise ConfigError(f"redis sink: environment variable {spec.url_env} is not set")
        return RedisStreamSink(
            url, prefix=spec.prefix, maxlen=spec.maxlen, fence=fence, dedupe_ttl_s=dedupe_ttl_s
        )
    if isinstance(spec, WebhookSinkSpec):
        secret = env.get(spec.secret_env)
        if not secret:
            raise ConfigError(f"webhook sink: environment variable {spec.secret_env} is not set")
        url = spec.url if spec.url is not None else env.get(spec.url_env or "")
        if not url:
            raise ConfigError(f"webhook sink: environment variable {spec.url_env} is not set")
        if spec.url is None and (problem := spec.url_problem(url)) is not None:
            raise ConfigError(f"webhook sink: {problem}")
        return WebhookSink(
            url,
            secret,
            signing=spec.signing,
            timeout_s=spec.timeout_s,
            fence=fence,
            secret_label=f"environment variable {spec.secret_env}",
            # From the environment because something in it is secret: the
            # path too, as a capability URL's token is.
            secret_path=spec.url is None,
        )
    if isinstance(spec, NatsSinkSpec):
        return nats_sink(spec, env)
    if isinstance(spec, PluginSinkSpec):
        context = SinkContext(
            name=spec.type,
            stream_id=stream_id,
            environ=env,
            fence=fence,
            dedupe_ttl_s=dedupe_ttl_s,
        )
        return build_plugin_sink(spec.plugin, spec.options, context)
    raise ConfigError(f"unknown sink type {spec!r}")


def sink_problems(config: ConfigFile, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every reason a sink of ``config`` cannot be built here, each led by its key.

    ``run`` asks before it connects anywhere, so a sink's variable that is
    not set, or holds what the sink refuses, stops it before a channel is
    made and an event dead-lettered. The variables are checked as
    ``validate`` checks them (what it warns is not set here is a problem for
    the run, which is where it runs), then each sink is built, offline
    (connections wait for ``start``), to find the rest (a second NATS
    secret, a plugin's own variables); the sinks built are dropped unstarted.
    Each line reads like ``streams[0].sinks[1].secret_env: WEBHOOK_SECRET is
    not set here (sink webhook of stream chat); it must hold the sink's value where
    genesys-mux runs``.
    """
    env = os.environ if environ is None else environ
    paths = sink_key_paths(config)
    problems: list[str] = []
    for stream_id, specs in config.sinks.items():
        for j, spec in enumerate(specs):
            where = sink_key_path(stream_id, j, paths)
            refused: list[tuple[str, str]] = []
            unset: list[str] = []
            check_sink(spec, where, stream_id, env, refused, unset)
            found = [f"{key}: {problem}" for key, problem in refused]
            found += unset
            if not found:
                try:
                    build_sink(spec, env, stream_id=stream_id)
                except ConfigError as exc:
                    found.append(f"{where}: {exc}")
            problems += found
    return problems


def nats_sink(spec: NatsSinkSpec, env: Mapping[str, str]) -> Sink:
    """The NATS JetStream sink of a spec, its secrets read from ``env`` (imports nats-py)."""
    from genesys_mux.sinks.nats import NatsJetStreamSink

    secrets: dict[str, str] = {}
    for key, variable in (("password", spec.password_env), ("token", spec.token_env)):
        if variable is not None:
            value = env.get(variable)
            if not value:
                raise ConfigError(f"nats sink: environment variable {variable} is not set")
            secrets[key] = value
    return NatsJetStreamSink(
        spec.servers,
        subject=spec.subject,
        stream=spec.stream,
        create_stream=spec.create_stream,
        stream_subjects=spec.stream_subjects,
        duplicate_window_s=spec.duplicate_window_s,
        storage=spec.storage,
        ack_timeout_s=spec.ack_timeout_s,
        connect_timeout_s=spec.connect_timeout_s,
        user=spec.user,
        creds_file=spec.creds_file,
        nkey_seed_file=spec.nkey_seed_file,
        tls_ca_file=spec.tls_ca_file,
        **secrets,
    )


def event_line(item: StreamEvent | Gap) -> bytes:
    """One JSON line describing an event or a gap (for ``--json``)."""
    if isinstance(item, Gap):
        return msgspec.json.encode(
            {
                "kind": "gap",
                "stream_id": item.stream_id,
                "start": item.start,
                "end": item.end,
                "topics": len(item.topics),
                "reason": item.reason,
            }
        )
    return msgspec.json.encode(
        {
            "kind": "event",
            "stream_id": item.stream_id,
            "sequence": item.sequence,
            "priority": item.priority,
            "transition": item.transition,
            "conversation_id": item.conversation_id,
            "topic": item.topic,
            "received_at": item.received_at,
            "backfilled": item.backfilled,
            "latency_ms": round((item.latency_s or 0.0) * 1000, 3),
            "age_s": None if item.age_s is None else round(item.age_s, 3),
        }
    )


def state_setting(config: ConfigFile) -> str:
    """The key to fix when the state's Redis cannot be reached: ``[state]``'s, or the cluster's.

    Without a Redis of its own in ``[state]``, a cluster keeps the state in
    its own Redis: then ``[cluster] url`` (or ``url_env``) is what names it.
    """
    state, cluster = config.state, config.cluster
    key = "url_env" if state.url_env is not None else "url"
    if cluster is not None and (state.url, state.url_env) == (cluster.url, cluster.url_env):
        return f"[cluster] {key} (the state is kept in the cluster's Redis)"
    return f"[state] {key}"


def client_budgets(config: ConfigFile) -> dict[str, int]:
    """Each OAuth client's channel budget, for the cluster's placement."""
    if config.genesys.clients:
        return {c.name: c.channels for c in config.genesys.clients}
    assert config.cluster is not None
    return {config.cluster.client_name(): config.settings.max_channels}


#: How long a cluster's Redis sinks remember an idempotency key: longer than
#: any handover or failover takes to replay what it overlapped.
_CLUSTER_DEDUPE_S = 3600.0


#: How long a stop waits for the streams' consumers to empty their buffers
#: and acknowledge, then for the sinks to finish their last batches.
_DRAIN_S = 5.0
_SINKS_S = 15.0


class StopRequest(asyncio.Event):
    """The event a run stops at, with what asked for the stop (a signal's name), for the log.

    Asked again while the run drains (a second Ctrl-C), it sets :attr:`again`:
    the run then stops waiting for its sinks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None
        #: Set by a second request: stop now, dead-lettering what is still held.
        self.again = asyncio.Event()

    def ask(self, reason: str) -> None:
        """Ask for the stop; the first reason given is kept."""
        if self.reason is None:
            self.reason = reason
        elif self.is_set():
            self.again.set()
        self.set()


class Runtime:
    """Runs one configuration until told to stop."""

    def __init__(
        self,
        config: ConfigFile,
        credentials: Credentials,
        *,
        base_url: str | None = None,
        output: Output | None = None,
        pool_settings: PoolSettings | None = None,
        audit_target: str | TextIO | None = None,
        stdout: TextIO | None = None,
        console: Console | None = None,
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.base_url = base_url or config.genesys.base_url
        self.output = output or Output()
        self.pool_settings = pool_settings
        self.audit_target = audit_target
        self.stdout = stdout or sys.stdout
        self.console = console or Console(stderr=True)
        self.tail = AuditTail()
        #: How long a stop waits for the streams' consumers, then for the
        #: sinks' last batches (a deploy's grace period must cover both).
        self.drain_s = _DRAIN_S
        self.sinks_s = _SINKS_S
        self.mux: Multiplexer | None = None
        self.runners: dict[str, StreamDelivery] = {}
        self.admin: AdminServer | None = None
        #: Extra coroutines to run alongside (the demo's chaos monkey).
        self.side_tasks: list[Callable[[Runtime], Coroutine[Any, Any, None]]] = []
        #: This instance's part in a cluster, when the configuration has one.
        self.member: ClusterMember | None = None
        #: Dead letters the dead-letter file could not take (said at the stop).
        self.letters_lost = 0
        self._started = False
        self._audit: AuditLog | None = None
        self._metrics: MuxMetrics | None = None
        # The tasks the stop waits for (see _hold).
        self._tasks: set[asyncio.Task[Any]] = set()
        #: What stops the run for good: the first sink that could not start,
        #: or credentials the platform refused once the token in hand expired.
        self._fatal: GenesysMuxError | None = None
        self._fatal_event = asyncio.Event()
        #: Why the start-up is being cancelled (a stop, or --duration), for
        #: the audit log's last line: see :meth:`_close_audit`.
        self._startup_stop: str | None = None

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> int:
        """Run until ``stop`` is set or ``duration_s`` has passed; returns an exit code.

        Raises :class:`~genesys_mux.errors.SinkStartError`, after the same
        orderly stop, when a sink could not start for good, and
        :class:`~genesys_mux.errors.AuthenticationError` when the platform
        refused the credentials and the feed stopped (``run`` exits 2: a
        supervisor must not see a process that lives on delivering nothing).

        A stop that comes while still starting (a token that cannot be had, a
        tenant that does not answer) cancels the start-up at once rather than
        waiting for its retries to run out: there is nothing to drain yet. It
        is said all the same (``stopped during start-up (SIGTERM)``), and the
        audit log, once opened, still ends with ``RUN_STOPPED``.
        """
        self._started = False
        self._fatal = None
        self._fatal_event.clear()
        self._startup_stop = None
        work = asyncio.ensure_future(self._run(stop, duration_s))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            # --duration also bounds a start-up that keeps retrying: a run
            # told to last N seconds never outlives them by waiting for a
            # platform that does not answer.
            await asyncio.wait(
                {work, stopper}, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not work.done() and not self._started:
                if not stop.is_set():
                    self._say(
                        logging.ERROR,
                        f"start-up did not finish within --duration {duration_s:g} s "
                        "(see the warnings above for what is failing); stopping",
                    )
                # Said, and written to the audit log, as the start-up unwinds.
                self._startup_stop = self._why_stopping(stop, duration_s)
                work.cancel()
                await asyncio.wait({work})
                if self._startup_stop is not None:
                    # Cancelled before it had opened the audit log: said all the same.
                    self._say(logging.INFO, f"stopped during start-up ({self._startup_stop})")
                    self._startup_stop = None
                if not work.cancelled():
                    work.result()  # an error while unwinding is still reported
                return 0 if stop.is_set() else 1
            return await work
        finally:
            stopper.cancel()
            if not work.done():
                work.cancel()

    def channel_cap(self) -> int:
        """The channels this instance may open: ``max_channels``, or its client's budget if less."""
        cap = self.config.settings.max_channels
        if self.config.cluster is not None:
            budget = client_budgets(self.config).get(self.config.cluster.client_name())
            if budget is not None:
                cap = min(cap, budget)
        return cap

    async def _run(self, stop: asyncio.Event, duration_s: float | None) -> int:
        settings = self.config.settings
        audit_target: Any = self.audit_target
        if audit_target is None:
            # On stderr the audit facts are log lines like the others (one
            # schema, JSON when asked); in a file they are JSON lines.
            audit_target = (
                logging.getLogger(AUDIT_LOGGER)
                if settings.audit_path == "-"
                else settings.audit_path
            )
        try:
            audit = AuditLog(audit_target)
        except OSError as exc:
            # Checked before the run, but a directory can change meanwhile (or
            # the path name something else): one line naming the key, not a traceback.
            raise ConfigError(
                f"settings.audit_path: cannot open the audit log {audit_target}: "
                f"{exc.strerror or exc}; make its directory writable for this user, "
                'or choose another path ("-" is stderr)'
            ) from None
        # Checked here too, so an unknown region names where it came from.
        region = None if self.base_url else configured_region(self.config)
        mux = Multiplexer(
            client_id=self.credentials.client_id,
            client_secret=self.credentials.client_secret,
            credentials_from=self.credentials.source,
            region=region,
            base_url=self.base_url,
            max_streams=settings.max_streams,
            buffer_threshold=settings.buffer_threshold,
            heartbeat_timeout=settings.heartbeat_timeout,
            pong_timeout=settings.pong_timeout,
            subscription_check_s=settings.subscription_check_s,
            topics_per_channel=settings.topics_per_channel,
            # Never more than this instance's OAuth client may hold, whatever
            # the placement estimated (a plan that never compacts can need
            # more): a channel past it would evict one of the client's own.
            max_channels=self.channel_cap(),
            # A cluster member's share of the client's channels is counted
            # with one spare (see core/placement.py): rotations take turns.
            parallel_rotations=self.config.cluster is None,
            queue_refresh_s=settings.queue_refresh_s,
            requests_per_minute=settings.requests_per_minute,
            backfill=settings.backfill,
            dlq=JsonlDeadLetterQueue(settings.dlq_path, max_bytes=settings.dlq_max_bytes),
            pool_settings=self.pool_settings,
            state=open_store(
                self.config.state.target(),
                prefix=self.config.state.prefix,
                # A cluster's instances share the keys; another cluster's are refused.
                cluster=self.config.cluster.name if self.config.cluster is not None else None,
                setting=state_setting(self.config),
            ),
            checkpoint_interval_s=self.config.state.checkpoint_interval_s,
        )
        self.mux = mux
        audit.attach(mux)
        mux.on_control.append(self.tail)
        mux.on_control.append(self._stop_when_fatal)
        metrics = MuxMetrics(mux, dlq_max_bytes=settings.dlq_max_bytes)
        tasks: set[asyncio.Task[Any]] = set()
        async with contextlib.AsyncExitStack() as stack:
            # Closed last, after the multiplexer's own closing facts, however it ends.
            stack.callback(self._close_audit, audit)
            # The admin server comes first: /healthz answers from the first
            # second and /readyz says why it is not ready yet, so an outage of
            # the platform at start-up is not mistaken for a dead process (and
            # restarted in a loop by an orchestrator).
            if settings.admin_port is not None:
                admin = AdminServer(
                    mux,
                    metrics,
                    host=settings.admin_host,
                    port=settings.admin_port,
                    status_extra=self._status_extra,
                    sink_unready_after_s=settings.sink_unready_after_s,
                )
                await stack.enter_async_context(admin)
                self.admin = admin
                self._say(
                    logging.INFO,
                    f"admin server on {admin.base_url} (/metrics /healthz /readyz /status)",
                )
            await stack.enter_async_context(mux)
            self._audit, self._metrics, self._tasks = audit, metrics, tasks
            cluster = self.config.cluster
            member: ClusterMember | None = None
            if cluster is None:
                for stream in self.config.streams:
                    await self._add(stream)
                for stream in self.config.streams:
                    self._deliver(stream.id)
            else:
                # The members decide who carries what: this instance delivers
                # the streams whose leases it holds (see cluster/member.py).
                member = await self._join(stack, cluster)
                membership = asyncio.create_task(member.run(), name="genesys-mux-cluster")
                membership.add_done_callback(self._member_ended)
                self._hold(membership)
            background = [
                asyncio.create_task(
                    audit.run_periodic(mux, settings.metric_interval_s, self._sink_dead_lettered)
                )
            ]
            background += [asyncio.create_task(side(self)) for side in self.side_tasks]
            # From here a stop drains (below) instead of cancelling the start-up.
            self._started = True
            await self._wait(stop, duration_s)
            why = self._why_stopping(stop, duration_s)
            again = stop.again if isinstance(stop, StopRequest) else None
            self._say(
                logging.INFO,
                f"stopping ({why}): draining for up to {self.drain_s:g} s and the sinks' last "
                f"batches up to {self.sinks_s:g} s more, then the last checkpoint"
                + ("; ask again (Ctrl-C) to stop at once" if again is not None else ""),
            )
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            hurry = (
                None
                if again is None
                else asyncio.create_task(self._stop_at_once_when(again, mux, tasks))
            )
            if member is not None:
                # Planned: the others take the streams over, make-before-break.
                await member.leave(timeout_s=2 * cluster.lease_ttl_s if cluster else 20.0)
            # Drain first: the runners and printers keep reading until their
            # stream is empty and ends; only then are they told to stop, and
            # given the sinks' time for their last batches, before the last
            # checkpoint, which then counts those batches settled.
            await mux.stop(
                drain=True,
                timeout_s=self.drain_s,
                before_checkpoint=functools.partial(self._finish_sinks, tasks),
            )
            await self._finish_sinks(tasks)  # whatever did not end by then
            if hurry is not None:
                hurry.cancel()
                await asyncio.gather(hurry, return_exceptions=True)
            self._stopped(audit, why)
        if self._fatal is not None:
            # Raised once everything buffered is dead-lettered and the last
            # checkpoint is written: the command line prints it and exits 2.
            raise self._fatal
        # Events lost for want of a writable dead-letter file: a supervisor
        # or a script must not read this run as one that lost nothing.
        return 1 if self.letters_lost else 0

    def _hold(self, task: asyncio.Task[Any]) -> None:
        """Keep ``task`` for the stop to wait for, while it runs.

        A cluster member starts a delivery task for each stream it takes,
        for weeks: one that ended is let go (one that failed is kept, for
        the stop to collect its error).
        """
        self._tasks.add(task)
        task.add_done_callback(self._let_go)

    def _let_go(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is None:
            self._tasks.discard(task)

    async def _finish_sinks(self, tasks: set[asyncio.Task[Any]]) -> None:
        """Tell the runners to stop, give them the sinks' time, then cancel what is left.

        A runner cancelled with a batch in hand dead-letters it
        (``sink_failed:<sink>: cancelled``), which settles it.
        """
        for runner in self.runners.values():
            runner.stop()
        _, pending = await asyncio.wait(tasks, timeout=self.sinks_s) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*list(tasks), return_exceptions=True)

    async def _stop_at_once_when(
        self, again: asyncio.Event, mux: Multiplexer, tasks: set[asyncio.Task[Any]]
    ) -> None:
        """Asked again while draining: stop waiting for consumers and sinks.

        What a sink still holds is dead-lettered (``sink_failed:<sink>:
        cancelled``) and what the buffers hold (``stopped``), before the
        last checkpoint, as after the drain's deadline.
        """
        await again.wait()
        self._say(
            logging.WARNING,
            "asked again: stopping at once; what the sinks and buffers still hold goes to "
            "the dead-letter queue",
        )
        for task in list(tasks):
            task.cancel()
        await mux.stop(drain=False)

    def _why_stopping(self, stop: asyncio.Event, duration_s: float | None) -> str:
        if self._fatal is not None:
            return f"{type(self._fatal).__name__}, see above"
        if stop.is_set():
            reason = stop.reason if isinstance(stop, StopRequest) else None
            return reason or "asked to stop"
        return f"--duration {duration_s:g} s reached"

    def _stopped(self, audit: AuditLog, why: str, *, during_startup: bool = False) -> None:
        """Say that the run stopped, why, and what its streams took and dead-lettered.

        ``taken`` is what the streams handed on (to their sinks, or to the
        output): the sinks may then have given up on some of it, which
        ``dead_lettered`` counts with the buffers' own letters.
        """
        assert self.mux is not None
        stats = self.mux.stats()
        streams = stats["streams"]
        taken = sum(s.delivered for s in streams.values())
        by_buffers = sum(s.dead_lettered for s in streams.values())
        by_sinks = sum(self._sink_dead_lettered(sid) for sid in streams)
        dead = by_buffers + by_sinks
        # Letters the file could not take (unwritable, full: logged as they
        # went) are lost: never said to be in it.
        self.letters_lost = int(stats["dlq"]["dropped"])
        where = self.config.settings.dlq_path
        if not dead:
            letters = ""
        elif self.letters_lost:
            letters = (
                f"; {self.letters_lost} dead letter(s) could not be written to {where} and are "
                "lost (see the errors above)"
            )
        else:
            letters = (
                f"; the letters are in {where}: see them with "
                "`genesys-mux dlq list -c CONFIG`, send them on with `genesys-mux dlq replay`"
            )
        self._say(
            logging.ERROR if self.letters_lost else logging.WARNING if dead else logging.INFO,
            # (A cluster member has handed its streams over by now: these
            # are the streams it still held.)
            f"stopped{' during start-up' if during_startup else ''} ({why}): "
            f"{taken} events handed to sinks or the output, "
            f"{dead} dead-lettered ({by_buffers} by the buffers, "
            f"{by_sinks} by sinks), by the {len(streams)} stream(s) it held at the end" + letters,
        )
        reason = f"{why} during start-up" if during_startup else why
        audit.run_stopped(reason, len(streams), taken, by_buffers + by_sinks, by_sinks)

    def _close_audit(self, audit: AuditLog) -> None:
        """Close the audit log as ``_run`` ends; a cancelled start-up says it stopped first.

        Run last as the start-up unwinds, after the multiplexer's closing
        facts: the stop is then said, and ``RUN_STOPPED`` ends the file, as
        a stop that drains does.
        """
        why, self._startup_stop = self._startup_stop, None
        try:
            if why is not None:
                self._stopped(audit, why, during_startup=True)
        finally:
            audit.close()

    async def _add(self, stream: StreamConfig) -> None:
        assert self.mux is not None
        for rejection in await self.mux.add_stream(stream):
            missing = list(rejection.missing_permissions)
            self._say(
                logging.WARNING,
                f"stream {stream.id}: topic {rejection.topic} rejected "
                f"({rejection.reason}, missing {missing})",
                stream_id=stream.id,
            )

    def _deliver(self, stream_id: str, lease: Lease | None = None) -> None:
        """Start the stream's sink runner, or its printer when it has no sinks.

        In a cluster, ``lease`` is this instance's: the sinks write with its
        fencing token and drop records already stored (a handover's overlap).
        """
        mux, audit = self.mux, self._audit
        assert mux is not None
        assert audit is not None
        specs = self.config.sinks.get(stream_id, ())
        if not specs:
            self._hold(
                asyncio.create_task(self._consume(stream_id), name=f"genesys-mux-print-{stream_id}")
            )
            return
        runner = deliver_stream(
            # Settled by the runner, once every sink has an event.
            mux.stream(stream_id, settle=False),
            [
                (
                    build_sink(
                        spec,
                        fence=lease.token if lease else 0,
                        dedupe_ttl_s=_CLUSTER_DEDUPE_S if lease else 0.0,
                        stream_id=stream_id,
                    ),
                    spec.batching,
                )
                for spec in specs
            ],
            mux.dead_letter,
            backoff=Backoff(0.2, 10.0),
            # Every log line of the runner names its stream.
            name=stream_id,
        )
        runner.on_failure.append(functools.partial(audit.sink_failure, stream_id))
        runner.on_gap_lost.append(mux.gap_undelivered)
        # Bound to this activation of the stream: an earlier runner's late
        # acknowledgement must not settle what this one has not delivered.
        runner.on_settled.append(mux.settler(stream_id))
        runner.on_gap_settled.append(mux.gap_settler(stream_id))
        self.runners[stream_id] = runner
        if self._metrics is not None:
            self._metrics.watch_sinks(stream_id, runner)
        task = asyncio.create_task(runner.run(), name=f"genesys-mux-sink-{stream_id}")
        task.add_done_callback(functools.partial(self._sinks_ended, stream_id))
        self._hold(task)

    def _stop_when_fatal(self, event: ControlEvent) -> None:
        """The feed stopped for good (credentials refused): the run stops, and exits 2."""
        if not isinstance(event, Fatal) or self._fatal is not None:
            return
        failure = self.mux.failure if self.mux is not None else None
        self._stop_for(failure or AuthenticationError(event.error))

    def _stop_for(
        self, error: GenesysMuxError, why: str = "", stream_id: str | None = None
    ) -> None:
        """Stop the run for good: the first such error is what it ends with (exit 2)."""
        if self._fatal is None:
            self._fatal = error
        self._say(logging.ERROR, f"{error}; stopping the run{why}", stream_id=stream_id)
        self._fatal_event.set()

    def _sink_dead_lettered(self, stream_id: str) -> int:
        """Events the sinks of ``stream_id`` gave up on (dead-lettered), for the audit and TUI."""
        runner = self.runners.get(stream_id)
        return 0 if runner is None else runner.dead_lettered

    def _member_ended(self, task: asyncio.Task[None]) -> None:
        """The cluster member gave up (Redis refused it a command): the run stops, exit 2.

        Carrying nothing, and unable to take anything, the instance would
        otherwise look alive to its supervisor for ever.
        """
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        self._stop_for(
            error
            if isinstance(error, GenesysMuxError)
            else GenesysMuxError(f"the cluster member stopped: {error!r}")
        )

    def _sinks_ended(self, stream_id: str, task: asyncio.Task[None]) -> None:
        """Say why a stream's sinks stopped early; a sink that cannot start stops the run."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        if isinstance(error, SinkStartError):
            self._stop_for(
                error, " (the buffered events go to the dead-letter queue)", stream_id=stream_id
            )
            return
        self._say(
            logging.ERROR,
            f"the sinks of stream {stream_id} stopped: {task.exception()}; its events wait in "
            "its buffer and go to the dead-letter queue when the run stops",
            stream_id=stream_id,
        )

    async def _join(
        self, stack: contextlib.AsyncExitStack, cluster: ClusterSection
    ) -> ClusterMember:
        """Join the cluster: its Redis, its lease table, and this instance's member loop."""
        from genesys_mux.cluster import ClusterMember, LeaseTable
        from genesys_mux.state.redis_server import connect, redis_name

        try:
            import redis.asyncio  # noqa: F401 - to name the extra when it is missing
        except ModuleNotFoundError as exc:  # the [redis] extra is not installed
            raise_if_extra_missing(exc, "a cluster (leases in Redis)")
            raise

        assert self.mux is not None
        url = cluster.redis_url("cluster")
        assert url is not None  # the section requires one
        client = connect(url, "[cluster]", socket_timeout=5.0, socket_connect_timeout=5.0)
        stack.push_async_callback(client.aclose)
        table = LeaseTable(
            client,
            cluster=cluster.name,
            instance=cluster.member_id(),
            lease_ttl_s=cluster.lease_ttl_s,
            prefix=self.config.state.prefix,
            where=redis_name(url),
        )
        # Before joining: a Redis that cannot carry a cluster (a Redis
        # Cluster, one that evicts, a user without the permissions) stops
        # the run with what to fix, instead of a member failing every round.
        await table.check_server()

        async def ownership(stream_id: str, lease: Lease | None) -> None:
            # A stream taken starts delivering here; one let go ends by
            # itself (its readers stop when it leaves the multiplexer).
            if lease is not None:
                self._deliver(stream_id, lease)

        member = ClusterMember(
            self.mux,
            table,
            self.config.streams,
            client=cluster.client_name(),
            budgets=client_budgets(self.config),
            topics_per_channel=self.config.settings.topics_per_channel,
            heartbeat_s=cluster.heartbeat_s,
            host=f"{socket.gethostname()}:{os.getpid()}",
            on_ownership=ownership,
        )
        self.member = member
        if self._audit is not None:
            member.on_control.append(self._audit.record)
        member.on_control.append(self.tail)
        if self._metrics is not None:
            self._metrics.watch_cluster(member)
        self._say(
            logging.INFO,
            f"joined cluster {cluster.name} on {table.where} as {table.instance}",
        )
        return member

    def _say(self, level: int, text: str, stream_id: str | None = None) -> None:
        """Tell the operator: a log line (one schema, JSON when asked), or the
        dashboard's console, which prints above its live display."""
        if self.output.mode == "dashboard":
            style = "yellow" if level >= logging.WARNING else None
            self.console.print(text, style=style, markup=False)
        else:
            log.log(level, text, extra={"stream_id": stream_id} if stream_id else None)

    def _status_extra(self) -> dict[str, Any]:
        extra = self._sink_status()
        member = self.member
        if member is not None:
            extra["cluster"] = {
                "instance": member.info.id,
                "client": member.client,
                "held": {s: lease.token for s, lease in sorted(member.status.held.items())},
                "standby": sorted(member.status.standby),
                "unplaced": member.status.placement.unplaced,
                "trouble": member.status.trouble,
                "changes": member.status.changes,
                # What this instance needs and may open, and its client's
                # sum over the members against the budget.
                "channels": {
                    "here": member.info.channels,
                    "max": member.mux.pool.settings.max_channels if member.mux.pool else None,
                    "client": member.status.client_channels,
                    "budget": member.status.channel_budget,
                },
            }
        return extra

    def _sink_status(self) -> dict[str, Any]:
        return {
            "sinks": {
                sid: {
                    "sent": r.sent,
                    "failed_batches": r.failed_batches,
                    "dead_lettered": r.dead_lettered,
                    "last_error": r.last_error,
                    # The figures above are the stream's (what every sink
                    # took, the failures of any); these are each sink's.
                    "per_sink": sink_figures(r.per_sink),
                }
                for sid, r in self.runners.items()
            }
        }

    async def _consume(self, stream_id: str) -> None:
        assert self.mux is not None
        json_mode = self.output.mode == "json"
        async for item in self.mux.stream(stream_id):
            if json_mode:
                self.stdout.write(event_line(item).decode() + "\n")
        if json_mode:
            self.stdout.flush()

    async def _wait(self, stop: asyncio.Event, duration_s: float | None) -> None:
        assert self.mux is not None
        waiter = asyncio.ensure_future(self._stopped_or_failed(stop))
        try:
            if self.output.mode == "dashboard":
                dashboard = Dashboard(
                    self.mux, self.tail, sink_dead_lettered=self._sink_dead_lettered
                )
                with Live(dashboard.render(), console=self.console, refresh_per_second=4) as live:
                    await self._tick(waiter, duration_s, lambda: live.update(dashboard.render()))
            else:
                await self._tick(waiter, duration_s, self._flush)
        finally:
            waiter.cancel()

    async def _stopped_or_failed(self, stop: asyncio.Event) -> None:
        """Return once ``stop`` is set or a sink could not start for good."""
        waits = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._fatal_event.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _flush(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.stdout.flush()

    async def _tick(
        self, waiter: asyncio.Future[Any], duration_s: float | None, refresh: Callable[[], None]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if duration_s is None else loop.time() + duration_s
        while not waiter.done():
            timeout = self.output.refresh_s
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(waiter)
            refresh()
            if deadline is not None and loop.time() >= deadline:
                return

    def status(self) -> dict[str, Any]:
        """The same snapshot ``/status`` serves."""
        assert self.mux is not None
        return {**status_snapshot(self.mux), **self._status_extra()}
