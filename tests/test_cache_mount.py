"""The block cache through a real mount on SeaweedFS: warm reads make no store GETs, the
disk tier survives a restart and detects corruption, both tiers stay within their bounds,
one fetch per block for concurrent readers, read-ahead within its budget."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import obstore
import pytest

from conftest import SCRATCH, cache_stats, is_mounted, sha256, unifs, wait_for

MiB = 1 << 20


def drop_page_cache():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


stats = cache_stats


def gets(mp, mount="/c") -> int:
    return stats(mp)["store_reads"].get(mount, {"gets": 0})["gets"]


def settled_gets(mp, mount="/c") -> int:
    """The GET count once two readings half a second apart agree."""
    last = gets(mp, mount)
    for _ in range(40):
        time.sleep(0.5)
        now = gets(mp, mount)
        if now == last:
            return now
        last = now
    raise AssertionError(f"GETs still going on after 20 s: {last}")


def read_all(paths) -> dict:
    return {p.name: sha256(p.read_bytes()) for p in paths}


@pytest.fixture(scope="module")
def objects(seaweed, dataset):
    rng = __import__("random").Random(7)
    data = {f"cache/imgs/img_{i:03d}.jpg": rng.randbytes(rng.randrange(1000, 150_000)) for i in range(40)}
    data["cache/shard.bin"] = rng.randbytes(12 * MiB + 333)
    for i in range(4):
        data[f"cache/bulk/part{i}.bin"] = rng.randbytes(12 * MiB)
    seaweed.put_many(SCRATCH, data)
    return {k: sha256(v) for k, v in data.items()}


def _mount(mounter, tmp_path, url=f"s3://{SCRATCH}/cache", cache=None, read=None, mp=None, **entry):
    table = {"mounts": [mounter.s3_entry("/c", url, read_only=True, **entry)],
             "write": {"staging_dir": str(tmp_path / "staging")},
             "cache": {"mode": "tiered", "dir": str(tmp_path / "cache"), "ram": "64MiB", "disk": "256MiB", "block_size": "1MiB",
                       **(cache or {})}}
    if read:
        table["read"] = read
    if mp is None:
        return mounter.mount(table.pop("mounts"), extra=table)
    cfg = mounter.write_table(table)
    unifs("mount", str(mp), "--config", str(cfg), check=True)
    return mp


def test_second_read_makes_no_store_gets(mounter, objects, tmp_path):
    mp = _mount(mounter, tmp_path)
    files = sorted((mp / "c/imgs").iterdir()) + [mp / "c/shard.bin"]
    first = read_all(files)
    assert first == {os.path.basename(k): v for k, v in objects.items() if k.startswith("cache/imgs/")
                     or k == "cache/shard.bin"}
    before = stats(mp)
    assert before["store_reads"]["/c"]["gets"] > 0
    drop_page_cache()  # the kernel forgets: every byte must come from the daemon's cache
    assert read_all(files) == first
    after = stats(mp)
    assert after["store_reads"]["/c"] == before["store_reads"]["/c"]
    assert after["cache"]["mounts"]["/c"]["bytes_from_cache"] > before["cache"]["mounts"]["/c"]["bytes_from_cache"]
    text = unifs("cache", "stats", str(mp), check=True).stdout
    assert "hit ratio" in text and "from store" in text
    # clearing drops the blocks: the next read goes to the store again
    res = unifs("cache", "clear", str(mp / "c/imgs"), check=True)
    assert "cleared" in res.stdout
    drop_page_cache()
    n = gets(mp)
    read_all(sorted((mp / "c/imgs").iterdir()))
    assert gets(mp) > n


def test_warm_files_read_with_the_store_stopped(mounter, tmp_path):
    from unifs.devstores.seaweed import SeaweedS3

    server = SeaweedS3(str(tmp_path / "s")).start()
    try:
        server.create_bucket("warm")
        blobs = {f"f{i}": os.urandom(300_000 + i) for i in range(5)}
        server.put_many("warm", blobs)
        mounter.seaweed = server
        mp = _mount(mounter, tmp_path, url="s3://warm", metadata_ttl="10m")
        warm = read_all(sorted((mp / "c").iterdir()))
        server.stop()
        drop_page_cache()
        assert read_all(sorted((mp / "c").iterdir())) == warm == {k: sha256(v) for k, v in blobs.items()}
    finally:
        server.stop()


def test_tier_bounds_hold_after_reading_three_times_their_size(mounter, objects, tmp_path):
    mp = _mount(mounter, tmp_path, cache={"ram": "8MiB", "disk": "16MiB"})
    parts = sorted((mp / "c/bulk").iterdir())  # 48 MiB
    got = read_all(parts)
    assert got == {os.path.basename(k): v for k, v in objects.items() if k.startswith("cache/bulk/")}
    s = stats(mp)["cache"]
    assert 0 < s["ram"]["bytes"] <= 8 * MiB and s["ram"]["evictions"] > 0
    assert 0 < s["disk"]["bytes"] <= 16 * MiB and s["disk"]["evictions"] > 0
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp_path / "cache") for f in fs)
    assert on_disk <= 16 * MiB + 64 * 1024  # block files plus the lock file
    assert (os.stat(tmp_path / "cache").st_mode & 0o777) == 0o700


def test_restart_keeps_the_disk_tier_warm_and_drops_corrupt_blocks(mounter, objects, tmp_path):
    mp = tmp_path / "mnt-restart"
    mp.mkdir()
    try:
        _mount(mounter, tmp_path, mp=mp)
        want = read_all([mp / "c/shard.bin"])
        unifs("umount", str(mp), check=True)

        _mount(mounter, tmp_path, mp=mp)
        drop_page_cache()
        assert read_all([mp / "c/shard.bin"]) == want
        assert gets(mp) == 0  # everything from the disk tier
        unifs("umount", str(mp), check=True)

        blocks = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "cache") for f in fs
                  if os.path.getsize(os.path.join(d, f)) > MiB // 2]
        assert len(blocks) >= 12
        with open(blocks[0], "r+b") as f:  # flip one byte in the middle of a block's data
            f.seek(MiB // 2)
            b = f.read(1)
            f.seek(MiB // 2)
            f.write(bytes([b[0] ^ 0xFF]))
        _mount(mounter, tmp_path, mp=mp)
        drop_page_cache()
        assert read_all([mp / "c/shard.bin"]) == want
        s = stats(mp)
        assert s["cache"]["disk"]["corrupt"] == 1
        assert s["store_reads"]["/c"]["gets"] == 1  # only the damaged block was fetched again
    finally:
        if is_mounted(mp):
            unifs("umount", str(mp))


def test_block_files_that_cannot_be_removed_leave_the_disk_tier_working(mounter, seaweed, dataset, tmp_path):
    # one failed unlink (a disk gone read-only) kept the blocks' bytes counted and their ids
    # busy for good: the tier cached nothing more until a restart, and `cache clear` printed a
    # Python exception; then it stopped at the first such file, and what came after it (the
    # metadata) was not cleared: an object replaced in the store stayed old
    big, small = os.urandom(12 * MiB), b"old version"
    seaweed.put_many(SCRATCH, {"cache-ro/big.bin": big, "cache-ro/small.txt": small})
    mp = _mount(mounter, tmp_path, url=f"s3://{SCRATCH}/cache-ro", cache={"ram": "4MiB", "disk": "16MiB"})
    assert (mp / "c/big.bin").read_bytes() == big and (mp / "c/small.txt").read_bytes() == small
    assert wait_for(lambda: stats(mp)["cache"]["disk"]["blocks"] >= 10)
    seaweed.put_many(SCRATCH, {"cache-ro/small.txt": b"a new and longer version"})
    sub = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    subprocess.run(["mount", "--bind", str(sub), str(sub)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(sub)], check=True)
        res = unifs("cache", "clear", str(mp))
        assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
        assert "could not be removed (Read-only file system" in res.stderr and "Error" not in res.stderr, res.stderr
    finally:
        subprocess.run(["umount", str(sub)], check=True)
    disk = stats(mp)["cache"]["disk"]
    assert disk["blocks"] == 0 and disk["bytes"] == 0 and disk["delete_errors"] >= 10, disk
    assert (mp / "c/small.txt").read_bytes() == b"a new and longer version"
    drop_page_cache()
    assert (mp / "c/big.bin").read_bytes() == big
    assert wait_for(lambda: stats(mp)["cache"]["disk"]["blocks"] >= 10), stats(mp)["cache"]["disk"]


def test_blocks_of_an_object_replaced_while_unmounted_are_dropped(mounter, seaweed, dataset, tmp_path):
    # only the running daemon knew the old ETag: the old version's blocks stayed on disk,
    # unreachable, counted against the bound
    store = seaweed.obstore(SCRATCH)
    obstore.put(store, "cache-rw/obj.bin", b"o" * (3 * MiB))
    mp = tmp_path / "mnt-rw"
    mp.mkdir()
    try:
        _mount(mounter, tmp_path, url=f"s3://{SCRATCH}/cache-rw", mp=mp)
        assert (mp / "c/obj.bin").read_bytes() == b"o" * (3 * MiB)
        unifs("umount", str(mp), check=True)
        obstore.put(store, "cache-rw/obj.bin", b"n" * (3 * MiB))
        _mount(mounter, tmp_path, url=f"s3://{SCRATCH}/cache-rw", mp=mp)
        assert (mp / "c/obj.bin").read_bytes() == b"n" * (3 * MiB)
        unifs("umount", str(mp), check=True)  # the disk copies are written by then
        _mount(mounter, tmp_path, url=f"s3://{SCRATCH}/cache-rw", mp=mp)
        assert stats(mp)["cache"]["disk"]["blocks"] == 3
    finally:
        if is_mounted(mp):
            unifs("umount", str(mp))


def test_an_overwritten_object_is_served_new_after_the_ttl(mounter, seaweed, dataset, tmp_path):
    store = seaweed.obstore(SCRATCH)
    obstore.put(store, "cache-ow/obj.bin", b"old" * 100_000)
    mp = _mount(mounter, tmp_path, url=f"s3://{SCRATCH}/cache-ow", metadata_ttl="1s")
    assert (mp / "c/obj.bin").read_bytes() == b"old" * 100_000
    obstore.put(store, "cache-ow/obj.bin", b"new!" * 50_000)
    assert wait_for(lambda: (mp / "c/obj.bin").read_bytes() == b"new!" * 50_000, timeout=10)


def test_eight_threads_on_one_cold_file_fetch_each_block_once(mounter, objects, tmp_path):
    mp = _mount(mounter, tmp_path)
    barrier = threading.Barrier(8)
    results = []

    def reader():
        barrier.wait()
        results.append(sha256((mp / "c/shard.bin").read_bytes()))
    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [objects["cache/shard.bin"]] * 8
    io = stats(mp)["store_reads"]["/c"]
    assert io["gets"] == 13  # 12 MiB + 333 bytes in 1 MiB blocks
    assert io["bytes"] == 12 * MiB + 333


def test_read_ahead_stays_within_its_budget_with_32_readers(mounter, objects, tmp_path):
    mp = _mount(mounter, tmp_path, cache={"ram": "8MiB"}, read={"budget": "16MiB", "part_size": "2MiB"})
    files = sorted((mp / "c/bulk").iterdir()) + [mp / "c/shard.bin"]
    handles = [open(files[i % len(files)], "rb") for i in range(32)]
    out = {}

    def stream(i, f):
        h = __import__("hashlib").sha256()
        while True:
            b = f.read(128 * 1024)
            if not b:
                break
            h.update(b)
        out[i] = h.hexdigest()
    threads = [threading.Thread(target=stream, args=(i, f)) for i, f in enumerate(handles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in handles:
        f.close()
    want = {p.name: objects[f"cache/{p.parent.name}/{p.name}" if p.parent.name == "bulk" else "cache/shard.bin"]
            for p in files}
    assert all(out[i] == want[files[i % len(files)].name] for i in range(32))
    ra = stats(mp)["readahead"]
    assert 0 < ra["peak"] <= ra["limit"] == 16 * MiB


def test_warmup_loads_a_directory_into_the_cache(mounter, objects, tmp_path):
    mp = _mount(mounter, tmp_path)
    res = unifs("warmup", str(mp / "c/imgs"), check=True)
    assert "warmed 40 file(s)" in res.stdout
    n = gets(mp)
    drop_page_cache()
    read_all(sorted((mp / "c/imgs").iterdir()))
    assert gets(mp) == n
    bad = unifs("warmup", str(tmp_path))
    assert bad.returncode != 0 and "not inside a live unifs mount" in bad.stderr


def test_warmup_loads_a_file_the_page_cache_still_holds(mounter, objects, tmp_path):
    # evicted from the daemon's cache but still in the kernel's: warmup's reads never reached
    # the daemon ("warmed", no GET), then it dropped the kernel's pages: colder than before
    mp = _mount(mounter, tmp_path, cache={"mode": "ram", "ram": "8MiB"})
    img = mp / "c/imgs/img_000.jpg"
    img.read_bytes()
    read_all(sorted((mp / "c/bulk").iterdir()))  # 48 MiB through an 8 MiB tier
    n = settled_gets(mp)  # prefetches of the bulk files may still be landing
    unifs("warmup", str(img), check=True)
    assert gets(mp) == n + 1
    drop_page_cache()
    assert sha256(img.read_bytes()) == objects["cache/imgs/img_000.jpg"]
    assert gets(mp) == n + 1


def test_warmup_fails_on_a_directory_it_cannot_list(mounter, seaweed, objects, tmp_path):
    # os.walk skipped a directory whose listing failed (EIO): "warmed 0 file(s)", exit 0

    from faultproxy import FaultProxy, upstream_port

    opts = seaweed.mount_options()
    upstream = upstream_port(opts)

    def rule(method, path, headers):
        return 503 if method == "GET" and "list-type" in path and "bulk" in path else None
    with FaultProxy(upstream, rule=rule) as proxy:
        mp = _mount(mounter, tmp_path, options=dict(
            opts, endpoint_url=opts["endpoint_url"].replace(str(upstream), str(proxy.port))))
        res = unifs("warmup", str(mp / "c"), timeout=300)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"{mp}/c/bulk" in res.stderr and "could not be listed or read" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert gets(mp) >= 41  # the rest was warmed: 40 images and the shard


def test_warmup_warns_when_the_data_outgrows_the_cache(mounter, objects, tmp_path):
    mp = _mount(mounter, tmp_path, cache={"mode": "ram", "ram": "8MiB"})
    res = unifs("warmup", str(mp / "c/bulk"), check=True)
    assert "warmed 4 file(s)" in res.stdout
    assert "warning:" in res.stderr and "48.0 MiB to warm" in res.stderr and "holds 8.0 MiB" in res.stderr, \
        res.stderr


def test_warmup_warns_of_a_mount_with_cache_none(mounter, objects, tmp_path):
    # a table with a block cache, one mount of it with `cache: none`: warmup read its files,
    # cached nothing, and said "warmed" without a word
    table = {"mounts": [mounter.s3_entry("/c", f"s3://{SCRATCH}/cache", read_only=True),
                        mounter.s3_entry("/n", f"s3://{SCRATCH}/cache/imgs", read_only=True, cache="none")],
             "cache": {"mode": "ram", "dir": str(tmp_path / "cache"), "ram": "64MiB", "block_size": "1MiB"}}
    mp = mounter.mount(table.pop("mounts"), extra=table)
    res = unifs("warmup", str(mp / "n"), str(mp / "c/imgs"), check=True)
    assert "warmed 80 file(s)" in res.stdout, res.stdout
    assert f"{mp}/n has cache: none: its 40 file(s) are read, but do not stay warm" in res.stderr, res.stderr
    assert "/c" not in res.stderr.replace(str(mp), ""), res.stderr
    os.chdir(mp)  # relative paths name the same files
    try:
        res = unifs("warmup", "n", check=True)
    finally:
        os.chdir(tmp_path)
    assert "its 40 file(s)" in res.stderr, res.stderr


def test_warmup_warns_first_and_stops_on_ctrl_c(mounter, seaweed, objects, tmp_path):
    # the warning came after all the reads, and Ctrl-C waited for every queued file
    import signal
    import sys

    from faultproxy import FaultProxy, upstream_port

    opts = seaweed.mount_options()
    upstream = upstream_port(opts)
    # slow GETs: on a loaded machine the warmup must still be running when Ctrl-C comes
    with FaultProxy(upstream, delays={"GET": 1.0}) as proxy:
        mp = _mount(mounter, tmp_path, cache={"mode": "ram", "ram": "8MiB"}, options=dict(
            opts, endpoint_url=opts["endpoint_url"].replace(str(upstream), str(proxy.port))))
        names = sorted(os.listdir(mp / "c/imgs"))
        before = gets(mp)
        proc = subprocess.Popen([sys.executable, "-m", "unifs", "warmup", "--threads", "1", str(mp / "c")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stderr.readline()  # printed before the reads start
        assert "warning:" in line and "holds 8.0 MiB" in line, line
        # the proxy's count, not `unifs cache stats`: on a loaded machine a process per poll
        # took long enough for the warmup to finish first
        answered = len(proxy.answered)
        assert wait_for(lambda: len(proxy.answered) > answered, timeout=60)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
        time.sleep(1)
        done = gets(mp) - before
        assert done < len(names), f"{done} GETs: the warmup went on after Ctrl-C"


@pytest.mark.parametrize("prefetch", [True, False])
def test_files_opened_in_listing_order_are_prefetched(mounter, objects, tmp_path, prefetch):
    mp = _mount(mounter, tmp_path, prefetch=prefetch)
    names = sorted(os.listdir(mp / "c/imgs"))
    got = {n: sha256((mp / "c/imgs" / n).read_bytes()) for n in names}
    assert got == {os.path.basename(k): v for k, v in objects.items() if k.startswith("cache/imgs/")}
    s = stats(mp)
    assert s["store_reads"]["/c"]["gets"] == 40  # each file fetched once, by prefetch or by its reader
    if prefetch:
        assert s["prefetch"]["files"] >= 30
    else:
        assert s["prefetch"]["files"] == 0


def test_a_prefetch_leaves_blocks_on_disk_where_they_are(mounter, objects, tmp_path):
    # a warm disk tier and a small RAM tier: the prefetch read disk blocks into RAM ahead of the
    # reader, evicted them again before it came, and each block was read from disk twice
    mp = tmp_path / "mnt-pf-disk"
    mp.mkdir()
    small_ram = {"ram": "2MiB"}
    try:
        _mount(mounter, tmp_path, cache=small_ram, mp=mp)
        names = sorted(os.listdir(mp / "c/imgs"))
        want = read_all([mp / "c/imgs" / n for n in names])
        unifs("umount", str(mp), check=True)

        _mount(mounter, tmp_path, cache=small_ram, mp=mp)
        drop_page_cache()
        assert sorted(os.listdir(mp / "c/imgs")) == names
        assert read_all([mp / "c/imgs" / n for n in names]) == want
        s = stats(mp)
        assert gets(mp) == 0
        assert s["cache"]["disk"]["hits"] == len(names), s["cache"]
        assert s["prefetch"] == {"files": 0, "bytes": 0}  # counted what it scheduled, not what it fetched
    finally:
        if is_mounted(mp):
            unifs("umount", str(mp))


def test_cache_clear_after_a_change_in_the_store_reads_the_new_version(mounter, seaweed, dataset, tmp_path):
    store = seaweed.obstore(SCRATCH)
    obstore.put(store, "cache-clear/obj.txt", b"version one")
    mp = _mount(mounter, tmp_path, url=f"s3://{SCRATCH}/cache-clear", metadata_ttl="10m")
    assert (mp / "c/obj.txt").read_bytes() == b"version one"
    # same size: the kernel keeps its own attribute cache (sizes) for metadata_ttl, which
    # the daemon cannot invalidate through libfuse 2's high-level API
    obstore.put(store, "cache-clear/obj.txt", b"version two")
    unifs("cache", "clear", str(mp / "c/obj.txt"), check=True)
    assert (mp / "c/obj.txt").read_bytes() == b"version two"


def test_cache_clear_makes_an_object_that_was_missing_visible(mounter, seaweed, dataset, tmp_path):
    # a negative lookup is kept for metadata_ttl by the daemon (which a clear drops), and the
    # kernel keeps its own negative entry, which the daemon cannot drop: that one is short
    store = seaweed.obstore(SCRATCH)
    obstore.put(store, "cache-neg/keep", b"k")
    mp = _mount(mounter, tmp_path, url=f"s3://{SCRATCH}/cache-neg", metadata_ttl="10m")
    assert not (mp / "c/late.txt").exists()
    obstore.put(store, "cache-neg/late.txt", b"put by another writer")
    assert not (mp / "c/late.txt").exists()  # within the TTL: the daemon's negative entry
    unifs("cache", "clear", str(mp), check=True)
    assert wait_for(lambda: (mp / "c/late.txt").exists(), timeout=10)  # not the 10 minutes' TTL
    assert (mp / "c/late.txt").read_bytes() == b"put by another writer"
    # the path itself, which the mount still answers "not found" for, can be cleared too
    assert not (mp / "c/later.txt").exists()
    obstore.put(store, "cache-neg/later.txt", b"later")
    res = unifs("cache", "clear", str(mp / "c/later.txt"))
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: (mp / "c/later.txt").exists(), timeout=10)
    bad = unifs("cache", "clear", str(mp / "c/no-such-dir/x"))
    assert bad.returncode == 1 and "no such file or directory" in bad.stderr
