"""Real services for the tests: a redis-server and a Tansu broker on free ports, per session.

Fixtures are factories that clean up after themselves. Nothing here mocks Redis or Kafka.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from redis.asyncio import Redis

from leadpulse.dev.embedded import RedisServer, TansuBroker
from leadpulse.model import ScoringModel, load_model

# Tests check behaviour, never speed: no per-example deadline (Hypothesis's 200 ms default fails a
# property test whenever the machine stalls, and lifts itself only where CI=true is set).
settings.register_profile("leadpulse", deadline=None)
settings.load_profile("leadpulse")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    server = TansuBroker(tmp_path_factory.mktemp("tansu"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def model() -> ScoringModel:
    return load_model()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
