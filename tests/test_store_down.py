"""A store that goes away under a live mount: EIO after bounded retries, never a hang."""

from __future__ import annotations

import errno
import os

import pytest

from unifs.devstores.seaweed import SeaweedS3


@pytest.fixture
def doomed_server(tmp_path):
    server = SeaweedS3(str(tmp_path / "doomed")).start()
    yield server
    server.stop()


def test_store_down_gives_eio_not_a_hang(mounter, doomed_server):
    doomed_server.create_bucket("gone")
    doomed_server.put_many("gone", {f"d/f{i}": os.urandom(50_000) for i in range(5)} | {"big": os.urandom(24 << 20)})
    mounter.seaweed = doomed_server  # entries below point at the doomed server
    # prefetch off: it would have fetched d/f1 ahead of the reader before the store went away
    mp = mounter.mount([mounter.s3_entry("/g", "s3://gone", read_only=True, prefetch=False)],
                       extra={"store": {"timeout": "2s", "connect_timeout": "1s", "retries": 2}})
    assert len(os.listdir(mp / "g/d")) == 5
    with open(mp / "g/d/f0", "rb") as f:
        assert len(f.read()) == 50_000
    big = open(mp / "g/big", "rb")
    assert len(big.read(1000)) == 1000
    doomed_server.stop()

    with pytest.raises(OSError) as e:
        open(mp / "g/d/f1", "rb").read()
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError) as e:
        os.stat(mp / "g/not-cached-yet")
    assert e.value.errno == errno.EIO
    with pytest.raises(OSError) as e:
        big.seek(20 << 20)  # far past what the first read fetched (one 4 MiB block)
        big.read(1000)
    assert e.value.errno == errno.EIO
    big.close()
    # what was listed before stays listable from the metadata cache
    assert len(os.listdir(mp / "g/d")) == 5
