"""The admin server's probes and status page against a live multiplexer.

``/readyz`` must follow the channels: ready when they are live, not ready
(503, with a reason) during an outage, ready again after. The outage is
made with the emulator: the socket is dropped and the HEAD that decides
whether to reuse the channel is throttled with ``Retry-After: 2``, so the
pool is guaranteed to stay down for two seconds.
"""

from __future__ import annotations

import json

import pytest

from genesys_mux.errors import ConfigError, InvalidStateError
from genesys_mux.observability import AdminServer, MuxMetrics
from genesys_mux.observability.sanitize import REDACTED
from tests.net.conftest import eventually
from tests.net.test_multiplexer import Collector, harness, org_settings
from tests.observability.conftest import get, scrape


async def test_readyz_follows_an_outage_and_healthz_stays_up() -> None:
    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        async with AdminServer(h.mux, metrics) as admin:
            assert admin.base_url.startswith("http://127.0.0.1:")
            status, body = await get(f"{admin.base_url}/readyz")
            assert status == 503
            assert "no streams" in json.loads(body)["reason"]

            await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
            seen = Collector(h.mux.stream("voice"))
            await eventually(lambda: len(seen.events()) >= 1)
            assert (await get(f"{admin.base_url}/readyz"))[0] == 200
            assert (await get(f"{admin.base_url}/healthz"))[0] == 200

            await h.control(
                "faults",
                {
                    "fault": "http_429",
                    "retry_after_s": 2,
                    "count": 1,
                    "method": "HEAD",
                    "path": "/api/v2/notifications/channels",
                },
            )
            await h.control("faults", {"fault": "drop_socket"})

            reasons: list[str] = []

            async def not_ready() -> bool:
                status, body = await get(f"{admin.base_url}/readyz")
                if status == 503:
                    reasons.append(json.loads(body)["reason"])
                return status == 503

            await eventually(not_ready)
            assert "not every channel is live" in reasons[0]
            assert "reconnecting" in reasons[0] or "connecting" in reasons[0]
            # Down, but alive: a liveness probe must not restart us for this.
            assert (await get(f"{admin.base_url}/healthz"))[0] == 200
            samples = await scrape(admin.base_url)
            assert samples["genesys_mux_ready"][()] == 0

            async def ready() -> bool:
                return (await get(f"{admin.base_url}/readyz"))[0] == 200

            await eventually(ready)
            samples = await scrape(admin.base_url)
            assert samples["genesys_mux_ready"][()] == 1
            assert samples["genesys_mux_channel_reconnects_total"][(("channel", "0"),)] >= 1
            seen.stop()
        metrics.close()


async def test_healthz_is_down_once_the_multiplexer_stops() -> None:
    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        async with AdminServer(h.mux, metrics) as admin:
            assert (await get(f"{admin.base_url}/healthz"))[0] == 200
            await h.mux.stop(drain=False)
            status, body = await get(f"{admin.base_url}/healthz")
            assert status == 503
            assert json.loads(body)["status"] == "down"


async def test_refused_credentials_mid_run_make_every_readiness_signal_say_not_ready() -> None:
    """The secret is rotated under a running feed, then its token revoked: a fatal failure.

    /healthz, /readyz, genesys_mux_ready and /status's ready must all say so,
    with a reason naming the failure.
    """
    async with harness(org_settings(rate=10.0)) as h:
        metrics = MuxMetrics(h.mux)
        async with AdminServer(h.mux, metrics) as admin:
            await h.mux.add_stream({"id": "all", "filter": {}})
            seen = Collector(h.mux.stream("all"))
            await eventually(lambda: len(seen.events()) >= 3)
            assert (await get(f"{admin.base_url}/readyz"))[0] == 200
            assert (await scrape(admin.base_url))["genesys_mux_ready"][()] == 1

            await h.control("clients", {"client_id": "demo-client", "client_secret": "rotated"})
            await h.control("faults", {"fault": "revoke_token", "client_id": "demo-client"})
            await eventually(lambda: metrics.control_events.get("fatal", 0) == 1)

            status, body = await get(f"{admin.base_url}/readyz")
            assert status == 503, body
            reason = json.loads(body)["reason"]
            assert reason.startswith("failed: ")
            assert "refused the client credentials" in reason
            assert "rotated" not in reason
            assert "demo-secret" not in reason
            assert (await get(f"{admin.base_url}/healthz"))[0] == 503
            assert (await scrape(admin.base_url))["genesys_mux_ready"][()] == 0
            status, body = await get(f"{admin.base_url}/status")
            snapshot = json.loads(body)
            assert (snapshot["running"], snapshot["ready"]) == (False, False)
            assert snapshot["reason"] == reason
            seen.stop()
        metrics.close()


async def test_a_stopped_multiplexer_is_not_ready() -> None:
    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
        seen = Collector(h.mux.stream("voice"))
        await eventually(lambda: len(seen.events()) >= 1)
        async with AdminServer(h.mux, metrics) as admin:
            assert (await get(f"{admin.base_url}/readyz"))[0] == 200
            await h.mux.stop(drain=False)
            status, body = await get(f"{admin.base_url}/readyz")
            assert status == 503
            assert json.loads(body)["reason"].startswith("stopped: ")
            assert (await scrape(admin.base_url))["genesys_mux_ready"][()] == 0
            snapshot = json.loads((await get(f"{admin.base_url}/status"))[1])
            assert (snapshot["running"], snapshot["ready"]) == (False, False)
        seen.stop()
        metrics.close()


async def test_status_is_a_json_snapshot_with_extras_redacted() -> None:
    def extra() -> dict[str, object]:
        return {
            "sinks": {"voice": {"kind": "redis", "pending": 0}},
            "webhook_secret": "hunter2",
            "nested": {"Authorization": "Bearer abc"},
            "streams": "must not replace the built-in key",
        }

    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
        seen = Collector(h.mux.stream("voice"))
        await eventually(lambda: len(seen.events()) >= 1)
        seen.stop()
        async with AdminServer(h.mux, metrics, status_extra=extra) as admin:
            status, body = await get(f"{admin.base_url}/status")
        assert status == 200
        data = json.loads(body)
        stats = h.mux.stats()
        assert set(data["streams"]) == {"voice"}
        assert data["streams"]["voice"]["priority"] == 3
        assert data["streams"]["voice"]["delivered"] >= 1
        assert data["channels"]["0"]["channel_id"] == stats["channels"][0].channel_id
        assert data["channels"]["0"]["state"] == "live"
        assert data["ready"] is True
        assert data["running"] is True
        assert data["control_events"]["stream_added"] == 1
        assert data["sinks"] == {"voice": {"kind": "redis", "pending": 0}}
        assert data["webhook_secret"] == REDACTED
        assert data["nested"] == {"Authorization": REDACTED}
        assert "hunter2" not in body
        assert "Bearer abc" not in body
        metrics.close()


async def test_a_failing_status_extra_does_not_break_the_page() -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("secret detail that must not be shown")

    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        async with AdminServer(h.mux, metrics, status_extra=broken) as admin:
            status, body = await get(f"{admin.base_url}/status")
        assert status == 200
        assert json.loads(body)["extra_error"] == "RuntimeError"
        assert "secret detail" not in body
        with pytest.raises(InvalidStateError, match="not running"):
            _ = admin.base_url
        metrics.close()


async def test_a_port_that_cannot_be_bound_is_a_config_error_naming_it() -> None:
    async with harness() as h:
        metrics = MuxMetrics(h.mux)
        async with AdminServer(h.mux, metrics) as first:
            taken = int(first.base_url.rsplit(":", 1)[1])
            second = AdminServer(h.mux, metrics, port=taken)
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{taken}") as caught:
                await second.start()
            assert "admin_port" in str(caught.value)
            assert isinstance(caught.value.__cause__, OSError)
            # Nothing half-started is left behind, and the first still answers.
            with pytest.raises(InvalidStateError):
                second.base_url  # noqa: B018
            assert (await get(f"{first.base_url}/healthz"))[0] == 200
