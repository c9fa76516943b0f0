"""The same read behaviour through a real mount, whatever the store."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import sha256
from conformance.conftest import conformance_data


def test_every_file_byte_exact(conf_mount, expected):
    for rel, digest in expected.items():
        with open(conf_mount / rel, "rb") as f:
            assert sha256(f.read()) == digest, rel


def test_listing_matches_the_store(conf_mount, expected):
    walked = {}
    for d, dirs, files in os.walk(conf_mount):
        for f in files:
            p = os.path.join(d, f)
            walked[os.path.relpath(p, conf_mount)] = os.stat(p).st_size
    sizes = {k[len("conf/"):]: len(v) for k, v in conformance_data().items()}
    assert walked == sizes
    assert sorted(os.listdir(conf_mount / "images")) == ["c0", "c1", "c2"]
    assert stat.S_ISDIR(os.stat(conf_mount / "deep/a/b").st_mode)


def test_sequential_and_random_reads(conf_mount):
    data = conformance_data()["conf/shards/medium.bin"]
    h = hashlib.sha256()
    with open(conf_mount / "shards/medium.bin", "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == sha256(data)
    rng = random.Random(5)
    fd = os.open(conf_mount / "shards/medium.bin", os.O_RDONLY)
    try:
        for _ in range(50):
            off = rng.randrange(len(data))
            n = rng.choice([1, 4096, 200_000, 2 << 20])
            assert os.pread(fd, n, off) == data[off:off + n]
    finally:
        os.close(fd)


def test_concurrent_readers(conf_mount, expected):
    rels = list(expected)

    def check(i):
        rel = rels[i % len(rels)]
        return sha256((conf_mount / rel).read_bytes()) == expected[rel]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(check, range(len(rels) * 2)))


@pytest.mark.parametrize("call,rel,code", [
    (os.stat, "missing.txt", errno.ENOENT),
    (os.listdir, "no-such-dir", errno.ENOENT),
    (os.listdir, "empty.txt", errno.ENOTDIR),
    (lambda p: open(p, "rb"), "images", errno.EISDIR),
    (lambda p: open(p, "wb"), "new.txt", errno.EROFS),
    (os.unlink, "empty.txt", errno.EROFS),
    (os.mkdir, "newdir", errno.EROFS),
])
def test_errno(conf_mount, call, rel, code):
    with pytest.raises(OSError) as e:
        call(conf_mount / rel)
    assert e.value.errno == code


def test_nested_in_a_virtual_dir(mounter, provider, expected):
    mp = mounter.mount([provider.entry("/teams/vision/data", "conf/images", read_only=True)],
                       inprocess=provider.inprocess)
    assert os.listdir(mp) == ["teams"]
    assert os.listdir(mp / "teams/vision") == ["data"]
    rel = "images/c1/img_001.jpg"
    assert sha256((mp / "teams/vision/data/c1/img_001.jpg").read_bytes()) == expected[rel]


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_an_object_replaced_since_it_was_listed(mounter, _providers, kind):
    # a data set regenerated in place while its listing is cached (metadata_ttl): the first
    # open of a file failed with ESTALE although nothing had been read from it yet, and once
    # the daemon had looked again, files whose size changed read cut to the size the kernel
    # still held (a JPEG cut short, no error)
    import time

    from conftest import wait_for

    provider = _providers(kind)
    pre = f"replaced-{time.monotonic_ns()}"
    old = {f"{pre}/same/a.bin": b"A" * 100_000,
           f"{pre}/sizes/grown.bin": b"A" * 100_000, f"{pre}/sizes/shrunk.bin": b"A" * 100_000}
    provider.put_many(old)
    root = mounter.mount([provider.entry("/r", pre, read_only=True)]) / "r"
    for rel in ("same/a.bin", "sizes/grown.bin", "sizes/shrunk.bin"):
        assert os.stat(root / rel).st_size == 100_000
    new = {f"{pre}/same/a.bin": b"B" * 100_000,
           f"{pre}/sizes/grown.bin": b"B" * 150_000, f"{pre}/sizes/shrunk.bin": b"B" * 60_000}
    provider.put_many(new)
    assert (root / "same/a.bin").read_bytes() == b"B" * 100_000  # same size: the new version at once
    for name in ("grown.bin", "shrunk.bin"):
        want = new[f"{pre}/sizes/{name}"]
        try:
            got = (root / "sizes" / name).read_bytes()
        except OSError as e:  # the kernel was told 100,000 bytes: ESTALE rather than a cut version
            assert e.errno == errno.ESTALE, name
        else:
            assert got == want, f"{name}: read {len(got)} bytes of {got[:1]!r}"
        # the kernel forgets the old size (in the background): the next open reads it whole
        assert wait_for(lambda: os.stat(root / "sizes" / name).st_size == len(want), timeout=10), name
        assert (root / "sizes" / name).read_bytes() == want


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_an_open_file_replaced_in_the_store_never_reads_the_new_bytes(mounter, _providers, kind):
    # reads are tied to the version seen at open (S3/Azure If-Match, GCS ifGenerationMatch and
    # the generation of the answer; fake-gcs-server ignores the condition): a same-size
    # replacement must give ESTALE, not a file that is half one version and half the other
    import time

    provider = _providers(kind)
    pre = f"swapped-{time.monotonic_ns()}"
    v1, v2 = os.urandom(24 << 20), os.urandom(24 << 20)
    provider.put_many({f"{pre}/shard": v1})
    root = mounter.mount([provider.entry("/r", pre, read_only=True, cache="none")]) / "r"
    with open(root / "shard", "rb", buffering=0) as f:
        assert f.read(4096) == v1[:4096]
        provider.put_many({f"{pre}/shard": v2})
        f.seek(22 << 20)  # far from what the read-ahead may hold: a new GET
        with pytest.raises(OSError) as e:
            got = f.read(1 << 20)
            assert got != v2[22 << 20:23 << 20], "read bytes of the new version through an old handle"
        assert e.value.errno == errno.ESTALE


@pytest.mark.parametrize("kind,extra", [("s3", {}), ("s3", {"client": "fsspec"}), ("gcs", {}), ("azure", {}),
                                        ("memory", {}), ("file", {})],
                         ids=["s3", "s3-s3fs", "gcs", "azure", "memory", "file"])
def test_a_url_naming_an_object_fails_the_mount(mounter, _providers, tmp_path, kind, extra):
    # s3://bucket/train.tfrecord mounted as an empty directory, and nothing said why
    from conftest import unifs
    from unifs.config import load_config
    from unifs.daemon import _open_mounts
    from unifs.errors import UserError

    p = _providers(kind)
    entry = p.entry("/d", "conf/shards/medium.bin", **extra)
    cfg = mounter.write_table({"mounts": [entry]})
    if p.inprocess:  # the memory store lives in this process only
        with pytest.raises(UserError) as err:
            _open_mounts(load_config(str(cfg))[0])
        message = str(err.value)
    else:
        mp = tmp_path / "mp-object"
        mp.mkdir()
        res = unifs("mount", str(mp), "--config", str(cfg))
        assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not os.path.ismount(mp)
        message = res.stderr
    assert "mount /d" in message and "not a directory" in message, message
    assert kind == "file" or "names an object" in message, message
    # a prefix that is not there yet, or holds objects, or is an empty object (a folder of
    # old s3fs-fuse), still mounts
    p.make_root("conf/not-there-yet")
    if kind != "file":
        p.put_many({"confobj/old-folder": b""})  # not under conf/: other tests list that
        mounter.mount([p.entry("/d", "confobj/old-folder", **extra)], inprocess=p.inprocess)
    mounter.mount([p.entry("/d", "conf/not-there-yet", **extra)], inprocess=p.inprocess)
    mounter.mount([p.entry("/d", "conf/shards", **extra)], inprocess=p.inprocess)
