"""Shared fixtures: settings on a temp SQLite file and the service app on a real socket."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.settings import Settings

# The real Pulsar broker (session fixture ``pulsar_broker``) and the real PostgreSQL server
# (``postgres_server``, with a new database per test from ``postgres_url``), each started only if a
# test asks for it.
pytest_plugins = ["tests.pulsar_broker", "tests.postgres_server"]

API_TOKEN = "test-api-token"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(
        {
            "CIRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cirelay.db'}",
            "CIRELAY_API_TOKEN": API_TOKEN,
            "CIRELAY_LOG_FORMAT": "json",
        }
    )


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
async def client(
    settings: Settings, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> TestClient:
    return await aiohttp_client(create_app(settings))
