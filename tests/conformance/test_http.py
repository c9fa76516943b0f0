"""http(s):// mounts only: a signed URL's query string, and a page that does not exist."""

from __future__ import annotations

from conftest import sha256, unifs
from conformance.conftest import conformance_data


def test_a_query_string_goes_after_each_key(mounter, _providers):
    # a presigned or SAS-style URL: keys were appended after the query string, so every file
    # read back as the directory's index page, with no error
    provider = _providers("http")
    url = provider.url("conf").rstrip("/") + "/?sv=2024&sig=NOT_A_REAL_SIGNATURE"
    root = mounter.mount([{"path": "/h", "url": url, "read_only": True}]) / "h"
    for rel in ("empty.txt", "deep/a/b/c/d.txt", "shards/medium.bin"):
        assert sha256((root / rel).read_bytes()) == sha256(conformance_data()["conf/" + rel]), rel
    assert sorted(p.name for p in (root / "deep/a/b/c").iterdir()) == ["d.txt"]


def test_a_page_that_does_not_exist_or_a_file_fails_the_mount(mounter, _providers, tmp_path):
    provider = _providers("http")
    (tmp_path / "mp").mkdir()
    for url, words in ((provider.url("no-such-dir") + "?sig=SECRET_SIG", "not found"),
                       (provider.url("conf").rstrip("/") + "/deep/a/b/c/d.txt", "lists nothing")):
        cfg = mounter.write_table({"mounts": [{"path": "/h", "url": url, "read_only": True}]})
        res = unifs("mount", str(tmp_path / "mp"), "--config", str(cfg), timeout=60)
        assert res.returncode == 1 and words in res.stderr and "Traceback" not in res.stderr, res.stderr
        # the redacted URL keeps the message around it: "mount /h (http://...?sig=***): ..."
        assert "SECRET_SIG" not in res.stderr and "): " in res.stderr, res.stderr


def test_a_file_changed_on_the_server_reads_new_and_never_mixes(mounter, _providers):
    # python's http.server sends Last-Modified and no ETag, and ignores conditional headers:
    # the version was size + mtime 0, so a same-size replacement kept serving the old cached
    # bytes forever, and an open handle mixed old and new MiBs
    import errno
    import os
    import time

    provider = _providers("http")
    provider.put_many({"changes/a.txt": b"hi\n", "changes/big.bin": b"A" * (12 << 20)})
    url = provider.url("changes")
    root = mounter.mount([{"path": "/h", "url": url, "read_only": True, "metadata_ttl": "1s"}]) / "h"
    assert (root / "a.txt").read_bytes() == b"hi\n"
    st = (root / "a.txt").stat()
    assert abs(st.st_mtime - (provider.root / "changes/a.txt").stat().st_mtime) < 2  # the server's date

    with open(root / "big.bin", "rb", buffering=0) as f:
        assert f.read(1 << 20) == b"A" * (1 << 20)
        later = time.time() + 5
        (provider.root / "changes/big.bin").write_bytes(b"B" * (12 << 20))
        os.utime(provider.root / "changes/big.bin", (later, later))  # Last-Modified has 1 s steps
        (provider.root / "changes/a.txt").write_bytes(b"yo\n")
        os.utime(provider.root / "changes/a.txt", (later, later))
        f.seek(6 << 20)
        try:
            got = f.read(1 << 20)
        except OSError as e:
            assert e.errno == errno.ESTALE
        else:
            assert got == b"A" * (1 << 20), "an open file read bytes of the new version"
    time.sleep(1.5)
    assert (root / "a.txt").read_bytes() == b"yo\n"
    assert (root / "big.bin").read_bytes() == b"B" * (12 << 20)


def test_a_server_that_compresses_answers_still_reads_byte_exact(mounter):
    # nginx with gzip on answers a client that accepts gzip with a compressed whole body and a
    # weak ETag: unifs' ranged GETs accepted gzip, so every read failed with ESTALE (the version
    # pinned from fsspec's HEAD, which asks for identity, never matched)
    import gzip
    import os
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files = {"/a.txt": b"hello compressed world\n" * 3, "/big.bin": os.urandom(3 << 20)}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _answer(self, body_wanted):
            if self.path == "/":
                body = "".join(f'<a href="{n[1:]}">{n[1:]}</a>\n' for n in files).encode()
                self._send(200, body, {"Content-Type": "text/html"}, body_wanted)
                return
            data = files.get(self.path)
            if data is None:
                self._send(404, b"", {}, body_wanted)
                return
            tag = '"v1-%d"' % len(data)
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                self._send(200, gzip.compress(data), {"Content-Encoding": "gzip", "ETag": "W/" + tag}, body_wanted)
                return
            rng = self.headers.get("Range")
            if rng:
                lo, hi = rng.split("=")[1].split("-")
                lo, hi = int(lo), min(int(hi), len(data) - 1)
                self._send(206, data[lo:hi + 1], {"ETag": tag, "Content-Range": f"bytes {lo}-{hi}/{len(data)}"},
                           body_wanted)
                return
            self._send(200, data, {"ETag": tag}, body_wanted)

        def _send(self, code, body, headers, body_wanted):
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body_wanted:
                self.wfile.write(body)

        def do_GET(self):
            self._answer(True)

        def do_HEAD(self):
            self._answer(False)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        root = mounter.mount([{"path": "/h", "url": url, "read_only": True}]) / "h"
        assert (root / "a.txt").read_bytes() == files["/a.txt"]
        assert sha256((root / "big.bin").read_bytes()) == sha256(files["/big.bin"])
    finally:
        mounter.cleanup()
        server.shutdown()
