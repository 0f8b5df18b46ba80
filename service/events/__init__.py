"""Canonical events kept once: the store (group commit, feed, outbox) and the ingest pipeline."""
