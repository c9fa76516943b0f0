"""GCS ranged reads over kept-alive connections: a connection the server dropped while idle
is replaced once, silently; a dead server is StoreUnavailable. fake-gcs-server keeps its
connections open, so the dropped connection comes from a stub server (a fault the emulator
cannot be made to produce); the ranged reads themselves run against fake-gcs-server in
tests/conformance."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from unifs.errors import StoreUnavailable
from unifs.stores.gcs_http import GcsRangeReader

BODY = bytes(range(256)) * 64


class _KeepsAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the client keeps the connection for its next request
    drop = False

    def setup(self):
        super().setup()
        self.server.connections += 1

    def do_GET(self):
        start, end = (int(x) for x in self.headers["Range"].split("=")[1].split("-"))
        data = BODY[start:end + 1]
        self.server.paths.append(self.path)
        self.send_response(206)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        if self.drop:
            self.close_connection = True  # dropped without telling the client (no Connection: close)

    def log_message(self, *args):
        pass


class _Fs:
    def __init__(self, location):
        self._location = location

    def _get_headers(self, headers):
        return dict(headers, Authorization="Bearer test")


class _DropsAfterEachAnswer(_KeepsAlive):
    drop = True


@pytest.fixture(params=[_KeepsAlive, _DropsAfterEachAnswer])
def stub(request):
    server = ThreadingHTTPServer(("127.0.0.1", 0), request.param)
    server.paths = []
    server.connections = 0
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_connections_are_kept_and_a_dropped_one_is_replaced(stub):
    r = GcsRangeReader(_Fs(f"http://127.0.0.1:{stub.server_address[1]}"), timeout=5, connect_timeout=2)
    for start in (0, 100, 5000):
        assert r.get("bkt", "dir/obj name", start, start + 1000, "17") == BODY[start:start + 1000]
    assert len(stub.paths) == 3
    # one connection for all three, unless the server drops each after its answer
    assert stub.connections == (3 if stub.RequestHandlerClass.drop else 1)
    assert stub.paths[0] == "/download/storage/v1/b/bkt/o/dir%2Fobj%20name?alt=media&ifGenerationMatch=17"


def test_a_dead_server_is_store_unavailable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port
    r = GcsRangeReader(_Fs(f"http://127.0.0.1:{port}"), timeout=2, connect_timeout=1)
    with pytest.raises(StoreUnavailable):
        r.get("bkt", "obj", 0, 10, None)


def test_connections_idle_too_long_are_not_reused(stub, monkeypatch):
    import unifs.stores.gcs_http as gcs_http

    monkeypatch.setattr(gcs_http, "IDLE_MAX_S", -1.0)  # every idle connection counts as too old
    r = GcsRangeReader(_Fs(f"http://127.0.0.1:{stub.server_address[1]}"), timeout=5, connect_timeout=2)
    for start in (0, 100, 5000):
        assert r.get("bkt", "obj", start, start + 10, None) == BODY[start:start + 10]
    assert stub.connections == 3


def test_requester_pays_reads_name_the_billed_project(stub):
    """A requester-pays bucket refuses reads without userProject; gcsfs adds it to its own
    requests, and the ranged reads that bypass gcsfs must add it too."""
    import os
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    from gcsfs.core import GCSFileSystem

    fs = GCSFileSystem(endpoint_url=f"http://127.0.0.1:{stub.server_address[1]}", token="anon",
                       project="billed-proj", requester_pays=True, skip_instance_cache=True)
    r = GcsRangeReader(fs, timeout=5, connect_timeout=2)
    assert r.get("bkt", "obj", 0, 10, "5") == BODY[:10]
    assert stub.paths[-1] == "/download/storage/v1/b/bkt/o/obj?alt=media&ifGenerationMatch=5&userProject=billed-proj"
