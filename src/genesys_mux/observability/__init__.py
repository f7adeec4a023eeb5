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
"""

from genesys_mux.observability.admin import AdminServer
from genesys_mux.observability.audit import AuditLog
from genesys_mux.observability.metrics import MuxMetrics, Readiness, readiness, stream_label

__all__ = ["AdminServer", "AuditLog", "MuxMetrics", "Readiness", "readiness", "stream_label"]
