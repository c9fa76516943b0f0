"""The block cache on its own: no FUSE, no servers, a tmp_path for the disk tier."""

from __future__ import annotations

import os
import random
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

import unifs.cache.tiered as tiered
from unifs.cache import (BlockCache, BlockLengthError, CacheDirectoryBusy, DiskTier, ObjectId,
                         RamTier)

BS = 4096


def oid(key="data/a.bin", version="v1", store="s3://bucket"):
    return ObjectId(store, key, version)


def blob(size, seed=0):
    return random.Random(seed).randbytes(size)


class Fetcher:
    """A store for one object that records every ranged GET."""

    def __init__(self, data: bytes):
        self.data = data
        self.calls = []
        self._lock = threading.Lock()

    def __call__(self, start, end):
        with self._lock:
            self.calls.append((start, end))
        return self.data[start:end]


def must_not_fetch(start, end):
    raise AssertionError(f"unexpected fetch of [{start}, {end})")


def block_files(directory):
    return sorted(p for p in directory.iterdir() if p.name.endswith(".blk"))


def dir_bytes(directory):
    """Bytes of the blocks in a disk tier's directory (its lock file names the daemon's pid)."""
    from unifs.cache.disk import LOCK_NAME

    return sum(p.stat().st_size for p in directory.iterdir() if p.name != LOCK_NAME)


# ---------------------------------------------------------------------------- RAM tier


def test_ram_bound_holds_and_evicts_lru():
    limit = 10 * BS
    ram = RamTier(limit)
    kept = {}
    for i in range(30):
        data = blob(BS, i)
        for bid, _ in ram.put((oid(), i), data):
            del kept[bid]
        kept[(oid(), i)] = data
        if i == 20:
            assert ram.get((oid(), 12)) is not None  # now most recently used
        assert ram.stats()["bytes"] <= limit
    st = ram.stats()
    assert st["bytes"] == limit and st["blocks"] == 10 and st["evictions"] == 20
    assert set(kept) == {(oid(), i) for i in [12] + list(range(21, 30))}
    assert all(ram.get(bid) == data for bid, data in kept.items())
    assert ram.get((oid(), 0)) is None


def test_ram_keeps_nothing_larger_than_its_limit():
    ram = RamTier(BS)
    ram.put((oid(), 0), blob(BS))
    assert ram.put((oid(), 1), blob(BS + 1)) == []
    assert ram.get((oid(), 1)) is None and ram.get((oid(), 0)) is not None
    assert ram.stats()["bytes"] == BS


def test_ram_bound_counts_blocks_being_fetched():
    """Blocks in flight fill their buffers while the GETs run (16 fetch threads x 4 MiB by
    default): the tier makes room for them first, so cached plus fetching stays in the bound."""
    limit = 10 * BS
    cache = BlockCache(BS, limit, 0, None, "ram")
    for i in range(10):
        cache.get_block(oid(), i, 100 * BS, Fetcher(blob(100 * BS)))
    assert cache.ram.stats()["bytes"] == limit
    started, go = threading.Barrier(5), threading.Event()
    seen = []

    def slow(start, end):
        started.wait(10)
        go.wait(10)
        return blob(100 * BS)[start:end]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.get_block, oid(), 50 + i, 100 * BS, slow) for i in range(4)]
        started.wait(10)  # four fetches are running
        st = cache.ram.stats()
        seen.append((st["bytes"], st["fetching"]))
        go.set()
        assert all(len(f.result()) == BS for f in futures)
    assert seen == [(6 * BS, 4 * BS)]
    st = cache.ram.stats()
    assert st["bytes"] == limit and st["fetching"] == 0
    cache.close()


def test_ram_tier_smaller_than_the_fetches_in_flight_keeps_what_fits():
    ram = RamTier(2 * BS)
    held = ram.reserve(2 * BS)
    assert ram.put((oid(), 0), blob(BS)) == [] and ram.get((oid(), 0)) is None
    ram.release(held)
    ram.put((oid(), 0), blob(BS))
    assert ram.get((oid(), 0)) is not None and ram.stats()["bytes"] == BS


def test_ram_drop_object_and_clear():
    ram = RamTier(100 * BS)
    for version in ("v1", "v2"):
        for i in range(3):
            ram.put((oid(version=version), i), blob(BS))
    ram.put((oid(key="other/b"), 0), blob(BS))
    ram.put((oid(store="gs://x"), 0), blob(BS))
    assert ram.drop_object("s3://bucket", "data/a.bin", keep_version="v2") == 3
    assert ram.get((oid(version="v1"), 0)) is None and ram.get((oid(version="v2"), 0))
    assert ram.clear("s3://bucket", key_prefix="data/") == 3
    assert ram.get((oid(key="other/b"), 0)) and ram.get((oid(store="gs://x"), 0))
    assert ram.clear() == 2
    assert ram.stats()["bytes"] == 0


# ---------------------------------------------------------------------------- disk tier


def test_disk_bound_holds_after_three_times_the_limit(tmp_path):
    d = tmp_path / "cache"
    limit = 10 * (BS + 200)
    disk = DiskTier(d, limit, BS)
    for i in range(30):
        disk.put((oid(), i), blob(BS, i))
        assert dir_bytes(d) <= limit
        assert disk.stats()["bytes"] == dir_bytes(d)
        if i == 20:
            assert disk.get((oid(), 15)) == blob(BS, 15)  # hit refreshes it
    st = disk.stats()
    assert st["evictions"] == 20 and st["blocks"] == len(block_files(d))
    assert disk.get((oid(), 15)) == blob(BS, 15)
    assert disk.get((oid(), 29)) == blob(BS, 29)
    assert disk.get((oid(), 0)) is None


def test_a_restart_keeps_the_order_of_use_not_of_writing(tmp_path):
    # the order is rebuilt from file mtimes, which a hit never moved: a restart evicted the
    # block read last (written first) before one never read again
    d = tmp_path / "cache"
    limit = 2 * (BS + 200)
    disk = DiskTier(d, limit, BS)
    a, b = (oid(), 0), (oid(), 1)
    disk.put(a, blob(BS, 0))
    disk.put(b, blob(BS, 1))
    for bid, age in ((a, 3600), (b, 1800)):  # written an hour and half an hour ago
        t = time.time() - age
        os.utime(disk._path(bid), (t, t))
    assert disk.get(a) == blob(BS, 0)
    disk.close()
    disk = DiskTier(d, limit, BS)
    disk.put((oid(), 2), blob(BS, 2))
    assert disk.get(a) == blob(BS, 0) and disk.get(b) is None


def test_disk_bound_holds_under_concurrent_writers(tmp_path):
    d = tmp_path / "cache"
    limit = 20 * (BS + 200)
    disk = DiskTier(d, limit, BS)

    def writer(t):
        for i in range(40):
            assert disk.get((oid(key=f"k{t}"), i)) is None
            disk.put((oid(key=f"k{t}"), i), blob(BS, i))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(writer, range(8)))
    assert dir_bytes(d) <= limit
    assert disk.stats()["bytes"] == dir_bytes(d)
    assert disk.stats()["blocks"] == len(block_files(d)) > 0
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_a_removed_directory_is_made_again(tmp_path):
    # rm -rf of the cache dir while mounted: every later block failed to write until a restart
    import shutil

    d = tmp_path / "cache"
    disk = DiskTier(d, 10 * (BS + 200), BS)
    disk.put((oid(), 0), blob(BS, 0))
    shutil.rmtree(d)
    assert disk.get((oid(), 0)) is None  # gone: a miss, not a wrong block
    assert disk.put((oid(), 1), blob(BS, 1))
    assert disk.get((oid(), 1)) == blob(BS, 1)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    st = disk.stats()
    assert st["write_errors"] == 0 and st["blocks"] == 1 and st["bytes"] == dir_bytes(d)


def test_a_removed_directory_is_locked_again(tmp_path):
    # the lock file went with the directory: a second daemon could share it, each evicting
    # by its own count and deleting the other's temp files
    import shutil

    d = tmp_path / "cache"
    disk = DiskTier(d, 10 * (BS + 200), BS)
    for i in range(3):
        disk.put((oid(), i), blob(BS, i))
    shutil.rmtree(d)
    assert disk.put((oid(), 7), blob(BS, 7))
    st = disk.stats()
    assert st["blocks"] == 1 and st["bytes"] == dir_bytes(d)  # not the three that went
    with pytest.raises(CacheDirectoryBusy):
        DiskTier(d, 10 * BS, BS)
    # taken by another process before this one noticed: this one stops writing there
    shutil.rmtree(d)
    other = DiskTier(d, 10 * (BS + 200), BS)
    assert not disk.put((oid(), 8), blob(BS, 8))
    assert disk.get((oid(), 7)) is None and len(block_files(d)) == 0
    assert other.put((oid(), 9), blob(BS, 9)) and other.get((oid(), 9)) == blob(BS, 9)
    disk.close()
    other.close()


def test_directory_is_private(tmp_path):
    old = os.umask(0)
    try:
        fresh = tmp_path / "fresh" / "cache"
        DiskTier(fresh, 10 * BS, BS).put((oid(), 0), blob(BS))
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in fresh.iterdir())
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    DiskTier(loose, 10 * BS, BS)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_one_process_per_directory(tmp_path):
    first = DiskTier(tmp_path, 10 * BS, BS)
    with pytest.raises(CacheDirectoryBusy):
        DiskTier(tmp_path, 10 * BS, BS)
    first.close()
    DiskTier(tmp_path, 10 * BS, BS).close()


def test_restart_rebuilds_lru_from_mtimes_and_removes_temp_files(tmp_path):
    disk = DiskTier(tmp_path, 100 * BS, BS)
    for i in range(4):
        disk.put((oid(), i), blob(BS, i))
    disk.close()
    # Block i was last used at time i (block 0 least recently), whatever order it was written.
    for path in block_files(tmp_path):
        (i,) = [i for i in range(4) if path.read_bytes().endswith(blob(BS, i))]
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    (tmp_path / "0123abcd.5f5f5f.tmp").write_bytes(b"half a block of a crashed writer")
    file_size = block_files(tmp_path)[0].stat().st_size
    disk = DiskTier(tmp_path, 2 * file_size, BS)  # room for the two most recent only
    assert not list(tmp_path.glob("*.tmp"))
    assert dir_bytes(tmp_path) == disk.stats()["bytes"] == 2 * file_size
    assert [disk.get((oid(), i)) for i in range(4)] == [None, None, blob(BS, 2), blob(BS, 3)]


def test_restart_serves_blocks_without_fetching(tmp_path):
    data = blob(5 * BS + 123)
    key = "dir/ü ñ/../weird\nkey\udcff"  # any key: names are hashes, identity is in the header
    with BlockCache(BS, 100 * BS, 100 * BS, tmp_path, "tiered") as cache:
        assert cache.get_range(oid(key), 0, len(data), len(data), Fetcher(data)) == data
    with BlockCache(BS, 100 * BS, 100 * BS, tmp_path, "tiered") as cache:
        assert cache.get_range(oid(key), 0, len(data), len(data), must_not_fetch) == data
        assert cache.stats()["disk"]["hits"] == 6
        # promoted to RAM: the second read does not touch the disk
        assert cache.get_range(oid(key), 0, len(data), len(data), must_not_fetch) == data
        assert cache.stats()["disk"]["hits"] == 6 and cache.stats()["ram"]["hits"] == 6


def test_block_size_change_deletes_old_blocks(tmp_path):
    with BlockCache(BS, 0, 100 * BS, tmp_path, "disk") as cache:
        cache.get_block(oid(), 0, 3 * BS, Fetcher(blob(3 * BS)))
    assert len(block_files(tmp_path)) == 1
    with BlockCache(2 * BS, 0, 100 * BS, tmp_path, "disk") as cache:
        assert block_files(tmp_path) == []
        assert cache.get_block(oid(), 1, 3 * BS, Fetcher(blob(3 * BS))) == blob(3 * BS)[2 * BS:]


def corrupt_and_reread(tmp_path, damage):
    """Cache one block on disk, damage its file, read it again: refetched, counted."""
    data = blob(3 * BS)
    fetch = Fetcher(data)
    with BlockCache(BS, 0, 100 * BS, tmp_path, "disk") as cache:
        cache.get_block(oid(), 1, len(data), fetch)
        (path,) = block_files(tmp_path)
        damage(path)
        assert cache.get_block(oid(), 1, len(data), fetch) == data[BS:2 * BS]
        assert len(fetch.calls) == 2
        assert cache.stats()["disk"]["corrupt"] == 1
        assert cache.get_block(oid(), 1, len(data), must_not_fetch) == data[BS:2 * BS]
    return path


def flip_last_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


def test_flipped_data_byte_is_detected_and_refetched(tmp_path):
    corrupt_and_reread(tmp_path, flip_last_byte)


def test_truncated_block_is_detected_and_refetched(tmp_path):
    corrupt_and_reread(tmp_path, lambda p: os.truncate(p, p.stat().st_size - 100))


def test_block_file_of_another_block_is_not_served(tmp_path):
    a, b = blob(2 * BS, 1), blob(BS, 2)
    with BlockCache(BS, 0, 100 * BS, tmp_path, "disk") as cache:
        cache.get_range(oid("a"), 0, len(a), len(a), Fetcher(a))
        cache.get_block(oid("b"), 0, len(b), Fetcher(b))
        files = {}
        for path in block_files(tmp_path):
            (name,) = [n for n, d in [("a0", a[:BS]), ("a1", a[BS:]), ("b0", b)]
                       if path.read_bytes().endswith(d)]
            files[name] = path
        good = files["a0"].read_bytes()
        files["a1"].write_bytes(good)  # same object, other index
        files["b0"].write_bytes(good)  # other object, same index
        fetch_a, fetch_b = Fetcher(a), Fetcher(b)
        assert cache.get_range(oid("a"), 0, len(a), len(a), fetch_a) == a
        assert cache.get_block(oid("b"), 0, len(b), fetch_b) == b
        assert fetch_a.calls == [(BS, 2 * BS)] and fetch_b.calls == [(0, BS)]
        assert cache.stats()["disk"]["corrupt"] == 2


def test_damaged_files_are_deleted_at_startup(tmp_path):
    data = blob(4 * BS)
    with BlockCache(BS, 0, 100 * BS, tmp_path, "disk") as cache:
        cache.get_range(oid(), 0, len(data), len(data), Fetcher(data))
    files = block_files(tmp_path)
    os.truncate(files[0], 10)  # inside the header
    raw = bytearray(files[1].read_bytes())
    raw[20] ^= 0xFF  # a header field
    files[1].write_bytes(bytes(raw))
    os.truncate(files[2], files[2].stat().st_size - 1)  # short data
    with BlockCache(BS, 0, 100 * BS, tmp_path, "disk") as cache:
        assert block_files(tmp_path) == [files[3]]
        assert cache.stats()["disk"]["corrupt"] == 3
        fetch = Fetcher(data)
        assert cache.get_range(oid(), 0, len(data), len(data), fetch) == data
        assert len(fetch.calls) == 3


# ---------------------------------------------------------------------------- BlockCache


@pytest.fixture
def waiting(monkeypatch):
    """A semaphore released each time a thread starts waiting on a flight's result."""
    sem = threading.Semaphore(0)

    class CountedFuture(Future):
        def result(self, timeout=None):
            sem.release()
            return super().result(timeout)

    monkeypatch.setattr(tiered, "Future", CountedFuture)
    return sem


@pytest.mark.parametrize("mode", ["ram", "disk", "tiered"])
def test_concurrent_misses_share_one_fetch(tmp_path, waiting, mode):
    data = blob(3 * BS)
    calls = []

    def fetch(start, end):
        calls.append((start, end))
        # Hold the fetch until the 7 other threads wait for it (a broken single flight would
        # call fetch 8 times instead and never get there).
        for _ in range(7):
            assert waiting.acquire(timeout=10)
        return data[start:end]

    cache = BlockCache(BS, 100 * BS, 100 * BS, tmp_path, mode)
    start = threading.Barrier(8)

    def reader(_):
        start.wait()
        return cache.get_block(oid(), 1, len(data), fetch, mount="m")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(reader, range(8)))
    assert calls == [(BS, 2 * BS)]
    assert results == [data[BS:2 * BS]] * 8
    assert cache.stats()["mounts"]["m"] == {"bytes_from_store": BS, "bytes_from_cache": 7 * BS}
    cache.close()


def test_fetch_error_reaches_every_waiter_and_is_not_cached(tmp_path, waiting):
    calls = []

    def failing_fetch(start, end):
        calls.append((start, end))
        for _ in range(7):
            assert waiting.acquire(timeout=10)
        raise ConnectionError("store down")

    cache = BlockCache(BS, 100 * BS, 100 * BS, tmp_path, "tiered")
    start = threading.Barrier(8)

    def reader(_):
        start.wait()
        with pytest.raises(ConnectionError, match="store down"):
            cache.get_block(oid(), 0, BS, failing_fetch)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(reader, range(8)))
    assert len(calls) == 1
    st = cache.stats()
    assert st["ram"]["blocks"] == 0 and st["disk"]["blocks"] == 0
    assert block_files(tmp_path) == []
    data = blob(BS)
    fetch = Fetcher(data)
    assert cache.get_block(oid(), 0, BS, fetch) == data and len(fetch.calls) == 1
    cache.close()


def test_block_of_wrong_length_raises_and_is_not_cached(tmp_path):
    data = blob(2 * BS)
    with BlockCache(BS, 100 * BS, 100 * BS, tmp_path, "tiered") as cache:
        with pytest.raises(BlockLengthError):
            cache.get_block(oid(), 1, len(data), lambda s, e: data[s:e - 1])
        with pytest.raises(BlockLengthError):
            cache.get_block(oid(), 0, len(data), lambda s, e: data[s:e] + b"x")
        assert cache.stats()["ram"]["blocks"] == 0 and block_files(tmp_path) == []
        fetch = Fetcher(data)
        assert cache.get_block(oid(), 1, len(data), fetch) == data[BS:]
        assert len(fetch.calls) == 1


def test_forget_object_drops_other_versions_in_both_tiers(tmp_path):
    old, new = blob(2 * BS, 1), blob(2 * BS, 2)
    with BlockCache(BS, 100 * BS, 100 * BS, tmp_path, "tiered") as cache:
        cache.get_range(oid(version="v1"), 0, 2 * BS, 2 * BS, Fetcher(old))
        cache.get_range(oid(version="v2"), 0, 2 * BS, 2 * BS, Fetcher(new))
        other = blob(BS, 3)
        cache.get_block(oid(key="data/b.bin"), 0, BS, Fetcher(other))
        cache.flush()  # tiered mode writes disk copies behind the reader
        assert len(block_files(tmp_path)) == 5
        cache.forget_object("s3://bucket", "data/a.bin", keep_version="v2")
        assert len(block_files(tmp_path)) == 3
        assert cache.stats()["ram"]["blocks"] == 3
        assert cache.get_range(oid(version="v2"), 0, 2 * BS, 2 * BS, must_not_fetch) == new
        assert cache.get_block(oid(key="data/b.bin"), 0, BS, must_not_fetch) == other
        refetch = Fetcher(old)
        assert cache.get_block(oid(version="v1"), 0, 2 * BS, refetch) == old[:BS]
        assert len(refetch.calls) == 1
        cache.forget_object("s3://bucket", "data/a.bin")
        assert cache.stats()["disk"]["blocks"] == 1 and cache.stats()["ram"]["blocks"] == 1


def test_clear_by_store_and_prefix(tmp_path):
    with BlockCache(BS, 100 * BS, 100 * BS, tmp_path, "tiered") as cache:
        for store, key in [("s3://a", "x/1"), ("s3://a", "x/2"), ("s3://a", "y/1"),
                           ("gs://b", "x/1")]:
            cache.get_block(oid(key, store=store), 0, BS, Fetcher(blob(BS)))
        cache.clear("s3://a", key_prefix="x/")
        cache.flush()  # the other blocks' disk copies (clear waits for the cleared ones only)
        assert cache.stats()["ram"]["blocks"] == cache.stats()["disk"]["blocks"] == 2
        cache.get_block(oid("y/1", store="s3://a"), 0, BS, must_not_fetch)
        cache.get_block(oid("x/1", store="gs://b"), 0, BS, must_not_fetch)
        cache.clear()
        assert cache.stats()["ram"]["blocks"] == cache.stats()["disk"]["blocks"] == 0
        assert block_files(tmp_path) == []


def test_mode_none_never_caches(tmp_path):
    data = blob(3 * BS)
    with BlockCache(BS, 100 * BS, 100 * BS, tmp_path, "none") as cache:
        fetch = Fetcher(data)
        for _ in range(3):
            assert cache.get_range(oid(), 10, 2 * BS + 10, len(data), fetch) == data[10:2 * BS + 10]
        assert len(fetch.calls) == 9
        st = cache.stats()
        assert st["ram"]["blocks"] == st["disk"]["blocks"] == 0 and block_files(tmp_path) == []


def test_mode_ram_writes_no_files(tmp_path):
    data = blob(3 * BS)
    with BlockCache(BS, 100 * BS, 100 * BS, tmp_path / "c", "ram") as cache:
        fetch = Fetcher(data)
        for _ in range(3):
            assert cache.get_range(oid(), 0, len(data), len(data), fetch) == data
        assert len(fetch.calls) == 3
        assert block_files(tmp_path / "c") == [] and dir_bytes(tmp_path / "c") == 0
    with BlockCache(BS, 100 * BS, mode="ram") as cache:  # no directory at all
        assert cache.get_block(oid(), 0, len(data), Fetcher(data)) == data[:BS]
        with pytest.raises(ValueError, match="directory"):
            cache.get_block(oid(), 0, len(data), Fetcher(data), mode="tiered")
    with pytest.raises(ValueError, match="directory"):
        BlockCache(BS, 100 * BS, mode="disk")


def test_per_call_mode_and_mount_stats(tmp_path):
    data = blob(2 * BS)
    with BlockCache(BS, 100 * BS, 100 * BS, tmp_path, "ram") as cache:
        cache.get_block(oid(), 0, len(data), Fetcher(data), mode="disk", mount="/a")
        assert len(block_files(tmp_path)) == 1 and cache.stats()["ram"]["blocks"] == 0
        cache.get_block(oid(), 0, len(data), must_not_fetch, mode="disk", mount="/a")
        cache.get_block(oid(), 1, len(data), Fetcher(data), mount="/b")
        cache.get_block(oid(), 1, len(data), must_not_fetch, mount="/b")
        assert cache.stats()["mounts"] == {
            "/a": {"bytes_from_store": BS, "bytes_from_cache": BS},
            "/b": {"bytes_from_store": BS, "bytes_from_cache": BS}}
        with pytest.raises(ValueError):
            cache.get_block(oid(), 0, len(data), Fetcher(data), mode="fast")


def test_prefetch_fetches_only_blocks_no_tier_holds_and_counts_no_hits(tmp_path):
    # a prefetch read blocks from the disk tier into a small RAM tier ahead of the reader: they
    # pushed out blocks the reader needed, each was read from disk twice, and "from cache"
    # counted more than twice the bytes read
    data = blob(3 * BS)
    with BlockCache(BS, 100 * BS, 100 * BS, tmp_path, "tiered") as cache:
        cache.get_block(oid(), 0, len(data), Fetcher(data), mount="/a")
        cache.flush()
        cache.ram.clear()
        before = cache.stats()
        fetch = Fetcher(data)
        assert cache.prefetch(oid(), len(data), fetch, mount="/a") == 2 * BS
        assert sorted(fetch.calls) == [(BS, 2 * BS), (2 * BS, 3 * BS)]  # block 0 is on disk
        after = cache.stats()
        assert cache.ram.holds((oid(), 1)) and not cache.ram.holds((oid(), 0))
        for tier in ("ram", "disk"):
            assert (after[tier]["hits"], after[tier]["misses"]) == (before[tier]["hits"], before[tier]["misses"])
        assert after["mounts"]["/a"] == {"bytes_from_store": 3 * BS, "bytes_from_cache": 0}
        assert cache.prefetch(oid(), len(data), must_not_fetch, mount="/a") == 0
        assert cache.get_range(oid(), 0, len(data), len(data), must_not_fetch, mount="/a") == data
        assert cache.stats()["mounts"]["/a"] == {"bytes_from_store": 3 * BS, "bytes_from_cache": 3 * BS}
    with BlockCache(BS, 100 * BS, 0, None, "ram") as cache:  # no disk tier
        assert cache.prefetch(oid(), len(data), Fetcher(data)) == 3 * BS
        assert cache.prefetch(oid(), len(data), must_not_fetch) == 0
        assert cache.prefetch(oid(), len(data), must_not_fetch, mode="none") == 0


def test_blocks_outside_the_object_are_refused(tmp_path):
    cache = BlockCache(BS, 100 * BS, mode="ram")
    for index, size in [(2, 2 * BS), (0, 0), (-1, BS)]:
        with pytest.raises(ValueError):
            cache.get_block(oid(), index, size, must_not_fetch)
    assert cache.get_range(oid(), 0, 10, 0, must_not_fetch) == b""


@pytest.mark.parametrize("size", [1, BS - 1, BS, 3 * BS, 5 * BS + 7])
def test_get_range_matches_reference(tmp_path, size):
    data = blob(size, size)
    rng = random.Random(size)
    with BlockCache(BS, 3 * BS, 100 * BS, tmp_path, "tiered") as cache:
        fetch = Fetcher(data)
        for _ in range(200):
            start = rng.randrange(0, size + 2)
            end = start + rng.choice([0, 1, rng.randrange(1, 3 * BS), 2 * size])
            assert cache.get_range(oid(), start, end, size, fetch) == data[start:end]
        assert all(end - start == min(BS, size - start) and start % BS == 0
                   for start, end in fetch.calls)
        assert len(fetch.calls) == len(set(fetch.calls))  # the disk kept every block


def test_many_threads_read_correct_bytes_under_eviction(tmp_path):
    objects = {oid(f"k{i}", version=f"v{i}"): blob(6 * BS + i * 100, i) for i in range(6)}
    with BlockCache(BS, 8 * BS, 20 * (BS + 200), tmp_path, "tiered") as cache:
        def reader(seed):
            rng = random.Random(seed)
            for _ in range(150):
                obj, data = rng.choice(list(objects.items()))
                start = rng.randrange(len(data))
                end = start + rng.randrange(1, 3 * BS)
                assert cache.get_range(obj, start, end, len(data), Fetcher(data),
                                       mount="m") == data[start:end]

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(reader, range(16)))
        cache.flush()  # disk writes behind the readers: their temp files come and go until then
        st = cache.stats()
        assert st["ram"]["bytes"] <= 8 * BS
        assert st["disk"]["bytes"] == dir_bytes(tmp_path) <= 20 * (BS + 200)
        assert st["disk"]["evictions"] > 0 and st["ram"]["evictions"] > 0
        assert st["mounts"]["m"]["bytes_from_cache"] > 0


def test_a_bound_lowered_by_a_full_disk_comes_back_when_there_is_room(tmp_path, monkeypatch):
    # one ENOSPC with a nearly empty cache set the bound to 0 until restart
    import unifs.cache.disk as disk_mod

    disk = DiskTier(tmp_path, 10 * (BS + 200), BS)
    assert disk.put((oid(), 0), blob(BS, 0))
    assert disk.make_room(str(tmp_path), 1 << 20)  # the staging dir, on the same file system
    assert disk.limit == 0 and disk.stats()["blocks"] == 0
    assert not disk.put((oid(), 1), blob(BS, 1))  # still full: checked again only later
    monkeypatch.setattr(disk_mod, "REGROW_EVERY_S", 0.0)
    disk._next_regrow = 0.0
    assert disk.put((oid(), 2), blob(BS, 2))  # this file system has room again
    assert disk.limit == disk.configured_limit and disk.get((oid(), 2)) == blob(BS, 2)

    class Full:
        f_bavail, f_frsize, f_blocks = 0, 4096, 1 << 20
    disk._shrink(BS, "test")
    disk._next_regrow = 0.0
    monkeypatch.setattr(disk_mod.os, "statvfs", lambda p: Full)
    low = disk.limit
    disk.put((oid(), 3), blob(BS, 3))
    assert disk.limit == low  # no room: the bound stays down
    disk.close()


def test_a_bound_above_the_free_space_starts_within_it(tmp_path, monkeypatch, caplog):
    # cache.disk 100 MiB on a 24 MiB file system: found out only by ENOSPC mid-read, after
    # which parallel block writes each lowered the bound again, down to a few hundred bytes
    import unifs.cache.disk as disk_mod

    class Small:
        f_bavail, f_frsize, f_blocks = 100 * BS // 4096, 4096, 200 * BS // 4096
    monkeypatch.setattr(disk_mod.os, "statvfs", lambda p: Small)
    disk = DiskTier(tmp_path, 1000 * BS, BS)
    try:
        # 100 blocks free, less a reserve of 5% of the file system (10 blocks)
        assert disk.limit == 90 * BS and disk.configured_limit == 1000 * BS
        assert "has room for" in caplog.text
        assert disk.stats()["limit"] == 90 * BS  # what `cache stats` and warmup see
    finally:
        disk.close()
    big = DiskTier(tmp_path, 50 * BS, BS)  # fits: untouched
    assert big.limit == 50 * BS
    big.close()


def test_dropping_an_object_waits_only_for_its_own_disk_writes(tmp_path, monkeypatch):
    """A stream whose disk copies cannot land (a disk slower than the store) does not hold up
    dropping another object: every close of a written file drops its old blocks."""
    stuck = threading.Event()
    put = DiskTier.put

    def slow_put(self, bid, data):
        if bid[0].key == "data/stream.bin":
            stuck.wait(30)
        return put(self, bid, data)

    monkeypatch.setattr(DiskTier, "put", slow_put)
    stream, other = blob(2 * BS, 1), blob(BS, 2)
    with BlockCache(BS, 100 * BS, 100 * BS, tmp_path, "tiered") as cache:
        cache.get_block(oid(key="data/other.bin"), 0, BS, Fetcher(other))
        cache.flush(key="data/other.bin")
        cache.get_range(oid(key="data/stream.bin"), 0, 2 * BS, 2 * BS, Fetcher(stream))
        done = []
        forget = threading.Thread(target=lambda: done.append(
            cache.forget_object("s3://bucket", "data/other.bin")))
        clear = threading.Thread(target=lambda: done.append(cache.clear(key_prefix="data/o")))
        # an open of the stream's own version drops older versions: nothing of it to wait for
        older = threading.Thread(target=lambda: done.append(
            cache.forget_object("s3://bucket", "data/stream.bin", keep_version="v1")))
        for t in (forget, clear, older):
            t.start()
        for t in (forget, clear, older):
            t.join(10)
        blocked = forget.is_alive() or clear.is_alive() or older.is_alive()
        stuck.set()
        assert not blocked, "dropping data/other.bin waited for data/stream.bin's disk writes"
        assert cache.get_block(oid(key="data/other.bin"), 0, BS, Fetcher(other)) == other
        cache.flush()
        assert cache.get_range(oid(key="data/stream.bin"), 0, 2 * BS, 2 * BS, must_not_fetch) == stream
