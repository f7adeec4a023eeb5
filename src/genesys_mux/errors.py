"""Every exception genesys-mux raises on purpose derives from one root.

The tree, split by what the caller can do about it::

    GenesysMuxError                 root: catch this to catch everything we raise
    ├── ConfigError                 the caller gave us something unusable; fix the input
    │   ├── UnknownRegionError      a region name or domain we do not know
    │   ├── InvalidIdError          an entity id that is unsafe in a URL or a topic
    │   └── InvalidTopicError       a topic that is not in the Genesys grammar
    └── FrameError                  bytes from a socket that are not a JSON frame;
                                    the connection carries on, the frame is reported

Errors from third-party libraries (aiohttp, msgspec, pydantic) are translated
into this tree at the boundary where they happen, so callers never need to
import those libraries to handle our failures.

Messages never include tokens or secrets: they name *what* was wrong, *where*,
and *what to do*.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FrameError",
    "GenesysMuxError",
    "InvalidIdError",
    "InvalidTopicError",
    "UnknownRegionError",
]


class GenesysMuxError(Exception):
    """Root of every exception genesys-mux raises on purpose."""


class ConfigError(GenesysMuxError):
    """The caller supplied a value we cannot use. Retrying will not help."""


class UnknownRegionError(ConfigError):
    """A region name or domain that is not one of the Genesys Cloud regions."""


class InvalidIdError(ConfigError):
    """An entity id that could smuggle characters into a URL path or a topic."""


class InvalidTopicError(ConfigError):
    """A topic string outside the Genesys Notifications topic grammar."""


class FrameError(GenesysMuxError):
    """A WebSocket message that is not a JSON document.

    ``data`` holds at most the first 200 bytes of the offending message, for
    diagnostics; notification frames never carry credentials.
    """

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data[:200]
