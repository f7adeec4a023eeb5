"""genesys-mux: many Genesys Cloud interaction streams over a few Notifications-API WebSockets.

The public API::

    from genesys_mux import Multiplexer, StreamConfig, StreamEvent, Gap

    async with Multiplexer(client_id=..., client_secret=..., region="mypurecloud.com") as mux:
        await mux.add_stream({"id": "voice-main", "filter": {"channelType": "voice"}})
        async for item in mux.events():      # StreamEvent | Gap, priority-merged
            ...

Everything raised on purpose derives from :class:`GenesysMuxError`.
"""

from genesys_mux.config import StreamConfig, StreamFilter
from genesys_mux.core.channel import Outage
from genesys_mux.core.streams import DeadLetter, Gap, StreamEvent
from genesys_mux.errors import (
    ApiError,
    AuthenticationError,
    CapacityError,
    ConfigError,
    GenesysMuxError,
    StreamConfigError,
    TransportError,
)
from genesys_mux.net.multiplexer import Multiplexer, StreamStats
from genesys_mux.net.rest import Rejection

__all__ = [
    "ApiError",
    "AuthenticationError",
    "CapacityError",
    "ConfigError",
    "DeadLetter",
    "Gap",
    "GenesysMuxError",
    "Multiplexer",
    "Outage",
    "Rejection",
    "StreamConfig",
    "StreamConfigError",
    "StreamEvent",
    "StreamFilter",
    "StreamStats",
    "TransportError",
]

__version__ = "0.1.0"
