"""The file system core from plain Python (no FUSE), over fsspec's memory:// store."""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pytest

from unifs.config import MountEntry, ReadSettings, StoreSettings
from unifs.namespace import Mount, Namespace
from unifs.stores import open_store
from unifs.vfs import FileSystem
from unifs.vfs.reader import HandleReader, ReadBudget


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    root = f"/vfs-{random.randrange(1 << 30)}"
    fs.pipe({f"{root}/a/b/c.txt": b"hello", f"{root}/a/d.bin": bytes(range(256)) * 1000,
             f"{root}/top.txt": b"top", f"{root}/other/x": b"x"})
    yield root
    fs.rm(root, recursive=True)


def make_fs(root, extra=(), read=None, staging_dir=None):
    entries = [MountEntry(path="/m", url=f"memory://{root}", read_only=True), *extra]
    mounts = [Mount(e, open_store(e, StoreSettings())) for e in entries]
    return FileSystem(Namespace(mounts), read or ReadSettings(), staging_dir=staging_dir)


def test_lookup_listing_and_virtual_dirs(memfs, tmp_path):
    # a writable mount: its staging directory in the test's tmp dir, not the default one a
    # concurrent run (CI) holds
    fs = make_fs(memfs, [MountEntry(path="/m/a/nested/deeper", url=f"memory://{memfs}/other")],
                 staging_dir=str(tmp_path / "staging"))
    assert [n for n, _ in fs.readdir("/")] == ["m"]
    assert [n for n, _ in fs.readdir("/m")] == ["a", "other", "top.txt"]
    assert [n for n, _ in fs.readdir("/m/a")] == ["b", "d.bin", "nested"]
    assert [n for n, _ in fs.readdir("/m/a/nested")] == ["deeper"]
    assert [n for n, _ in fs.readdir("/m/a/nested/deeper")] == ["x"]
    assert fs.getattr("/m/a/d.bin").size == 256000
    assert fs.getattr("/m/a/nested").is_dir
    for path, code in [("/nope", errno.ENOENT), ("/m/nope", errno.ENOENT), ("/m/a/b/c.txt/x", errno.ENOENT)]:
        with pytest.raises(OSError) as e:
            fs.getattr(path)
        assert e.value.errno == code
    with pytest.raises(OSError) as e:
        fs.readdir("/m/top.txt")
    assert e.value.errno == errno.ENOTDIR
    with pytest.raises(OSError) as e:
        fs.open("/m/a", os.O_RDONLY)
    assert e.value.errno == errno.EISDIR
    with pytest.raises(OSError) as e:
        fs.open("/m/top.txt", os.O_WRONLY)
    assert e.value.errno == errno.EROFS


def test_reads_and_keep_cache(memfs):
    fs = make_fs(memfs)
    fh, keep = fs.open("/m/a/d.bin", os.O_RDONLY)
    data = bytes(range(256)) * 1000
    assert fs.read(fh, 1000, 500) == data[500:1500]
    assert fs.read(fh, 10_000, 255_000) == data[255_000:]
    assert fs.read(fh, 10, 256_000) == b""
    fs.release(fh)
    assert fs.open_handles() == 0


def test_listing_is_authoritative_within_ttl(memfs):
    fs = make_fs(memfs)
    calls = []
    store = fs.ns.mounts[0].store
    orig = store.head
    store.head = lambda key: calls.append(key) or orig(key)
    fs.readdir("/m/a")
    assert fs.getattr("/m/a/d.bin").size == 256000
    with pytest.raises(OSError):
        fs.getattr("/m/a/missing")
    assert [c for c in calls if c.startswith("a/")] == []  # answered from the listing, no HEADs


class _Blob:
    def __init__(self, size, delay=0.0):
        self.data = random.Random(size).randbytes(size)
        self.calls = []
        self.lock = threading.Lock()
        self.delay = delay

    def fetch(self, start, end):
        import time
        with self.lock:
            self.calls.append((start, end))
        if self.delay:
            time.sleep(self.delay)
        return self.data[start:end]


def _reader(blob, budget, pool, **kw):
    args = dict(first_request=1 << 20, part_size=4 << 20, max_window=32 << 20)
    args.update(kw)
    return HandleReader(blob.fetch, len(blob.data), pool, budget, **args)


def test_reader_sequential_random_and_tail():
    blob = _Blob(50 << 20)
    with ThreadPoolExecutor(8) as pool:
        r = _reader(blob, ReadBudget(256 << 20), pool)
        out = bytearray()
        for off in range(0, len(blob.data), 128 << 10):
            out += r.read(off, 128 << 10)
        assert bytes(out) == blob.data
        # sequential reading used large ranged GETs, not one per 128 KiB request
        assert len(blob.calls) < 30
        rng = random.Random(3)
        for _ in range(100):
            off = rng.randrange(len(blob.data))
            n = rng.choice([1, 4096, 131072, 5 << 20])
            assert r.read(off, n) == blob.data[off:off + n]
        r.close()


def test_sequential_parts_are_whole_blocks():
    """With parts of one cache block each (what open() sets up), a sequential reader asks for
    whole blocks only: a part ending inside a block made the cache join two blocks, a copy."""
    blob = _Blob((64 << 20) + 12345)
    with ThreadPoolExecutor(8) as pool:
        r = _reader(blob, ReadBudget(256 << 20), pool, first_request=4 << 20, part_size=4 << 20)
        out = bytearray()
        for off in range(0, len(blob.data), 1 << 20):
            out += r.read(off, 1 << 20)
        r.close()
    assert bytes(out) == blob.data
    for start, end in blob.calls:
        assert start % (4 << 20) == 0 and (end - start == 4 << 20 or end == len(blob.data)), (start, end)


def test_a_stream_starting_at_an_unaligned_seek_gets_back_to_whole_blocks():
    blob = _Blob(64 << 20)
    start = (7 << 20) + 12345  # its demand cannot end on a boundary: 8 MiB is inside the first read
    with ThreadPoolExecutor(8) as pool:
        r = _reader(blob, ReadBudget(256 << 20), pool, first_request=4 << 20, part_size=4 << 20)
        r.read(0, 4096)
        out = bytearray()
        for off in range(start, len(blob.data), 1 << 20):
            out += r.read(off, 1 << 20)
        r.close()
    assert bytes(out) == blob.data[start:]
    unaligned = [(s, e) for s, e in blob.calls if s % (4 << 20) or e % (4 << 20)]
    assert len(unaligned) <= 2, unaligned  # the seek's own demand, and the part up to the boundary


def test_a_late_request_behind_the_reader_keeps_the_read_ahead():
    """The kernel's parallel read requests arrive out of order under load; one whose bytes were
    already dropped behind the reader was taken for a seek: the read-ahead in flight was
    cancelled and the window started over (a cold 20 MiB file fetched 36 MiB)."""
    blob = _Blob(64 << 20)
    with ThreadPoolExecutor(8) as pool:
        r = _reader(blob, ReadBudget(256 << 20), pool)
        for off in range(0, 24 << 20, 1 << 20):
            assert r.read(off, 1 << 20) == blob.data[off:off + (1 << 20)]
        ahead = [(s.start, s.end) for s in r.segments if s.start >= 24 << 20]
        assert ahead  # read-ahead in flight
        late = (24 << 20) - (5 << 20)  # dropped behind the reader already
        assert r.read(late, 1 << 20) == blob.data[late:late + (1 << 20)]
        assert [(s.start, s.end) for s in r.segments if s.start >= 24 << 20] == ahead
        for off in range(24 << 20, len(blob.data), 1 << 20):
            assert r.read(off, 1 << 20) == blob.data[off:off + (1 << 20)]
        r.close()
    fetched = sum(e - s for s, e in blob.calls)
    assert fetched <= len(blob.data) + (1 << 20), fetched  # the late MiB once more, nothing else


def test_a_file_read_footer_first_then_from_the_start_gets_read_ahead():
    # parquet, zip, HDF5: the footer, then the file from its start; the start lay within the
    # late-read distance behind the footer, and every read became an exact GET of its own
    blob = _Blob(12 << 20)
    with ThreadPoolExecutor(8) as pool:
        r = _reader(blob, ReadBudget(256 << 20), pool)
        size = len(blob.data)
        assert r.read(size - (64 << 10), 64 << 10) == blob.data[-(64 << 10):]
        for off in range(0, size, 128 << 10):
            assert r.read(off, 128 << 10) == blob.data[off:off + (128 << 10)]
        r.close()
    assert len(blob.calls) <= 8, blob.calls  # the footer, then a growing window (was 1 + 96)


def test_small_object_is_one_get():
    blob = _Blob(100_000)
    with ThreadPoolExecutor(2) as pool:
        r = _reader(blob, ReadBudget(1 << 30), pool)
        assert r.read(0, 131072) == blob.data
        assert blob.calls == [(0, 100_000)]


def test_random_small_reads_fetch_only_what_is_asked():
    blob = _Blob(64 << 20)
    with ThreadPoolExecutor(2) as pool:
        r = _reader(blob, ReadBudget(1 << 30), pool)
        r.read(10 << 20, 100)  # a seek: not sequential
        r.read(40 << 20, 4096)
        assert sum(e - s for s, e in blob.calls) < 8 << 20


def test_read_ahead_of_one_reader_stays_within_its_window():
    blob = _Blob(200 << 20, delay=0.003)
    budget = ReadBudget(1 << 30)
    with ThreadPoolExecutor(16) as pool:
        r = _reader(blob, budget, pool, max_window=16 << 20)
        out = bytearray()
        for off in range(0, len(blob.data), 1 << 20):
            out += r.read(off, 1 << 20)
        r.close()
    assert bytes(out) == blob.data
    # was up to 1.5 windows: a new window was requested with half of the last one in flight
    # the window ahead, the part being read, and up to first_request behind the reader (kept for
    # the kernel's out-of-order requests): parts end on part boundaries, so that one is partial
    assert budget.peak <= (16 << 20) + (4 << 20) + (1 << 20)


def test_read_ahead_budget_holds_with_32_sequential_readers():
    budget = ReadBudget(48 << 20)
    blobs = [_Blob(24 << 20, delay=0.002) for _ in range(32)]
    with ThreadPoolExecutor(16) as pool:
        readers = [_reader(b, budget, pool, part_size=2 << 20) for b in blobs]
        peak = []

        def stream(i):
            out = bytearray()
            for off in range(0, len(blobs[i].data), 128 << 10):
                out += readers[i].read(off, 128 << 10)
                peak.append(budget.used)
            readers[i].close()
            return bytes(out) == blobs[i].data

        with ThreadPoolExecutor(32) as readers_pool:
            assert all(readers_pool.map(stream, range(32)))
    assert max(peak) <= 48 << 20 and budget.peak <= 48 << 20
    assert budget.used == 0


def test_a_failed_read_is_not_fetched_again_at_once():
    """The kernel repeats a failed read-ahead request as a synchronous read of the same page:
    against a dead store that must not cost a second round of timeouts and retries."""
    calls = []

    def dead(start, end):
        calls.append((start, end))
        raise OSError(errno.EIO, "store unreachable")
    with ThreadPoolExecutor(2) as pool:
        r = HandleReader(dead, 10 << 20, pool, ReadBudget(64 << 20), first_request=1 << 20,
                         part_size=4 << 20, max_window=8 << 20)
        for _ in range(2):
            with pytest.raises(OSError) as e:
                r.read(0, 131072)
            assert e.value.errno == errno.EIO
        assert calls == [(0, 1 << 20)]
        with pytest.raises(OSError):
            r.read(5 << 20, 131072)  # other bytes: a new fetch
        assert len(calls) == 2
        r.close()


def test_a_read_whose_queued_part_a_random_read_dropped_fetches_it_itself():
    """Two threads on one handle: one waits on a queued read-ahead part, the other seeks far
    away, which drops queued parts. The first must still get its bytes, not an error."""
    import time

    blob = _Blob(32 << 20)
    gate = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(gate.wait, 10)  # the pool's only thread is busy: read-ahead parts stay queued
        r = HandleReader(blob.fetch, len(blob.data), pool, ReadBudget(64 << 20), first_request=1 << 20,
                         part_size=1 << 20, max_window=8 << 20)
        assert r.read(0, 131072) == blob.data[:131072]
        assert r.read(512 << 10, 131072) == blob.data[512 << 10:640 << 10]  # queues part [1, 2) MiB
        out = {}

        def waiter():
            try:
                out["data"] = r.read((1 << 20) + 4096, 131072)
            except BaseException as e:  # noqa: BLE001 - the test reports it
                out["error"] = e
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)  # let it wait on the queued part
        assert r.read(20 << 20, 4096) == blob.data[20 << 20:(20 << 20) + 4096]  # drops queued parts
        t.join(10)
        gate.set()
        assert "error" not in out, repr(out.get("error"))
        assert out["data"] == blob.data[(1 << 20) + 4096:(1 << 20) + 4096 + 131072]
        r.close()


class _Inline:
    """An executor running each task at once: read-ahead parts land deterministically."""

    def submit(self, fn, *args, **kwargs):
        from concurrent.futures import Future

        fn(*args, **kwargs)
        done = Future()
        done.set_result(None)
        return done


@pytest.mark.parametrize("block,size,reads", [
    (1000, 2500, [(0, 100), (1050, 100), (0, 900), (1900, 1000)]),
    (1000, 2500, [(0, 100), (1050, 100), (0, 900), (1850, 100)]),
    (4 << 20, (8 << 20) + 1000, [(0, 128 << 10), ((4 << 20) + (128 << 10), 128 << 10), (2 << 20, 128 << 10),
                                 ((8 << 20) - 4096, 128 << 10)]),
])
def test_read_ahead_never_overlaps_a_seeks_segment(block, size, reads):
    """A seek leaves a demand segment ahead of the stream; read-ahead filling up to it made a
    part over the same bytes, and a read spanning both got them twice (found by review)."""
    data = random.Random(size).randbytes(size)
    r = HandleReader(lambda s, e: data[s:e], size, _Inline(), ReadBudget(1 << 30), block, block, 16 * block)
    for off, n in reads:
        assert bytes(r.read(off, n)) == data[off:off + n], (off, n)
    segs = [(s.start, s.end) for s in r.segments]
    assert all(a[1] <= b[0] for a, b in zip(segs, segs[1:])), segs


def test_reads_through_the_block_cache_match_the_object_byte_for_byte():
    """Seeded random reads (sequential runs and seeks, over the tail and past the end) through
    HandleReader + BlockCache, the fetches returning obstore's own Bytes as the S3 path does."""
    import obstore
    from obstore.store import MemoryStore

    from unifs.cache.ids import ObjectId
    from unifs.cache.tiered import BlockCache

    rng = random.Random(7)
    store = MemoryStore()
    with ThreadPoolExecutor(4) as pool:
        for trial in range(60):
            block = rng.choice([1000, 4096, 65536])
            size = rng.choice([0, 1, block - 1, block, block + 1, 3 * block, rng.randrange(6 * block)])
            data = rng.randbytes(size)
            key = f"t{trial}"
            obstore.put(store, key, data)
            cache = BlockCache(block, 1 << 30, 0, None, "ram")
            obj = ObjectId("mem", key, "v1")

            def raw(s, e, key=key):
                return obstore.get(store, key, options={"range": (s, e)}).bytes()

            def fetch(s, e, cache=cache, obj=obj, size=size, raw=raw):
                return cache.get_range(obj, s, e, size, raw, "ram", "/m")
            r = HandleReader(fetch, size, pool, ReadBudget(1 << 30), block, block, 8 * block)
            off = 0
            for _ in range(40):
                if rng.random() < 0.3:
                    off = rng.randrange(size + 5)
                n = rng.choice([1, 7, 4096, block, block + 1, 3 * block])
                assert bytes(r.read(off, n)) == data[off:off + n], (trial, block, size, off, n)
                off += n
            r.close()
            cache.close()


def test_kernel_invalidation_never_takes_a_read_ahead_thread(memfs):
    # the kernel's invalidation waits for page locks that in-flight READs hold; run on the
    # read-ahead pool it could wait for a READ that waits for a part queued behind it (a hang
    # with read.threads: 1)
    import threading

    fs = make_fs(memfs, read=ReadSettings(threads=1))
    release = threading.Event()
    called = []

    def blocked(path):
        called.append(path)
        release.wait(10)
    fs.kernel_invalidate = blocked
    try:
        fs.forget_in_kernel(["/data/a", "/data/b"])
        assert fs.pool.submit(lambda: 42).result(timeout=5) == 42
        release.set()
        assert wait_until(lambda: called == ["/data/a", "/data/b"])
    finally:
        release.set()
        fs.close()


def wait_until(cond, timeout=5.0):
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_a_listing_compares_with_what_a_head_said_before(memfs):
    # a file first learned by HEAD, then replaced, then listed: the kernel may still hold the
    # HEAD's size (a plain readdir carries none), so opens must bypass its page cache
    import fsspec as _f

    fs = make_fs(memfs)
    try:
        assert fs.getattr("/m/top.txt").size == 3
        _f.filesystem("memory").pipe(f"{memfs}/top.txt", b"a longer top")
        fs.meta.expire("/m/top.txt")  # as after the TTL
        names = dict(fs.readdir("/m"))
        assert names["top.txt"].size == len(b"a longer top")
        assert fs._kernel_stale("/m/top.txt") and not fs._kernel_stale("/m/other")
    finally:
        fs.close()


def test_an_open_whose_entry_expires_while_it_looks_bypasses_the_page_cache(memfs):
    # a prefetch that finds the object changed expires the daemon's entry; between open()'s look
    # at it (valid: no flag) and getattr (expired: a fresh HEAD, the new size) the kernel, which
    # still held the old size, got a page-cache open of the new version and cut it (CI, once)
    import fsspec as _f

    fs = make_fs(memfs)
    try:
        assert fs.getattr("/m/top.txt").size == 3
        _f.filesystem("memory").pipe(f"{memfs}/top.txt", b"a longer top")
        real = fs.getattr

        def expiring(path, *a, **k):
            fs.meta.expire(path)  # the prefetcher, just now
            return real(path, *a, **k)
        fs.getattr = expiring
        fh, keep = fs.open("/m/top.txt", os.O_RDONLY)
        fs.getattr = real
        assert fs._handles[fh].direct and not keep
        assert fs.read(fh, 100, 0) == b"a longer top"
        fs.release(fh)
    finally:
        fs.close()


def test_any_fresh_lookup_that_finds_a_file_changed_makes_the_next_open_bypass_the_page_cache(memfs):
    # a reader opened from cached attributes joined a prefetch's fetch, which found the object
    # replaced (quiet: nothing flagged); its re-pin looked the file up afresh and cached the new
    # size, so the next open saw nothing changed and the kernel cut the new version at its old
    # size (CI, once in 23 runs under load)
    import fsspec as _f

    fs = make_fs(memfs)
    try:
        assert fs.getattr("/m/top.txt").size == 3
        _f.filesystem("memory").pipe(f"{memfs}/top.txt", b"a longer top")
        fs.meta.expire("/m/top.txt")  # the prefetch that found it changed
        assert fs.getattr("/m/top.txt").size == 12  # the re-pin's lookup, not an open
        fh, keep = fs.open("/m/top.txt", os.O_RDONLY)
        assert fs._handles[fh].direct and not keep
        assert fs.read(fh, 100, 0) == b"a longer top"
        fs.release(fh)
        # a lookup the kernel asked for gives it the new size itself: no direct_io for the next
        # open (it refuses a shared mmap, and the kernel's invalidation may come after the open)
        _f.filesystem("memory").pipe(f"{memfs}/top.txt", b"longer still, top")
        fs.meta.expire("/m/top.txt")
        fs._stale_kernel.clear()
        assert fs.getattr("/m/top.txt", for_kernel=True).size == 17
        assert not fs._kernel_stale("/m/top.txt")
    finally:
        fs.close()


def test_a_memory_store_moves_a_directory_whose_directories_are_implicit():
    # memory:// keeps no directory for files written by path: rmdir of one raised after every
    # file had moved, and the rename failed half done
    from unifs.stores.fsspec_store import FsspecStore

    store = FsspecStore("memory://implicit-dirs", {}, timeout=5, connect_timeout=1, retries=0)
    store.fs.pipe_file("/implicit-dirs/d/a", b"A")
    store.fs.pipe_file("/implicit-dirs/d/sub/b", b"B")
    store.move("d", "e")
    assert sorted(store.fs.find("/implicit-dirs")) == ["/implicit-dirs/e/a", "/implicit-dirs/e/sub/b"]


def test_a_lookup_between_the_two_calls_of_a_rename_over_an_open_file_finds_a_file(memfs, tmp_path):
    """libfuse renames over an open file in two calls from one thread: hide the target (a
    rename to .fuse_hidden*), then rename the new file onto its name. A lookup from another
    thread in between answered ENOENT; it now waits for the second call (a short while: after
    an unlink no second call comes, and the name is gone)."""
    import os

    from unifs.vfs.writes import HIDE_GRACE_S

    entry = MountEntry(path="/w", url=f"memory://{memfs}/w")
    fs = FileSystem(Namespace([Mount(entry, open_store(entry, StoreSettings()))]),
                    staging_dir=str(tmp_path / "staging"))
    for name, data in (("final", b"old"), ("tmp", b"new!")):
        fh = fs.create(f"/w/{name}")
        fs.write(fh, data, 0)
        fs.flush(fh)
        fs.release(fh)
    reader, _ = fs.open("/w/final", os.O_RDONLY)  # what makes libfuse hide it
    fs.rename("/w/final", "/w/.fuse_hidden0000000100000001")
    seen = []
    lookup = threading.Thread(target=lambda: seen.append(fs.getattr("/w/final").size))
    lookup.start()
    lookup.join(HIDE_GRACE_S / 4)
    assert lookup.is_alive() and not seen  # waiting, not ENOENT
    fs.rename("/w/tmp", "/w/final")
    lookup.join(10)
    assert seen == [4]
    fs.release(reader)  # the last close: the hidden file goes
    assert fs.getattr("/w/final").size == 4 and bytes(fs.read_buffer(fs.open("/w/final", os.O_RDONLY)[0], 10, 0)) == b"new!"

    # an unlink of an open file: the name is gone once the grace has passed
    reader, _ = fs.open("/w/final", os.O_RDONLY)
    fs.rename("/w/final", "/w/.fuse_hidden0000000100000002")
    errors = []

    def look():
        try:
            fs.getattr("/w/final")
        except OSError as e:
            errors.append(e.errno)
    t = threading.Thread(target=look)
    t.start()
    t.join(10)
    assert errors == [errno.ENOENT]
    fs.release(reader)


def test_per_path_records_stay_bounded(memfs, monkeypatch):
    # every name ever opened kept two entries for the daemon's life (~380 bytes a name)
    import os

    import unifs.vfs.filesystem as filesystem

    monkeypatch.setattr(filesystem, "PER_PATH_LIMIT", 10)
    fsspec.filesystem("memory").pipe({f"{memfs}/many/f{i:03d}": b"%d" % i for i in range(60)})
    fs = make_fs(memfs)
    held, _ = fs.open("/m/many/f000", os.O_RDONLY)
    for i in range(1, 60):
        fh, _ = fs.open(f"/m/many/f{i:03d}", os.O_RDONLY)
        assert bytes(fs.read_buffer(fh, 10, 0)) == b"%d" % i
        fs.release(fh)
    assert len(fs._open_seq) <= 11 and len(fs._last_etag) <= 11
    assert "/m/many/f000" in fs._open_seq and "/m/many/f000" in fs._last_etag  # still open: kept
    assert bytes(fs.read_buffer(held, 10, 0)) == b"0"
    fs.release(held)


def test_a_local_file_rewritten_in_place_with_its_old_mtime_is_a_new_version(tmp_path):
    """`cp -p` over an existing file keeps its inode, size and mtime: the stand-in ETag of a
    file:// object must still change, or the page cache and the disk tier served the old bytes."""
    f = tmp_path / "f"
    f.write_bytes(b"A" * 1000)
    os.utime(f, (1_700_000_000, 1_700_000_000))
    store = open_store(MountEntry(path="/l", url=f"file://{tmp_path}", read_only=True), StoreSettings())
    before = store.head("f").etag
    time.sleep(0.05)  # past the coarse clock's tick, which file times may be taken from
    with open(f, "r+b") as out:
        out.write(b"B" * 1000)
    os.utime(f, (1_700_000_000, 1_700_000_000))
    after = store.head("f").etag
    assert before and after and before != after


def test_an_s3_directory_marker_is_deleted_by_its_own_name():
    # obstore makes "d/" into "d": deleting a marker through it deleted a file "d" instead
    # (SeaweedFS keeps "d" and "d/" as one, so only AWS-like stores show it: routing checked)
    import obstore
    from obstore.store import MemoryStore

    from unifs.stores.obstore_s3 import ObstoreS3Store

    mem = MemoryStore()
    obstore.put(mem, "d", b"a file")
    obstore.delete(mem, "d/")
    assert list(obstore.list(mem).collect()) == []  # what made the routing necessary
    seen = []

    class S3fsStore:
        def delete(self, key):
            seen.append(key)
    store = ObstoreS3Store("s3://bkt/p", {"endpoint": "http://127.0.0.1:9", "access_key_id": "a",
                                          "secret_access_key": "b", "region": "us-east-1"},
                           timeout=1, connect_timeout=1, retries=0, fallback=S3fsStore)
    store.delete("d/")
    assert seen == ["d/"]
