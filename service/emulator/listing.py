"""The list calls' shared parameters (states, times, order, size, NextToken) and paging. Pure."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from service.emulator.records import STATES
from service.emulator.responses import CIError
from service.emulator.times import parse_ci_time

MAX_SIZE = 100
DEFAULT_SIZE = 10


class Listed(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def creation_time(self) -> datetime: ...


T = TypeVar("T", bound=Listed)


@dataclass(frozen=True)
class Page:
    states: frozenset[str] | None  # None = All
    descending: bool
    size: int
    after: int | None  # the seq the previous page ended at (NextToken)
    start: datetime | None
    end: datetime | None


def invalid(message: str) -> CIError:
    return CIError(400, "InvalidArgument", message)


def parse_page(params: Mapping[str, str]) -> Page:
    order = params.get("orderByTime") or "Desc"
    if order not in ("Desc", "Asc"):
        raise invalid(f"orderByTime must be Desc or Asc, not {order!r}")
    raw_states = params.get("states") or "All"
    states: frozenset[str] | None = None
    if raw_states != "All":
        states = frozenset(s.strip() for s in raw_states.split(","))
        unknown = sorted(states - set(STATES))
        if unknown:
            raise invalid(f"states: unknown state {', '.join(unknown)}; use All or {STATES}")
    raw_size = params.get("size") or str(DEFAULT_SIZE)
    if not raw_size.isdigit() or not 1 <= int(raw_size) <= MAX_SIZE:
        raise invalid(f"size must be an integer from 1 to {MAX_SIZE}, not {raw_size!r}")
    return Page(
        states=states,
        descending=order == "Desc",
        size=int(raw_size),
        after=_parse_token(params.get("nextToken") or ""),
        start=_parse_time(params, "startCreationTime"),
        end=_parse_time(params, "endCreationTime"),
    )


def paginate(
    items: Sequence[T], page: Page, keep: Callable[[T], bool] = lambda _: True
) -> tuple[list[T], str]:
    """The page's items in order, and the NextToken ("" when this is the last page).

    ``items`` are in creation (seq) order: the walk starts at the token (found by bisection) and
    stops once the page is full, so a page costs its size, not the length of the list.
    """
    if page.descending:
        end = len(items) if page.after is None else bisect_left(items, page.after, key=_item_seq)
        walk: Iterable[int] = range(end - 1, -1, -1)
    else:
        start = 0 if page.after is None else bisect_right(items, page.after, key=_item_seq)
        walk = range(start, len(items))
    chosen: list[T] = []
    for index in walk:
        item = items[index]
        if (
            (page.states is None or item.state in page.states)
            and (page.start is None or item.creation_time >= page.start)
            and (page.end is None or item.creation_time <= page.end)
            and keep(item)
        ):
            chosen.append(item)
            if len(chosen) > page.size:
                shown = chosen[: page.size]
                return shown, _token(shown[-1].seq)
    return chosen, ""


def _item_seq(item: Listed) -> int:
    return item.seq


def _token(seq: int) -> str:
    return f"{seq:016x}"


def _parse_token(token: str) -> int | None:
    if not token:
        return None
    try:
        return int(token, 16)
    except ValueError:
        raise invalid(f"nextToken {token!r} is not one this API issued") from None


def _parse_time(params: Mapping[str, str], name: str) -> datetime | None:
    value = params.get(name)
    if not value:
        return None
    try:
        # An unescaped `+0800` in a query string arrives as ` 0800`; CI times have no spaces.
        return parse_ci_time(value.strip().replace(" ", "+"))
    except ValueError:
        raise invalid(f"{name} must look like 2022-06-30T18:47:18+0800, not {value!r}") from None
