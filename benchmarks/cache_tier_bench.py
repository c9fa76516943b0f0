#!/usr/bin/env python3
"""Block cache tiers side by side, in one run (about 30 s on 2 cores):

  * checksums of a 4 MiB block: zlib.crc32 against the other candidates, MiB/s;
  * disk tier with 4 MiB blocks: unifs.cache.DiskTier (plain files, checksummed header)
    against diskcache.Cache (sqlite index, one file per large value, no checksum): put and
    get MiB/s (1 and 4 reader threads), put while evicting, and reopening a directory
    (also one of 10,000 small blocks);
  * RAM tier hits per second, RamTier.get alone and BlockCache.get_block, 1 and 8 threads.

Disk numbers are with the page cache warm (files just written): they show what each tier
costs in CPU and system calls, not the disk's speed.

    python benchmarks/cache_tier_bench.py [--blocks N] [--repeat K] [--dir D]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import diskcache

from unifs.cache import BlockCache, DiskTier, ObjectId, RamTier

MIB = 1 << 20
BLOCK = 4 * MIB


def best_rate(fn, amount, repeat):
    """`amount` units per second for the fastest of `repeat` runs of fn()."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return amount / best


def header(title, *columns):
    print(f"\n{title:<40}" + "".join(f"{c:>14}" for c in columns))


def row(name, *values):
    print(f"  {name:<38}" + "".join(f"{v:>14,.0f}" for v in values))


# --------------------------------------------------------------------------- checksums


def checksums(repeat):
    data = os.urandom(BLOCK)
    candidates = {"zlib.crc32": zlib.crc32, "zlib.adler32": zlib.adler32}
    for name in ("md5", "sha1", "sha256", "blake2b"):
        candidates[f"hashlib.{name}"] = lambda b, name=name: hashlib.new(name, b).digest()
    try:
        import google_crc32c  # only present with the gcs extra; not a dependency
        candidates["google_crc32c (not a dependency)"] = google_crc32c.value
    except ImportError:
        pass
    header("checksum of a 4 MiB block", "MiB/s")
    for name, fn in candidates.items():
        row(name, best_rate(lambda: [fn(data) for _ in range(8)], 8 * 4, repeat))


# --------------------------------------------------------------------------- disk tier


class PlainFiles:
    name = "plain files (DiskTier)"

    def __init__(self, directory, limit):
        self.tier = DiskTier(directory, limit, BLOCK)

    def put(self, bid, data):
        self.tier.put(bid, data)

    def get(self, bid):
        return self.tier.get(bid)

    def close(self):
        self.tier.close()


class DiskCache:
    name = "diskcache.Cache (LRU)"

    def __init__(self, directory, limit):
        self.cache = diskcache.Cache(directory, size_limit=limit,
                                     eviction_policy="least-recently-used")

    @staticmethod
    def _key(bid):
        obj, index = bid
        return (obj.store, obj.key, obj.version, index)

    def put(self, bid, data):
        self.cache.set(self._key(bid), data)

    def get(self, bid):
        return self.cache.get(self._key(bid))

    def close(self):
        self.cache.close()


class DiskCacheCrc(DiskCache):
    """diskcache with the check DiskTier does: a crc32 of the data, kept as the entry's tag."""
    name = "diskcache.Cache (LRU) + crc32 check"

    def put(self, bid, data):
        self.cache.set(self._key(bid), data, tag=zlib.crc32(data))

    def get(self, bid):
        data, crc = self.cache.get(self._key(bid), tag=True)
        if data is None or zlib.crc32(data) != crc:
            return None
        return data


def fill_rate(tier, bids, payloads):
    """MiB/s of putting every block into the tier."""
    t0 = time.perf_counter()
    for i, bid in enumerate(bids):
        tier.put(bid, payloads[i % len(payloads)])
    return len(bids) * BLOCK / MIB / (time.perf_counter() - t0)


def disk_tiers(base, blocks, repeat):
    payloads = [os.urandom(BLOCK) for _ in range(4)]
    bids = [(ObjectId("s3://bench", f"shard-{i // 8:04d}.tar", "etag-1"), i % 8)
            for i in range(blocks)]
    mib = blocks * BLOCK / MIB
    header(f"disk tier, {blocks} x 4 MiB blocks",
           "put MiB/s", "get MiB/s", "get 4 thr", "evict MiB/s", "reopen ms")
    for kind in (PlainFiles, DiskCache, DiskCacheCrc):
        directory = os.path.join(base, kind.__name__)
        big = blocks * (BLOCK + 4096) * 2

        put_rate, tier = 0.0, None
        for _ in range(repeat):
            if tier is not None:
                tier.close()
            shutil.rmtree(directory, ignore_errors=True)
            tier = kind(directory, big)
            put_rate = max(put_rate, fill_rate(tier, bids, payloads))

        def get_all(part=bids):
            for bid in part:
                assert tier.get(bid) is not None

        get_rate = best_rate(get_all, mib, repeat)
        quarters = [bids[i::4] for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            get4_rate = best_rate(lambda: list(pool.map(get_all, quarters)), mib, repeat)
        tier.close()

        t0 = time.perf_counter()
        kind(directory, big).close()  # reopen the full directory (DiskTier reads every header)
        reopen_ms = (time.perf_counter() - t0) * 1000

        # Evicting: a limit of a quarter of the blocks, so most puts first delete one.
        evict_rate = 0.0
        for _ in range(repeat):
            shutil.rmtree(directory, ignore_errors=True)
            tier = kind(directory, blocks // 4 * (BLOCK + 4096))
            evict_rate = max(evict_rate, fill_rate(tier, bids, payloads))
            tier.close()
        shutil.rmtree(directory, ignore_errors=True)
        row(kind.name, put_rate, get_rate, get4_rate, evict_rate, reopen_ms)


def reopen(base, n_blocks):
    """Opening a directory of many blocks: DiskTier reads every header, diskcache opens sqlite."""
    data = os.urandom(4096)
    header(f"reopen a directory of {n_blocks:,} blocks", "ms")
    for kind in (PlainFiles, DiskCache):
        directory = os.path.join(base, "reopen-" + kind.__name__)
        tier = kind(directory, 1 << 40)
        for i in range(n_blocks):
            tier.put((ObjectId("s3://bench", f"img/{i:07d}.jpg", "etag-1"), 0), data)
        tier.close()
        t0 = time.perf_counter()
        kind(directory, 1 << 40).close()
        row(kind.name, (time.perf_counter() - t0) * 1000)
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- RAM tier


def ram_tier(repeat):
    n_blocks, lookups = 256, 200_000
    obj = ObjectId("s3://bench", "shard.tar", "etag-1")
    data = os.urandom(64 * 1024)
    ram = RamTier(n_blocks * len(data))
    cache = BlockCache(len(data), n_blocks * len(data), mode="ram")
    size = n_blocks * len(data)
    for i in range(n_blocks):
        ram.put((obj, i), data)
        cache.get_block(obj, i, size, lambda s, e: data)

    def ram_gets(count):
        for i in range(count):
            ram.get((obj, i % n_blocks))

    def cache_gets(count):
        for i in range(count):
            cache.get_block(obj, i % n_blocks, size, None)

    header("RAM tier hits, gets/s", "1 thread", "8 threads")
    for name, fn in (("RamTier.get", ram_gets), ("BlockCache.get_block (mode ram)", cache_gets)):
        one = best_rate(lambda: fn(lookups), lookups, repeat)

        def eight():
            threads = [threading.Thread(target=fn, args=(lookups // 8,)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        row(name, one, best_rate(eight, lookups // 8 * 8, repeat))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=48, help="4 MiB blocks per disk run")
    ap.add_argument("--reopen-blocks", type=int, default=10_000,
                    help="4 KiB blocks in the reopen measurement")
    ap.add_argument("--repeat", type=int, default=3, help="best of K runs")
    ap.add_argument("--dir", default=None, help="where the disk tiers write (default: a temp dir)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="unifs-cache-bench-", dir=args.dir)
    try:
        t0 = time.perf_counter()
        checksums(args.repeat)
        disk_tiers(base, args.blocks, args.repeat)
        reopen(base, args.reopen_blocks)
        ram_tier(args.repeat)
        print(f"\n({time.perf_counter() - t0:.0f} s; {os.cpu_count()} CPUs; dir {base})")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
