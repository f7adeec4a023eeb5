"""What /metrics says beyond the feed: build info, the process, the token, gaps by reason.

A dropped socket makes a real gap; its reason must show in
``genesys_mux_gap_reports_total`` and agree with the stream's gap counter.
The process collectors must be there in a private registry and must not
clash with a registry that already has them (the process-wide default).
"""

from __future__ import annotations

import importlib.metadata
import platform

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from genesys_mux.core.events import GapReported
from genesys_mux.errors import AuthenticationError
from genesys_mux.observability import AdminServer, MuxMetrics, stream_label
from genesys_mux.observability.metrics import package_version
from tests.net.conftest import eventually
from tests.net.test_multiplexer import Collector, harness
from tests.observability.conftest import scrape


async def test_gaps_by_reason_token_and_build_info_from_a_live_multiplexer() -> None:
    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
        seen = Collector(h.mux.stream("voice"))
        await eventually(lambda: len(seen.events()) >= 1)
        await h.control("faults", {"fault": "drop_socket"})
        await eventually(lambda: len(seen.gaps()) >= 1)
        seen.stop()
        async with AdminServer(h.mux, metrics) as admin:
            samples = await scrape(admin.base_url)
        gaps = h.mux.stats()["streams"]["voice"].gaps
        by_reason = {
            dict(labels)["reason"]: value
            for labels, value in samples["genesys_mux_gap_reports_total"].items()
            if dict(labels)["stream"] == stream_label("voice")
        }
        assert sum(by_reason.values()) == gaps >= 1
        assert set(by_reason) == {gap.reason for gap in seen.gaps()}

        (info,) = samples["genesys_mux_build_info"].items()
        assert dict(info[0]) == {
            "version": importlib.metadata.version("genesys-mux"),
            "python": platform.python_version(),
        }
        assert info[1] == 1
        # The emulator grants a day-long token; it was just obtained.
        lifetime = samples["genesys_mux_token_lifetime_seconds"][()]
        expires_in = samples["genesys_mux_token_expires_in_seconds"][()]
        assert lifetime == 86399
        assert lifetime - 60 < expires_in <= lifetime
        assert samples["process_resident_memory_bytes"][()] > 0
        assert samples["python_info"]

        # A removed stream's gap series go with it.
        await h.mux.remove_stream("voice")
        assert "genesys_mux_gap_reports_total{" not in generate_latest(metrics.registry).decode()
        metrics.close()


async def test_failed_token_requests_are_counted_by_reason() -> None:
    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        async with AdminServer(h.mux, metrics) as admin:
            # Every reason is there from the start, at 0.
            before = (await scrape(admin.base_url))["genesys_mux_token_refresh_failures_total"]
            assert before == {
                (("reason", "refused"),): 0,
                (("reason", "unavailable"),): 0,
                (("reason", "invalid_answer"),): 0,
            }
            # The login host fails two refreshes, then answers: two failures.
            tokens = h.mux.tokens
            assert tokens is not None
            stale = tokens.current
            for status in (503, 502):
                await h.control(
                    "faults",
                    {"fault": "http_5xx", "status": status, "count": 1, "path": "/oauth/token"},
                )
            fresh = await tokens.refresh(stale)
            assert fresh is not stale
            after = (await scrape(admin.base_url))["genesys_mux_token_refresh_failures_total"]
            assert after[(("reason", "unavailable"),)] == 2
            assert after[(("reason", "refused"),)] == 0

            # The client's secret is rotated on the platform: the next refresh is refused.
            await h.control(
                "clients", {"client_id": "demo-client", "client_secret": "rotated-secret"}
            )
            with pytest.raises(AuthenticationError):
                await tokens.refresh(fresh)
            refused = (await scrape(admin.base_url))["genesys_mux_token_refresh_failures_total"]
            assert refused[(("reason", "refused"),)] == 1
            assert refused[(("reason", "unavailable"),)] == 2
        metrics.close()


async def test_the_dead_letter_cap_is_exported_when_there_is_one() -> None:
    async with harness() as h:
        capped = MuxMetrics(h.mux, dlq_max_bytes=123_456)
        uncapped = MuxMetrics(h.mux)
        async with AdminServer(h.mux, capped) as admin:
            assert (await scrape(admin.base_url))["genesys_mux_dlq_max_bytes"] == {(): 123_456}
        text = generate_latest(uncapped.registry).decode()
        # Described (so the name is known), but without a sample: no cap, no ratio.
        assert "# TYPE genesys_mux_dlq_max_bytes gauge" in text
        assert "\ngenesys_mux_dlq_max_bytes " not in text
        capped.close()
        uncapped.close()


async def test_gap_reasons_stay_a_bounded_label() -> None:
    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        for n in range(40):
            for callback in h.mux.on_control:
                callback(GapReported("s", "streaming-1-abcdefgh", 0.0, 1.0, 1, f"reason_{n}"))
        for callback in h.mux.on_control:
            callback(GapReported("s", "streaming-1-abcdefgh", 0.0, 1.0, 1, "Not A Code: 10.0.0.1"))
        reasons = [reason for _, reason in metrics.gap_reasons]
        assert len(set(reasons)) == 33  # 32 kept, then "other"
        assert metrics.gap_reasons[("s", "other")] == 9  # 8 past the cap, 1 odd shape
        assert sum(metrics.gap_reasons.values()) == 41
        metrics.close()


async def test_runtime_collectors_join_a_private_registry_and_spare_a_shared_one() -> None:
    async with harness() as h:
        private = MuxMetrics(h.mux)
        text = generate_latest(private.registry).decode()
        assert "process_cpu_seconds_total" in text
        assert "python_gc_objects_collected_total" in text
        private.close()
        assert generate_latest(private.registry) == b""

        # A registry that already has a process collector keeps its own: no clash.
        shared = CollectorRegistry()
        ProcessCollector(registry=shared)
        metrics = MuxMetrics(h.mux, registry=shared)
        text = generate_latest(shared).decode()
        assert text.count("# TYPE process_cpu_seconds_total") == 1
        assert "python_info" in text
        metrics.close()
        # Closing leaves what the registry had before.
        text = generate_latest(shared).decode()
        assert "process_cpu_seconds_total" in text
        assert "genesys_mux_" not in text
        assert "python_info" not in text


def test_the_version_comes_from_the_installed_metadata() -> None:
    assert package_version() == importlib.metadata.version("genesys-mux")
