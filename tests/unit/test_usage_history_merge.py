"""The merge of a user's usage shards (billing.usage.history.merge_newest_first): pure, so the
order, the ties of one transaction's created_at, and the paging position are table-driven."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from billing.usage.history import Position, merge_newest_first


def key(item: Position) -> Position:
    return item


def shards_of(items: list[Position], count: int, seed: int) -> list[list[Position]]:
    """Items spread at random over shards, each shard newest first by created_at only, ties
    in an arbitrary order (as an index keeps equal sort keys)."""
    rng = random.Random(seed)
    shards: list[list[Position]] = [[] for _ in range(count)]
    for item in items:
        shards[rng.randrange(count)].append(item)
    for shard in shards:
        rng.shuffle(shard)
        shard.sort(key=lambda item: item[0], reverse=True)  # stable: ties stay shuffled
    return shards


def page_through(shards: list[list[Position]], limit: int) -> list[list[Position]]:
    pages: list[list[Position]] = []
    after: Position | None = None
    while True:
        page, more = merge_newest_first(shards, key, limit, after)
        pages.append(page)
        if not more:
            return pages
        assert len(page) == limit
        after = page[-1]


def _items(times: int, per_time: int) -> list[Position]:
    return [
        (f"2026-01-01T00:00:{t:02d}.000000Z", f"r{t}-{n:03d}")
        for t in range(times)
        for n in range(per_time)
    ]


@pytest.mark.parametrize(
    ("times", "per_time", "shards", "limit"),
    [
        (300, 1, 8, 7),  # distinct times
        (3, 100, 32, 7),  # whole batches: 100 records per created_at
        (10, 30, 5, 30),  # the page ends exactly on a run of ties
        (1, 1, 32, 20),  # one record
        (0, 0, 4, 5),  # none
        (50, 3, 1, 1),  # one shard, one at a time
    ],
)
def test_paging_lists_everything_once_newest_first(
    times: int, per_time: int, shards: int, limit: int
) -> None:
    items = _items(times, per_time)
    pages = page_through(shards_of(items, shards, seed=times * 7 + shards), limit)
    listed = [item for page in pages for item in page]
    assert listed == sorted(items, reverse=True)  # all, once, in (created_at, id) order
    assert all(len(page) == limit for page in pages[:-1]) and len(pages[-1]) <= limit


def test_the_last_full_page_says_there_is_no_more() -> None:
    items = _items(4, 5)
    page, more = merge_newest_first(shards_of(items, 3, seed=1), key, 20)
    assert len(page) == 20 and more is False
    page, more = merge_newest_first(shards_of(items, 3, seed=1), key, 19)
    assert len(page) == 19 and more is True


def test_a_position_skips_its_own_ties_up_to_and_including_it() -> None:
    shard = [("t2", "b"), ("t2", "a"), ("t2", "c"), ("t1", "z")]
    page, more = merge_newest_first([shard], key, 10, after=("t2", "b"))
    assert page == [("t2", "a"), ("t1", "z")] and more is False


def test_shards_are_read_no_further_than_the_page_needs() -> None:
    pulled: list[int] = []

    def shard(number: int) -> Iterator[Position]:
        for n in range(1000):
            pulled.append(number)
            yield (f"t{999 - n:04d}", f"s{number}")

    page, more = merge_newest_first([shard(0), shard(1)], key, 10)
    assert len(page) == 10 and more
    assert len(pulled) < 30  # lazy: a page reads about its own size, not the shards
