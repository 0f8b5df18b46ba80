"""One contract suite over every backend: each test here runs on SQLite and on PostgreSQL.

``storage_url`` is a fresh, empty database per test: a SQLite file in the test's temp dir, or a new
database on the run's one PostgreSQL server (``tests/postgres_server.py``; the ``postgres`` mark
lets ``-m "not postgres"`` leave those out). ``open_backend`` opens storage on it; a test may open
several, which on PostgreSQL behave as several replicas sharing one database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service.storage import Storage, open_storage

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres, id="postgres"),
]

OpenBackend = Callable[..., Awaitable[Storage]]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'cirelay.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def open_backend(storage_url: str) -> AsyncIterator[OpenBackend]:
    """Open storage on this test's database (again, for a second replica); closed at the end."""
    opened: list[Storage] = []

    async def factory(**options: Any) -> Storage:
        storage = await open_storage(storage_url, **options)
        opened.append(storage)
        return storage

    yield factory
    for storage in reversed(opened):
        await storage.close()


@pytest.fixture
async def storage(open_backend: OpenBackend) -> Storage:
    return await open_backend(outbox=True, rejected_body_max_bytes=16, rejected_max_count=3)
