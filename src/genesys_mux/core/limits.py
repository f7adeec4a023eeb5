"""The platform's published numbers, in one place.

Everything that must agree with the Notifications API's limits (reference §3,
§4 and §5) takes its number from :data:`PLATFORM`: the planner's packing,
the pool's defaults, the multiplexer's arguments, the configuration file's
bounds and the emulator's defaults. A limit that changes on the platform is
changed here once.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PLATFORM", "PlatformLimits"]


@dataclass(frozen=True, slots=True)
class PlatformLimits:
    """The limits of the Notifications API for one OAuth client."""

    #: Subscriptions per channel (combined topics count as their parts).
    topics_per_channel: int = 1000
    #: Channels per OAuth client; creating one more evicts the oldest.
    channels_per_client: int = 20
    #: REST requests per minute per token (subscription calls included).
    requests_per_minute: int = 300
    #: How long a channel lives (24 h).
    channel_lifetime_s: float = 24 * 3600.0
    #: Seconds between the socket's heartbeats (about).
    heartbeat_interval_s: float = 30.0
    #: Longest combined topic (``v2.users.{id}?presence&routingStatus``).
    max_combined_topic_length: int = 200


#: The real platform's limits.
PLATFORM = PlatformLimits()
