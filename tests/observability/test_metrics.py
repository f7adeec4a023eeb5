"""Prometheus metrics of a running multiplexer, scraped from the admin server.

The counters must agree with ``mux.stats()``, the histograms must fill as
events are consumed, and no label may carry a raw Genesys id: not the
org's queue or user ids, not a channel id, even when a stream is named
after a queue.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from genesys_mux.core.backoff import Backoff
from genesys_mux.errors import SinkError
from genesys_mux.net.multiplexer import Multiplexer
from genesys_mux.observability import AdminServer, MuxMetrics, stream_label
from genesys_mux.observability.metrics import _cumulative
from genesys_mux.sinks.runner import SinkCounters, SinkRunner
from tests.net.conftest import eventually
from tests.net.test_multiplexer import Collector, harness, org_settings
from tests.observability.conftest import get, sample_events, scrape

STREAM_COUNTERS = {
    "received": "genesys_mux_stream_received_total",
    "delivered": "genesys_mux_stream_delivered_total",
    "filtered": "genesys_mux_stream_filtered_total",
    "duplicates": "genesys_mux_stream_duplicates_total",
    "stale": "genesys_mux_stream_stale_total",
    "overflowed": "genesys_mux_stream_overflowed_total",
    "dead_lettered": "genesys_mux_stream_dead_lettered_total",
    "gaps": "genesys_mux_stream_gaps_total",
    "buffered": "genesys_mux_stream_buffered",
}
CHANNEL_COUNTERS = {
    "notifications": "genesys_mux_channel_notifications_total",
    "reconnects": "genesys_mux_channel_reconnects_total",
    "gone": "genesys_mux_channel_gone_total",
    "rotations": "genesys_mux_channel_rotations_total",
    "bad_frames": "genesys_mux_channel_bad_frames_total",
    "unknown_frames": "genesys_mux_channel_unknown_frames_total",
    "topics": "genesys_mux_channel_topics",
}


def _counters(stats: dict[str, Any]) -> dict[str, Any]:
    """The counter part of a stats snapshot (latency percentiles move on every take)."""
    return {
        "streams": {
            sid: {attr: getattr(s, attr) for attr in STREAM_COUNTERS}
            for sid, s in stats["streams"].items()
        },
        "channels": {
            index: {attr: getattr(c, attr) for attr in CHANNEL_COUNTERS} | {"state": c.state}
            for index, c in stats["channels"].items()
        },
        "memory": dict(stats["memory"]),
    }


async def test_metrics_agree_with_stats_and_carry_no_raw_ids() -> None:
    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        org = await h.control("org")
        queue_id = org["queues"][0]["id"]
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}, "priority": 1})
        # A stream named after a queue: its label must not be the queue id.
        await h.mux.add_stream({"id": queue_id, "filter": {"queueId": queue_id}})
        await h.control("faults", {"fault": "duplicate", "probability": 0.3})
        await h.control("faults", {"fault": "garbage_frame"})
        # JSON, but of no shape the platform sends: ignored and counted apart.
        await h.control("faults", {"fault": "garbage_frame", "data": '{"hello":"world"}'})
        seen = Collector(h.mux.events())
        await eventually(
            lambda: len(seen.events("voice")) >= 10 and len(seen.events(queue_id)) >= 3
        )

        async with AdminServer(h.mux, metrics) as admin:
            matched: dict[str, Any] = {}

            async def agrees() -> bool:
                # The scrape and our snapshot must describe the same moment:
                # retry until nothing moved while the scrape was answered.
                before = _counters(h.mux.stats())
                samples = await scrape(admin.base_url)
                if _counters(h.mux.stats()) != before:
                    return False
                matched.update(before=before, samples=samples)
                return True

            await eventually(agrees)
            before, samples = matched["before"], matched["samples"]
            for sid, counters in before["streams"].items():
                label = (("stream", stream_label(sid)),)
                for attr, name in STREAM_COUNTERS.items():
                    assert samples[name][label] == counters[attr], (sid, name)
            assert before["streams"]["voice"]["delivered"] >= 10
            assert before["streams"]["voice"]["duplicates"] > 0
            for index, counters in before["channels"].items():
                label = (("channel", str(index)),)
                for attr, name in CHANNEL_COUNTERS.items():
                    assert samples[name][label] == counters[attr], (index, name)
                assert samples["genesys_mux_channel_live"][label] == (counters["state"] == "live")
            assert sum(c["bad_frames"] for c in before["channels"].values()) >= 1
            assert sum(c["unknown_frames"] for c in before["channels"].values()) >= 1
            assert samples["genesys_mux_ready"][()] == 1
            assert samples["genesys_mux_streams"][()] == 2
            # One record per conversation, shared by the two streams; their bounds add up.
            assert samples["genesys_mux_remembered_keys"][()] == before["memory"]["keys"] > 0
            assert samples["genesys_mux_remembered_keys_limit"][()] == 2 * 50_000

            # Histograms: one latency observation per delivered event (the
            # metrics were attached before the streams existed). With the
            # consumer stopped, nothing moves between the scrape and stats().
            seen.stop()
            samples = await scrape(admin.base_url)
            for sid in ("voice", queue_id):
                label = (("stream", stream_label(sid)),)
                delivered = h.mux.stats()["streams"][sid].delivered
                latency = samples["genesys_mux_event_latency_seconds_count"][label]
                assert latency == delivered > 0
                assert samples["genesys_mux_event_age_seconds_count"][label] > 0
                buckets = {
                    dict(k)["le"]: v
                    for k, v in samples["genesys_mux_event_latency_seconds_bucket"].items()
                    if dict(k)["stream"] == stream_label(sid)
                }
                assert buckets["+Inf"] == latency

            # Every family has HELP text and the genesys_mux_ prefix, but
            # prometheus-client's process and Python runtime collectors'.
            _, text = await get(f"{admin.base_url}/metrics")
            for family in text_string_to_metric_families(text):
                assert family.name.startswith(("genesys_mux_", "process_", "python_")), family.name
                assert family.documentation, family.name

            # No label value is a raw Genesys id.
            channels = await h.control("channels")
            assert h.mux.pool is not None
            raw_ids = (
                {q["id"] for q in org["queues"]}
                | {u["id"] for u in org["users"]}
                | {c["id"] for c in channels}
                | {c for c in h.mux.pool.channel_ids().values() if c}
            )
            assert raw_ids
            values = {v for family in samples.values() for labels in family for _, v in labels}
            assert values
            for value in values:
                assert not any(raw in value for raw in raw_ids), value
            channel_labels = {
                v
                for family in samples.values()
                for labels in family
                for k, v in labels
                if k == "channel"
            }
            assert channel_labels
            assert all(re.fullmatch(r"\d+", v) for v in channel_labels)
            assert stream_label(queue_id) in values
        metrics.close()


async def test_a_removed_stream_leaves_no_series_and_registries_are_private() -> None:
    async with harness() as h:
        registry = CollectorRegistry()
        metrics = MuxMetrics(h.mux, registry)
        # A second MuxMetrics on its own registry does not clash with the first.
        other = MuxMetrics(h.mux)
        assert other.registry is not registry
        await h.mux.add_stream({"id": "chat", "filter": {"channelType": "chat"}})
        seen = Collector(h.mux.stream("chat"))
        await eventually(lambda: len(seen.events()) >= 1)
        seen.stop()
        async with AdminServer(h.mux, metrics) as admin:
            samples = await scrape(admin.base_url)
            assert (("stream", "chat"),) in samples["genesys_mux_stream_received_total"]
            await h.mux.remove_stream("chat")
            samples = await scrape(admin.base_url)
            for family in samples.values():
                for labels in family:
                    assert ("stream", "chat") not in labels
            assert samples["genesys_mux_ready"][()] == 0  # no streams: not ready
            assert samples["genesys_mux_control_events_total"][(("kind", "stream_removed"),)] == 1
        metrics.close()
        other.close()
        assert metrics._observe not in h.mux.on_delivered


def test_stream_labels_never_carry_genesys_ids() -> None:
    assert stream_label("voice-main") == "voice-main"
    uuid = "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    for raw in (uuid, f"queue-{uuid}", "streaming-0-abcdefghijklmnopqrstuvwxyz"):
        label = stream_label(raw)
        assert raw not in label
        assert uuid not in label
        assert re.fullmatch(r"stream-[0-9a-f]{12}", label)
        assert stream_label(raw) == label  # stable


class _BrokenSink:
    """A sink whose downstream is down: every send fails, retryably."""

    name = "crm"

    async def start(self) -> None:
        pass

    async def send(self, batch: object) -> None:
        raise SinkError("crm: connection refused", retryable=True)

    async def close(self) -> None:
        pass


async def test_a_failing_sink_shows_in_metrics_and_makes_readyz_503() -> None:
    async with harness() as h:
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
        metrics = MuxMetrics(h.mux)
        runner = SinkRunner(
            h.mux.stream("voice"),
            [_BrokenSink()],
            h.mux.dead_letter,
            backoff=Backoff(0.05, 0.1),
            stop_grace_s=0.1,
        )
        metrics.watch_sinks("voice", runner)
        task = asyncio.create_task(runner.run())
        try:
            async with AdminServer(h.mux, metrics, sink_unready_after_s=0.3) as admin:
                await eventually(lambda: runner.per_sink["crm"].retries >= 3)
                samples = await scrape(admin.base_url)
                labels = (("sink", "crm"), ("stream", "voice"))
                assert samples["genesys_mux_sink_failing"][labels] == 1
                assert samples["genesys_mux_sink_retries_total"][labels] >= 3
                assert samples["genesys_mux_sink_records_sent_total"][labels] == 0
                # Every attempt, failed ones too, is timed.
                attempts = samples["genesys_mux_sink_send_seconds_count"][labels]
                assert attempts >= 3
                everything = (("le", "+Inf"), *labels)
                assert samples["genesys_mux_sink_send_seconds_bucket"][everything] == attempts
                # REST calls are counted by status.
                assert samples["genesys_mux_rest_answers_total"][(("status", "200"),)] > 0

                async def unready() -> bool:
                    status, body = await get(f"{admin.base_url}/readyz")
                    return status == 503 and "sink failing: voice/crm" in body

                await eventually(unready)
                # The gauge an alert reads is the same judgement as the probe.
                assert (await scrape(admin.base_url))["genesys_mux_ready"][()] == 0
                assert metrics.sink_unready_after_s == admin.sink_unready_after_s == 0.3
        finally:
            runner.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class _StuckSink:
    """A sink whose downstream never answers: its first send hangs until cancelled."""

    name = "stuck"

    def __init__(self) -> None:
        self.sending = asyncio.Event()

    async def start(self) -> None:
        pass

    async def send(self, batch: object) -> None:
        self.sending.set()
        await asyncio.Event().wait()

    async def close(self) -> None:
        pass


async def test_the_stream_and_sink_dead_letter_counters_add_up_to_every_letter() -> None:
    """Every dead letter is in one of the two counters, and in /status, exactly once.

    Three sources: a stream's buffer overflowing (nobody reads ``small``), a
    sink that gives up on batches (``hooks``), and a runner cancelled with a
    batch in hand and items already read for the next (``stuck``): the last
    ones no sink's own counter holds.
    """
    async with harness(org_settings(rate=40.0)) as h:
        metrics = MuxMetrics(h.mux)
        admin = AdminServer(h.mux, metrics)
        await h.mux.add_stream({"id": "small", "filter": {}, "buffer_size": 1})
        await h.mux.add_stream({"id": "hooks", "filter": {}})
        await h.mux.add_stream({"id": "stuck", "filter": {}})
        failing = SinkRunner(
            h.mux.stream("hooks", settle=False),
            [_BrokenSink()],
            h.mux.dead_letter,
            max_attempts=1,
            backoff=Backoff(0.01, 0.02),
        )
        stuck_sink = _StuckSink()
        stuck = SinkRunner(
            h.mux.stream("stuck", settle=False), [stuck_sink], h.mux.dead_letter, batch_size=5
        )
        metrics.watch_sinks("hooks", failing)
        metrics.watch_sinks("stuck", stuck)
        tasks = [asyncio.create_task(failing.run()), asyncio.create_task(stuck.run())]
        try:
            await stuck_sink.sending.wait()
            # Items wait in the stream, so the reader has one for the next batch.
            await eventually(lambda: h.mux.stats()["streams"]["stuck"].buffered > 3)
            tasks[1].cancel()
            await asyncio.gather(tasks[1], return_exceptions=True)
            assert stuck.dead_lettered > stuck.per_sink["stuck"].dead_lettered, (
                "no letter outside the sink's own counter: the case this test is for"
            )
            await eventually(lambda: failing.dead_lettered >= 5)
            await eventually(lambda: h.mux.stats()["streams"]["small"].dead_lettered >= 5)

            # No await from here on: the scrape, /status and the queue agree exactly.
            text = generate_latest(metrics.registry).decode()
            snapshot = admin.snapshot()
            letters: dict[str, int] = {}
            for letter in h.dlq.letters:
                letters[letter.stream_id] = letters.get(letter.stream_id, 0) + 1
        finally:
            failing.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            metrics.close()

    counted: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("genesys_mux_stream_dead_lettered", "genesys_mux_sink_dead_lettered"):
            for sample in family.samples:
                stream = sample.labels["stream"]
                counted[stream] = counted.get(stream, 0) + sample.value
    assert counted == {stream: float(n) for stream, n in letters.items()}
    assert set(letters) == {"small", "hooks", "stuck"}
    for stream, n in letters.items():
        status = snapshot["streams"][stream]
        assert status["dead_lettered"] + status["sink_dead_lettered"] == n, stream
    assert snapshot["streams"]["hooks"]["sink_dead_lettered"] > 0
    assert snapshot["streams"]["small"]["sink_dead_lettered"] == 0


def test_sink_send_times_fall_in_prometheus_buckets() -> None:
    counters = SinkCounters()
    for seconds in (0.0004, 0.001, 0.003, 7.0):
        counters.observe_send(seconds)
    assert dict(_cumulative(counters.send_buckets))["0.001"] == 2  # le: at most the bound
    assert dict(_cumulative(counters.send_buckets))["0.005"] == 3
    assert dict(_cumulative(counters.send_buckets))["5.0"] == 3
    assert dict(_cumulative(counters.send_buckets))["+Inf"] == 4
    assert counters.send_seconds == pytest.approx(7.0044)


def test_every_control_event_type_is_counted_by_its_kind() -> None:
    mux = Multiplexer(client_id="x", client_secret="y", base_url="http://127.0.0.1:9")
    metrics = MuxMetrics(mux)
    every = sample_events()
    for event in every:
        for callback in mux.on_control:  # as the multiplexer reports it
            callback(event)
    text = generate_latest(metrics.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counted = {
        s.labels["kind"]: s.value
        for s in families["genesys_mux_control_events"].samples
        if s.name.endswith("_total")
    }
    assert counted == {event.kind: 1.0 for event in every}
    metrics.close()
    assert mux.on_control == []
