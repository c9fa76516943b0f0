"""Open handles pin the object version; new objects appear once the metadata TTL passes."""

from __future__ import annotations

import errno
import os
import time

import pytest

from conftest import SCRATCH, unifs, wait_for


@pytest.mark.parametrize("client", ["obstore", "fsspec"])
def test_overwrite_while_open_never_gives_a_torn_read(mounter, dataset, client):
    old = os.urandom(6 << 20)
    new = os.urandom(6 << 20)
    key = f"consistency/{client}.bin"
    mounter.seaweed.put_many(SCRATCH, {key: old})
    mp = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/consistency", read_only=True,
                                          client=client, metadata_ttl="1s")])
    path = mp / "d" / f"{client}.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == old[:4096]
        mounter.seaweed.put_many(SCRATCH, {key: new})
        # far from anything fetched already: must come from the pinned version or fail
        try:
            got = os.pread(fd, 4096, 5 << 20)
            assert got == old[5 << 20:(5 << 20) + 4096]
        except OSError as e:
            assert e.errno == errno.ESTALE
    finally:
        os.close(fd)
    # after the TTL a new open sees the new version
    time.sleep(1.5)
    assert wait_for(lambda: open(path, "rb").read(4096) == new[:4096], timeout=10)


@pytest.mark.parametrize("client", ["obstore", "fsspec"])
def test_an_object_replaced_within_the_ttl_fails_once_then_reads_new(mounter, dataset, client):
    # s3fs turns HTTP 412 (If-Match failed) into a plain EINVAL: with client fsspec every open
    # failed with "Invalid argument" until the metadata TTL ran out
    key = f"replaced/{client}.bin"
    _put(mounter, key, os.urandom(8 << 20))
    mp = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/replaced", read_only=True,
                                          client=client, metadata_ttl="5min")], extra={"cache": {"mode": "none"}})
    path = mp / "d" / f"{client}.bin"
    with open(path, "rb") as f:
        f.read(4096)  # the kernel holds the first pages at most: the rest must come from the store
    new = os.urandom(8 << 20)
    _put(mounter, key, new)
    with pytest.raises(OSError) as e:
        with open(path, "rb") as f:
            f.read()
    assert e.value.errno == errno.ESTALE
    assert path.read_bytes() == new


def test_new_objects_appear_after_ttl(mounter, dataset):
    mp = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/appear", read_only=True, metadata_ttl="1s")])
    assert not os.path.exists(mp / "d/late.txt")
    mounter.seaweed.put_many(SCRATCH, {"appear/late.txt": b"late"})
    assert wait_for(lambda: os.path.exists(mp / "d/late.txt"), timeout=10)
    assert "late.txt" in os.listdir(mp / "d")
    assert (mp / "d/late.txt").read_bytes() == b"late"


def _put(mounter, key, data):
    mounter.seaweed.put_many(SCRATCH, {key: data})


def test_two_descriptors_never_mix_versions(mounter, dataset):
    # the page cache is per inode: a second open of the new version must not fill it under
    # the first descriptor, which is pinned to the old one
    v1, v2 = os.urandom(20 << 20), os.urandom(20 << 20)
    _put(mounter, "mix/f.bin", v1)
    mp = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/mix", read_only=True, metadata_ttl="1s")])
    path = mp / "d/f.bin"
    fd1 = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd1, 1 << 20, 0) == v1[:1 << 20]
        _put(mounter, "mix/f.bin", v2)
        time.sleep(1.5)
        with open(path, "rb") as f2:
            assert f2.read() == v2
        try:
            got = os.pread(fd1, 1 << 20, 10 << 20)
            assert got == v1[10 << 20:11 << 20], "an old descriptor read the new version"
        except OSError as e:
            assert e.errno == errno.ESTALE
    finally:
        os.close(fd1)
    with open(path, "rb") as f3:  # once the old reader is gone, plain cached opens again
        assert f3.read() == v2


@pytest.mark.parametrize("change", ["shrink", "delete"])
def test_an_open_file_changed_in_the_store_fails_with_estale(mounter, dataset, change):
    v1 = os.urandom(8 << 20)
    _put(mounter, f"stale/{change}.bin", v1)
    mp = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/stale", read_only=True, metadata_ttl="1s")])
    with open(mp / f"d/{change}.bin", "rb") as f:
        assert f.read() == v1
        if change == "shrink":
            _put(mounter, f"stale/{change}.bin", os.urandom(5_000_000))
        else:
            mounter.seaweed.client().delete_object(Bucket=SCRATCH, Key=f"stale/{change}.bin")
        time.sleep(1.5)
        os.stat(mp / f"d/{change}.bin") if change == "shrink" else None  # the daemon looks again
        f.seek(0)
        with pytest.raises(OSError) as e:
            data = f.read()
            # without ESTALE this was v1 cut to the new size, with no error
            assert data == v1, f"read {len(data)} bytes of a changed object"
        assert e.value.errno == errno.ESTALE


def test_cache_clear_makes_the_kernel_forget_the_old_size(mounter, dataset):
    _put(mounter, "clr/x", b"short-v1")
    mp = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/clr", read_only=True)])  # ttl 60 s
    assert (mp / "d/x").read_bytes() == b"short-v1"
    for n, target in enumerate((mp / "d/x", mp / "d", mp)):
        longer = b"a-longer-version-" + b"%d" % n * (10 * (n + 1))  # longer each time
        _put(mounter, "clr/x", longer)
        res = unifs("cache", "clear", str(target))
        assert res.returncode == 0, res.stderr
        assert os.stat(mp / "d/x").st_size == len(longer), target
        assert (mp / "d/x").read_bytes() == longer, target


def test_objects_replaced_while_read_never_hang_the_mount(mounter, dataset):
    # the kernel invalidation after a change ran on the read-ahead pool and waited for a page
    # lock held by a READ that waited for a read-ahead part queued behind it: with one fetch
    # thread the mount hung for good, unmount included
    import threading

    versions = [bytes([65 + i]) * (24 << 20) for i in range(8)]
    _put(mounter, "churn/x.bin", versions[0])
    mp = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/churn", read_only=True, prefetch=False,
                                          metadata_ttl="1s")],
                       extra={"read": {"threads": 1}})
    path = mp / "d/x.bin"
    results = []

    def reads():
        for _ in range(12):
            try:
                data = path.read_bytes()
                results.append(data[:1] * len(data) == data and data in versions)
            except OSError as e:
                results.append(e.errno == errno.ESTALE)

    threads = [threading.Thread(target=reads, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for v in versions[1:]:
        _put(mounter, "churn/x.bin", v)
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "reads through the mount hung"
    assert results and all(results), results

    def latest():
        try:
            return path.read_bytes() == versions[-1]
        except OSError as e:  # opened from metadata of the last second: ESTALE once, as above
            assert e.errno == errno.ESTALE
            return False
    assert wait_for(latest, timeout=20)


def _v(n: int, size: int) -> bytes:
    return (b"V%014d\n" % n * (size // 16 + 1))[:size]


def _read_new_or_estale_then_new(path, want: bytes) -> None:
    try:
        got = path.read_bytes()
    except OSError as e:
        assert e.errno == errno.ESTALE
        got = path.read_bytes()
    assert got == want, f"read {len(got)} bytes, want {len(want)}: a version cut to an old size?"


def test_a_relisting_from_cache_never_makes_the_kernel_cut_a_new_version(mounter, dataset):
    # the kernel takes every reply for a whole TTL, also one the daemon answered from its cache
    # near expiry; the daemon then asked the store again, pinned the bigger new version, and the
    # kernel cut reads at the old size: no error, a truncated file
    _put(mounter, "relist/x.bin", _v(0, 100_000))
    mp = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/relist", read_only=True, prefetch=False,
                                          metadata_ttl="2s")])
    os.listdir(mp / "d")
    time.sleep(1.8)
    os.listdir(mp / "d")  # from the daemon's cache: the kernel holds 100,000 bytes until ~3.8 s
    time.sleep(0.4)
    _put(mounter, "relist/x.bin", _v(1, 101_111))
    _read_new_or_estale_then_new(mp / "d/x.bin", _v(1, 101_111))


def test_a_prefetch_that_finds_a_file_replaced_never_makes_its_read_cut(mounter, dataset):
    names = [f"f{i}.bin" for i in range(8)]
    _put_all = {f"pfcut/{n}": _v(0, 100_000) for n in names}
    mounter.seaweed.put_many(SCRATCH, _put_all)
    mp = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/pfcut", read_only=True)])  # ttl 60 s
    assert [os.stat(mp / "d" / n).st_size for n in sorted(os.listdir(mp / "d"))] == [100_000] * 8
    _put(mounter, "pfcut/f5.bin", _v(1, 150_000))
    for n in names[:5]:  # in listing order: the prefetcher fetches f5 (and finds it changed)
        assert (mp / "d" / n).read_bytes() == _v(0, 100_000)
    _read_new_or_estale_then_new(mp / "d/f5.bin", _v(1, 150_000))


def test_mmap_of_files_replaced_after_their_ttl_works(mounter, dataset):
    # the kernel asks again once its attributes expire and gets the new ones: no reason for
    # direct_io there, which refuses shared mmap (ENODEV for np.load(mmap_mode='r'), safetensors)
    import mmap

    mounter.seaweed.put_many(SCRATCH, {f"mm/f{i}": _v(0, 50_000) for i in range(8)})
    mp = mounter.mount([mounter.s3_entry("/d", f"s3://{SCRATCH}/mm", read_only=True, metadata_ttl="1s")])
    for i in range(8):
        assert os.stat(mp / f"d/f{i}").st_size == 50_000
    mounter.seaweed.put_many(SCRATCH, {f"mm/f{i}": _v(1, 60_000 + i) for i in range(8)})
    time.sleep(1.5)
    for i in range(8):
        with open(mp / f"d/f{i}", "rb") as f:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                assert m[:] == _v(1, 60_000 + i)
