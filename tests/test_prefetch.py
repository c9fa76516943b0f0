"""The dataset prefetcher's decisions, without a store: what it schedules and when it holds back."""

from __future__ import annotations

from unifs.vfs.attrs import Attr
from unifs.vfs.prefetch import Prefetcher
from unifs.vfs.reader import ReadBudget

BLOCK = 4 << 20


def _setup(n=100, max_readers=4):
    listing = {f"img_{i:03d}.jpg": Attr(is_dir=False, size=100_000) for i in range(n)}
    scheduled = []

    def submit(path, attr, done):
        scheduled.append(path)
        done()
    return Prefetcher(submit, ReadBudget(1 << 30), max_readers=max_readers), listing, scheduled


def test_in_order_opens_schedule_a_growing_window_ahead():
    pf, listing, scheduled = _setup()
    for i in range(3):
        pf.opened(f"/d/img_{i:03d}.jpg", listing, BLOCK)
        pf.closed(f"/d/img_{i:03d}.jpg")
    # windows 4, 8, 16 after files 0, 1, 2: everything up to file 2 + 16, each once
    assert scheduled == [f"/d/img_{i:03d}.jpg" for i in range(1, 19)]


def test_out_of_order_open_resets_and_schedules_nothing():
    pf, listing, scheduled = _setup()
    pf.opened("/d/img_050.jpg", listing, BLOCK)  # far from the start: not in order
    assert scheduled == []
    pf.opened("/d/img_051.jpg", listing, BLOCK)  # the next one: window 4
    assert scheduled == [f"/d/img_{i:03d}.jpg" for i in range(52, 56)]
    pf.opened("/d/img_010.jpg", listing, BLOCK)  # a jump back resets
    pf.opened("/d/img_090.jpg", listing, BLOCK)
    assert len(scheduled) == 4


def test_many_concurrent_readers_get_no_prefetch_until_they_close():
    pf, listing, scheduled = _setup(max_readers=4)
    for i in range(3):
        pf.opened(f"/d/img_{i:03d}.jpg", listing, BLOCK)  # held open
    before = list(scheduled)
    for i in range(3, 30):
        pf.opened(f"/d/img_{i:03d}.jpg", listing, BLOCK)  # 4 or more open: they keep the store busy
    assert scheduled == before
    for i in range(0, 29):
        pf.closed(f"/d/img_{i:03d}.jpg")
    pf.opened("/d/img_030.jpg", listing, BLOCK)  # 2 open now: prefetch resumes past file 30
    assert len(scheduled) > len(before) and all(p > "/d/img_030.jpg" for p in scheduled[len(before):])


def test_the_window_holds_no_more_bytes_ahead_than_the_cache_keeps():
    # 3 MiB files and a 16 MiB RAM tier: a 64-file window fetched blocks that were evicted
    # before the reader came, and fetched again
    pf, _, scheduled = _setup()
    listing = {f"img_{i:03d}.jpg": Attr(is_dir=False, size=3 << 20) for i in range(100)}
    for i in range(6):
        pf.opened(f"/d/img_{i:03d}.jpg", listing, BLOCK, room=8 << 20)
        pf.closed(f"/d/img_{i:03d}.jpg")
        ahead = [p for p in scheduled if p > f"/d/img_{i:03d}.jpg"]
        assert ahead == [f"/d/img_{j:03d}.jpg" for j in (i + 1, i + 2)], (i, ahead)
