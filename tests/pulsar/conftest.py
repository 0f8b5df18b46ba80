"""Fixtures of the Pulsar tests; the broker itself is the session fixture ``pulsar_broker``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.pulsar.support import Admin, Broker, client_for


@pytest.fixture
async def pulsar_client(pulsar_broker: Broker) -> AsyncIterator[Any]:
    """A plain pulsar-client of the test's own, to publish and read topics."""
    client = client_for(pulsar_broker)
    yield client
    await client.close()


@pytest.fixture
def admin(pulsar_broker: Broker) -> Admin:
    return Admin(pulsar_broker)
