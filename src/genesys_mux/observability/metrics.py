"""Prometheus metrics for a :class:`~genesys_mux.Multiplexer`, read at scrape time.

Theory of operation
-------------------
The multiplexer already counts everything an operator wants to see
(:meth:`Multiplexer.stats`), so counters and gauges are not incremented on
the hot path at all: a custom collector reads ``mux.stats()`` when Prometheus
scrapes and turns the snapshot into metric families. A scrape costs one
``stats()`` call; an event costs nothing.

Only latency and age need per-event work, because a histogram cannot be
rebuilt from a snapshot. They are observed from ``mux.on_delivered`` on
label children bound once per stream (when the stream appears, or on its
first event if that comes first) and kept in a dict, so an event costs a
dict lookup and two ``observe`` calls, never a label lookup.

Control-plane facts (rotations, token refreshes, subscribe rejections...)
are counted from ``mux.on_control`` by their type's ``kind`` (a fixed set,
so the label is bounded); they are rare, so counting them per call is free
in practice.

Labels: ``stream`` is the configured stream id; ``channel`` is the *slot
index*, the stable identity of "the channel carrying these topics", never
the channel id (which changes on every rotation and would make unbounded
series) nor any other Genesys id. A stream id that itself has the shape of a
Genesys id (a UUID or a channel id) is replaced by a short hash, so no
configuration can smuggle a raw entity id into a label.

Everything is registered in the registry passed in, or in a private
:class:`~prometheus_client.CollectorRegistry`, so two multiplexers (or a
test suite) never collide in the process-wide default registry. A private
registry also gets prometheus-client's process, platform and garbage
collector collectors (``process_*``, ``python_info``, ``python_gc_*``: the
trio the default registry has), so ``/metrics`` shows memory, CPU and file
descriptors next to the feed; a registry that already has them keeps its
own. ``genesys_mux_build_info`` names the installed version.

The collector reads the multiplexer without locking: call
``generate_latest`` on the event loop that runs the multiplexer (the admin
server does).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from genesys_mux._extras import raise_if_extra_missing
from genesys_mux._version import __version__
from genesys_mux.core.events import ControlEvent, GapReported, StreamAdded, StreamRemoved
from genesys_mux.net.auth import TOKEN_FAILURE_REASONS
from genesys_mux.observability.sanitize import sanitize_value
from genesys_mux.sinks.fanout import SinkFanOut
from genesys_mux.sinks.runner import SEND_BUCKETS

try:
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        Histogram,
        PlatformCollector,
        ProcessCollector,
    )
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ModuleNotFoundError as exc:  # pip install 'genesys-mux[metrics]'
    raise_if_extra_missing(exc, "the Prometheus metrics (MuxMetrics)")
    raise

if TYPE_CHECKING:
    from genesys_mux.cluster.member import ClusterMember
    from genesys_mux.core.streams import StreamEvent
    from genesys_mux.net.connection import SlotStats
    from genesys_mux.net.multiplexer import Multiplexer, StreamStats
    from genesys_mux.sinks.fanout import StreamDelivery

__all__ = [
    "AGE_BUCKETS",
    "LATENCY_BUCKETS",
    "MuxMetrics",
    "Readiness",
    "package_version",
    "readiness",
    "stream_label",
]

log = logging.getLogger("genesys_mux.observability.metrics")

#: Socket to consumer: sub-millisecond when consumers keep up, seconds when
#: one falls behind its buffer.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
#: Consumer time minus the newest timestamp in the body: includes the
#: platform's own delay, and an update with no new timestamp ages with its
#: conversation, hence the long tail.
AGE_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)

#: Distinct gap reasons kept as label values; any further one is counted as ``other``.
_MAX_GAP_REASONS = 32
_GAP_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
_CHANNEL_ID = re.compile(r"streaming-\d+-[a-z0-9]{8,}", re.I)
# (SinkCounters attribute, metric name without _total, help text); labels stream, sink.
_SINK_COUNTERS = (
    ("sent", "genesys_mux_sink_records_sent", "Records the sink took."),
    ("failed_batches", "genesys_mux_sink_failed_batches", "Batches the sink finally failed."),
    (
        "dead_lettered",
        "genesys_mux_sink_dead_lettered",
        "Events the stream's sink delivery wrote to the dead-letter queue, by the sink that "
        "gave up on them (events taken but not yet batched when delivery stopped count under "
        "the first sink their letter names). The stream's own buffer's are "
        "genesys_mux_stream_dead_lettered_total: the two add up to every dead letter.",
    ),
    ("retries", "genesys_mux_sink_retries", "Failed attempts that were tried again."),
    (
        "fenced",
        "genesys_mux_sink_fenced",
        "Events of batches the sink refused by fencing (another instance owns the stream).",
    ),
)

# (StreamStats attribute, metric name without _total, help text)
_STREAM_COUNTERS = (
    ("received", "genesys_mux_stream_received", "Notifications routed to the stream."),
    ("delivered", "genesys_mux_stream_delivered", "Events handed to the stream's consumer."),
    (
        "filtered",
        "genesys_mux_stream_filtered",
        "Notifications dropped by the stream's client-side filter (media, SMS, queue, state).",
    ),
    ("duplicates", "genesys_mux_stream_duplicates", "Duplicate notifications dropped."),
    (
        "stale",
        "genesys_mux_stream_stale",
        "Snapshots dropped because a newer one was already delivered.",
    ),
    (
        "overflowed",
        "genesys_mux_stream_overflowed",
        "Events pushed out of the stream's full buffer.",
    ),
    (
        "dead_lettered",
        "genesys_mux_stream_dead_lettered",
        "Events the stream itself wrote to the dead-letter queue (overflow, stop, stream "
        "removed, an on_event callback that failed on it). Those its sinks gave up on are "
        "genesys_mux_sink_dead_lettered_total: the two add up to every dead letter.",
    ),
    ("gaps", "genesys_mux_stream_gaps", "Outage windows reported to the stream as gaps."),
)
_STREAM_GAUGES = (
    ("buffered", "genesys_mux_stream_buffered", "Events waiting in the stream's buffer."),
    ("topics", "genesys_mux_stream_topics", "Topics the stream is subscribed to."),
    ("priority", "genesys_mux_stream_priority", "The stream's priority (1 highest, 5 lowest)."),
)
_CHANNEL_COUNTERS = (
    (
        "notifications",
        "genesys_mux_channel_notifications",
        "Notifications read from the channel slot's sockets.",
    ),
    ("reconnects", "genesys_mux_channel_reconnects", "Sockets of the slot lost and replaced."),
    (
        "gone",
        "genesys_mux_channel_gone",
        "Channels of the slot the platform ended (evicted past the OAuth client's channel "
        "budget, expired or their token revoked), each recreated; also counted as reconnects.",
    ),
    (
        "rotations",
        "genesys_mux_channel_rotations",
        "Make-before-break rotations of the slot's channel.",
    ),
    ("bad_frames", "genesys_mux_channel_bad_frames", "Frames that were not JSON, ignored."),
    (
        "unknown_frames",
        "genesys_mux_channel_unknown_frames",
        "JSON frames of no known shape (not a notification, heartbeat, pong, ack or system "
        "topic), ignored.",
    ),
    (
        "shed",
        "genesys_mux_channel_shed",
        "Notifications shed because the reader was inbound_limit behind (reported as gaps).",
    ),
    (
        "after_drain",
        "genesys_mux_channel_after_drain",
        "Notifications read after a closing socket's drain pong (delivered).",
    ),
)


def package_version() -> str:
    """The installed distribution's version, or ``0+unknown`` for an uninstalled source tree.

    ``genesys_mux.__version__``: read from the package metadata, the one
    place a release writes it.
    """
    return __version__


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether the multiplexer is fit to serve, and if not, why (for ``/readyz``)."""

    ready: bool
    reason: str | None = None


def readiness(mux: Multiplexer, member: ClusterMember | None = None) -> Readiness:
    """Ready means a running feed, at least one stream and every channel live and subscribed.

    A multiplexer that stopped for good (the platform refused the
    credentials: no channel can be had until they are fixed) or whose
    dispatcher ended is never ready, whatever its channels still say: its
    slots can read live a while after nothing reaches the streams any more.
    ``mux.live`` alone is true for a multiplexer with no channels at all,
    which is not a useful feed, hence the stream check. A cluster
    ``member`` is ready while it can prove its leases; one that carries no
    stream (the others have them all) is a ready spare.
    """
    if mux.pool is None:
        return Readiness(False, "starting: no token and no channel yet")
    if mux.failure is not None:
        # The error text was scrubbed of credentials where it was made;
        # sanitized again here because /readyz is read by anyone who can reach it.
        return Readiness(False, f"failed: {sanitize_value(str(mux.failure))}")
    if not mux.running:
        return Readiness(False, "stopped: the multiplexer is stopped or its dispatcher has ended")
    if not mux.started:
        return Readiness(False, "starting: no token and no channel yet")
    if member is not None and member.status.trouble is not None:
        return Readiness(False, f"cluster: {member.status.trouble}")
    if member is not None and member.status.placement.unplaced:
        # Every instance says so: the cluster as a whole cannot carry them.
        unplaced = sorted(member.status.placement.unplaced)
        return Readiness(False, f"streams fit on no instance: {', '.join(unplaced)}")
    if member is not None and not mux.streams():
        return Readiness(True)
    if not mux.streams():
        return Readiness(False, "no streams are configured")
    if not mux.live:
        down = sorted(
            f"{index} ({slot.state})"
            for index, slot in mux.pool.stats().items()
            if slot.state != "live"
        )
        detail = f": slots {', '.join(down)}" if down else ""
        return Readiness(False, f"not every channel is live and subscribed{detail}")
    if mux.state_failure is not None:
        # The feed goes on, but a restart now would lose more than it should.
        return Readiness(False, f"state store failing: {mux.state_failure}")
    return Readiness(True)


_label_cache: dict[str, str] = {}


def stream_label(stream_id: str) -> str:
    """The ``stream`` label value for ``stream_id``.

    The id itself, unless it has the shape of a Genesys id (a UUID or a
    channel id): then ``stream-`` and 12 hex digits of its SHA-256, stable
    across restarts, so dashboards keep working and the raw id never reaches
    Prometheus.
    """
    label = _label_cache.get(stream_id)
    if label is None:
        label = stream_id
        if _UUID.search(stream_id) or _CHANNEL_ID.search(stream_id):
            digest = hashlib.sha256(stream_id.encode()).hexdigest()[:12]
            label = f"stream-{digest}"
            log.warning(
                "a stream id has the shape of a Genesys id; it is labelled %s in metrics", label
            )
        if len(_label_cache) < 10_000:
            _label_cache[stream_id] = label
    return label


class _MuxCollector:
    """Turns one ``mux.stats()`` snapshot into metric families, at scrape time."""

    def __init__(self, owner: MuxMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        # Names only: lets the registry detect clashes without reading the mux.
        return [
            *self._families({}, {}, Readiness(False), {}),
            *self._dlq_families({}, None),
            *self._memory_families({}),
            *self._build_families(),
            *self._token_families(None),
            *self._gap_families({}),
        ]

    def collect(self) -> Iterable[Metric]:
        mux = self._owner.mux
        stats = mux.stats()
        families = list(
            self._families(
                stats["streams"],
                stats["channels"],
                self._owner.readiness(),
                dict(self._owner.control_events),
            )
        )
        families += self._sink_families(self._owner.sink_runners)
        families += self._cluster_families(self._owner.member)
        families += self._rest_families(mux)
        families += self._dlq_families(stats.get("dlq", {}), self._owner.dlq_max_bytes)
        families += self._memory_families(stats.get("memory", {}))
        families += self._build_families()
        families += self._token_families(mux)
        families += self._gap_families(self._owner.gap_reasons)
        return families

    def _gap_families(self, reasons: Mapping[tuple[str, str], int]) -> Iterator[Metric]:
        """Gaps by stream and by what caused them (the reason of their outage window)."""
        gaps = CounterMetricFamily(
            "genesys_mux_gap_reports",
            "Gaps reported to the stream, by reason: reconnect, rotation, overload, restart, "
            "failover, subscriptions_replaced... (other: past the first 32 distinct reasons).",
            labels=["stream", "reason"],
        )
        for (stream_id, reason), count in sorted(reasons.items()):
            gaps.add_metric([stream_label(stream_id), reason], count)
        yield gaps

    def _build_families(self) -> Iterator[Metric]:
        """Which release runs on which Python: a constant 1 whose labels are the point."""
        info = GaugeMetricFamily(
            "genesys_mux_build_info",
            "The genesys-mux version and Python version of this process (always 1).",
            labels=["version", "python"],
        )
        info.add_metric([self._owner.version, platform.python_version()], 1)
        yield info

    def _token_families(self, mux: Multiplexer | None) -> Iterator[Metric]:
        """The access token in use: how long it has left, and how long it was granted for.

        A refresh that keeps failing shows as the remaining time falling
        below the refresh margin (10 % of the lifetime) and on towards 0,
        while the cached token is still used; no token at all (before the
        first one) gives no sample.
        """
        expires = GaugeMetricFamily(
            "genesys_mux_token_expires_in_seconds",
            "Seconds until the OAuth access token in use expires (refreshed at about 10 % left).",
        )
        lifetime = GaugeMetricFamily(
            "genesys_mux_token_lifetime_seconds",
            "Lifetime the platform granted the OAuth access token in use.",
        )
        tokens = mux.tokens if mux is not None else None
        token = tokens.current if tokens is not None else None
        if token is not None:
            # AccessToken times are monotonic seconds (TokenProvider's clock).
            expires.add_metric([], token.expires_at - time.monotonic())
            lifetime.add_metric([], token.lifetime_s)
        yield expires
        yield lifetime
        # Every reason from the start, at 0: rate() and increase() need a
        # series before the first failure, and the label set stays bounded.
        failures = CounterMetricFamily(
            "genesys_mux_token_refresh_failures",
            "Failed OAuth token requests, retries included, by reason: refused (the "
            "credentials), unavailable (no answer or an error status), invalid_answer.",
            labels=["reason"],
        )
        counts = tokens.failures if tokens is not None else {}
        for reason in TOKEN_FAILURE_REASONS:
            failures.add_metric([reason], counts.get(reason, 0))
        yield failures

    def _dlq_families(self, dlq: Mapping[str, int], max_bytes: int | None) -> Iterator[Metric]:
        """The dead-letter queue's size, its cap, and what its cap turned away."""
        yield GaugeMetricFamily(
            "genesys_mux_dlq_bytes",
            "Size of the dead-letter file (0 for an in-memory queue).",
            value=dlq.get("bytes", 0),
        )
        cap = GaugeMetricFamily(
            "genesys_mux_dlq_max_bytes",
            "The dead-letter file's size cap (dlq_max_bytes); no sample when it has none.",
        )
        if max_bytes is not None:
            cap.add_metric([], max_bytes)
        yield cap
        yield CounterMetricFamily(
            "genesys_mux_dlq_dropped",
            "Dead letters counted but not kept: the queue was at its cap (alert on any).",
            value=dlq.get("dropped", 0),
        )

    def _memory_families(self, memory: Mapping[str, int]) -> Iterator[Metric]:
        """The de-duplication and ordering memory: one record per key, whatever the streams."""
        yield GaugeMetricFamily(
            "genesys_mux_remembered_keys",
            "Keys (conversations, users' presence...) remembered for de-duplication and "
            "ordering: one record each, however many streams share it.",
            value=memory.get("keys", 0),
        )
        yield GaugeMetricFamily(
            "genesys_mux_remembered_keys_limit",
            "What the streams may remember together: the sum of their bounds, a key "
            "counting once per stream that remembers it.",
            value=memory.get("limit", 0),
        )

    def _sink_families(self, runners: Mapping[str, StreamDelivery]) -> Iterator[Metric]:
        """Per stream and sink: what went out, what failed, what is failing now."""
        rows = [
            (stream_label(stream_id), name, counters)
            for stream_id, runner in sorted(runners.items())
            for name, counters in sorted(runner.per_sink.items())
        ]
        unattributed = {
            (stream_label(stream_id), sink): count
            for stream_id, runner in runners.items()
            for sink, count in _unattributed_dead_letters(runner)
        }
        for attr, name, doc in _SINK_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["stream", "sink"])
            for stream, sink, c in rows:
                value = getattr(c, attr)
                if attr == "dead_lettered":
                    value += unattributed.get((stream, sink), 0)
                counter.add_metric([stream, sink], value)
            yield counter
        failing = GaugeMetricFamily(
            "genesys_mux_sink_failing",
            "1 while the sink's last attempt failed (cleared by its next success), else 0.",
            labels=["stream", "sink"],
        )
        for stream, sink, c in rows:
            failing.add_metric([stream, sink], 1 if c.last_error else 0)
        yield failing
        sends = HistogramMetricFamily(
            "genesys_mux_sink_send_seconds",
            "Time the sink took over one batch (one attempt, failed or not).",
            labels=["stream", "sink"],
        )
        for stream, sink, c in rows:
            sends.add_metric([stream, sink], _cumulative(c.send_buckets), c.send_seconds)
        yield sends

    def _cluster_families(self, member: ClusterMember | None) -> Iterator[Metric]:
        """This instance's part in a cluster (nothing when it is not in one)."""
        if member is None:
            return
        status = member.status
        yield GaugeMetricFamily(
            "genesys_mux_cluster_leases_held",
            "Streams this instance carries (their leases are its).",
            value=len(status.held),
        )
        yield GaugeMetricFamily(
            "genesys_mux_cluster_standby",
            "Streams subscribed here on standby, waiting for their holder to hand over.",
            value=len(status.standby),
        )
        yield GaugeMetricFamily(
            "genesys_mux_cluster_unplaced_streams",
            "Streams that fit on no instance (every OAuth client's channel budget is used).",
            value=len(status.placement.unplaced),
        )
        # The same two numbers from every member sharing the client: an alert
        # takes the max over them, by client.
        channels = GaugeMetricFamily(
            "genesys_mux_cluster_client_channels",
            "Channels the members sharing this instance's OAuth client need (one per slot, "
            "two while a slot rotates), as they last said; over the budget, the platform "
            "evicts some.",
            labels=["mux_cluster", "client"],
        )
        # The cluster too: two clusters may each name their client "default" (not
        # "cluster", a target label many Prometheus set-ups add themselves).
        labels = [member.table.cluster, member.client]
        channels.add_metric(labels, status.client_channels)
        yield channels
        budget = GaugeMetricFamily(
            "genesys_mux_cluster_client_channel_budget",
            "The channels this instance's OAuth client may hold (its budget).",
            labels=["mux_cluster", "client"],
        )
        budget.add_metric(labels, status.channel_budget)
        yield budget
        yield GaugeMetricFamily(
            "genesys_mux_cluster_reachable",
            "1 while the cluster's Redis answers, 0 while this instance cannot prove its leases.",
            value=0 if status.trouble else 1,
        )
        changes = CounterMetricFamily(
            "genesys_mux_cluster_handovers",
            "Streams taken and let go by this instance, by how: acquired (a free lease), "
            "handover, released (leaving), lost (expired or taken).",
            labels=["how"],
        )
        for how in ("acquired", "handover", "released", "lost"):
            changes.add_metric([how], status.changes.get(how, 0))
        yield changes

    def _rest_families(self, mux: Multiplexer) -> Iterator[Metric]:
        """REST calls to the platform: answers by status, throttling and retry waits."""
        rest = mux.rest
        answers = CounterMetricFamily(
            "genesys_mux_rest_answers",
            "REST answers from the platform by HTTP status (0: no answer).",
            labels=["status"],
        )
        for status, count in sorted((rest.answers if rest is not None else {}).items()):
            answers.add_metric([str(status)], count)
        yield answers
        yield CounterMetricFamily(
            "genesys_mux_rest_throttled",
            "REST answers 429 (too many requests).",
            value=rest.throttled if rest is not None else 0,
        )
        yield CounterMetricFamily(
            "genesys_mux_rest_retries",
            "REST calls tried again (429, 5xx, no answer).",
            value=rest.retries if rest is not None else 0,
        )
        yield CounterMetricFamily(
            "genesys_mux_rest_retry_wait_seconds",
            "Seconds spent waiting before REST retries (Retry-After or backoff).",
            value=rest.retry_wait_s if rest is not None else 0.0,
        )

    def _families(
        self,
        streams: Mapping[str, StreamStats],
        channels: Mapping[int, SlotStats],
        ready: Readiness,
        control: Mapping[str, int],
    ) -> Iterator[Metric]:
        labelled = [(stream_label(sid), s) for sid, s in streams.items()]
        for attr, name, doc in _STREAM_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["stream"])
            for label, s in labelled:
                counter.add_metric([label], getattr(s, attr))
            yield counter
        for attr, name, doc in _STREAM_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["stream"])
            for label, s in labelled:
                gauge.add_metric([label], getattr(s, attr))
            yield gauge
        rejected = GaugeMetricFamily(
            "genesys_mux_stream_rejected_topics",
            "Topics of the stream the platform refused to subscribe.",
            labels=["stream"],
        )
        for label, s in labelled:
            rejected.add_metric([label], len(s.rejected_topics))
        yield rejected

        slots = [(str(index), c) for index, c in sorted(channels.items())]
        for attr, name, doc in _CHANNEL_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["channel"])
            for label, c in slots:
                counter.add_metric([label], getattr(c, attr))
            yield counter
        live = GaugeMetricFamily(
            "genesys_mux_channel_live",
            "1 when the slot's channel socket is live, else 0 (label: slot index).",
            labels=["channel"],
        )
        topics = GaugeMetricFamily(
            "genesys_mux_channel_topics",
            "Topics assigned to the channel slot.",
            labels=["channel"],
        )
        for label, c in slots:
            live.add_metric([label], 1 if c.live else 0)
            topics.add_metric([label], c.topics)
        yield live
        yield topics

        yield GaugeMetricFamily(
            "genesys_mux_ready",
            "1 when /readyz answers 200: the feed runs, every channel is live and subscribed, "
            "at least one stream runs and nothing (state store, sink, cluster) is failing.",
            value=1 if ready.ready else 0,
        )
        yield GaugeMetricFamily("genesys_mux_streams", "Streams configured.", value=len(streams))
        yield GaugeMetricFamily("genesys_mux_channels", "Channel slots in use.", value=len(slots))
        yield CounterMetricFamily(
            "genesys_mux_subscribe_rejections",
            "Topic subscriptions the platform refused (each distinct refusal once).",
            value=control.get("subscribe_rejected", 0),
        )
        events = CounterMetricFamily(
            "genesys_mux_control_events",
            "Control-plane facts by kind (channel rotated, token refreshed, gap...).",
            labels=["kind"],
        )
        for kind, count in sorted(control.items()):
            events.add_metric([kind], count)
        yield events


class MuxMetrics:
    """Prometheus metrics of one multiplexer.

    Hooks into ``mux.on_delivered`` (histograms) and ``mux.on_control``
    (control-event counters) on construction; :meth:`close` unhooks and
    unregisters. ``registry`` is where everything is registered: a private
    :class:`~prometheus_client.CollectorRegistry` unless one is given.
    ``dlq_max_bytes`` is the dead-letter file's configured cap, exported as
    ``genesys_mux_dlq_max_bytes`` so an alert can compare the file's size
    with it (None: no cap, or none known; then no sample).
    ``sink_unready_after_s`` is how long a sink may fail without a break
    before the instance is not ready (see :meth:`readiness`).
    """

    def __init__(
        self,
        mux: Multiplexer,
        registry: CollectorRegistry | None = None,
        *,
        dlq_max_bytes: int | None = None,
        sink_unready_after_s: float = 60.0,
    ) -> None:
        self.mux = mux
        #: A sink failing without a break for longer than this makes the instance not ready.
        self.sink_unready_after_s = sink_unready_after_s
        #: The dead-letter file's cap in bytes, or None (see the class docstring).
        self.dlq_max_bytes = dlq_max_bytes
        self.registry = registry if registry is not None else CollectorRegistry()
        #: The installed genesys-mux version (``genesys_mux_build_info``).
        self.version = package_version()
        #: Process, platform and GC collectors this object registered (see :meth:`close`).
        self._runtime: list[Collector] = []
        # A registry of the caller's may have them already (the process-wide
        # default has all three): those then serve, as a second copy would
        # repeat their series. Only a registry with auto_describe refuses a
        # duplicate itself, hence the look at what it already exports.
        present = set() if registry is None else {m.name for m in registry.collect()}
        runtime = (
            (ProcessCollector, "process_cpu_seconds"),
            (PlatformCollector, "python_info"),
            (GCCollector, "python_gc_objects_collected"),
        )
        for make, family in runtime:
            if family in present:
                continue
            with contextlib.suppress(ValueError):
                self._runtime.append(make(registry=self.registry))
        #: Control-event kind → count, from ``mux.on_control``.
        self.control_events: dict[str, int] = {}
        #: (stream id, gap reason) → gaps reported, from ``mux.on_control``.
        self.gap_reasons: dict[tuple[str, str], int] = {}
        self._latency = Histogram(
            "genesys_mux_event_latency_seconds",
            "Internal latency of delivered events: socket read to hand-over to the consumer.",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._age = Histogram(
            "genesys_mux_event_age_seconds",
            "Age of delivered events at hand-over: now minus the newest timestamp in the body "
            "(negative ages from clock skew count as 0).",
            ["stream"],
            buckets=AGE_BUCKETS,
            registry=self.registry,
        )
        #: stream id → (latency child, age child), bound once per stream.
        self._bound: dict[str, tuple[Histogram, Histogram]] = {}
        #: stream id → the runner delivering it to its sinks (see :meth:`watch_sinks`).
        self.sink_runners: dict[str, StreamDelivery] = {}
        #: This instance's cluster member, if it is one (see :meth:`watch_cluster`).
        self.member: ClusterMember | None = None
        self._collector = _MuxCollector(self)
        self.registry.register(self._collector)
        for config in mux.streams():
            self._bind(config.id)
        mux.on_delivered.append(self._observe)
        mux.on_control.append(self._control)

    def watch_sinks(self, stream_id: str, runner: StreamDelivery) -> None:
        """Export the counters of the runner delivering ``stream_id`` to its sinks."""
        self.sink_runners[stream_id] = runner

    def watch_cluster(self, member: ClusterMember) -> None:
        """Export this instance's part in a cluster, and make ``/readyz`` follow its leases."""
        self.member = member
        member.on_control.append(self._control)

    def readiness(self) -> Readiness:
        """The instance's readiness: what ``/readyz`` answers and ``genesys_mux_ready`` exports.

        The feed's (:func:`readiness`: running, channels, streams, state
        store, cluster), then its sinks': events that cannot leave are not a
        ready feed. One judgement for both, so the gauge an alert reads never
        says ready while the probe says not.
        """
        state = readiness(self.mux, self.member)
        if not state.ready:
            return state
        failing = self.failing_sinks(self.sink_unready_after_s)
        if failing:
            return Readiness(False, "sink failing: " + "; ".join(failing))
        return state

    def failing_sinks(self, longer_than_s: float, now: float | None = None) -> list[str]:
        """``stream/sink failing for N s: error`` per sink failing for over ``longer_than_s``."""
        now = time.monotonic() if now is None else now
        return [
            f"{stream_id}/{name} failing for {now - c.failing_since:.0f} s: {c.last_error}"
            for stream_id, runner in sorted(self.sink_runners.items())
            for name, c in sorted(runner.per_sink.items())
            if c.failing_since is not None and now - c.failing_since > longer_than_s
        ]

    def close(self) -> None:
        """Unhook from the multiplexer and unregister everything from the registry."""
        with contextlib.suppress(ValueError):
            self.mux.on_delivered.remove(self._observe)
        with contextlib.suppress(ValueError):
            self.mux.on_control.remove(self._control)
        collectors: list[Collector] = [self._collector, self._latency, self._age, *self._runtime]
        for collector in collectors:
            with contextlib.suppress(KeyError):
                self.registry.unregister(collector)

    def _bind(self, stream_id: str) -> tuple[Histogram, Histogram]:
        label = stream_label(stream_id)
        bound = (self._latency.labels(label), self._age.labels(label))
        self._bound[stream_id] = bound
        return bound

    def _unbind(self, stream_id: str) -> None:
        if self._bound.pop(stream_id, None) is not None:
            label = stream_label(stream_id)
            # A removed stream's series must go, or dashboards show it forever.
            with contextlib.suppress(KeyError):
                self._latency.remove(label)
            with contextlib.suppress(KeyError):
                self._age.remove(label)

    def _observe(self, event: StreamEvent) -> None:
        bound = self._bound.get(event.stream_id)
        if bound is None:
            # The stream's first event can precede its stream_added fact.
            bound = self._bind(event.stream_id)
        latency, age = bound
        if event.latency_s is not None:
            latency.observe(event.latency_s)
        if event.age_s is not None:
            age.observe(event.age_s if event.age_s > 0.0 else 0.0)

    def _control(self, event: ControlEvent) -> None:
        kind = event.kind
        self.control_events[kind] = self.control_events.get(kind, 0) + 1
        if isinstance(event, StreamAdded):
            if event.stream_id not in self._bound:
                self._bind(event.stream_id)
        elif isinstance(event, StreamRemoved):
            self._unbind(event.stream_id)
            for key in [key for key in self.gap_reasons if key[0] == event.stream_id]:
                del self.gap_reasons[key]
        elif isinstance(event, GapReported):
            self._count_gap(event.stream_id, event.reason)

    def _count_gap(self, stream_id: str, reason: str) -> None:
        # Reasons are short codes, but the label must stay bounded whatever
        # a future reason looks like: odd shapes and any past the cap are "other".
        known = {r for _, r in self.gap_reasons}
        if not _GAP_REASON.fullmatch(reason) or (
            reason not in known and len(known) >= _MAX_GAP_REASONS
        ):
            reason = "other"
        key = (stream_id, reason)
        self.gap_reasons[key] = self.gap_reasons.get(key, 0) + 1


def _unattributed_dead_letters(delivery: StreamDelivery) -> Iterator[tuple[str, int]]:
    """(sink, count) of a delivery's dead letters that no sink's own counter holds.

    A runner counts per sink the batches a sink gave up on, but the events it
    had taken from the stream and not yet batched when it stopped (and, in a
    fan-out, those queued for a group) are counted only in the runner's total.
    Their letters name the runner's first sink, so they are exported under
    it: the sink counters then add up to every letter the delivery wrote,
    and each series still only grows (both counts only grow, and the
    runner's total holds every per-sink count).
    """
    runners = delivery.runners if isinstance(delivery, SinkFanOut) else (delivery,)
    for runner in runners:
        if not runner.sinks:
            continue
        counted = sum(runner.per_sink[sink.name].dead_lettered for sink in runner.sinks)
        extra = runner.dead_lettered - counted
        if extra > 0:
            yield runner.sinks[0].name, extra


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts over :data:`SEND_BUCKETS` as Prometheus's cumulative ``le`` buckets."""
    bounds = [*(repr(b) for b in SEND_BUCKETS), "+Inf"]
    total = 0
    buckets = []
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        buckets.append((bound, float(total)))
    return buckets
