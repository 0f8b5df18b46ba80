"""TDMQ for Pulsar: CI events in, canonical events out (from the outbox), batch jobs in."""
