"""A canary secret and every access token issued must appear nowhere operators look.

The multiplexer runs with a client registered under a canary secret, through
rotations, lost sockets, a revoked token and throttled API calls, with the
audit log, the library's logs (captured at DEBUG, every logger), ``/metrics``
and ``/status`` all captured. Every token the emulator issued to us is
collected as it is handed out; none of them, nor the secret, nor the Basic
credentials built from it, may appear in any of the captured text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path

import pytest

from genesys_mux.net.auth import AccessToken
from genesys_mux.observability import AdminServer, AuditLog, MuxMetrics
from tests.net.conftest import eventually
from tests.net.test_multiplexer import Collector
from tests.observability.conftest import client_harness, events, get

CLIENT_ID = "canary-client"
CANARY = "canary-secret-7f3a9c"


async def test_no_secret_or_token_leaks_anywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    audit_path = tmp_path / "audit.jsonl"
    tokens: set[str] = set()
    captured: dict[str, str] = {}

    async with client_harness(CLIENT_ID, CANARY) as h:
        assert h.mux.tokens is not None
        provider = h.mux.tokens

        def keep(token: AccessToken) -> None:
            tokens.add(token.value)

        provider.on_refresh.append(keep)
        metrics = MuxMetrics(h.mux)
        audit = AuditLog(audit_path)
        audit.attach(h.mux)
        summaries = asyncio.create_task(audit.run_periodic(h.mux, 0.2))
        extra = {"client": {"client_id": CLIENT_ID, "client_secret": CANARY}}
        async with AdminServer(h.mux, metrics, status_extra=lambda: extra) as admin:
            await h.mux.add_stream({"id": "voice", "filter": {"channelType": "voice"}})
            await h.mux.add_stream({"id": "tiny", "filter": {}, "buffer_size": 1})
            seen = Collector(h.mux.stream("voice"))
            await eventually(lambda: len(seen.events()) >= 3)

            def current() -> bool:
                # Also read the live token, as an operator's tooling would.
                if provider.current is not None:
                    tokens.add(provider.current.value)
                return True

            def audited(name: str, n: int = 1) -> bool:
                current()
                return len(events(_lines(audit_path), name)) >= n

            await h.control("faults", {"fault": "socket_closing", "delay_s": 5})
            await eventually(lambda: audited("CHANNEL_ROTATED"))
            await h.control("faults", {"fault": "drop_socket"})
            await eventually(lambda: audited("GAP"))
            await h.control("faults", {"fault": "garbage_frame"})
            # The first token came in start(), before the audit log was attached.
            refreshed = len(events(_lines(audit_path), "TOKEN_REFRESHED"))
            await h.control("faults", {"fault": "revoke_token", "client_id": CLIENT_ID})
            await eventually(lambda: audited("TOKEN_REFRESHED", refreshed + 1))
            await h.control("faults", {"fault": "http_5xx", "count": 1, "path": "/subscriptions"})
            await h.control("faults", {"fault": "no_longer_subscribed"})
            await eventually(lambda: audited("CHANNEL_ROTATED", 3))
            await eventually(lambda: audited("STREAM_METRIC", 4) and audited("DLQ_WRITE"))
            current()

            captured["metrics"] = (await get(f"{admin.base_url}/metrics"))[1]
            status, captured["status"] = await get(f"{admin.base_url}/status")
            assert status == 200
            captured["readyz"] = (await get(f"{admin.base_url}/readyz"))[1]
            seen.stop()
        summaries.cancel()
        audit.close()
        metrics.close()

    captured["audit"] = audit_path.read_text()
    captured["logs"] = caplog.text + "\n".join(
        # Arguments too, in case a handler formats them differently.
        repr(r.args) + str(r.exc_info)
        for r in caplog.records
    )

    assert len(tokens) >= 2, "the run should have issued more than one token"
    basic = base64.b64encode(f"{CLIENT_ID}:{CANARY}".encode()).decode()
    needles = {CANARY, basic, *tokens}
    for where, text in captured.items():
        assert text, where
        for needle in needles:
            assert needle not in text, f"a secret leaked into {where}"
    # The run really went through what it claims: the audit saw it all.
    audit_lines = _lines(audit_path)
    assert events(audit_lines, "CHANNEL_LOST")
    assert '"client_secret":"[REDACTED]"' in captured["status"]


def _lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
