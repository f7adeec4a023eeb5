"""Fixtures for the cluster: a real redis-server (shared with the sink tests)."""

from tests.sinks.conftest import redis_server

__all__ = ["redis_server"]
