"""The one error the rest of the service sees from storage, whichever backend is behind it."""

from __future__ import annotations


class StorageUnavailable(Exception):
    """Storage cannot take or answer this call now (the database is down, locked, full, or the
    store is shutting down). Not the caller's fault: HTTP answers 503, Pulsar redelivers."""


class StoreClosed(StorageUnavailable):
    """The store is shutting down and takes no more writes."""


class UnstorableValue(ValueError):
    """A value the backend cannot hold or compare: PostgreSQL text cannot carry a NUL, and its
    integers stop at 64 bits. The caller's input, not an outage: a ``ValueError``, as SQLite's
    driver raises for the numbers it cannot take, so HTTP answers 400 and nothing retries it."""
