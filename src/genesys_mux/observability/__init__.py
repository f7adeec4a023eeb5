"""Operating a multiplexer: Prometheus metrics, the audit log and the admin HTTP server.

Typical wiring::

    from genesys_mux.observability import AdminServer, AuditLog, MuxMetrics

    async with Multiplexer(...) as mux:
        metrics = MuxMetrics(mux)                 # before add_stream: histograms bind early
        audit = AuditLog("audit.jsonl")
        audit.attach(mux)
        summaries = asyncio.create_task(audit.run_periodic(mux, 60))
        async with AdminServer(mux, metrics, port=9464):
            await mux.add_stream(...)
            ...

Nothing here changes what the multiplexer does; everything hooks into its
``stats()``, ``on_control`` and ``on_delivered``.

The metrics and the admin server need ``prometheus-client`` (the
``[metrics]`` extra); the audit log needs nothing beyond the library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genesys_mux._lazy import lazy_exports
from genesys_mux.observability.audit import AuditLog

if TYPE_CHECKING:
    from genesys_mux.observability.admin import AdminServer
    from genesys_mux.observability.metrics import (
        MuxMetrics,
        Readiness,
        readiness,
        stream_label,
    )

__all__ = ["AdminServer", "AuditLog", "MuxMetrics", "Readiness", "readiness", "stream_label"]

# prometheus-client comes with the [metrics] extra: imported when first
# used, so the audit log works without it.
if not TYPE_CHECKING:  # type checkers read the imports above, name by name
    __getattr__, __dir__ = lazy_exports(
        __name__,
        globals(),
        {
            "AdminServer": "genesys_mux.observability.admin",
            "MuxMetrics": "genesys_mux.observability.metrics",
            "Readiness": "genesys_mux.observability.metrics",
            "readiness": "genesys_mux.observability.metrics",
            "stream_label": "genesys_mux.observability.metrics",
        },
    )
