"""What the event log's group-commit writer is handed, shared by both backends: a call's event
rows or one refused body, and how a committed batch is answered call by call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class EventWrite:
    rows: list[tuple[Any, ...]]  # each row's first value is its event_id


@dataclass(frozen=True, slots=True)
class RejectWrite:
    row: tuple[Any, ...]


Write = EventWrite | RejectWrite


def rows_of(write: Write) -> int:
    """The write's weight against the writer's rows per transaction."""
    return len(write.rows) if isinstance(write, EventWrite) else 1


def split(batch: list[Write]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(every event row, every refused-body row) of a batch, in order."""
    events = [row for w in batch if isinstance(w, EventWrite) for row in w.rows]
    rejects = [w.row for w in batch if isinstance(w, RejectWrite)]
    return events, rejects


def answers(batch: list[Write], new_ids: set[str]) -> list[list[bool] | Exception]:
    """Per write, one flag per event: new (its id among those inserted), or a duplicate. The
    same event twice in one batch: the first caller gets it, the others a duplicate."""
    results: list[list[bool] | Exception] = []
    for write in batch:
        flags = []
        if isinstance(write, EventWrite):
            for row in write.rows:
                flags.append(row[0] in new_ids)
                new_ids.discard(row[0])
        results.append(flags)
    return results
