"""Callback ingestion: parse untrusted CI callbacks and normalise them into canonical events."""
