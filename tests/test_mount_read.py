"""Reads through a real FUSE mount of a real SeaweedFS bucket."""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import random
import stat
from concurrent.futures import ThreadPoolExecutor

from conftest import BIG_SIZE, BUCKET, SMALL_COUNT, sha256


def test_small_files_byte_exact(data_mount, dataset):
    for key, digest in dataset["small"].items():
        with open(data_mount / "data" / key, "rb") as f:
            assert sha256(f.read()) == digest, key


def test_big_object_byte_exact_sequential(data_mount, dataset):
    h = hashlib.sha256()
    with open(data_mount / "data/shards/big.bin", "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == sha256(dataset["big"])
    assert os.stat(data_mount / "data/shards/big.bin").st_size == BIG_SIZE


def test_random_offset_reads(data_mount, dataset):
    big = dataset["big"]
    rng = random.Random(7)
    fd = os.open(data_mount / "data/shards/big.bin", os.O_RDONLY)
    try:
        for _ in range(200):
            off = rng.randrange(0, BIG_SIZE)
            n = rng.choice([1, 4096, 100_000, 3 << 20])
            assert os.pread(fd, n, off) == big[off:off + n]
        assert os.pread(fd, 100, BIG_SIZE) == b""
        assert os.pread(fd, 100, BIG_SIZE - 10) == big[-10:]
    finally:
        os.close(fd)


def test_stat_listing_and_glob(data_mount, dataset):
    root = data_mount / "data"
    assert sorted(os.listdir(root)) == ["extra", "images", "many", "shards"]
    st = os.stat(root / "images/class_0/img_00000.jpg")
    assert stat.S_ISREG(st.st_mode) and not st.st_mode & 0o222  # read-only mount
    assert stat.S_ISDIR(os.stat(root / "images").st_mode)
    assert os.path.getsize(root / "images/empty.txt") == 0
    found = sorted(glob.glob(str(root / "images/class_*/*.jpg")))
    expected = sorted(str(root / k) for k in dataset["small"] if k.endswith(".jpg"))
    assert found == expected
    walked = {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root / "images") for f in fs}
    assert walked == set(dataset["small"])


def test_root_lists_mounts_and_virtual_dirs(mounter, dataset):
    mp = mounter.mount([
        mounter.s3_entry("/datasets/imagenet", f"s3://{BUCKET}/images", read_only=True),
        mounter.s3_entry("/ckpt", f"s3://{BUCKET}/extra"),
    ])
    assert sorted(os.listdir(mp)) == ["ckpt", "datasets"]
    assert os.listdir(mp / "datasets") == ["imagenet"]
    assert stat.S_ISDIR(os.stat(mp / "datasets").st_mode)
    assert len(os.listdir(mp / "ckpt")) == 20
    assert os.path.exists(mp / "datasets/imagenet/class_3/img_00003.jpg")
    assert not os.path.exists(mp / "nothing-here")


def test_nested_mounts(mounter, dataset):
    # /data/extra is served by a second mount of another prefix, shadowing the outer one
    mp = mounter.mount([
        mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=True),
        mounter.s3_entry("/data/extra", f"s3://{BUCKET}/images/class_1", client="fsspec"),
        mounter.s3_entry("/data/deep/er/still", f"s3://{BUCKET}/shards"),
    ])
    inner = sorted(os.listdir(mp / "data/extra"))
    assert inner == sorted(k.rsplit("/", 1)[1] for k in dataset["small"] if "/class_1/" in k)
    assert "deep" in os.listdir(mp / "data")
    assert os.listdir(mp / "data/deep/er") == ["still"]
    with open(mp / "data/deep/er/still/big.bin", "rb") as f:
        assert f.read(1000) == dataset["big"][:1000]
    key = next(k for k in dataset["small"] if "/class_1/" in k)
    with open(mp / "data/extra" / key.rsplit("/", 1)[1], "rb") as f:
        assert sha256(f.read()) == dataset["small"][key]


def test_listing_10000_objects(data_mount, dataset):
    names = sorted(os.listdir(data_mount / "data/many"))
    assert names == dataset["many"]
    # every entry stats from the listing, and content matches
    entries = list(os.scandir(data_mount / "data/many"))
    assert sum(e.stat().st_size for e in entries) == sum(len(str(i)) for i in range(len(names)))
    with open(data_mount / "data/many/obj_09999", "rb") as f:
        assert f.read() == b"9999"


def test_16_concurrent_readers(data_mount, dataset):
    keys = list(dataset["small"])
    big = dataset["big"]

    def work(i):
        rng = random.Random(i)
        errors = []
        for key in rng.sample(keys, 40):
            with open(data_mount / "data" / key, "rb") as f:
                if sha256(f.read()) != dataset["small"][key]:
                    errors.append(key)
        with open(data_mount / "data/shards/big.bin", "rb") as f:
            off = rng.randrange(0, BIG_SIZE - (8 << 20))
            f.seek(off)
            if f.read(8 << 20) != big[off:off + (8 << 20)]:
                errors.append(f"big@{off}")
        return errors

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(work, range(16)))
    assert [e for r in results for e in r] == []


def test_concurrent_sequential_readers_of_one_file(data_mount, dataset):
    digest = sha256(dataset["big"])

    def read_all(_):
        h = hashlib.sha256()
        with open(data_mount / "data/shards/big.bin", "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(read_all, range(4))) == [digest] * 4


def test_read_many_small_files_in_parallel_count(data_mount, dataset):
    assert len(dataset["small"]) == SMALL_COUNT + 1
    paths = [data_mount / "data" / k for k in dataset["small"]]
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(lambda p: sha256(p.read_bytes()), paths))
    assert digests == list(dataset["small"].values())


def test_bucket_name_in_url_with_prefix(mounter, dataset):
    mp = mounter.mount([mounter.s3_entry("/imgs", f"s3://{BUCKET}/images/class_2/", read_only=True)])
    names = os.listdir(mp / "imgs")
    # the URL's prefix, not the bucket root, is the mount's root
    assert names and all(n.endswith(".jpg") for n in names)


def test_folder_markers_and_keys_obstore_cannot_parse(mounter, dataset):
    from conftest import SCRATCH

    client = mounter.seaweed.client()
    objects = {"odd/marker/": b"", "odd/marker/in.txt": b"in", "odd/nl/new\nline": b"newline",
               "odd/deep/bad\nkey": b"bad", "odd/deep/fine.txt": b"fine"}
    for key, body in objects.items():
        client.put_object(Bucket=SCRATCH, Key=key, Body=body)
    mp = mounter.mount([mounter.s3_entry("/o", f"s3://{SCRATCH}/odd", read_only=True)])
    assert sorted(os.listdir(mp / "o")) == ["deep", "marker", "nl"]
    assert os.listdir(mp / "o/marker") == ["in.txt"]  # the "marker/" object is no file
    assert (mp / "o/deep/fine.txt").read_bytes() == b"fine"
    assert (mp / "o/nl/new\nline").read_bytes() == b"newline"


def test_many_readers_wait_on_the_store_at_once(mounter, seaweed):
    """A store far away: every GET takes a while, and 32 programs read different files. The
    mount must let more than 10 of them wait on the store at the same time (libfuse 3 serves at
    most 10 requests at once unless told otherwise)."""
    from concurrent.futures import ThreadPoolExecutor

    from faultproxy import FaultProxy, upstream_port

    from conftest import SCRATCH

    seaweed.put_many(SCRATCH, {f"slow/f{i:03d}": str(i).encode() * 100 for i in range(64)})
    opts = seaweed.mount_options()
    upstream = upstream_port(opts)
    with FaultProxy(upstream, get_delay=0.3) as proxy:
        entry = {"path": "/s", "url": f"s3://{SCRATCH}/slow", "read_only": True, "prefetch": False,
                 "options": dict(opts, endpoint_url=opts["endpoint_url"].replace(str(upstream), str(proxy.port)))}
        mp = mounter.mount([entry])
        names = sorted(os.listdir(mp / "s"))
        proxy.max_in_flight = 0

        def read(name):
            with open(mp / "s" / name, "rb") as f:
                return f.read()
        with ThreadPoolExecutor(32) as ex:
            got = list(ex.map(read, names))
        assert got == [str(i).encode() * 100 for i in range(64)]
        assert proxy.max_in_flight > 10, proxy.max_in_flight


def _read_ahead_kb(mp) -> int:
    from unifs import mountinfo

    live = mountinfo.find_mount(str(mp))
    with open(f"/sys/class/bdi/{live.device}/read_ahead_kb") as f:
        return int(f.read())


def test_kernel_read_ahead_raised_to_the_configured_size(mounter, dataset):
    # 1 MiB read requests instead of the kernel's 128 KiB: 8x fewer callbacks per sequential GiB
    default = mounter.mount([mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=True)])
    assert _read_ahead_kb(default) == 1024
    wide = mounter.mount([mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=True)],
                         extra={"read": {"kernel_read_ahead": "4MiB"}})
    assert _read_ahead_kb(wide) == 4096
    h = hashlib.sha256()
    with open(wide / "data/shards/big.bin", "rb", buffering=0) as f:
        while chunk := f.read(3 << 20):
            h.update(chunk)
    assert h.hexdigest() == sha256(dataset["big"])
    kept = mounter.mount([mounter.s3_entry("/data", f"s3://{BUCKET}", read_only=True)],
                         extra={"read": {"kernel_read_ahead": 0}})
    assert _read_ahead_kb(kept) == 128  # the kernel's own default, left alone


def test_kernel_read_ahead_that_cannot_be_set_is_not_an_error(data_mount, tmp_path):
    from unifs import bdi

    assert bdi.set_read_ahead(str(data_mount), 1 << 20, sysfs=str(tmp_path / "no-sysfs")) is None
    assert bdi.set_read_ahead(str(tmp_path), 1 << 20) is None  # not a mount point
    assert os.listdir(data_mount) == ["data"]


def test_a_file_is_not_a_terminal(data_mount, dataset):
    # Python's open() asks isatty() of every file; the kernel answers ENOTTY for libfuse's
    # ENOSYS, so no daemon callback is needed for it
    import fcntl
    import termios

    fd = os.open(data_mount / "data/shards/big.bin", os.O_RDONLY)
    try:
        assert not os.isatty(fd)
        try:
            fcntl.ioctl(fd, termios.TCGETS, bytes(64))
            raise AssertionError("TCGETS on a unifs file did not fail")
        except OSError as e:
            assert e.errno == errno.ENOTTY
    finally:
        os.close(fd)
    with open(data_mount / "data/shards/big.bin", "rb") as f:  # buffered: the isatty check
        assert f.read(10) == dataset["big"][:10]


def test_a_stalled_store_fails_the_readers_queued_behind_the_first_timeouts_at_once(mounter, seaweed):
    """A store that stops answering (a stopped server, a link dropping packets): the FUSE threads
    each wait out a read's timeouts and retries, and the kernel queues every other request
    behind them. Before, each queued read then made its own attempts in turn (60 readers: 120
    GETs, one round of timeouts per 10 of them, a cached file waiting behind all of them). Now,
    once a read has timed out on every attempt, the others fail with EIO without asking, and
    one read at a time tries the store again."""
    from faultproxy import FaultProxy, upstream_port

    from conftest import SCRATCH, wait_for

    seaweed.put_many(SCRATCH, {f"stall/f{i:03d}": bytes([i]) * 5000 for i in range(61)})
    opts = seaweed.mount_options()
    upstream = upstream_port(opts)
    gets = []

    def count(method, path, headers):
        if method == "GET" and "/stall/f" in path:
            gets.append(path)
    with FaultProxy(upstream, rule=count) as proxy:
        entry = {"path": "/s", "url": f"s3://{SCRATCH}/stall", "read_only": True, "prefetch": False,
                 "metadata_ttl": "10m",
                 "options": dict(opts, endpoint_url=opts["endpoint_url"].replace(str(upstream), str(proxy.port)))}
        mp = mounter.mount([entry], extra={"store": {"timeout": "1s", "retries": 1}})
        names = sorted(os.listdir(mp / "s"))
        assert (mp / "s" / names[0]).read_bytes() == bytes([0]) * 5000  # cached from now on
        proxy.get_delay = 20  # every GET stalls
        gets.clear()

        def read(name):
            try:
                with open(mp / "s" / name, "rb") as f:
                    return f.read()
            except OSError as e:
                return e.errno
        with ThreadPoolExecutor(60) as ex:
            got = list(ex.map(read, names[1:]))
        assert got == [errno.EIO] * 60, got
        # each FUSE thread's first read: two attempts; then a try every second, one at a time
        assert len(gets) < 60, len(gets)
        assert (mp / "s" / names[0]).read_bytes() == bytes([0]) * 5000  # the cache answers at once
        proxy.get_delay = 0
        assert wait_for(lambda: read(names[1]) == bytes([1]) * 5000, timeout=30)
        assert read(names[2]) == bytes([2]) * 5000
