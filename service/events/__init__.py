"""Canonical events: their type, the ingest pipeline every source goes through, and the reconciler
that learns from CI what callbacks cannot say."""
