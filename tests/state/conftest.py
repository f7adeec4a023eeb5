"""Fixtures for the state stores: a real redis-server (shared with the sink tests)."""

from tests.sinks.conftest import redis_server

__all__ = ["redis_server"]
