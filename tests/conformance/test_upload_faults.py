"""One failed part of a large upload is sent again, not the whole file.

Through a real mount, with a fault proxy (tests/faultproxy.py) between unifs and the real
emulator that answers 503 to one request in the middle of the upload: a fault the emulators
cannot be made to produce. close() succeeds, the object is byte-exact in the store, and the
bytes sent to the store stay well under twice the file's size (a restart from zero sends
the whole file again)."""

from __future__ import annotations

import os
import re

import pytest

from conftest import sha256
from faultproxy import FaultProxy, fail_once, via, upstream_port
from unifs.stores.fsspec_store import FsspecStore

MIB = 1 << 20


def _s3_middle_part(method, path, headers):
    return method == "PUT" and "uploadId=" in path and re.search(r"[?&]partNumber=2(&|$)", path) is not None


def _gcs_later_chunk(method, path, headers):
    rng = headers.get("Content-Range", "")
    return method in ("PUT", "POST") and rng.startswith("bytes ") and not rng.startswith("bytes 0-")


def _azure_block_counter():
    seen = []

    def pred(method, path, headers):
        if method == "PUT" and re.search(r"[?&]comp=block(&|$)", path):
            seen.append(path)
            return len(seen) == 2
        return False
    return pred


# store kind -> (size of the file, which request fails once)
CASES = {
    "s3": (26 * MIB + 11, lambda: _s3_middle_part),  # 8 MiB parts: the second of four
    "gcs": (53 * MIB + 11, lambda: _gcs_later_chunk),  # gcsfs' 50 MiB chunks: the second of two
    "azure": (26 * MIB + 11, _azure_block_counter),  # 8 MiB blocks: the second of four
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_failed_part_is_sent_again_not_the_whole_upload(mounter, _providers, kind):
    provider = _providers(kind)
    size, pred = CASES[kind]
    upstream = upstream_port(provider.options())
    data = os.urandom(size)
    with FaultProxy(upstream, fail_once(pred())) as proxy:
        entry = provider.entry("/w", f"upload-faults/{kind}")
        entry["options"] = via(provider.options(), upstream, proxy.port)
        mp = mounter.mount([entry])
        sent_before = proxy.sent_bytes
        with open(mp / "w" / "big.bin", "wb") as f:
            f.write(data)
        # close() returned 0: the object is in the store
        assert len(proxy.failed) == 1, proxy.failed
        sent = proxy.sent_bytes - sent_before
    store = FsspecStore(provider.url(f"upload-faults/{kind}"), provider.options())
    try:
        assert sha256(store.get_range("big.bin", 0, size + 1)) == sha256(data)
    finally:
        store.close()
    print(f"{kind}: {sent / MIB:.1f} MiB sent for {size / MIB:.1f} MiB")
    # one part (8 MiB) or chunk (3 MiB) sent twice, not the whole file
    assert sent < 1.4 * size, f"{sent / MIB:.1f} MiB sent for a {size / MIB:.1f} MiB file"
