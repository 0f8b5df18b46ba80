"""The group-commit writer on its own: batching, a bad item failing alone, storage being
unavailable failing a whole batch at once, and close."""

from __future__ import annotations

import asyncio

import pytest

from service.storage import StorageUnavailable, StoreClosed
from service.storage.groupcommit import GroupCommit


class Ledger:
    """A commit function that records each batch it was given; items named "bad" fail it."""

    def __init__(self, *, unavailable: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.unavailable = unavailable

    async def commit(self, items: list[str]) -> list[str | Exception]:
        self.batches.append(items)
        if self.unavailable:
            raise StorageUnavailable("the database is down")
        if "bad" in items:
            raise ValueError("a constraint failed")
        return [f"ok:{item}" for item in items]


async def test_concurrent_items_share_a_batch_and_each_gets_its_result() -> None:
    ledger = Ledger()
    writer: GroupCommit[str, str] = GroupCommit(ledger.commit, name="test", max_rows=64)
    results = await asyncio.gather(*(writer.submit(f"i{n}") for n in range(20)))
    await writer.close()
    assert results == [f"ok:i{n}" for n in range(20)]
    assert len(ledger.batches) < 20


async def test_a_bad_item_fails_only_its_caller() -> None:
    ledger = Ledger()
    writer: GroupCommit[str, str] = GroupCommit(ledger.commit, name="test", max_rows=64)
    results = await asyncio.gather(
        writer.submit("a"), writer.submit("bad"), writer.submit("b"), return_exceptions=True
    )
    await writer.close()
    assert results[0] == "ok:a"
    assert isinstance(results[1], ValueError)
    assert results[2] == "ok:b"
    assert ledger.batches == [["a", "bad", "b"], ["a"], ["bad"], ["b"]]


async def test_unavailable_storage_fails_the_whole_batch_at_once() -> None:
    ledger = Ledger(unavailable=True)
    writer: GroupCommit[str, str] = GroupCommit(ledger.commit, name="test", max_rows=64)
    results = await asyncio.gather(
        *(writer.submit(f"i{n}") for n in range(5)), return_exceptions=True
    )
    await writer.close()
    assert all(isinstance(r, StorageUnavailable) for r in results)
    assert ledger.batches == [[f"i{n}" for n in range(5)]]  # no attempt per item


async def test_close_refuses_further_items() -> None:
    writer: GroupCommit[str, str] = GroupCommit(Ledger().commit, name="test", max_rows=64)
    assert await writer.submit("a") == "ok:a"
    await writer.close()
    with pytest.raises(StoreClosed):
        await writer.submit("late")


async def test_a_wrong_number_of_results_fails_its_callers_not_the_writer() -> None:
    answers: list[list[str | Exception]] = [["only one"], ["ok"]]

    async def commit(items: list[str]) -> list[str | Exception]:
        return answers.pop(0)

    writer: GroupCommit[str, str] = GroupCommit(commit, name="test", max_rows=64)
    async with asyncio.timeout(5):  # a dead writer would leave its callers waiting for ever
        outcomes = await asyncio.gather(
            writer.submit("a"), writer.submit("b"), return_exceptions=True
        )
        assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
        assert await writer.submit("c") == "ok"  # the writer still serves
    await writer.close()
