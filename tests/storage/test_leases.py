"""Leases on every backend: one holder at a time, renewals, expiry, release, and replicas racing."""

from __future__ import annotations

import asyncio

from service.storage import Storage
from tests.storage.conftest import OpenBackend


async def test_a_free_lease_is_taken_and_others_wait_for_its_expiry(storage: Storage) -> None:
    leases = storage.leases
    assert await leases.acquire("outbox", "r1", ttl=10, now=100)
    assert not await leases.acquire("outbox", "r2", ttl=10, now=105)
    assert not await leases.acquire("outbox", "r2", ttl=10, now=109.9)
    assert await leases.acquire("outbox", "r2", ttl=10, now=110)  # expired: taken over
    assert not await leases.acquire("outbox", "r1", ttl=10, now=111)  # the old holder lost it


async def test_the_holder_renews(storage: Storage) -> None:
    leases = storage.leases
    assert await leases.acquire("outbox", "r1", ttl=10, now=100)
    assert await leases.acquire("outbox", "r1", ttl=10, now=108)  # now until 118
    assert not await leases.acquire("outbox", "r2", ttl=10, now=115)
    assert await leases.acquire("outbox", "r2", ttl=10, now=118)


async def test_release_frees_it_for_others_only_when_the_holder_releases(storage: Storage) -> None:
    leases = storage.leases
    assert await leases.acquire("outbox", "r1", ttl=10, now=100)
    await leases.release("outbox", "r2")  # not r2's: nothing happens
    assert not await leases.acquire("outbox", "r2", ttl=10, now=101)
    await leases.release("outbox", "r1")
    assert await leases.acquire("outbox", "r2", ttl=10, now=101)
    await leases.release("never-taken", "r1")


async def test_names_are_independent(storage: Storage) -> None:
    leases = storage.leases
    assert await leases.acquire("reconcile:b1", "r1", ttl=10, now=100)
    assert await leases.acquire("reconcile:b2", "r2", ttl=10, now=100)
    assert not await leases.acquire("reconcile:b1", "r2", ttl=10, now=100)


async def test_two_replicas_racing_for_leases_get_one_holder_each(
    storage: Storage, open_backend: OpenBackend
) -> None:
    other = await open_backend()
    names = [f"work{i}" for i in range(40)]
    mine, theirs = await asyncio.gather(
        asyncio.gather(*(storage.leases.acquire(n, "r1", ttl=10, now=100) for n in names)),
        asyncio.gather(*(other.leases.acquire(n, "r2", ttl=10, now=100) for n in names)),
    )
    assert [a + b for a, b in zip(mine, theirs, strict=True)] == [1] * len(names)
    # Each holder keeps what it won and renews it; the loser still cannot take it.
    for name, won in zip(names, mine, strict=True):
        holder, loser = (storage, other) if won else (other, storage)
        holder_name, loser_name = ("r1", "r2") if won else ("r2", "r1")
        assert await holder.leases.acquire(name, holder_name, ttl=10, now=105)
        assert not await loser.leases.acquire(name, loser_name, ttl=10, now=105)
