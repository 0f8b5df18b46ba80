"""The one error the rest of the service sees from storage, whichever backend is behind it."""

from __future__ import annotations


class StorageUnavailable(Exception):
    """Storage cannot take or answer this call now (the database is down, locked, full, or the
    store is shutting down). Not the caller's fault: HTTP answers 503, Pulsar redelivers."""


class StoreClosed(StorageUnavailable):
    """The store is shutting down and takes no more writes."""
