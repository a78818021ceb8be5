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


def test_read_ahead_reads_the_shards_first_items_concurrently_and_keeps_everything() -> None:
    """Every shard's first items are read at once (each shard here waits at a barrier that
    only opens when READ_THREADS of them read together: one after the other, it breaks),
    and the shards still yield all their items in order, the rest read on demand."""
    import threading

    from billing.usage.history import READ_THREADS, read_ahead

    barrier = threading.Barrier(READ_THREADS, timeout=10)
    consumed = [0] * (2 * READ_THREADS)

    def shard(n: int) -> Iterator[Position]:
        barrier.wait()  # the first read of each shard
        for i in range(5):
            consumed[n] += 1
            yield (f"2026-11-0{9 - i}", f"r{n}-{i}")

    shards = [shard(n) for n in range(2 * READ_THREADS)]
    ahead = read_ahead(shards, 2)
    assert consumed == [2] * len(shards)  # only the first page of each, before the merge
    page, more = merge_newest_first(ahead, key, 7)
    assert more and page == sorted(page, reverse=True) and len(page) == 7
    everything = [item for it in read_ahead([[("b", "1"), ("a", "2")]], 1) for item in it]
    assert everything == [("b", "1"), ("a", "2")]
