"""The storage contract suite's backend fixtures (``backend``, ``storage_url``), so the reconciler
tests run on SQLite and on PostgreSQL."""

from __future__ import annotations

from tests.storage.conftest import backend, storage_url

__all__ = ["backend", "storage_url"]  # fixtures shared with tests/storage
