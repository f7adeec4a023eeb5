"""genesys-mux: many Genesys Cloud interaction streams over a few Notifications-API WebSockets.

The public API::

    from genesys_mux import Multiplexer, StreamConfig, StreamEvent, Gap

    async with Multiplexer(client_id=..., client_secret=..., region="mypurecloud.com") as mux:
        await mux.add_stream({"id": "voice-main", "filter": {"channelType": "voice"}})
        async for item in mux.events():      # StreamEvent | Gap, priority-merged
            ...

Everything raised on purpose derives from :class:`GenesysMuxError`.

The names below are imported on first use (see :mod:`genesys_mux._lazy`):
importing any module of the package, the command line's included, runs this
file, and should not pay for aiohttp and pydantic unless it uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genesys_mux._lazy import lazy_exports

# The exceptions cost nothing to import (the standard library's only), and
# callers catch them by name: every one of the tree (errors.py) is here.
from genesys_mux.errors import (
    ApiError,
    AuthenticationError,
    CapacityError,
    ClusterError,
    ClusterPermissionError,
    ConfigError,
    ConfigFileError,
    FencedError,
    FencedStateError,
    FrameError,
    GenesysMuxError,
    InvalidIdError,
    InvalidStateError,
    InvalidTopicError,
    MissingExtraError,
    RateLimitedError,
    RedisPermissionError,
    SinkError,
    SinkPermissionError,
    SinkStartError,
    StateError,
    StatePermissionError,
    StreamConfigError,
    TransportError,
    UnknownRegionError,
    UnusableChannelError,
)

if TYPE_CHECKING:
    from genesys_mux._version import __version__ as __version__
    from genesys_mux.config import StreamConfig, StreamFilter
    from genesys_mux.core.channel import Outage
    from genesys_mux.core.streams import DeadLetter, Gap, StreamEvent
    from genesys_mux.net.multiplexer import Multiplexer, StreamStats
    from genesys_mux.net.rest import Rejection

__all__ = [
    "ApiError",
    "AuthenticationError",
    "CapacityError",
    "ClusterError",
    "ClusterPermissionError",
    "ConfigError",
    "ConfigFileError",
    "DeadLetter",
    "FencedError",
    "FencedStateError",
    "FrameError",
    "Gap",
    "GenesysMuxError",
    "InvalidIdError",
    "InvalidStateError",
    "InvalidTopicError",
    "MissingExtraError",
    "Multiplexer",
    "Outage",
    "RateLimitedError",
    "RedisPermissionError",
    "Rejection",
    "SinkError",
    "SinkPermissionError",
    "SinkStartError",
    "StateError",
    "StatePermissionError",
    "StreamConfig",
    "StreamConfigError",
    "StreamEvent",
    "StreamFilter",
    "StreamStats",
    "TransportError",
    "UnknownRegionError",
    "UnusableChannelError",
]

if not TYPE_CHECKING:  # type checkers read the imports above, name by name
    __getattr__, __dir__ = lazy_exports(
        __name__,
        globals(),
        {
            "DeadLetter": "genesys_mux.core.streams",
            "Gap": "genesys_mux.core.streams",
            "Multiplexer": "genesys_mux.net.multiplexer",
            "Outage": "genesys_mux.core.channel",
            "Rejection": "genesys_mux.net.rest",
            "StreamConfig": "genesys_mux.config",
            "StreamEvent": "genesys_mux.core.streams",
            "StreamFilter": "genesys_mux.config",
            "StreamStats": "genesys_mux.net.multiplexer",
            "__version__": "genesys_mux._version",
        },
    )
