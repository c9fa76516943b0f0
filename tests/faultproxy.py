"""An HTTP proxy in front of a real store emulator that fails chosen requests.

The emulators never answer a single upload part with a transient error (503), so this proxy
produces that fault, and counts the request bytes that reach it, so a test can tell whether a
client resent one part or restarted the whole upload. Everything else is passed through
unchanged (the Host header too, so S3 signatures stay valid); Location headers pointing at
the upstream are rewritten to the proxy, so resumable GCS uploads keep coming through it.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

# (method, path, headers) -> an HTTP status to answer instead of forwarding, or None; a
# negative status is forwarded first and then answered as its absolute value: the store did
# it, the client saw it fail (a timeout whose request landed)
Rule = Callable[[str, str, dict], Optional[int]]


class FaultProxy:
    def __init__(self, upstream_port: int, rule: Optional[Rule] = None, get_delay: float = 0.0,
                 delays: Optional[dict] = None):
        self.upstream_port = upstream_port
        self.rule = rule
        self.get_delay = get_delay  # seconds added to every GET: a store far away
        self.delays = dict(delays or {})  # method -> seconds before it is forwarded (a slow DELETE)
        self.get_rate = 0  # bytes per second of GET bodies, in small pieces (a slow link); 0: at once
        self.in_flight = 0
        self.max_in_flight = 0  # most requests served at the same time
        self.sent_bytes = 0  # request body bytes received, failed requests included
        self.failed: list[tuple[str, str]] = []
        self.answered: list[tuple[str, str]] = []  # (method, path) of requests forwarded, once answered
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                body = self._body()
                with proxy.lock:
                    proxy.sent_bytes += len(body)
                    status = proxy.rule(self.command, self.path, dict(self.headers)) if proxy.rule else None
                    if status:
                        proxy.failed.append((self.command, self.path))
                if status and status < 0:
                    self._forward(body)
                    status = -status
                if status:
                    msg = b"injected fault"
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                resp, data = self._forward(body)
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() in _HOP or k.lower() == "content-length":
                        continue
                    if k.lower() == "location":
                        v = v.replace(f":{proxy.upstream_port}", f":{proxy.port}")
                    self.send_header(k, v)
                # a HEAD's length is the object's, not that of its (empty) body
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                try:
                    if self.command == "GET" and proxy.get_rate:
                        for i in range(0, len(data), 4096):
                            self.wfile.write(data[i:i + 4096])
                            self.wfile.flush()
                            time.sleep(4096 / proxy.get_rate)
                    elif self.command != "HEAD":
                        self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return  # the client gave up
                with proxy.lock:
                    proxy.answered.append((self.command, self.path))

            def _forward(self, body: bytes):
                with proxy.lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                up = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    if self.command == "GET" and proxy.get_delay:
                        time.sleep(proxy.get_delay)
                    if proxy.delays.get(self.command):
                        time.sleep(proxy.delays[self.command])
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    headers["Content-Length"] = str(len(body))
                    up.request(self.command, self.path, body=body, headers=headers)
                    resp = up.getresponse()
                    return resp, resp.read()
                finally:
                    up.close()
                    with proxy.lock:
                        proxy.in_flight -= 1

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def upstream_port(options: dict) -> int:
    """The port of the local store an entry's options point at (endpoint or connection string)."""
    return int(re.search(r"127\.0\.0\.1:(\d+)", str(options)).group(1))


def via(options: dict, upstream: int, proxy: int) -> dict:
    """A mount entry's store options with the upstream's address replaced by the proxy's."""
    return {k: v.replace(f"127.0.0.1:{upstream}", f"127.0.0.1:{proxy}") if isinstance(v, str) else v
            for k, v in options.items()}


def fail_once(pred: Callable[[str, str, dict], bool], status: int = 503) -> Rule:
    """A rule answering `status` to the first request that matches pred, then passing all."""
    done = []

    def rule(method, path, headers):
        if not done and pred(method, path, headers):
            done.append(1)
            return status
        return None
    return rule
