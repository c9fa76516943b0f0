"""Store providers for the conformance suite, each loaded with the same data once per session."""

from __future__ import annotations

import random

import pytest

from conftest import sha256
from conformance.providers import (AzureProvider, FileProvider, GCSProvider, HttpProvider, MemoryProvider,
                                   S3Provider)

STORES = ["s3", "gcs", "azure", "file", "memory", "http"]


def conformance_data() -> dict[str, bytes]:
    rng = random.Random(99)
    data = {f"conf/images/c{i % 3}/img_{i:03d}.jpg": rng.randbytes(rng.randrange(1, 150_000)) for i in range(60)}
    data["conf/shards/medium.bin"] = rng.randbytes(20 * 1024 * 1024 + 123)
    data["conf/empty.txt"] = b""
    data["conf/deep/a/b/c/d.txt"] = b"deep"
    data["conf/name with spaces & (parens).txt"] = b"spaces"
    data["conf/unicod\u00e9-\u6587\u5b57.txt"] = "unicode".encode()
    return data


@pytest.fixture(scope="session")
def _providers(tmp_path_factory, request):
    made = {}

    def get(kind):
        if kind not in made:
            if kind == "s3":
                made[kind] = S3Provider(request.getfixturevalue("seaweed"), "conformance")
            elif kind == "gcs":
                made[kind] = GCSProvider(request.getfixturevalue("fake_gcs"), "conformance")
            elif kind == "azure":
                made[kind] = AzureProvider(request.getfixturevalue("azurite"), "conformance")
            elif kind == "http":
                made[kind] = HttpProvider(*request.getfixturevalue("http_server"))
            elif kind == "memory":
                made[kind] = MemoryProvider("conformance-store")
            elif kind == "file":
                made[kind] = FileProvider(tmp_path_factory.mktemp("file-store"))
            else:
                raise ValueError(kind)
            made[kind].put_many(conformance_data())
        return made[kind]
    return get


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    """(directory, port) of a local static web server with directory index pages."""
    import socket
    import subprocess
    import sys

    from conftest import wait_for

    root = tmp_path_factory.mktemp("http-store")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False
    assert wait_for(up, timeout=10)
    yield root, port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(params=STORES)
def provider(request, _providers):
    return _providers(request.param)


@pytest.fixture(scope="session")
def expected():
    return {k[len("conf/"):]: sha256(v) for k, v in conformance_data().items()}


@pytest.fixture
def conf_mount(mounter, provider):
    """The provider's conformance data mounted read-only at /store."""
    return mounter.mount([provider.entry("/store", "conf", read_only=True)],
                         inprocess=provider.inprocess) / "store"
