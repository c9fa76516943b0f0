"""A store that goes away under a live mount: EIO after unifs' own bounded retries, never a
hang (the suite's pytest-timeout stops a hung test).

Each test starts its own emulator, since it stops it half-way."""

from __future__ import annotations

import errno
import os

import pytest

from conftest import errno_of

STORE = {"timeout": "2s", "connect_timeout": "1s", "retries": 2}


@pytest.fixture(params=["s3", "gcs", "azure"])
def doomed(request, tmp_path):
    """(url of a bucket/container "gone", the server holding it)."""
    if request.param == "s3":
        from unifs.devstores.seaweed import SeaweedS3

        server, url = SeaweedS3(str(tmp_path / "doomed")).start(), "s3://gone"
    elif request.param == "gcs":
        from unifs.devstores.fakegcs import FakeGCS

        server, url = FakeGCS(str(tmp_path / "doomed")).start(), "gs://gone"
    else:
        from unifs.devstores.azurite import Azurite

        server, url = Azurite(str(tmp_path / "doomed")).start(), "abfs://gone"
    try:
        server.create_bucket("gone")
        yield url, server
    finally:
        server.stop()


def eio(fn, *args):
    assert errno_of(fn, *args) == errno.EIO


def test_store_down_gives_eio_not_a_hang(mounter, doomed):
    url, server = doomed
    server.put_many("gone", {f"d/f{i}": os.urandom(50_000) for i in range(5)}
                    | {f"e/x{i}": b"x" for i in range(3)} | {"big": os.urandom(24 << 20)})
    # prefetch off: it would have fetched d/f1 ahead of the reader before the store went away
    mp = mounter.mount([{"path": "/g", "url": url, "read_only": True, "prefetch": False,
                         "options": server.mount_options()}], extra={"store": STORE})
    assert sorted(os.listdir(mp / "g")) == ["big", "d", "e"]
    assert len(os.listdir(mp / "g/d")) == 5
    with open(mp / "g/d/f0", "rb") as f:
        assert len(f.read()) == 50_000
    big = open(mp / "g/big", "rb")
    assert len(big.read(1000)) == 1000
    server.stop()

    eio(lambda: open(mp / "g/d/f1", "rb").read())  # a file not read yet
    eio(os.stat, mp / "g/e/not-cached-yet")  # a name in a directory never listed: a HEAD
    eio(os.listdir, mp / "g/e")  # a directory known from its parent's listing, never listed

    def far_read():
        big.seek(20 << 20)  # far past what the first read fetched (one 4 MiB block)
        big.read(1000)
    eio(far_read)
    big.close()
    # what was listed before stays listable from the metadata cache
    assert len(os.listdir(mp / "g/d")) == 5


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_a_store_trickling_its_answer_gives_eio_not_a_hang(mounter, _providers, kind):
    # each socket read got its answer within the timeout, so only a bound on the whole request
    # ends it: on GCS a 4 MiB block read at 64 KiB/s held the reader (and a FUSE thread) for a
    # minute per try, and finished, however slow
    from faultproxy import FaultProxy, via, upstream_port

    provider = _providers(kind)
    upstream = upstream_port(provider.options())
    provider.put_many({f"trickle/{kind}/big": os.urandom(12 << 20)})
    with FaultProxy(upstream) as proxy:
        entry = provider.entry("/t", f"trickle/{kind}")
        entry.update(read_only=True, prefetch=False, cache="none",
                     options=via(provider.options(), upstream, proxy.port))
        mp = mounter.mount([entry], extra={"store": STORE})
        with open(mp / "t/big", "rb") as f:
            assert len(f.read(1000)) == 1000
            proxy.get_rate = 64 << 10
            f.seek(8 << 20)
            eio(f.read, 1000)


def test_a_listing_of_many_pages_is_bounded_per_page_not_as_a_whole(mounter, _providers):
    # each page answered well within the timeout, but the whole paged listing was given one
    # timeout: a directory of 3,000 objects on GCS (3 pages) could never be listed
    from faultproxy import FaultProxy, via, upstream_port

    provider = _providers("gcs")
    upstream = upstream_port(provider.options())
    provider.put_many({f"pages/big/f{i:05d}": b"x" for i in range(3000)})
    with FaultProxy(upstream, get_delay=0.5) as proxy:
        entry = provider.entry("/p", "pages", read_only=True,
                               options=via(provider.options(), upstream, proxy.port))
        mp = mounter.mount([entry], extra={"store": {"timeout": "1s", "connect_timeout": "1s", "retries": 1}})
        assert len(os.listdir(mp / "p/big")) == 3000


def test_a_stalled_store_fails_queued_readers_at_once(mounter, doomed):
    """A store that stops answering (not one that refuses connections): once a read has timed
    out on every attempt, the readers queued behind it fail with EIO without asking the store,
    and a cached file still reads (tests/test_mount_read.py has the S3 count of GETs)."""
    from concurrent.futures import ThreadPoolExecutor

    from faultproxy import FaultProxy, upstream_port, via

    url, server = doomed
    server.put_many("gone", {f"stall/f{i:03d}": bytes([i]) * 3000 for i in range(41)})
    opts = server.mount_options()
    upstream = upstream_port(opts)
    gets = []

    def count(method, path, headers):
        if method == "GET" and "stall" in path and "f0" in path:
            gets.append(path)
    with FaultProxy(upstream, rule=count) as proxy:
        mp = mounter.mount([{"path": "/g", "url": url, "read_only": True, "prefetch": False, "metadata_ttl": "10m",
                             "options": via(opts, upstream, proxy.port)}],
                           extra={"store": {"timeout": "1s", "connect_timeout": "1s", "retries": 1}})
        names = sorted(os.listdir(mp / "g/stall"))
        assert (mp / "g/stall" / names[0]).read_bytes() == bytes([0]) * 3000
        proxy.get_delay = 20
        gets.clear()

        def read(name):
            try:
                return (mp / "g/stall" / name).read_bytes()
            except OSError as e:
                return e.errno
        with ThreadPoolExecutor(40) as ex:
            got = list(ex.map(read, names[1:]))
        assert got == [errno.EIO] * 40, got
        assert len(gets) < 40, len(gets)  # each reader asking in turn: 80 and more
        assert (mp / "g/stall" / names[0]).read_bytes() == bytes([0]) * 3000
        proxy.get_delay = 0
