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
